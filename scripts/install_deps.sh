#!/usr/bin/env bash
# Installs what titan needs from Debian's packages; quiet and quick when all is there.
#   scripts/install_deps.sh         build and run (compiler, CMake, OpenBLAS, toml++)
#   scripts/install_deps.sh --test  also what the tests need (GoogleTest, PyTorch on CPU)
#   scripts/install_deps.sh --plot  also matplotlib, for scripts/plot_metrics.py
set -euo pipefail

packages=(python3 g++ cmake ninja-build ccache pkg-config libopenblas-dev libopenblas0-pthread libtomlplusplus-dev
  libpcre2-dev nlohmann-json3-dev zlib1g-dev libzstd-dev libprotobuf-dev protobuf-compiler libxxhash-dev
  openmpi-bin libopenmpi-dev)
if [[ "${1:-}" == "--test" ]]; then
  # python3-torch is the CPU oracle; libopenblas0-pthread keeps it off the slow reference BLAS.
  packages+=(libgtest-dev python3 python3-torch python3-numpy python3-venv python3-matplotlib)
elif [[ "${1:-}" == "--plot" ]]; then
  packages+=(python3-matplotlib)
elif [[ -n "${1:-}" ]]; then
  echo "install_deps.sh: unknown option '$1' (expected --test, --plot or nothing)" >&2
  exit 2
fi

# Debian 12, or Ubuntu 24.04 (NVIDIA's CUDA 13 images, docker/Dockerfile): the same package
# names, with toml++ and PyTorch from Ubuntu's universe component.
distro=$(. /etc/os-release 2>/dev/null && echo "${ID:-unknown} ${VERSION_ID:-}")
case "$distro" in
  debian*|ubuntu*) ;;
  *) echo "install_deps.sh: $distro: titan installs from Debian 12's or Ubuntu 24.04's packages (apt)" >&2; exit 2 ;;
esac
if [[ "$distro" == ubuntu* ]] && ! grep -rqs "universe" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "install_deps.sh: Ubuntu without its universe component (libtomlplusplus-dev lives there): enable it" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
