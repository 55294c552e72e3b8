#!/usr/bin/env python3
"""Loss and throughput curves from a run's metrics.jsonl, as one PNG.

Usage: python3 scripts/plot_metrics.py DUMP_FOLDER/metrics.jsonl [-o curves.png]
Needs matplotlib (Debian's python3-matplotlib).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("metrics")
    ap.add_argument("-o", "--output", default=None, help="PNG path (default: next to metrics.jsonl)")
    a = ap.parse_args()
    train, val = [], []
    try:
        with open(a.metrics) as f:
            for n, line in enumerate(f, 1):
                row = json.loads(line)
                (val if "val_loss" in row else train).append(row)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"plot_metrics: {a.metrics}: {e}")
    if not train:
        sys.exit(f"plot_metrics: {a.metrics}: no logged steps")
    out = a.output or os.path.join(os.path.dirname(a.metrics), "curves.png")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        ax1.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot([r["step"] for r in train], [r["tps"] for r in train], color="tab:green")
    ax2.set_xlabel("step"), ax2.set_ylabel("tokens/s"), ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
