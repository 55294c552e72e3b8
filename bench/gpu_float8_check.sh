#!/usr/bin/env bash
# Float8 on a card (issue 21's GPU part), one call of about 7 minutes with prebuilt binaries
# (scripts/gpu_bundle.sh packs the torchao wheel too): gpu.float8_cuda (casts bit for bit,
# each recipe's linear against the CPU emulation, 20-step model parity); the debug model's GPU
# float8 losses against the CPU's emulated ones per recipe (bound 0.02); then speed, 1B
# (2048 x 4) and the 8B layer shape (4096 x 2, 4 layers), titan bf16 / tensorwise / rowwise /
# rowwise_with_gw_hp beside torch.compile and torch.compile + torchao float8 (filter_fqns
# ["output"] everywhere), and 150M bf16 against tensorwise. Convergence (1,000 steps) needs its
# own call. Needs training.cuda_model = "model" (the one model: the legacy GPU model has no FP8).
#   tar xzf build/gpu_bundle/bundle.tar.gz && bash bench/gpu_float8_check.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_float8_out}}
mkdir -p "$OUT"
. bench/gpu_env.sh  # GPU, PY, TITAN, LD_LIBRARY_PATH
status=0
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
export TITAN_GPU_TESTS_MUST_RUN=1

if timeout 150 $GPU/bin/test_gpu_float8_cuda > "$OUT/test_float8_cuda.log" 2>&1; then note "gpu.float8_cuda: PASS"
else status=1; note "gpu.float8_cuda: FAIL"; tail -30 "$OUT/test_float8_cuda.log"; fi

f8=(--float8.enable_float8_linear --float8.filter_fqns output --training.cuda_model model)
common=(--config train_configs/debug_model.toml --training.steps 20 --metrics.log_freq 1
        --checkpoint.enable_checkpoint false --validation.enabled false --profiling.enable_profiling false
        --metrics.enable_tensorboard false)
for recipe in tensorwise rowwise rowwise_with_gw_hp; do
  for device in cpu cuda; do
    timeout 120 $TITAN train "${common[@]}" "${f8[@]}" --float8.recipe_name $recipe --training.device $device \
      --job.dump_folder "$OUT/parity_${recipe}_$device" > "$OUT/parity_${recipe}_$device.log" 2>&1 ||
      { status=1; tail -5 "$OUT/parity_${recipe}_$device.log"; }
  done
  $PY bench/gpu_report.py close "$OUT"/parity_${recipe}_{cpu,cuda}/metrics.jsonl --tol 0.02 > "$OUT/parity_$recipe.txt" 2>&1 || status=1
  note "float8 $recipe, GPU vs CPU emulation, debug model 20 steps: $(tail -1 "$OUT/parity_$recipe.txt")"
done

tao=$(ls build/gpu/torchao-*.whl 2>/dev/null | head -1)
if [ -n "$tao" ]; then $PY -m zipfile -e "$tao" "$OUT/torchao" > /dev/null 2>&1; fi
speed() {  # name flavor seq batch [extra titan flags]
  timeout 120 $TITAN train --config train_configs/debug_model.toml --model.flavor $2 --model.vocab_size 128256 \
    --training.dataset synthetic --training.seq_len $3 --training.batch_size $4 --training.steps 15 \
    --metrics.log_freq 5 --checkpoint.enable_checkpoint false --validation.enabled false \
    --profiling.enable_profiling false --metrics.enable_tensorboard false --training.device cuda \
    --training.compile true --training.cuda_model model --job.dump_folder "$OUT/speed_$1" "${@:5}" \
    > "$OUT/speed_$1.log" 2>&1 || { status=1; tail -5 "$OUT/speed_$1.log"; }
  note "titan $1: $(grep -E '^step' "$OUT/speed_$1.log" | tail -1)"
}
anchor() {  # name model seq batch
  timeout 200 env PYTHONPATH="$OUT/torchao:${PYTHONPATH:-}" TORCHAO_FORCE_SKIP_LOADING_SO_FILES=1 \
    $PY $GPU/torch_anchor.py --model $2 --seq $3 --batch $4 --steps 10 --warmup 3 --variants compile,compile_fp8 \
    --out "$OUT/anchor_$1.json" > "$OUT/anchor_$1.log" 2>&1 || { status=1; tail -5 "$OUT/anchor_$1.log"; }
  note "torch $1: $(tail -2 "$OUT/anchor_$1.log" | tr '\n' ' ')"
}
for shape in "1B llama3_1b 2048 4" "8B_4layers llama3_8b_4l 4096 2"; do
  set -- $shape
  speed ${1}_bf16 $1 $3 $4
  for recipe in tensorwise rowwise rowwise_with_gw_hp; do
    speed ${1}_$recipe $1 $3 $4 "${f8[@]}" --float8.recipe_name $recipe
  done
  speed ${1}_phases_tensorwise $1 $3 $4 "${f8[@]}" --profiling.phase_times true
  anchor $1 $2 $3 $4
done
speed 150M_bf16 150M 2048 16
speed 150M_tensorwise 150M 2048 16 "${f8[@]}"
note "gpu_float8_check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
