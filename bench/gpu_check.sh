#!/usr/bin/env bash
# The GPU machine's check, with prebuilt binaries (scripts/gpu_bundle.sh; nothing is built
# there): the gpu tests, the 20-step CPU fp32 vs GPU bf16 parity run (plus a GPU rerun that
# must be bit-identical), a short benchmark of the four shapes beside PyTorch
# (../shared/bench/torch_anchor.py), titan's attention against cuDNN's on real text, and
# deterministic reruns. Prints a short table last; logs go to OUT_DIR.
#   tar xzf build/gpu_bundle/bundle.tar.gz && bash bench/gpu_check.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT"
. bench/gpu_env.sh  # GPU, PY, TITAN, LD_LIBRARY_PATH
status=0
summary=()
note() { summary+=("$1"); echo "== $1"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$OUT/device.txt"

# Every skip fails here, with its own reason (no GPU, no cuDNN, ...): tests/gpu/gpu_test_main.cpp
# prints "skipped SUITE.NAME: why" and exits 1 under TITAN_GPU_TESTS_MUST_RUN.
export TITAN_GPU_TESTS_MUST_RUN=1
gpu_test() {  # label log binary args...
  local label=$1 log=$2
  shift 2
  if timeout 100 "$@" > "$OUT/$log" 2>&1; then note "$label: PASS"
  elif grep -q "TITAN_GPU_TESTS_MUST_RUN" "$OUT/$log"; then
    status=1; note "$label: SKIPPED, a failure here: $(grep "^  skipped " "$OUT/$log" | head -3 | sed 's/^  skipped //' | tr '\n' ';')"
  else status=1; note "$label: FAIL (see $log)"; tail -30 "$OUT/$log"; fi
}
# (CudnnDeviceless is for machines without a GPU, where CI runs it: left out here.)
for t in cast kernels cudnn_attention cuda_model one_model_cuda fsdp; do
  gpu_test "gpu.$t" "test_$t.log" $GPU/bin/test_gpu_$t "--gtest_filter=-CudnnDeviceless.*"
done

common=(--config train_configs/debug_model.toml --training.steps 20 --metrics.log_freq 1
        --checkpoint.enable_checkpoint false --validation.enabled false --profiling.enable_profiling false
        --metrics.enable_tensorboard false)
# name:device:compile
for run in cpu:cpu:false gpu:cuda:false rerun:cuda:false compile:cuda:true compile_rerun:cuda:true; do
  IFS=: read -r name device compile <<< "$run"
  timeout 90 $TITAN train "${common[@]}" --training.device $device --training.compile $compile \
    --job.dump_folder "$OUT/parity_$name" > "$OUT/parity_$name.log" 2>&1 || { status=1; tail -5 "$OUT/parity_$name.log"; }
done
# FSDP through NCCL over one rank: every sharded path on this card, the plain GPU run's losses bit for bit.
timeout 90 $TITAN train "${common[@]}" --training.device cuda --training.compile false --training.fsdp_on_one_rank true \
  --job.dump_folder "$OUT/parity_fsdp" > "$OUT/parity_fsdp.log" 2>&1 || { status=1; tail -5 "$OUT/parity_fsdp.log"; }
if $PY bench/gpu_report.py identical "$OUT"/parity_{gpu,fsdp}/metrics.jsonl > "$OUT/fsdp.txt" 2>&1; then :; else status=1; fi
note "fsdp over one NCCL rank vs plain GPU: $(tail -1 "$OUT/fsdp.txt")"
: > "$OUT/parity.txt"
for pair in "gpu rerun" "compile compile_rerun"; do
  set -- $pair
  echo "# CPU fp32 vs GPU bf16, training.compile = $([ $1 = gpu ] && echo false || echo true)" >> "$OUT/parity.txt"
  if $PY bench/gpu_report.py parity "$OUT"/parity_{cpu,$1,$2}/metrics.jsonl > "$OUT/parity_$1.txt" 2>&1; then :; else status=1; fi
  cat "$OUT/parity_$1.txt" >> "$OUT/parity.txt"
  note "compile=$([ $1 = gpu ] && echo false || echo true): $(tail -1 "$OUT/parity_$1.txt")"
done
cat "$OUT/parity.txt"

bench() {  # name flavor vocab seq batch anchor_model [extra titan flags]
  timeout 120 env ${BENCH_ENV:-} $TITAN train --config train_configs/debug_model.toml --model.flavor $2 --model.vocab_size $3 \
    --training.dataset synthetic --training.seq_len $4 --training.batch_size $5 --training.steps 15 \
    --metrics.log_freq 5 --checkpoint.enable_checkpoint false --validation.enabled false \
    --profiling.enable_profiling false --metrics.enable_tensorboard false --training.device cuda \
    --job.dump_folder "$OUT/bench_$1" "${@:7}" > "$OUT/bench_$1.log" 2>&1 || { status=1; tail -5 "$OUT/bench_$1.log"; }
  # What titan estimate predicts for the same run (the allocator's peak is in the memory line).
  env ${BENCH_ENV:-} $TITAN estimate --config train_configs/debug_model.toml --model.flavor $2 --model.vocab_size $3 \
    --training.seq_len $4 --training.batch_size $5 --device cuda "${@:7}" 2>&1 | tail -1 | sed 's/^/estimate: /' >> "$OUT/bench_$1.log"
  echo "== titan $1: $(grep -E "^step" "$OUT/bench_$1.log" | tail -1)"
  grep -A9 "^gpu phases" "$OUT/bench_$1.log"
  if [ -n "${SKIP_TORCH:-}" ]; then return; fi
  timeout 150 $PY $GPU/torch_anchor.py --model $6 --seq $4 --batch $5 --steps 10 --warmup 3 --variants ${TORCH_VARIANTS:-compile} \
    --out "$OUT/anchor_$1.json" > "$OUT/anchor_$1.log" 2>&1 || { status=1; tail -5 "$OUT/anchor_$1.log"; }
  echo "== torch $1: $(tail -1 "$OUT/anchor_$1.log")"
}
# titan with training.compile (fused kernels + CUDA graph) against torch.compile, shape for shape.
# Attention is the default, auto: cuDNN's fused attention for head_dim 64/128 (150M, 1B, 8B),
# titan's kernels for the debug model's head_dim 16.
bench debugmodel_2048x8 debugmodel 2048 2048 8 debugmodel --training.compile true
bench 150M_2048x16 150M 128256 2048 16 llama3_150m --training.compile true
bench 1B_2048x4 1B 128256 2048 4 llama3_1b --training.compile true
bench 8B_4layers_4096x2 8B_4layers 128256 4096 2 llama3_8b_4l --training.compile true

# training.deterministic = true keeps titan's attention kernels: two runs on a shape cuDNN would
# take give the same losses and grad norms bit for bit.
for r in det det_rerun; do
  SKIP_TORCH=1 bench ${r}_150M_2048x16 150M 128256 2048 16 - --training.compile true --training.deterministic true
done
$PY bench/gpu_report.py identical "$OUT"/bench_{det,det_rerun}_150M_2048x16/metrics.jsonl > "$OUT/det.txt" 2>&1 || status=1
note "training.deterministic reruns, 150M: $(tail -1 "$OUT/det.txt")"

# cuDNN's attention against titan's on real text (c4_test, 20 steps at lr 3e-4): the losses stay
# within the parity bound; and cuDNN against itself, whose backward is not bit-reproducible.
real_text() {  # name flavor seq batch [extra titan flags]
  timeout 90 $TITAN train --config train_configs/debug_model.toml --model.flavor $2 --training.seq_len $3 \
    --training.batch_size $4 --training.steps 20 --optimizer.lr 3e-4 --training.warmup_steps 5 --metrics.log_freq 1 \
    --checkpoint.enable_checkpoint false --validation.enabled false --profiling.enable_profiling false \
    --metrics.enable_tensorboard false --training.device cuda --training.compile true \
    --job.dump_folder "$OUT/text_$1" "${@:5}" > "$OUT/text_$1.log" 2>&1 || { status=1; tail -5 "$OUT/text_$1.log"; }
}
for shape in "1B 2048 4" "8B_4layers 4096 2"; do
  set -- $shape
  real_text cudnn_$1 $1 $2 $3
  real_text titan_$1 $1 $2 $3 --training.deterministic true
  $PY bench/gpu_report.py close "$OUT"/text_{titan,cudnn}_$1/metrics.jsonl > "$OUT/close_$1.txt" 2>&1 || status=1
  note "cudnn vs titan attention on c4_test, $1: $(tail -1 "$OUT/close_$1.txt")"
done
real_text cudnn_rerun_1B 1B 2048 4
$PY bench/gpu_report.py close "$OUT"/text_cudnn{,_rerun}_1B/metrics.jsonl > "$OUT/close_cudnn_rerun_1B.txt" 2>&1 || status=1
note "cudnn vs cudnn rerun on c4_test, 1B: $(tail -1 "$OUT/close_cudnn_rerun_1B.txt")"

# Without the graph: compile = false on the debug model, and the 1B phase table (device events
# need the eager path), with cuDNN's attention and with titan's.
SKIP_TORCH=1 bench eager_debugmodel_2048x8 debugmodel 2048 2048 8 - --training.compile false
SKIP_TORCH=1 bench phases_1B_2048x4 1B 128256 2048 4 - --training.compile true --profiling.phase_times true
SKIP_TORCH=1 bench phases_det_1B_2048x4 1B 128256 2048 4 - --training.compile true --profiling.phase_times true \
  --training.deterministic true

$PY bench/gpu_report.py table "$OUT" > "$OUT/table.txt" 2>&1
# One report file with everything worth reading (the device tool returns few files).
{
  echo "# titan gpu_check, $(date -u +%Y-%m-%dT%H:%MZ)"; cat "$OUT/device.txt"
  for t in cast kernels cudnn_attention cuda_model one_model_cuda fsdp; do echo "## gpu.$t"; grep -vE "^\[ +(RUN|OK) +\]" "$OUT/test_$t.log" | tail -60; done
  for p in cpu gpu rerun compile compile_rerun fsdp; do echo "## parity_$p.log"; grep -E "^(device|step +(1|20) |titan: error)|rror" "$OUT/parity_$p.log" | tail -4; done
  for t in "$OUT"/text_*.log; do echo "## $(basename $t)"; grep -E "^(device|step +(1|5|10|15|20) )|rror" "$t" | tail -7; done
  for c in "$OUT"/close_*.txt "$OUT/det.txt"; do echo "## $(basename $c)"; cat "$c"; done
  echo "## parity"; cat "$OUT/parity.txt"
  for b in "$OUT"/bench_*.log; do echo "## $(basename $b)"; grep -E "^(step|device|memory|parameters|gpu phases|  [a-z])|rror" "$b" | grep -v " = " | tail -18
    grep "^estimate: " "$b"; done
  for a in "$OUT"/anchor_*.log; do [ -f "$a" ] && { echo "## $(basename $a)"; tail -6 "$a"; }; done
  echo "## summary"; for s in "${summary[@]}"; do echo "$s"; done
  cat "$OUT/table.txt"
  echo "gpu_check: $([ $status = 0 ] && echo PASS || echo FAIL)"
} > "$OUT/report.txt"
tail -25 "$OUT/report.txt"
exit $status
