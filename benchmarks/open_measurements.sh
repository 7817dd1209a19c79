#!/usr/bin/env bash
# The GPU measurements issue #7 still waits for, in four device calls of under ten minutes each, most
# important first; each step has its own time limit, so what finished survives a later timeout.
#   bash benchmarks/open_measurements.sh OUT_DIR PART      (PART 1 to 7)
# (Measured 2026-12-07 on an H100 and so dropped from here: query_tiles.py with the edge-only mask and key
# pages, the edge-mask GPU tests, the paged kernel's GPU tests, Wan2.1-14B SVG2 d=0.13 / d=0.3 with "auto".)
# Part 1: GPU tests: `fold_scale` (the softmax scale inside the exponent), half tiles (a tile of at most
#   64 real query rows on one warpgroup: `tile_rows`), the paged kernel, SVG2's compiled pipeline (query_tiles
#   "auto", which now picks among fixed, aligned and paged tiles, and "paged").
# Part 2: kernel A/B (mosaic_steps.py) on the SVG2 plan and on random maps in aligned tiles (edge mask) and
#   key pages: `fold_scale`, a ring of 6 slots, half tiles; then SVG2's overhead with the three-way "auto".
# Part 3: Wan2.1-14B 720p end to end: the dense step again on the same card (the 22.49 s baseline is from
#   another H100 call), then SVG2 d=0.13 with the three-way "auto".
# Part 4: HunyuanVideo 720p x 129 frames end to end, dense and SVG2 at the fixed densities, with the
#   edge-only mask and "auto" (its rows were last run on an H200, before aligned tiles existed).
# Part 5: Wan2.1-14B 720p SVG2 d=0.3 with the three-way "auto" (after part 3: DENSE_STEP_MS from it).
# Part 7: parts 1 and 2 cut to one call of under ten minutes (when device time is short): the half-tile,
#   paged, three-way "auto" and cluster-kernel fold_scale GPU tests, then the kernel A/B at two rounds.
# Part 6: Wan2.1-1.3B 480p end to end, dense and SVG2 d=0.13 / d=0.3 with "auto" (the rows'
#   aligned_tiles_share and paged_share say which tiling the layers ran).
set -uo pipefail
out=$(realpath -m "${1:?usage: open_measurements.sh OUT_DIR PART}")
part=${2:?usage: open_measurements.sh OUT_DIR PART (1 to 7)}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/device.txt"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log, report the status
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name: rc $? ($(tail -n 1 "$out/$name.log"))"
}
case $part in
  1)
    step gpu_fold_half 240 python3 -m pytest -q -m gpu -p no:benchmark tests/test_cluster_sparse_attention.py \
      tests/test_block_sparse_attention.py tests/test_tile_aligned.py tests/test_page_plan.py -k "fold or half or paged"
    step gpu_svg2 240 python3 -m pytest -q -m gpu -p no:benchmark tests/test_svg2.py -k "pipeline_compiled or half_tiles"
    ;;
  2)
    step kernel_ab 330 python3 benchmarks/mosaic_steps.py --only svg2 aligned paged \
      --steps 1,4,1,0,0 1,4,1,1,0 1,6,1,0,0 1,4,1,0,1 --rounds 3 --out "$out/mosaic_steps_ab.json"
    step svg2_overhead 200 python3 benchmarks/svg2_overhead.py --quick --rounds 2 \
      --out "$out/svg2_overhead.json"
    ;;
  3)
    step e2e_wan14b_dense 300 bash -c "cd benchmarks && python3 e2e.py --models wan2.1-14b-720p --steps 2 \
      --only dense --no-share --out '$out/e2e_wan14b_dense.json'"
    step e2e_wan14b_auto3 260 bash -c "cd benchmarks && python3 e2e.py --models wan2.1-14b-720p --steps 2 \
      --only 'svg2 d=0.13' --no-share --dense-step-ms 22490 --out '$out/e2e_wan14b_auto3_d013.json'"
    ;;
  4)
    step e2e_hunyuan 560 bash -c "cd benchmarks && python3 e2e_hunyuan.py --only 'dense,svg2 d=0.13,svg2 d=0.3' \
      --no-share --out '$out/e2e_hunyuan.json'"
    ;;
  5)
    step e2e_wan14b_auto3 300 bash -c "cd benchmarks && python3 e2e.py --models wan2.1-14b-720p --steps 2 \
      --only 'svg2 d=0.3' --no-share --dense-step-ms ${DENSE_STEP_MS:-22490} --out '$out/e2e_wan14b_auto3_d03.json'"
    ;;
  6)
    step e2e_wan13b 560 bash -c "cd benchmarks && python3 e2e.py --models wan2.1-1.3b-480p --steps 3 \
      --only 'dense,svg2 d=0.13,svg2 d=0.3' --no-share --out '$out/e2e_wan13b.json'"
    ;;
  7)
    step gpu_half 170 python3 -m pytest -q -m gpu -p no:benchmark tests/test_tile_aligned.py tests/test_page_plan.py \
      tests/test_cluster_sparse_attention.py -k "half or paged or fold"
    step gpu_svg2 130 python3 -m pytest -q -m gpu -p no:benchmark tests/test_svg2.py \
      -k "(pipeline_compiled and auto) or half_tiles"
    step kernel_ab 230 python3 benchmarks/mosaic_steps.py --only svg2 aligned paged \
      --steps 1,4,1,0,0 1,4,1,1,0 1,6,1,0,0 1,4,1,0,1 --rounds 2 --out "$out/mosaic_steps_ab.json"
    ;;
  *) echo "PART must be 1 to 7; got $part" >&2 && exit 2 ;;
esac
