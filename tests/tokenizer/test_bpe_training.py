"""titan tokenizer train against PyPI tokenizers' BpeTrainer: same corpus, same vocabulary size,
same pre-tokenizer; bytes per token on held-apart text must agree within 2%. Training twice
must give the same file."""
import argparse
import filecmp
import gzip
import json
import os
import subprocess
import sys
import tempfile

import tiktoken
import tokenizers
from tiktoken.load import load_tiktoken_bpe
from tokenizers import models, pre_tokenizers, trainers

from test_tokenizer_parity import LLAMA3_PATTERN


def read_docs(path, limit_bytes):
    docs, size = [], 0
    with gzip.open(path, "rt") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            size += len(docs[-1].encode())
            if size >= limit_bytes:
                break
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ranks", type=int, default=1792)
    a = ap.parse_args()
    needed = [os.path.join(a.data, p) for p in ("corpus/train-00001-of-00008.json.gz", "corpus/validation-00000-of-00001.json.gz")]
    if not all(os.path.exists(p) for p in needed):  # a fresh clone without ../shared
        print(f"SKIP {', '.join(p for p in needed if not os.path.exists(p))}: not here (the 150 MB corpus comes from ../shared/data)")
        return 77
    train = read_docs(os.path.join(a.data, "corpus/train-00001-of-00008.json.gz"), 3_000_000)
    held = read_docs(os.path.join(a.data, "corpus/validation-00000-of-00001.json.gz"), 1_000_000)
    held_bytes = sum(len(t.encode()) for t in held)
    failures = []
    with tempfile.TemporaryDirectory() as d:
        corpus = os.path.join(d, "train.jsonl")
        with open(corpus, "w") as f:
            for t in train:
                f.write(json.dumps({"text": t}) + "\n")
        outs = [os.path.join(d, f"titan{i}.tiktoken") for i in range(2)]
        for out in outs:
            subprocess.run([a.titan, "tokenizer", "train", "--input", corpus, "--vocab-size", str(a.ranks),
                            "--output", out], check=True)
        same = filecmp.cmp(outs[0], outs[1], shallow=False)
        print(f"{'ok  ' if same else 'FAIL'} training twice gives identical files")
        if not same:
            failures.append("determinism")
        ranks = load_tiktoken_bpe(outs[0])
        enc = tiktoken.Encoding("trained", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens={})
        titan_tokens = sum(len(enc.encode_ordinary(t)) for t in held)

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=a.ranks, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    hf.train_from_iterator(train, trainer)
    hf_tokens = sum(len(e.ids) for e in hf.encode_batch(held, add_special_tokens=False))

    titan_bpt, hf_bpt = held_bytes / titan_tokens, held_bytes / hf_tokens
    diff = abs(titan_bpt - hf_bpt) / hf_bpt
    ok = diff < 0.02
    print(f"{'ok  ' if ok else 'FAIL'} bytes/token on {held_bytes} held-apart bytes: titan {titan_bpt:.4f}, "
          f"tokenizers {hf_bpt:.4f} ({len(ranks)} vs {hf.get_vocab_size()} ids), difference {100 * diff:.2f}% (bar 2%)")
    if not ok:
        failures.append("quality")
    print(f"{2 - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
