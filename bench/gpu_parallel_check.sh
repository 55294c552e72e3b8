#!/usr/bin/env bash
# Tensor parallel and the FP8 all-gather on a card (issues 23 and 22, their GPU parts), one call
# of about 4 minutes with prebuilt binaries (scripts/gpu_bundle.sh): gpu.tensor_parallel_cuda
# (TP 2/4 and FSDP 2 x TP 2 as thread ranks against the plain one-model engine, the slice
# kernels against the CPU); gpu.float8_all_gather_cuda (over one rank bit for bit the unsharded
# float8 run, precomputed amaxes or not; two thread ranks; the e4m3 transpose); the debug model
# 20 steps, float8 tensorwise, unsharded against fsdp_on_one_rank with the FP8 all-gather (bit
# for bit, both amax modes); and 1B (2048 x 4) over one FSDP rank, float8 with and without the
# FP8 all-gather, for the 0.98x bar. Several GPUs (NCCL between devices) need another machine.
#   tar xzf build/gpu_bundle/bundle.tar.gz && bash bench/gpu_parallel_check.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_parallel_out}}
mkdir -p "$OUT"
. bench/gpu_env.sh  # GPU, PY, TITAN, LD_LIBRARY_PATH
status=0
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
export TITAN_GPU_TESTS_MUST_RUN=1  # a skipped GPU test is a failure here

for t in tensor_parallel_cuda float8_all_gather_cuda; do
  if timeout 120 $GPU/bin/test_gpu_$t > "$OUT/test_$t.log" 2>&1; then note "gpu.$t: PASS"
  else status=1; note "gpu.$t: FAIL"; tail -30 "$OUT/test_$t.log"; fi
done

f8=(--float8.enable_float8_linear --float8.filter_fqns output --training.cuda_model model --training.device cuda)
common=(--config train_configs/debug_model.toml --training.steps 20 --metrics.log_freq 1
        --checkpoint.enable_checkpoint false --validation.enabled false --profiling.enable_profiling false
        --metrics.enable_tensorboard false)
run() {  # name [extra titan flags]
  timeout 60 $TITAN train "${common[@]}" "${f8[@]}" --job.dump_folder "$OUT/run_$1" "${@:2}" > "$OUT/run_$1.log" 2>&1 ||
    { status=1; tail -5 "$OUT/run_$1.log"; }
}
run unsharded
for precompute in true false; do
  run ag_$precompute --training.fsdp_on_one_rank true --float8.enable_fsdp_float8_all_gather true \
    --float8.precompute_float8_dynamic_scale_for_fsdp $precompute
  if $PY bench/gpu_report.py identical "$OUT/run_unsharded/metrics.jsonl" "$OUT/run_ag_$precompute/metrics.jsonl" \
    > "$OUT/same_ag_$precompute.txt" 2>&1; then :; else status=1; fi
  note "FP8 all-gather over one rank (precompute $precompute) vs unsharded float8: $(tail -1 "$OUT/same_ag_$precompute.txt")"
done

speed() {  # name [extra titan flags]
  timeout 90 $TITAN train --config train_configs/debug_model.toml --model.flavor 1B --model.vocab_size 128256 \
    --training.dataset synthetic --training.seq_len 2048 --training.batch_size 4 --training.steps 12 \
    --metrics.log_freq 4 --checkpoint.enable_checkpoint false --validation.enabled false \
    --profiling.enable_profiling false --metrics.enable_tensorboard false --training.fsdp_on_one_rank true \
    "${f8[@]}" --job.dump_folder "$OUT/speed_$1" "${@:2}" > "$OUT/speed_$1.log" 2>&1 || { status=1; tail -5 "$OUT/speed_$1.log"; }
  note "titan 1B one FSDP rank $1: $(grep -E '^step' "$OUT/speed_$1.log" | tail -1)"
}
for round in 1 2; do  # A/B/A/B
  speed float8_$round
  speed float8_all_gather_$round --float8.enable_fsdp_float8_all_gather true \
    --float8.precompute_float8_dynamic_scale_for_fsdp true
done
note "gpu_parallel_check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
