#!/usr/bin/env bash
# Builds the CPU preset and runs every test (unit, oracle, integration; gpu tests where a GPU is).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh --test
scripts/build_default_corpus.sh
# transformers (to load titan's Hugging Face export) pins an older tokenizers: its own venv.
if [[ ! -x build/venv-hf/bin/python ]]; then
  /usr/bin/python3 -m venv --system-site-packages build/venv-hf
fi
# 4.43 is the first to know Llama 3.1's rope_type "llama3" (and still runs on Debian's torch 1.13).
build/venv-hf/bin/python -c "import transformers, sys; sys.exit(transformers.__version__ != '4.43.4')" 2>/dev/null ||
  build/venv-hf/bin/pip install -q "transformers==4.43.4"
# PyPI packages for the reference tokenizers, in a venv that also sees Debian's torch.
if [[ ! -x build/venv/bin/python ]]; then
  mkdir -p build
  /usr/bin/python3 -m venv --system-site-packages build/venv
fi
build/venv/bin/python -c "import tiktoken, tokenizers, tensorboard, safetensors, xxhash, ml_dtypes" 2>/dev/null ||
  build/venv/bin/pip install -q "tiktoken==0.14.0" "tokenizers==0.23.3" "tensorboard==2.21.0" "safetensors==0.8.0" "xxhash==3.5.0" \
    "ml_dtypes==0.5.1"
# The SageMaker SDK (v3, pinned) for scripts/sagemaker/launch.py's dry run, in its own venv.
if [[ ! -x build/venv-sagemaker/bin/python ]]; then
  /usr/bin/python3 -m venv build/venv-sagemaker
fi
build/venv-sagemaker/bin/python -c "import sagemaker, sys; sys.exit(sagemaker.__version__ != '3.27.0')" 2>/dev/null ||
  build/venv-sagemaker/bin/pip install -q "sagemaker==3.27.0"
cmake --preset cpu >/dev/null
cmake --build --preset cpu
ctest --preset cpu "$@"
