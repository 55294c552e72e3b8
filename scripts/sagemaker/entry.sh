#!/usr/bin/env bash
# The container's entry point on Amazon SageMaker (bring your own container): starts one titan
# rank per GPU of this host, torchrun-style (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR = the
# first host, MASTER_PORT), from what SageMaker writes under /opt/ml:
#   input/config/resourceconfig.json   the hosts and this host (the source of truth: a
#                                      bring-your-own-container entry gets no SM_* variables)
#   input/config/hyperparameters.json  "config" (the TOML file) and any "section.key" override
#   input/config/inputdataconfig.json  a "train" channel: training.dataset_path is its folder
# Checkpoints go to /opt/ml/checkpoints (synced to S3 per instance: a restarted or spot job
# resumes), TensorBoard to /opt/ml/output/tensorboard, the run's folder to /opt/ml/output/data.
# As PID 1 it forwards SIGTERM to the ranks, which save and stop.
#
# The CPU build (no NCCL) runs one host's ranks under mpirun instead. Environment:
#   SM_ROOT (default /opt/ml), TITAN (default: titan on PATH, else build/cuda or build/cpu),
#   NGPU (ranks on this host; default the GPUs nvidia-smi lists, else SM_NUM_GPUS, else 1),
#   MASTER_PORT (default 29500), TITAN_ENTRY_DRY_RUN=1 prints each rank's environment and
#   command instead of starting it.
set -euo pipefail
root=${SM_ROOT:-/opt/ml}
here="$(cd "$(dirname "$0")/../.." && pwd)"
die() { echo "sagemaker entry: $*" >&2; exit 2; }
command -v python3 >/dev/null || die "python3 is needed to read $root/input/config/*.json (apt-get install python3-minimal)"

if [ -z "${TITAN:-}" ]; then
  TITAN=$(command -v titan || true)
  [ -z "$TITAN" ] && [ -x "$here/build/cuda/titan" ] && TITAN=$here/build/cuda/titan
  [ -z "$TITAN" ] && TITAN=$here/build/cpu/titan
fi
[ -x "$TITAN" ] || die "$TITAN: no titan binary (set TITAN)"

# Everything read from /opt/ml in one place; one line per fact, the flags NUL-free and quoted.
read_config() {
  python3 - "$root" <<'PY'
import json, os, shlex, sys
root = sys.argv[1]
def load(name, default):
    path = os.path.join(root, "input", "config", name)
    if not os.path.exists(path):
        if default is None:
            sys.exit(f"sagemaker entry: {path}: missing (SageMaker writes it; see docs/launch.md)")
        return default
    try:
        return json.load(open(path))
    except (OSError, ValueError) as e:
        sys.exit(f"sagemaker entry: {path}: {e}")
res = load("resourceconfig.json", None)
hosts, current = res.get("hosts"), res.get("current_host")
if not isinstance(hosts, list) or not hosts or current not in hosts:
    sys.exit(f"sagemaker entry: resourceconfig.json: expected \"hosts\" listing \"current_host\", found {res}")
hyper = load("hyperparameters.json", {})
channels = load("inputdataconfig.json", {})
flags = []
config = hyper.pop("config", None)
if config is not None:
    flags += ["--config", str(config)]
if "train" in channels and "training.dataset_path" not in hyper:
    flags += ["--training.dataset_path", os.path.join(root, "input", "data", "train")]
for key, value in hyper.items():
    if key.startswith("sagemaker_") or key.startswith("_"):  # the SDK's own (sagemaker_program, ...)
        continue
    if "." not in key:
        sys.exit(f"sagemaker entry: hyperparameter {key!r}: expected \"config\" or a titan key section.key")
    if isinstance(value, str) and value[:1] and value[0] in "[{\"":  # the SDK may JSON-encode a value
        try:
            value = json.loads(value)
        except ValueError:
            pass  # not JSON after all: titan gets the text
    flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
print(len(hosts), hosts.index(current), hosts[0])
print(" ".join(shlex.quote(f) for f in flags))
PY
}
facts=$(read_config) || exit 2
read -r nhosts host_index master <<<"$(sed -n 1p <<<"$facts")"
user_flags=$(sed -n 2p <<<"$facts")

if [ -z "${NGPU:-}" ]; then
  NGPU=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [ "$NGPU" -gt 0 ] 2>/dev/null || NGPU=${SM_NUM_GPUS:-1}
fi
[[ "$NGPU" =~ ^[1-9][0-9]*$ ]] || die "NGPU=$NGPU: expected a positive integer"
world=$((nhosts * NGPU))
port=${MASTER_PORT:-29500}
eval "flags=($user_flags)"
flags+=(--checkpoint.enable_checkpoint --checkpoint.folder "$root/checkpoints"
        --metrics.enable_tensorboard --metrics.save_tb_folder "$root/output/tensorboard"
        --job.dump_folder "$root/output/data")
cpu_build=0
"$TITAN" --version 2>/dev/null | grep -q "cpu build" && cpu_build=1

if [ "$cpu_build" -eq 1 ]; then
  # NCCL is what starts ranks torchrun-style; the CPU build's ranks meet through MPI, one host.
  [ "$nhosts" -eq 1 ] || die "the CPU build runs on one host (mpirun); $nhosts hosts need the CUDA build"
  cmd=("$TITAN" train "${flags[@]}")
  [ "$NGPU" -gt 1 ] && cmd=(mpirun --allow-run-as-root --oversubscribe -np "$NGPU" -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "${cmd[@]}")
  if [ "${TITAN_ENTRY_DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
  "${cmd[@]}" &
  pids=($!)
else
  pids=()
  for ((local = 0; local < NGPU; local++)); do
    env_vars=(RANK=$((host_index * NGPU + local)) WORLD_SIZE=$world LOCAL_RANK=$local LOCAL_WORLD_SIZE=$NGPU
              MASTER_ADDR=$master MASTER_PORT=$port)
    if [ "${TITAN_ENTRY_DRY_RUN:-0}" = 1 ]; then
      printf '%s ' "${env_vars[@]}"; printf '%q ' "$TITAN" train "${flags[@]}"; echo
      continue
    fi
    env "${env_vars[@]}" "$TITAN" train "${flags[@]}" &
    pids+=($!)
  done
  [ "${TITAN_ENTRY_DRY_RUN:-0}" = 1 ] && exit 0
fi

# PID 1 forwards the stop SageMaker sends (spot reclaim, StopTrainingJob) so the ranks save:
# to the titan processes themselves (under mpirun, its children: mpirun itself would end the job
# as failed rather than let the ranks finish their save).
forward_stop() {
  local targets=("${pids[@]}")
  if [ "$cpu_build" -eq 1 ] && [ "$NGPU" -gt 1 ]; then
    mapfile -t targets < <(pgrep -P "${pids[0]}" || true)
    [ "${#targets[@]}" -gt 0 ] || targets=("${pids[@]}")
  fi
  kill -TERM "${targets[@]}" 2>/dev/null || true
}
trap forward_stop TERM INT
status=0
for pid in "${pids[@]}"; do
  while true; do
    set +e
    wait "$pid"
    rc=$?
    set -e
    # A trapped signal interrupts wait (status > 128) while the rank is still saving: wait again.
    if [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  [ "$rc" -ne 0 ] && status=$rc
done
exit "$status"
