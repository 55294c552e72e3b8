# Sourced by the GPU machine's scripts (gpu_check.sh, gpu_profile.sh) from the repository root:
# where the bundle's binaries are (scripts/gpu_bundle.sh) and the libraries they load that the
# bundle leaves out: cuBLASLt, and what titan loads only on demand (NCCL for FSDP; cuDNN and the
# NVRTC its runtime-compiled engines need, for TITAN_ATTENTION_IMPL=cudnn), from the machine's
# CUDA, else from PyTorch's nvidia-* wheels.
GPU=build/gpu
PY=${PYTHON:-python3}
wheel_libs() {
  $PY -c "import glob, os, nvidia; print(':'.join(sorted({d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, '*', 'lib'))})))" \
    2>/dev/null || true
}
export LD_LIBRARY_PATH="$PWD/$GPU/lib:/usr/local/cuda/lib64:$(wheel_libs):${LD_LIBRARY_PATH:-}"
TITAN=$GPU/bin/titan
