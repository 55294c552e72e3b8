"""Reads the outputs of bench/gpu_check.sh: checks CPU-vs-GPU loss parity and GPU rerun
identity, and prints the benchmark table (titan beside the PyTorch peer).

  gpu_report.py parity CPU_METRICS GPU_METRICS GPU_RERUN_METRICS [--tol 0.02]
  gpu_report.py identical METRICS_A METRICS_B   (losses and grad norms bit for bit)
  gpu_report.py close METRICS_A METRICS_B [--tol 0.02]   (same steps, losses within tol)
  gpu_report.py table OUT_DIR
  gpu_report.py kernels NCU_CSV   (bench/gpu_profile.sh: one step's device time by kernel)
"""
import argparse
import collections
import csv
import glob
import json
import os
import sys


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip() and '"loss"' in line]


def parity(a):
    for path in (a.cpu, a.gpu, a.rerun):
        if not os.path.exists(path):
            print(f"parity: FAIL {path} is missing (that run failed: see its log)")
            return 1
    cpu, gpu, rerun = records(a.cpu), records(a.gpu), records(a.rerun)
    ok = len(cpu) == len(gpu) == len(rerun) and len(cpu) > 0
    if not ok:
        print(f"parity: FAIL step counts differ: cpu {len(cpu)}, gpu {len(gpu)}, rerun {len(rerun)}")
        return 1
    worst = 0.0
    print("step   cpu fp32 loss   gpu bf16 loss   |diff|    rerun identical")
    for c, g, r in zip(cpu, gpu, rerun):
        diff = abs(c["loss"] - g["loss"])
        same = g["loss"] == r["loss"] and g["grad_norm"] == r["grad_norm"]
        worst = max(worst, diff)
        ok &= diff <= a.tol and same and c["step"] == g["step"]
        print(f"{c['step']:4d}   {c['loss']:.6f}        {g['loss']:.6f}        {diff:.5f}   {same}")
    print(f"parity: {'PASS' if ok else 'FAIL'} worst |loss_gpu - loss_cpu| = {worst:.5f} over {len(cpu)} steps "
          f"(bound {a.tol}); GPU reruns bit-identical: {all(g['loss'] == r['loss'] for g, r in zip(gpu, rerun))}")
    return 0 if ok else 1


def records_of_both(check, a, b):
    """Both runs' records, or None (after saying which file is missing) when a run failed."""
    for path in (a, b):
        if not os.path.exists(path):
            print(f"{check}: FAIL {path} is missing (that run failed: see its log)")
            return None
    return records(a), records(b)


def identical(a):
    both = records_of_both("identical", a.a, a.b)
    if both is None:
        return 1
    x, y = both
    same = len(x) == len(y) > 0 and all(p["loss"] == q["loss"] and p["grad_norm"] == q["grad_norm"] for p, q in zip(x, y))
    worst = max((abs(p["loss"] - q["loss"]) for p, q in zip(x, y)), default=float("nan"))
    print(f"identical: {'PASS' if same else 'FAIL'} {len(x)} vs {len(y)} steps, worst |loss diff| {worst:.3g}")
    return 0 if same else 1


def close(a):
    both = records_of_both("close", a.a, a.b)
    if both is None:
        return 1
    x, y = both
    ok = len(x) == len(y) > 0 and all(p["step"] == q["step"] for p, q in zip(x, y))
    worst = max((abs(p["loss"] - q["loss"]) for p, q in zip(x, y)), default=float("nan"))
    ok = ok and worst <= a.tol
    print(f"close: {'PASS' if ok else 'FAIL'} {len(x)} vs {len(y)} logged steps, worst |loss diff| {worst:.5f} "
          f"(bound {a.tol})")
    return 0 if ok else 1


def titan_tps(path, skip_steps):
    """Mean tokens/s of the logged windows after the first `skip_steps` steps."""
    rs = [r for r in records(path) if r["step"] > skip_steps]
    if not rs:
        return None, None, None
    tps = sum(r["tps"] for r in rs) / len(rs)
    return tps, rs[-1].get("tflops"), rs[-1].get("mem_reserved_gib")


def table(a):
    print("shape                 titan tok/s  TFLOP/s  mem GiB | torch eager  torch compile  mem GiB | titan/compile")
    for run in sorted(d for d in glob.glob(os.path.join(a.out, "bench_*")) if os.path.isdir(d)):
        name = os.path.basename(run)[len("bench_"):]
        tps, tflops, mem = titan_tps(os.path.join(run, "metrics.jsonl"), 5) if os.path.exists(
            os.path.join(run, "metrics.jsonl")) else (None, None, None)
        peer, peer_mem = {}, {}
        anchor = os.path.join(a.out, f"anchor_{name}.json")
        if not os.path.exists(anchor) and name.startswith("cudnn_"):  # same shape, other attention
            anchor = os.path.join(a.out, f"anchor_{name[len('cudnn_'):]}.json")
        if os.path.exists(anchor):
            for r in json.load(open(anchor)).get("runs", []):
                peer[r["variant"]] = r.get("tokens_per_s")
                peer_mem[r["variant"]] = r.get("peak_mem_gib")
        eager, comp = peer.get("eager"), peer.get("compile")
        fmt = lambda v, w=11: f"{v:{w},.0f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"
        ratio = f"{tps / comp:.2f}x" if tps and comp else "-"
        gib = lambda v: f"{v:7.1f}" if isinstance(v, (int, float)) else f"{'-':>7}"
        print(f"{name:20s} {fmt(tps)}  {fmt(tflops, 7)}  {gib(mem)} | {fmt(eager)}  {fmt(comp, 13)}  "
              f"{gib(peer_mem.get('compile'))} | {ratio}")
    return 0


def short_kernel_name(name):
    """Kernel name without parameter lists; template arguments kept (they name the variant)."""
    for prefix in ("(anonymous namespace)::", "<unnamed>::", "titan::cuda::", "titan::"):
        name = name.replace(prefix, "")
    return (name[5:] if name.startswith("void ") else name).split("(")[0]


def kernels(a):
    rows = []
    with open(a.csv) as f:
        lines = [line for line in f if line.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}.get(r.get("Metric Unit"), None)
        if unit is None:
            print(f"kernels: FAIL unknown unit {r.get('Metric Unit')!r}")
            return 1
        rows.append((r["Kernel Name"], r.get("Grid Size", ""), float(r["Metric Value"].replace(",", "")) * unit))
    if not rows:
        print(f"kernels: FAIL no gpu__time_duration rows in {a.csv}")
        return 1
    # One step: from after the first AdamW launch through the second (else every launch).
    ends = [i for i, r in enumerate(rows) if "adamw" in r[0] and (i + 1 == len(rows) or "adamw" not in rows[i + 1][0])]
    step = rows[ends[0] + 1:ends[1] + 1] if len(ends) >= 2 else rows
    total = sum(ms for _, _, ms in step)
    groups = collections.defaultdict(lambda: [0, 0.0])
    for name, grid, ms in step:
        g = groups[(short_kernel_name(name), grid)]
        g[0] += 1
        g[1] += ms
    print(f"kernels: {len(step)} launches, {total:.3f} ms of kernel time in one step"
          f"{'' if len(ends) >= 2 else ' (no step boundary found: all launches)'}")
    print(f"{'ms':>9} {'share':>6} {'count':>5} {'mean us':>9}  kernel [grid]")
    for (name, grid), (count, ms) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"{ms:9.3f} {100 * ms / total:5.1f}% {count:5d} {1000 * ms / count:9.1f}  {name[:150]} {grid}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parity")
    p.add_argument("cpu")
    p.add_argument("gpu")
    p.add_argument("rerun")
    p.add_argument("--tol", type=float, default=0.02)
    i = sub.add_parser("identical")
    i.add_argument("a")
    i.add_argument("b")
    c = sub.add_parser("close")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tol", type=float, default=0.02)
    t = sub.add_parser("table")
    t.add_argument("out")
    k = sub.add_parser("kernels")
    k.add_argument("csv")
    args = ap.parse_args()
    sys.exit({"parity": parity, "identical": identical, "close": close, "table": table, "kernels": kernels}[args.cmd](args))
