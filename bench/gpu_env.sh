# Sourced by the GPU machine's scripts (gpu_check.sh, gpu_profile.sh) from the repository root:
# where the bundle's binaries are (scripts/gpu_bundle.sh) and the libraries they load that the
# bundle leaves out: cuBLASLt and NCCL (titan loads NCCL only for FSDP) from the machine's CUDA,
# else from PyTorch's wheels of them.
GPU=build/gpu
PY=${PYTHON:-python3}
wheel_lib() { $PY -c "import nvidia.$1, os; print(os.path.join(list(nvidia.$1.__path__)[0], 'lib'))" 2>/dev/null || true; }
export LD_LIBRARY_PATH="$PWD/$GPU/lib:/usr/local/cuda/lib64:$(wheel_lib cublas):$(wheel_lib nccl):${LD_LIBRARY_PATH:-}"
TITAN=$GPU/bin/titan
