#!/usr/bin/env bash
# Nsight Compute profile of the Mosaic cluster kernel on the Wan 720p SVG2 plan, one report per variant of
# benchmarks/cluster_balance.py (warp stalls per SASS instruction, SM load balance). Needs ncu (the lent
# Firecracker H200s have it). Also keeps the kernel's PTX and ptxas report (Mosaic's dump, made in /tmp:
# the dump of every Mosaic kernel is hundreds of files); `ptxas -arch=sm_90a` + `cuobjdump -sass` make SASS.
#   bash benchmarks/profile_cluster.sh OUT_DIR [VARIANT ...]    (default variant: shipped)
set -uo pipefail
out=${1:?usage: profile_cluster.sh OUT_DIR [VARIANT ...]}
shift
[ $# -gt 0 ] || set -- shipped
mkdir -p "$out"
for variant in "$@"; do
  tag=${variant//[^a-zA-Z0-9]/_}
  dump=$(mktemp -d)
  # XLA's command buffers off: with them on, JAX under ncu crashed (segmentation fault) on the H200.
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" MOSAIC_GPU_DUMP_PTX=1 MOSAIC_GPU_DUMP_PTXAS=1 \
    MOSAIC_GPU_DUMP_TO=$dump timeout 240 ncu --clock-control none --profile-from-start off --launch-count 20 \
    --section LaunchStats --section Occupancy --section SpeedOfLight --section WarpStateStats \
    --section SchedulerStats --section InstructionStats --section SourceCounters \
    --metrics sm__cycles_active.max,sm__cycles_active.min,sm__cycles_active.avg,smsp__inst_executed.sum \
    -f -o "$out/ncu_$tag" python3 benchmarks/cluster_balance.py --run-once "$variant" >"$out/ncu_$tag.log" 2>&1
  echo "ncu $variant: rc $?"
  for f in "$dump"/sparse_flash*; do
    case $f in *.ptxas | *.ptx | *.resources.txt) cp "$f" "$out/${tag}_$(basename "$f")" ;; esac
  done
  ls "$dump" | sed 's/_[0-9]*\..*//' | sort | uniq -c >"$out/${tag}_dumped.txt"
  rm -rf "$dump"
  ncu -i "$out/ncu_$tag.ncu-rep" --page details >"$out/ncu_${tag}_details.txt" 2>&1
  ncu -i "$out/ncu_$tag.ncu-rep" --page source --csv --print-source sass >"$out/ncu_${tag}_sass.csv" 2>&1 ||
    echo "source page export failed (see the csv file)"
done
