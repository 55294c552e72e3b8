#!/usr/bin/env bash
# torchtitan's run_train.sh for titan: NGPU ranks (under mpirun when more than one),
# CONFIG_FILE, and any extra --section.key value overrides.
#   NGPU=4 CONFIG_FILE=train_configs/debug_model.toml scripts/run_train.sh --training.steps 50
# Ranks shard the model (FSDP) by default; with the CUDA build (TITAN=build/cuda/titan, the
# default when it exists) each rank uses the GPU of its local rank, over NCCL (multi-GPU runs
# are not yet verified on a machine with several GPUs: docs/distributed.md).
# It runs where it is started: relative paths (the config, its dump_folder and data paths) are the
# caller's, as titan's own are (docs/config.md).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
NGPU=${NGPU:-1}
CONFIG_FILE=${CONFIG_FILE:-$repo/train_configs/debug_model.toml}
if [ -z "${TITAN:-}" ]; then
  TITAN=$repo/build/cpu/titan
  [ -x "$repo/build/cuda/titan" ] && TITAN=$repo/build/cuda/titan
fi
[[ "$NGPU" =~ ^[1-9][0-9]*$ ]] || { echo "run_train.sh: NGPU=$NGPU: expected a positive integer" >&2; exit 2; }
[ -x "$TITAN" ] || { echo "run_train.sh: $TITAN not built (cmake --preset cpu && cmake --build --preset cpu)" >&2; exit 2; }
if [ "$NGPU" -eq 1 ]; then
  exec "$TITAN" train --config "$CONFIG_FILE" "$@"
fi
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
# One OpenMP thread per rank unless asked otherwise: ranks share the machine's cores.
exec mpirun "${root[@]}" --oversubscribe -np "$NGPU" -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ${MPIRUN_ARGS:-} \
  "$TITAN" train --config "$CONFIG_FILE" "$@"
