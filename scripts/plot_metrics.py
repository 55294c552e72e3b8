#!/usr/bin/env python3
"""A run's curves from its metrics.jsonl, as one PNG: loss (and validation loss), learning rate,
gradient norm and tokens/s per device (from zero), titled with the run's name.

Usage: python3 scripts/plot_metrics.py DUMP_FOLDER/metrics.jsonl [-o curves.png] [--name NAME]
                                       [--smooth N] [--series]
  --smooth N   also draws the loss and grad norm averaged over the last N logged steps
  --series     prints the plotted series as JSON (one value per step) instead of drawing
Needs matplotlib: Debian's python3-matplotlib (scripts/install_deps.sh --plot installs it).
"""
import argparse
import json
import os
import sys


def read_rows(path):
    """Training rows and validation rows, one per step: where a step was logged twice (a file
    from before titan dropped the rows a resume replaces), the later row wins."""
    train, val = {}, {}
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"plot_metrics: {path}:{n}: not JSON ({e})")
                if "step" not in row:
                    sys.exit(f"plot_metrics: {path}:{n}: a row without a step")
                (val if "val_loss" in row else train)[row["step"]] = row
    except OSError as e:
        sys.exit(f"plot_metrics: {path}: {e}")
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


def run_name(path, given):
    """--name, else the run's job.description from the config.toml beside metrics.jsonl, else
    the dump folder's name."""
    if given:
        return given
    folder = os.path.dirname(os.path.abspath(path))
    config = os.path.join(folder, "config.toml")
    if os.path.exists(config):
        try:
            import tomllib
            with open(config, "rb") as f:
                description = tomllib.load(f).get("job", {}).get("description", "")
            if description:
                return f"{description} ({os.path.basename(folder)})"
        except Exception:  # an unreadable config only costs the title
            pass
    return os.path.basename(folder)


def trailing_mean(values, n):
    out, window = [], []
    for v in values:
        window.append(v)
        if len(window) > n:
            window.pop(0)
        out.append(sum(window) / len(window))
    return out


def series(train, val, smooth):
    steps = [r["step"] for r in train]
    s = {"step": steps, "loss": [r["loss"] for r in train], "lr": [r["lr"] for r in train],
         "grad_norm": [r["grad_norm"] for r in train], "tps": [r["tps"] for r in train],
         "val_step": [r["step"] for r in val], "val_loss": [r["val_loss"] for r in val]}
    if smooth > 1:
        s["loss_smoothed"] = trailing_mean(s["loss"], smooth)
        s["grad_norm_smoothed"] = trailing_mean(s["grad_norm"], smooth)
    return s


def draw(s, name, smooth, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    (ax_loss, ax_lr), (ax_norm, ax_tps) = axes
    ax_loss.plot(s["step"], s["loss"], alpha=0.4 if smooth > 1 else 1.0, label="train")
    if smooth > 1:
        ax_loss.plot(s["step"], s["loss_smoothed"], label=f"train, mean of {smooth}")
    if s["val_step"]:
        ax_loss.plot(s["val_step"], s["val_loss"], "o-", label="validation")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_lr.plot(s["step"], s["lr"], color="tab:purple")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_ylim(bottom=0)
    ax_norm.plot(s["step"], s["grad_norm"], color="tab:orange", alpha=0.4 if smooth > 1 else 1.0)
    if smooth > 1:
        ax_norm.plot(s["step"], s["grad_norm_smoothed"], color="tab:red")
    ax_norm.set_ylabel("gradient norm")
    ax_norm.set_ylim(bottom=0)
    ax_tps.plot(s["step"], s["tps"], color="tab:green")
    ax_tps.set_ylabel("tokens/s per device")
    ax_tps.set_ylim(bottom=0)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", help="a run's metrics.jsonl")
    ap.add_argument("-o", "--output", default=None, help="PNG path (default: curves.png next to metrics.jsonl)")
    ap.add_argument("--name", default="", help="the title (default: job.description and the dump folder)")
    ap.add_argument("--smooth", type=int, default=1, help="also draw means over the last N steps (default 1: none)")
    ap.add_argument("--series", action="store_true", help="print the series as JSON instead of drawing")
    a = ap.parse_args()
    if a.smooth < 1:
        sys.exit(f"plot_metrics: --smooth {a.smooth}: expected 1 or more")
    train, val = read_rows(a.metrics)
    if not train:
        sys.exit(f"plot_metrics: {a.metrics}: no logged steps")
    s = series(train, val, a.smooth)
    name = run_name(a.metrics, a.name)
    if a.series:
        print(json.dumps(dict(s, name=name)))
        return
    out = a.output or os.path.join(os.path.dirname(a.metrics), "curves.png")
    try:
        draw(s, name, a.smooth, out)
    except ImportError:
        sys.exit("plot_metrics: matplotlib is missing: scripts/install_deps.sh --plot installs it "
                 "(Debian's python3-matplotlib)")
    print(out)


if __name__ == "__main__":
    main()
