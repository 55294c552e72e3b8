#!/usr/bin/env bash
# Builds the built-in default corpus (dataset "c4_test") from Debian's packaged Python
# documentation: one JSON line {"text": ...} per .rst source file, every 25th file held apart
# for validation. Output: data/c4_test/{train,validation}.jsonl. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/c4_test
src=/usr/share/doc/python3.11/html/_sources
[[ -s $out/train.jsonl && -s $out/validation.jsonl ]] && exit 0

if [[ ! -d $src ]]; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing python3.11-doc (the default corpus)"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3.11-doc >/dev/null ||
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3.11-doc >/dev/null; }
fi

mkdir -p "$out"
python3 - "$src" "$out" <<'PY'
import json, os, sys
src, out = sys.argv[1], sys.argv[2]
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith(".txt"))
with open(os.path.join(out, "train.jsonl.tmp"), "w") as train, open(os.path.join(out, "validation.jsonl.tmp"), "w") as val:
    for i, path in enumerate(files):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if text.strip():
            (val if i % 25 == 24 else train).write(json.dumps({"text": text, "source": os.path.relpath(path, src)}) + "\n")
for name in ("train", "validation"):
    os.replace(os.path.join(out, f"{name}.jsonl.tmp"), os.path.join(out, f"{name}.jsonl"))
print(f"default corpus: {len(files)} files from {src} -> {out}")
PY
