#!/usr/bin/env bash
# Where the 1B step's device time goes, kernel by kernel, with Nsight Compute (ncu) on the GPU
# machine (binaries from scripts/gpu_bundle.sh, as for bench/gpu_check.sh):
#   1. the duration of every kernel of one training step (1B, seq 2048 x 4), as CSV;
#   2. ncu's throughput, occupancy and warp-stall sections for the three attention kernels.
# `bench/gpu_report.py kernels OUT/kernels.csv` sums part 1 by kernel; KERNELS_ONLY=1 stops
# after it. Clocks are left alone (--clock-control none); ncu runs kernels one at a time, so the
# sum leaves out the gaps between them. Needs ncu with hardware counters (not every GPU machine
# has them).
#   tar xzf build/gpu_bundle/bundle.tar.gz && bash bench/gpu_profile.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_profile_out}}
mkdir -p "$OUT"
. bench/gpu_env.sh  # GPU, PY, TITAN, LD_LIBRARY_PATH
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
[ -n "$NCU" ] || { echo "gpu_profile: no ncu on this machine" >&2; exit 2; }
# phase_times runs the compiled step's kernels eagerly, so each one is a launch ncu can see.
train=($TITAN train --config train_configs/debug_model.toml --model.flavor 1B --model.vocab_size 128256
       --training.dataset synthetic --training.seq_len 2048 --training.batch_size 4 --training.device cuda
       --training.compile true --profiling.phase_times true --metrics.log_freq 1 --checkpoint.enable_checkpoint false
       --validation.enabled false --profiling.enable_profiling false --metrics.enable_tensorboard false)
status=0
# 1. Two steps, every kernel's duration (the report takes the second step).
timeout 240 "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base --log-file "$OUT/kernels.csv" \
  "${train[@]}" --training.steps 2 --job.dump_folder "$OUT/run_kernels" > "$OUT/kernels_run.log" 2>&1 || status=1
$PY bench/gpu_report.py kernels "$OUT/kernels.csv" > "$OUT/kernels.txt" 2>&1 || status=1
{ echo "# gpu_profile $(date -u +%Y-%m-%dT%H:%MZ)"; cat "$OUT/kernels.txt"; } > "$OUT/profile.txt"
[ -n "${KERNELS_ONLY:-}" ] && { tail -40 "$OUT/kernels.txt"; exit $status; }
# 2. The last layer's forward, then the first dK/dV and dQ of the backward (one more forward
#    launch than layers was seen, hence four).
timeout 180 "$NCU" --clock-control none --kernel-name-base function --kernel-name "regex:forward_kernel|dkdv_kernel|dq_kernel" \
  --launch-skip 15 --launch-count 4 --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --log-file "$OUT/attention.txt" \
  "${train[@]}" --training.steps 1 --job.dump_folder "$OUT/run_attention" > "$OUT/attention_run.log" 2>&1 || status=1
{ echo "## attention kernels (ncu)"; cat "$OUT/attention.txt"; } >> "$OUT/profile.txt"
tail -40 "$OUT/kernels.txt"
exit $status
