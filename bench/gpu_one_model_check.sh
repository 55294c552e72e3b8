#!/usr/bin/env bash
# The one model's checks on a card (issue 19 built it; the GPU-switch issue needs these to pass
# before it becomes the default), in one call of about 6 minutes, with prebuilt binaries
# (scripts/gpu_bundle.sh): the kernel and one-model gpu tests; the debug model on the one model
# against the legacy CudaTransformer under training.deterministic (bit for bit, eager and
# graphs); every activation-checkpointing mode against none on the GPU (bit for bit); FSDP over
# one NCCL rank against the plain run; and 1B old/new/old/new for speed and peak memory.
#   tar xzf build/gpu_bundle/bundle.tar.gz && bash bench/gpu_one_model_check.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_one_model_out}}
mkdir -p "$OUT"
. bench/gpu_env.sh  # GPU, PY, TITAN, LD_LIBRARY_PATH
status=0
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
export TITAN_GPU_TESTS_MUST_RUN=1  # a skipped GPU test is a failure here

for t in kernels one_model_cuda cuda_model; do
  if timeout 150 $GPU/bin/test_gpu_$t "--gtest_filter=-CudnnDeviceless.*" > "$OUT/test_$t.log" 2>&1; then
    note "gpu.$t: PASS"
  else
    status=1; note "gpu.$t: FAIL"; tail -30 "$OUT/test_$t.log"
  fi
done

common=(--config train_configs/debug_model.toml --training.steps 20 --metrics.log_freq 1 --training.device cuda
        --checkpoint.enable_checkpoint false --validation.enabled false --profiling.enable_profiling false
        --metrics.enable_tensorboard false --training.deterministic true)
run() {  # name [extra titan flags]
  timeout 90 $TITAN train "${common[@]}" --job.dump_folder "$OUT/run_$1" "${@:2}" > "$OUT/run_$1.log" 2>&1 ||
    { status=1; tail -5 "$OUT/run_$1.log"; }
}
same() {  # label a b
  if $PY bench/gpu_report.py identical "$OUT/run_$2/metrics.jsonl" "$OUT/run_$3/metrics.jsonl" > "$OUT/same_$2_$3.txt" 2>&1; then :
  else status=1; fi
  note "$1: $(tail -1 "$OUT/same_$2_$3.txt")"
}
for compile in false true; do
  run legacy_$compile --training.compile $compile --training.cuda_model legacy
  run model_$compile --training.compile $compile --training.cuda_model model
  same "one model = legacy, debug model, deterministic, compile $compile" legacy_$compile model_$compile
done
for ac in "full" "selective 2" "selective op"; do
  set -- $ac
  name=ac_$1_${2:-}
  run $name --training.compile true --training.cuda_model model --activation_checkpoint.mode $1 \
    ${2:+--activation_checkpoint.selective_ac_option $2}
  same "activation checkpointing $ac = none on the GPU" model_true $name
done
run fsdp_one_rank --training.compile false --training.cuda_model model --training.fsdp_on_one_rank true
same "one model, FSDP over one NCCL rank = plain" model_false fsdp_one_rank

# Speed and memory, 1B at 2048 x 4, old and new interleaved (A/B/A/B); the memory line and the
# estimate for each path are in the logs.
for round in 1 2; do
  for path in legacy model; do
    timeout 120 $TITAN train --config train_configs/debug_model.toml --model.flavor 1B --model.vocab_size 128256 \
      --training.dataset synthetic --training.seq_len 2048 --training.batch_size 4 --training.steps 15 \
      --metrics.log_freq 5 --checkpoint.enable_checkpoint false --validation.enabled false \
      --profiling.enable_profiling false --metrics.enable_tensorboard false --training.device cuda \
      --training.compile true --training.cuda_model $path --job.dump_folder "$OUT/speed_${path}_$round" \
      > "$OUT/speed_${path}_$round.log" 2>&1 || { status=1; tail -5 "$OUT/speed_${path}_$round.log"; }
    $TITAN estimate --config train_configs/debug_model.toml --model.flavor 1B --model.vocab_size 128256 \
      --training.seq_len 2048 --training.batch_size 4 --device cuda --training.cuda_model $path 2>&1 | tail -1 |
      sed 's/^/estimate: /' >> "$OUT/speed_${path}_$round.log"
    note "1B 2048x4 $path round $round: $(grep -E '^step' "$OUT/speed_${path}_$round.log" | tail -1)"
  done
done
note "gpu_one_model_check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
