"""titan vs PyTorch on this CPU, same model shape, same run: medians of three runs each.

Usage: /usr/bin/python3 bench/cpu_vs_torch.py [--titan build/cpu/titan] [--runs 3]
The peer is ../shared/bench/torch_cpu_anchor.py (Debian's PyTorch 1.13 + OpenBLAS), run at its
default thread count and at 2 threads; the faster of the two is the bar.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHAPE = dict(dim=256, layers=6, heads=16, kv=16, ffn=768, vocab=2048, seq=512, batch=2)


def flops_per_token():
    s = SHAPE
    non_embedding = s["layers"] * (4 * s["dim"] ** 2 + 3 * s["dim"] * s["ffn"] + 2 * s["dim"]) \
        + s["dim"] + s["vocab"] * s["dim"]
    return 6 * non_embedding + 12 * s["layers"] * s["dim"] * s["seq"]


def torch_run(anchor, threads):
    args = ["/usr/bin/python3", anchor] + [f"--{k}={v}" for k, v in SHAPE.items()] + ["--steps", "5"]
    if threads:
        args.append(f"--threads={threads}")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["tokens_per_s"]


def titan_run(titan, steps=6):
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([titan, "train", "--training.dataset", "synthetic", "--model.flavor", "debugmodel",
                        "--model.vocab_size", str(SHAPE["vocab"]), "--training.seq_len", str(SHAPE["seq"]),
                        "--training.batch_size", str(SHAPE["batch"]), "--training.steps", str(steps),
                        "--training.warmup_steps", "1", "--metrics.log_freq", "1", "--job.dump_folder", d],
                       check=True, capture_output=True)
        with open(os.path.join(d, "metrics.jsonl")) as f:
            tps = [json.loads(line)["tps"] for line in f][1:]  # step 1 warms up
    return statistics.median(tps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", default=os.path.join(ROOT, "build/cpu/titan"))
    ap.add_argument("--anchor", default=os.path.join(ROOT, "../shared/bench/torch_cpu_anchor.py"))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    peers = {}
    for threads in (0, 2):
        peers[threads] = statistics.median(torch_run(a.anchor, threads) for _ in range(a.runs))
    titan = statistics.median(titan_run(a.titan) for _ in range(a.runs))
    peer_threads, peer = max(peers.items(), key=lambda kv: kv[1])
    fpt = flops_per_token()
    rows = [("torch (default threads)", peers[0]), ("torch (2 threads)", peers[2]), ("titan", titan)]
    print(f"debugmodel vocab {SHAPE['vocab']}, seq {SHAPE['seq']} x batch {SHAPE['batch']}, "
          f"median of {a.runs} runs each, {os.cpu_count()} cores")
    print(f"{'':26s} {'tokens/s':>10s} {'GFLOP/s':>9s}")
    for name, tps in rows:
        print(f"{name:26s} {tps:10.0f} {tps * fpt / 1e9:9.1f}")
    ratio = titan / peer
    print(f"titan / best torch ({'default' if peer_threads == 0 else peer_threads} threads): {ratio:.2f}x (bar: 4x)")
    print(json.dumps(dict(titan_tps=titan, torch_tps=peers, ratio=ratio, gflops=titan * fpt / 1e9)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
