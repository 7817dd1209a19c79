#!/usr/bin/env bash
# The GPU measurements issue #7 still waits for, in one device call (within the ten minutes of one call), most
# important first; each step has its own time limit, so what finished survives a later timeout.
#   bash benchmarks/open_measurements.sh OUT_DIR
# 1. GPU tests of the aligned query tiles, the edge-only mask (`edge_only=True`: it must give the general
#    mask's bits) included;
# 2. fixed vs aligned query tiles, aligned with the general and the edge-only mask (query_tiles.py);
# 3. SVG2's overhead with query_tiles="auto" on the structured preset (svg2_overhead.py);
# 4. Wan2.1-1.3B 480p end to end: dense and SVG2 d=0.13 / d=0.3 with "auto" (which tiling each layer ran
#    is in the rows' aligned_tiles_share).
# Wan2.1-14B 720p takes a call of its own (about 290 s):
#   (cd benchmarks && python3 e2e.py --models wan2.1-14b-720p --steps 2 --only "svg2 d=0.13,svg2 d=0.3" \
#      --no-share --dense-step-ms 22490 --out OUT_DIR/e2e_wan14b.json)
set -uo pipefail
out=$(realpath -m "${1:?usage: open_measurements.sh OUT_DIR}")
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
step gpu_tests 120 python3 -m pytest -q -m gpu -p no:benchmark tests/test_tile_aligned.py
step query_tiles 190 python3 benchmarks/query_tiles.py --rounds 3 --out "$out/query_tiles.json"
step svg2_overhead 100 python3 benchmarks/svg2_overhead.py --quick --rounds 2 --out "$out/svg2_overhead.json"
step e2e_wan13b 170 bash -c "cd benchmarks && python3 e2e.py --models wan2.1-1.3b-480p --steps 3 \
  --only 'dense,svg2 d=0.13,svg2 d=0.3' --no-share --out '$out/e2e_wan13b.json'"
