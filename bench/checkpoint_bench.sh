#!/usr/bin/env bash
# Checkpoint save throughput beside the disk's own write speed, same run, same folder.
# Usage: bench/checkpoint_bench.sh [DIR (default /tmp/titan_ckpt_bench)] [GiB (default 4)]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/titan_ckpt_bench}
gib=${2:-4}
mkdir -p "$dir"
bin=build/cpu/bench/checkpoint_save_bench
[[ -x $bin ]] || { echo "build first: cmake --build --preset cpu" >&2; exit 2; }
count=$(python3 -c "print(int($gib * 16))")  # 64 MiB blocks
dd_out=$(dd if=/dev/zero of="$dir/dd.bin" bs=64M count="$count" conv=fdatasync 2>&1 | tail -1)
rm -f "$dir/dd.bin"
echo "disk (dd, ${gib} GiB, conv=fdatasync): $dd_out"
echo "titan: $($bin "$dir/ckpt" "$gib")"
