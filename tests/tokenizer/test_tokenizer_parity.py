"""titan's tokenizers against the reference implementations, id for id.

- tiktoken format: PyPI tiktoken's encode_ordinary with llama3.tiktoken and Llama 3's pattern.
- tokenizer.json: PyPI tokenizers with llama3_tokenizer.json.
Over >= 1 MB of the corpus (several sources) plus hand-made hard strings, through the
`titan tokenizer encode` command; decode must give the text back.
"""
import argparse
import gzip
import json
import os
import subprocess
import sys

import tiktoken
import tokenizers
from tiktoken.load import load_tiktoken_bpe

from hard_strings import HARD

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus(data, min_bytes):
    texts, size = [], 0
    with gzip.open(os.path.join(data, "corpus/train-00000-of-00008.json.gz"), "rt") as f:
        for line in f:
            t = json.loads(line)["text"]
            texts.append(t)
            size += len(t.encode())
            if size >= min_bytes:
                break
    return texts, size


def titan(binary, cmd, tokenizer, records):
    inp = "".join(json.dumps(r) + "\n" for r in records)
    r = subprocess.run([binary, "tokenizer", cmd, "--tokenizer", tokenizer], input=inp,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"titan tokenizer {cmd} failed: {r.stderr.strip()}")
    return [json.loads(line) for line in r.stdout.splitlines()]


def compare(name, texts, got, want):
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    if len(got) != len(want):
        print(f"FAIL {name}: {len(got)} outputs for {len(want)} inputs")
        return False
    if bad:
        i = bad[0]
        print(f"FAIL {name}: {len(bad)} of {len(texts)} texts differ; first: {texts[i][:80]!r}")
        print(f"     titan {got[i][:20]}\n     ref   {want[i][:20]}")
        return False
    print(f"ok   {name}: {len(texts)} texts identical ({sum(map(len, want))} items)")
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--min-bytes", type=int, default=1_100_000)
    a = ap.parse_args()
    missing = [p for p in ("tokenizers/llama3.tiktoken", "tokenizers/llama3_tokenizer.json", "corpus")
               if not os.path.exists(os.path.join(a.data, p))]
    if missing:  # a fresh clone without ../shared: no PyPI package ships Llama 3's tokenizer
        print(f"SKIP {a.data}: {', '.join(missing)} not here (Llama 3's tokenizer and the corpus come from ../shared/data)")
        return 77
    texts, size = corpus(a.data, a.min_bytes)
    texts += HARD
    print(f"{len(texts)} texts, {size} corpus bytes + {len(HARD)} hard strings")
    results = []

    path = os.path.join(a.data, "tokenizers/llama3.tiktoken")
    ref = tiktoken.Encoding("llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=load_tiktoken_bpe(path),
                            special_tokens={})
    want = [ref.encode_ordinary(t) for t in texts]
    got = [r["ids"] for r in titan(a.titan, "encode", path, [{"text": t} for t in texts])]
    results.append(compare("tiktoken llama3.tiktoken", texts, got, want))
    back = [r["text"] for r in titan(a.titan, "decode", path, [{"ids": ids} for ids in want])]
    results.append(compare("decode round trip", texts, back, texts))

    path = os.path.join(a.data, "tokenizers/llama3_tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(path)
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    # tokenizers matches added tokens inside text; titan does that only with --allow-special,
    # so compare the strings that hold none.
    plain = [i for i, t in enumerate(texts) if "<|" not in t]
    got = [r["ids"] for r in titan(a.titan, "encode", path, [{"text": texts[i]} for i in plain])]
    results.append(compare("tokenizers llama3_tokenizer.json", [texts[i] for i in plain], got,
                           [want[i] for i in plain]))

    path = os.path.join(a.data, "tokenizers/test_tiktoken.model")
    small = tiktoken.Encoding("test", pat_str=LLAMA3_PATTERN, mergeable_ranks=load_tiktoken_bpe(path),
                              special_tokens={})
    want = [small.encode_ordinary(t) for t in texts[:200] + HARD]
    got = [r["ids"] for r in titan(a.titan, "encode", path, [{"text": t} for t in texts[:200] + HARD])]
    results.append(compare("tiktoken test_tiktoken.model (2,000 ranks)", texts[:200] + HARD, got, want))

    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
