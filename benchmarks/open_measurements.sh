#!/usr/bin/env bash
# The GPU measurements issue #7 still waits for, in three device calls of under ten minutes each, most
# important first; each step has its own time limit, so what finished survives a later timeout.
#   bash benchmarks/open_measurements.sh OUT_DIR PART      (PART 1, 2 or 3)
# Part 1, the opt-in kernel variants (before either becomes a default):
#   - GPU tests of the aligned query tiles with the edge-only mask (`edge_only=True` must give the general
#     mask's bits) and of `fold_scale` (the softmax scale inside the exponent) against the oracles;
#   - fixed vs aligned query tiles, aligned with the general and the edge-only mask (query_tiles.py);
#   - `fold_scale` off / on for the cluster kernel on the SVG2 plan and on random maps (mosaic_steps.py;
#     the block kernel's A/B, `--only block`, did not fit this call).
# Part 2: SVG2's overhead with query_tiles="auto" on the structured preset (svg2_overhead.py), and
#   Wan2.1-1.3B 480p end to end, dense and SVG2 d=0.13 / d=0.3 with "auto" (the rows' aligned_tiles_share
#   says which tiling the layers ran).
# Part 3: Wan2.1-14B 720p end to end, SVG2 d=0.13 / d=0.3 with "auto" (dense step: 22.49 s, H100).
set -uo pipefail
out=$(realpath -m "${1:?usage: open_measurements.sh OUT_DIR PART}")
part=${2:?usage: open_measurements.sh OUT_DIR PART (1, 2 or 3)}
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
    step gpu_tests 120 python3 -m pytest -q -m gpu -p no:benchmark tests/test_tile_aligned.py \
      tests/test_cluster_sparse_attention.py tests/test_block_sparse_attention.py -k "edge or fold or aligned"
    step query_tiles 240 python3 benchmarks/query_tiles.py --rounds 3 --out "$out/query_tiles.json"
    step fold_scale 200 python3 benchmarks/mosaic_steps.py --only svg2 random --steps 1,2,1,0 1,2,1,1 \
      --rounds 3 \
      --out "$out/mosaic_steps_fold_scale.json"
    ;;
  2)
    step svg2_overhead 120 python3 benchmarks/svg2_overhead.py --quick --rounds 2 \
      --out "$out/svg2_overhead.json"
    step e2e_wan13b 400 bash -c "cd benchmarks && python3 e2e.py --models wan2.1-1.3b-480p --steps 3 \
      --only 'dense,svg2 d=0.13,svg2 d=0.3' --no-share --out '$out/e2e_wan13b.json'"
    ;;
  3)
    step e2e_wan14b 560 bash -c "cd benchmarks && python3 e2e.py --models wan2.1-14b-720p --steps 2 \
      --only 'svg2 d=0.13,svg2 d=0.3' --no-share --dense-step-ms 22490 --out '$out/e2e_wan14b.json'"
    ;;
  *) echo "PART must be 1, 2 or 3; got $part" >&2 && exit 2 ;;
esac
