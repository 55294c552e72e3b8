"""Tokenizer encoding speed beside PyPI tiktoken (same English text, same run, one thread), and
the training loader's throughput (read, decompress, tokenize, pack, prefetch) on the corpus.

Usage: build/venv/bin/python bench/data_bench.py [--titan build/cpu/titan] [--data ../shared/data]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import tiktoken
from tiktoken.load import load_tiktoken_bpe

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
           r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def titan_json(args):
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", default=os.path.join(ROOT, "build/cpu/titan"))
    ap.add_argument("--data", default=os.path.join(ROOT, "../shared/data"))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    tok = os.path.join(a.data, "tokenizers/llama3.tiktoken")
    english = os.path.join(a.data, "corpus/small.jsonl")  # Moby Dick and Jane Austen

    titan_mbs = statistics.median(
        titan_json([a.titan, "tokenizer", "bench", "--tokenizer", tok, "--input", english])["mb_per_s"]
        for _ in range(a.runs))
    enc = tiktoken.Encoding("llama3", pat_str=PATTERN, mergeable_ranks=load_tiktoken_bpe(tok), special_tokens={})
    with open(english) as f:
        docs = [json.loads(line)["text"] for line in f]
    size = sum(len(d.encode()) for d in docs)
    times = []
    for _ in range(a.runs):
        t = time.perf_counter()
        for d in docs:
            enc.encode_ordinary(d)
        times.append(time.perf_counter() - t)
    tiktoken_mbs = size / statistics.median(times) / 1e6

    loader = statistics.median(
        titan_json([a.titan, "data", "bench", "--tokenizer", tok, "--input", os.path.join(a.data, "corpus"),
                    "--seq-len", "2048", "--batch", "8", "--batches", "100"])["tokens_per_s"]
        for _ in range(a.runs))

    print(f"encoding English ({size / 1e6:.1f} MB, Llama 3 tokenizer, one thread, median of {a.runs}):")
    print(f"  titan    {titan_mbs:6.1f} MB/s  (bar: 10 MB/s per core)")
    print(f"  tiktoken {tiktoken_mbs:6.1f} MB/s  (PyPI {tiktoken.__version__}, encode_ordinary per document)")
    print(f"  ratio    {titan_mbs / tiktoken_mbs:.2f}x")
    print(f"loader on the corpus (json.gz, tokenize on the fly, seq 2048 x 8): {loader / 1e6:.2f} M tokens/s "
          f"(bar: 1 M tokens/s with 2 threads)")
    print(json.dumps(dict(titan_mb_s=titan_mbs, tiktoken_mb_s=tiktoken_mbs, loader_tokens_s=loader)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
