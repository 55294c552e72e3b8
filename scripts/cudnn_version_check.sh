#!/usr/bin/env bash
# Builds cuDNN attention's plans ahead of time for a described H100 (no GPU needed) against a
# cuDNN release taken from PyPI, such as the one a GPU machine loads at run time, which can be
# older than the toolkit's 9.19 headers the cuda preset compiles against.
# Usage: scripts/cudnn_version_check.sh 9.14   (after cmake --build --preset cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: scripts/cudnn_version_check.sh CUDNN_VERSION (for example 9.14)}
[[ $version =~ ^9\.[0-9]+$ ]] || { echo "cudnn_version_check: expected a cuDNN 9 release like 9.14, got '$version'" >&2; exit 2; }
test_bin=build/cuda/tests/test_gpu_cudnn_attention
[ -x $test_bin ] || { echo "cudnn_version_check: $test_bin is missing: build the cuda preset first" >&2; exit 2; }
cuda_major=$(/usr/local/cuda/bin/nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
dir=build/cudnn-$version
lib=$dir/nvidia/cudnn/lib
if [ ! -f $lib/libcudnn.so.9 ]; then
  rm -rf $dir && mkdir -p $dir
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d $dir "nvidia-cudnn-cu$cuda_major==$version.*"
  python3 -m zipfile -e $dir/nvidia_cudnn_*.whl $dir
  rm $dir/nvidia_cudnn_*.whl
fi
# The test prints the version it checked with, so a wrong library on the path cannot pass unnoticed.
out=$(LD_LIBRARY_PATH=$lib $test_bin --gtest_filter='CudnnDeviceless.*' 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E "cuDNN [0-9]+|PASSED|SKIPPED"
if echo "$out" | grep -q "SKIPPED" || ! echo "$out" | grep -q "PASSED"; then
  echo "cudnn_version_check: the deviceless check did not run (see the skip reason above)" >&2
  exit 1
fi
loaded=$(echo "$out" | sed -n 's/.*deviceless check with cuDNN \([0-9]*\).*/\1/p')
want=$(( ${version%%.*} * 10000 + ${version#*.} * 100 ))
if [ $(( loaded / 100 )) -ne $(( want / 100 )) ]; then
  echo "cudnn_version_check: expected cuDNN $version to run the check, it ran with $loaded" >&2
  exit 1
fi
