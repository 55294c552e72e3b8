"""Tensor parallel over MPI ranks on the CPU (sequence parallel between the blocks, loss parallel
by default). TP 2, TP 4 and FSDP 2 x TP 2, on the debug model and on its grouped-query variant
(4 KV heads), with and without loss parallel, every activation checkpointing mode at FSDP 2 x TP
2 and HSDP 2 x 2 x TP 2, give one process's losses and gradient norms over 20 steps; per-rank
parameter, gradient and optimizer bytes are 1/(shard x tp) of one process's; the logged traffic
equals the analytic value every step; a checkpoint saved at FSDP 2 x TP 2 resumes at one rank,
TP 2 and FSDP 4 with the uninterrupted run's losses, and its Hugging Face export equals one
process's weights."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

FAILURES, PASSED = [], [0]
SEQ, GLOBAL, STEPS = 32, 8, 20
# Measured worst relative differences from one process over every case here (OMP_NUM_THREADS=1,
# 2026-12-07): loss 4.4e-9, grad norm 8.8e-9 (float sums in another order: row-wise linears'
# partial sums, the vocabulary's slices). The bar is 1e-4; this bound is far tighter.
BOUND = 5e-8


def check(ok, what):
    if ok:
        PASSED[0] += 1
    else:
        FAILURES.append(what)
        print("FAIL", what, flush=True)


def train(titan, configs, folder, ranks, batch, *extra, steps=STEPS):
    cmd = [titan, "train", "--config", os.path.join(configs, "debug_model.toml"), "--training.device", "cpu",
           "--training.dataset", "synthetic", "--training.seq_len", str(SEQ), "--training.batch_size", str(batch),
           "--training.global_batch_size", str(GLOBAL), "--training.steps", str(steps), "--metrics.log_freq", "1",
           "--job.dump_folder", folder, *extra]
    if ranks > 1:
        cmd = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))


def records(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


def losses(folder):
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in records(folder)}


def worst(a, b, steps):
    loss = max(abs(a[s][0] - b[s][0]) / abs(b[s][0]) for s in steps)
    norm = max(abs(a[s][1] - b[s][1]) / abs(b[s][1]) for s in steps)
    return loss, norm


def close(a, b, steps, what):
    if not all(s in a for s in steps):
        check(False, f"{what}: steps {[s for s in steps if s not in a]} not logged")
        return
    loss, norm = worst(a, b, steps)
    print(f"     {what}: worst relative loss difference {loss:.2e}, grad norm {norm:.2e}", flush=True)
    check(loss < BOUND and norm < BOUND,
          f"{what}: worst relative loss difference {loss:.2e}, grad norm {norm:.2e} (bound {BOUND:.0e}) "
          f"over steps {steps[0]}-{steps[-1]}")


def state_bytes(stdout):
    m = re.search(r"state per rank \(bytes.*\): parameters (\d+), gradients (\d+), optimizer (\d+)", stdout)
    return [int(x) for x in m.groups()] if m else None


def model_shape(stdout):
    m = re.search(r"model: llama3 \S+ \(dim (\d+), layers (\d+), heads (\d+), kv heads (\d+), ffn (\d+), vocab (\d+)\)",
                  stdout)
    return [int(x) for x in m.groups()] if m else None


def analytic_tp(shape, tp, batch, micro, shard, loss_parallel, recomputed):
    """Bytes per rank per step of tensor parallel alone, from the schedule (docs/distributed.md):
    8 L + 4 all-gathers or reduce-scatters of the residual stream (rows/tp x dim floats from each
    of the tp - 1 others) per micro-batch, plus recomputation's; the classifier's statistics (2
    doubles a row) or, without loss parallel, its logits; the norms' all-reduce once a step."""
    dim, layers, _, _, _, vocab = shape
    rows = batch * SEQ
    stream = (tp - 1) * rows / tp * dim * 4
    regions = 8 * layers + 4 + recomputed
    cls = (tp - 1) * rows * 16 if loss_parallel else (tp - 1) * rows * vocab / tp * 4
    norms = 2 * (tp - 1) / tp * 4 * (2 * layers + 1) * dim / shard
    return micro * (regions * stream + cls) + norms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    ap.add_argument("--configs", required=True)
    a = ap.parse_args()
    if shutil.which("mpirun") is None:
        print("FAIL mpirun not found (scripts/install_deps.sh installs openmpi-bin)")
        return 1
    steps = list(range(1, STEPS + 1))
    with tempfile.TemporaryDirectory() as tmp:
        refs, one_state = {}, {}
        for flavor in ("debugmodel", "debugmodel_gqa"):
            folder = os.path.join(tmp, f"one_{flavor}")
            r = train(a.titan, a.configs, folder, 1, GLOBAL, "--model.flavor", flavor)
            check(r.returncode == 0, f"{flavor}: one process trains ({r.stderr.strip()[-300:]})")
            if r.returncode != 0:
                return 1
            refs[flavor], one_state[flavor] = losses(folder), state_bytes(r.stdout)
        # flavor, ranks, batch, replicate, shard, tp, extra flags, label
        cases = [
            ("debugmodel", 2, 8, 1, 1, 2, [], "TP 2"),
            ("debugmodel", 2, 8, 1, 1, 2, ["--training.disable_loss_parallel"], "TP 2 without loss parallel"),
            ("debugmodel", 4, 8, 1, 1, 4, [], "TP 4"),
            ("debugmodel", 4, 4, 1, 2, 2, [], "FSDP 2 x TP 2"),
            ("debugmodel", 4, 4, 1, 2, 2, ["--training.enable_loss_parallel", "false"],
             "FSDP 2 x TP 2 without loss parallel"),
            ("debugmodel", 4, 2, 1, 2, 2, [], "FSDP 2 x TP 2, 2 micro-batches"),
            ("debugmodel", 4, 4, 1, 2, 2, ["--activation_checkpoint.mode", "full"], "FSDP 2 x TP 2, full AC"),
            ("debugmodel", 4, 4, 1, 2, 2, ["--activation_checkpoint.mode", "selective",
                                           "--activation_checkpoint.selective_ac_option", "2"],
             "FSDP 2 x TP 2, selective AC every 2nd block"),
            ("debugmodel", 4, 4, 1, 2, 2, ["--activation_checkpoint.mode", "selective",
                                           "--activation_checkpoint.selective_ac_option", "op"],
             "FSDP 2 x TP 2, selective op AC"),
            ("debugmodel", 8, 2, 2, 2, 2, [], "HSDP 2 x 2 x TP 2"),
            ("debugmodel_gqa", 2, 8, 1, 1, 2, [], "GQA, TP 2"),
            ("debugmodel_gqa", 4, 8, 1, 1, 4, [], "GQA, TP 4 (one KV head per rank)"),
            ("debugmodel_gqa", 4, 4, 1, 2, 2, [], "GQA, FSDP 2 x TP 2"),
            ("debugmodel_gqa", 4, 4, 1, 2, 2, ["--training.disable_loss_parallel"],
             "GQA, FSDP 2 x TP 2 without loss parallel"),
        ]
        for flavor, ranks, batch, replicate, shard, tp, extra, label in cases:
            folder = os.path.join(tmp, re.sub(r"[^A-Za-z0-9]+", "_", label))
            r = train(a.titan, a.configs, folder, ranks, batch, "--model.flavor", flavor,
                      "--training.tensor_parallel_degree", str(tp),
                      "--training.data_parallel_replicate_degree", str(replicate),
                      "--training.data_parallel_shard_degree", str(shard), *extra)
            check(r.returncode == 0, f"{label}: trains ({r.stderr.strip()[-400:]})")
            if r.returncode != 0:
                continue
            close(losses(folder), refs[flavor], steps, f"{label} (mpirun) vs one process")
            state, want = state_bytes(r.stdout), one_state[flavor]
            if state and want:
                ratio = [s * shard * tp / w for s, w in zip(state, want)]
                check(all(abs(x - 1) < 0.03 for x in ratio),
                      f"{label}: rank 0's parameter, gradient and optimizer bytes are 1/(shard x tp) of one "
                      f"process's (ratios x shard x tp: {[round(x, 4) for x in ratio]})")
            else:
                check(False, f"{label}: prints its state bytes")
            printed = re.search(r"communication per rank per step \(analytic, [^)]*\): ([0-9.]+) MiB", r.stdout)
            logged = [rec["comm_bytes"] for rec in records(folder)]
            check(printed is not None and all(abs(x / 2**20 - float(printed.group(1))) < 1e-3 for x in logged),
                  f"{label}: the logged traffic equals the printed analytic value every step "
                  f"({printed.group(1) if printed else None} MiB; logged {sorted(set(logged))[:3]})")
            if shard == 1 and replicate == 1:  # tensor parallel alone: the formula of docs/distributed.md
                shape = model_shape(r.stdout)
                loss_parallel = not any("loss_parallel" in x for x in extra)
                want_bytes = analytic_tp(shape, tp, batch, GLOBAL // batch, 1, loss_parallel, 0)
                check(all(abs(x - want_bytes) <= 1e-9 * want_bytes for x in logged),
                      f"{label}: logged traffic {sorted(set(logged))} equals the formula's {want_bytes:.0f} bytes")

        # Resharded resume: saved at FSDP 2 x TP 2 after step 4, resumed at 1 rank, TP 2 and FSDP 4.
        ck = ["--checkpoint.enable_checkpoint", "--checkpoint.interval", "4", "--checkpoint.model_weights_only", "true"]
        saved = os.path.join(tmp, "ckpt_fsdp2_tp2")
        r = train(a.titan, a.configs, saved, 4, 4, "--training.tensor_parallel_degree", "2", *ck, steps=8)
        check(r.returncode == 0, f"checkpointing FSDP 2 x TP 2 run trains ({r.stderr.strip()[-400:]})")
        if r.returncode == 0:
            full = losses(saved)
            meta = json.load(open(os.path.join(saved, "checkpoint", "step-4", "metadata.json")))
            check(meta["world"] == 4 and any("cols" in s for s in meta["shards"]),
                  "the FSDP 2 x TP 2 checkpoint has 4 rank files and column blocks for the row-wise slices")
            for ranks, batch, tp, label in ((1, 8, 1, "1 rank"), (2, 8, 2, "TP 2"), (4, 2, 1, "FSDP 4")):
                folder = os.path.join(tmp, f"resume_{label.replace(' ', '_')}")
                os.makedirs(os.path.join(folder, "checkpoint"))
                shutil.copytree(os.path.join(saved, "checkpoint", "step-4"), os.path.join(folder, "checkpoint", "step-4"))
                r = train(a.titan, a.configs, folder, ranks, batch, "--training.tensor_parallel_degree", str(tp), *ck,
                          steps=8)
                check(r.returncode == 0 and "resumed from" in r.stdout,
                      f"resume at {label} from the FSDP 2 x TP 2 checkpoint ({r.stderr.strip()[-300:]})")
                if r.returncode == 0:
                    close(losses(folder), full, [5, 6, 7, 8], f"resumed at {label} vs the uninterrupted FSDP 2 x TP 2 run")
            # The export at the end (model_weights_only) equals one process's weights.
            single = os.path.join(tmp, "ckpt_one")
            r = train(a.titan, a.configs, single, 1, 8, *ck, steps=8)
            check(r.returncode == 0, f"one process exports ({r.stderr.strip()[-300:]})")
            if r.returncode == 0:
                from safetensors.numpy import load_file
                want = load_file(os.path.join(single, "checkpoint", "export-step-8", "model.safetensors"))
                got = load_file(os.path.join(saved, "checkpoint", "export-step-8", "model.safetensors"))
                diff = max(float(abs(want[k] - got[k]).max()) for k in want) if set(want) == set(got) else float("inf")
                print(f"     export: largest difference from one process's {diff:.2e}", flush=True)
                # Measured 2.2e-6 (the weights after 8 steps of float sums in another order); a
                # misplaced slice is off by the weights' own size (~1e-2 and more).
                check(diff < 2e-5, f"the FSDP 2 x TP 2 run's Hugging Face export equals one process's "
                                   f"(largest difference {diff:.2e}, bound 2e-5)")
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
