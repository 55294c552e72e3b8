#!/usr/bin/env bash
# Checkpoint save throughput beside the disk's own write speed (dd conv=fdatasync), same folder,
# alternating so each save has a disk measurement next to it (this machine's disk speed moves a
# lot); then async's stall. Usage: bench/checkpoint_bench.sh [DIR] [GiB (default 4)] [rounds (3)]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/titan_ckpt_bench}
gib=${2:-4}
rounds=${3:-3}
mkdir -p "$dir"
bin=build/cpu/bench/checkpoint_save_bench
[[ -x $bin ]] || { echo "build first: cmake --build --preset cpu" >&2; exit 2; }
count=$(python3 -c "print(int($gib * 16))")  # 64 MiB blocks
dd_gibs() {
  local secs
  secs=$(dd if=/dev/zero of="$dir/dd.bin" bs=64M count="$count" conv=fdatasync 2>&1 | tail -1 | sed -E 's/.* copied, ([0-9.]+) s.*/\1/')
  rm -f "$dir/dd.bin"
  python3 -c "print($gib / $secs)"
}
for r in $(seq "$rounds"); do
  before=$(dd_gibs)
  titan=$($bin "$dir/ckpt" "$gib" sync | python3 -c "import json,sys; print(json.load(sys.stdin)['sync_gib_s'])")
  after=$(dd_gibs)
  python3 -c "b, t, a = $before, $titan, $after; print(f'round $r: dd {b:.2f} GiB/s, titan save {t:.2f} GiB/s, dd {a:.2f} GiB/s: titan / mean(dd) = {t / ((a + b) / 2):.2f}')"
done
echo "async: $($bin "$dir/ckpt" "$gib")"
