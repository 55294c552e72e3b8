#!/usr/bin/env bash
# Packs what bench/gpu_check.sh needs on the GPU machine, which builds nothing and lacks
# Debian's libraries: the cuda preset's binaries, the shared libraries they load (except the
# C/C++ runtime and cuBLASLt, which that machine has), the default corpus and the PyTorch peer.
# Output: build/gpu_bundle/bundle.tar.gz, to be unpacked in the repository root there.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build/cuda
[ -x $BUILD/titan ] || { echo "gpu_bundle: build the cuda preset first (cmake --build --preset cuda)" >&2; exit 2; }
[ -f data/c4_test/train.jsonl ] || scripts/build_default_corpus.sh
STAGE=build/gpu_stage
rm -rf $STAGE build/gpu_bundle && mkdir -p $STAGE/build/gpu/bin $STAGE/build/gpu/lib $STAGE/data build/gpu_bundle
cp $BUILD/titan $BUILD/tests/test_gpu_* $STAGE/build/gpu/bin/
cp ../shared/bench/torch_anchor.py $STAGE/build/gpu/
# torchao for the FP8 peer (torch_anchor.py --variants compile_fp8; bench/gpu_float8_check.sh).
cp ../shared/bench/wheels/torchao-*.whl $STAGE/build/gpu/ 2>/dev/null || true
for lib in $(ldd $BUILD/titan $BUILD/tests/test_gpu_* | awk '/=> \//{print $3}' | sort -u); do
  case $(basename $lib) in
    libc.so*|libm.so*|libstdc++*|libgcc_s*|librt*|libpthread*|libdl*|ld-linux*|libcublas*|libcuda*) ;;
    *) cp -L $lib $STAGE/build/gpu/lib/ ;;
  esac
done
cp -r data/c4_test $STAGE/data/
tar -C $STAGE -czf build/gpu_bundle/bundle.tar.gz .
rm -rf $STAGE
ls -la build/gpu_bundle/bundle.tar.gz
