"""FP8 all-gather under mpirun (issue 22's CPU bars): FSDP 2, 3, 4 and HSDP 2 x 2 with float8
linears give the same losses and grad norms bit for bit whether FSDP gathers the float8 weights
in e4m3 or in float32 (the cast is elementwise with the same global amax of the fp32 master
weights), with and without precomputed scales; precompute makes one amax all-reduce per step;
the logged traffic per rank equals the analytic value (one byte per float8-linear weight
element gathered, four for the rest, amaxes as gathered floats)."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

FAILURES = []
STEPS = 6
LAYERS, DIM, FFN, VOCAB = 6, 256, 768, 2048  # the debug model (its start summary is checked below)


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        FAILURES.append(what)


def train(titan, configs, folder, ranks, replicate, *extra):
    cmd = [titan, "train", "--config", os.path.join(configs, "debug_model.toml"), "--training.device", "cpu",
           "--training.dataset", "synthetic", "--training.seq_len", "32", "--training.batch_size", str(12 // ranks),
           "--training.steps", str(STEPS), "--metrics.log_freq", "1", "--job.dump_folder", folder,
           "--training.data_parallel_replicate_degree", str(replicate), "--float8.enable_float8_linear",
           "--float8.filter_fqns", "output", *extra]
    cmd = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f], r.stdout


def analytic(shard, replicate, precompute):
    """Bytes per rank per step under the default reshard policy (the root and the last block
    keep their weights for backward: every other block is gathered twice)."""
    block_f8 = 4 * DIM * DIM + 3 * DIM * FFN  # wq wk wv wo (n_heads = n_kv_heads), w1 w3 w2
    block = block_f8 + 2 * DIM  # + the two norms
    root = 2 * VOCAB * DIM + DIM  # embedding, output, final norm: never float8
    P = root + LAYERS * block
    block_gathers = 2 * LAYERS - 1
    gathered = 4 * root + block_gathers * (block_f8 * 1 + (block - block_f8) * 4)
    fsdp = (shard - 1) / shard * (gathered + 4 * P)
    weights = 7 * LAYERS
    amax = 4 * (shard - 1) * (weights if precompute else 7 * block_gathers)
    return fsdp + amax + 2 * (replicate - 1) / replicate * 4 * P / shard


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    ap.add_argument("--configs", required=True)
    a = ap.parse_args()
    if shutil.which("mpirun") is None:
        print("FAIL mpirun not found (scripts/install_deps.sh installs openmpi-bin)")
        return 1
    ag = ["--float8.enable_fsdp_float8_all_gather"]
    pre = ag + ["--float8.precompute_float8_dynamic_scale_for_fsdp"]
    with tempfile.TemporaryDirectory() as tmp:
        for ranks, replicate in ((2, 1), (3, 1), (4, 1), (4, 2)):
            shard = ranks // replicate
            label = f"HSDP {replicate} x {shard}" if replicate > 1 else f"FSDP {shard}"
            runs = {}
            for name, extra in (("float32 gathers", []), ("e4m3 gathers", ag), ("e4m3, precomputed", pre)):
                folder = os.path.join(tmp, f"{ranks}-{replicate}-{name.replace(' ', '_').replace(',', '')}")
                runs[name] = train(a.titan, a.configs, folder, ranks, replicate, *extra)
            rows, stdout = runs["float32 gathers"]
            check(f"dim {DIM}, layers {LAYERS}," in stdout and f"ffn {FFN}, vocab {VOCAB})" in stdout,
                  f"{label}: the debug model's shapes as this test assumes them")
            want = [(r["loss"], r["grad_norm"]) for r in rows]
            for name in ("e4m3 gathers", "e4m3, precomputed"):
                got_rows, out = runs[name]
                got = [(r["loss"], r["grad_norm"]) for r in got_rows]
                check(len(got) == STEPS and got == want, f"{label}, {name}: losses and grad norms bit for bit "
                      f"those of float32 gathers over {STEPS} steps")
                expect = analytic(shard, replicate, name.endswith("precomputed"))
                logged = [r["comm_bytes"] for r in got_rows]
                check(all(abs(b - expect) <= 1e-9 * expect for b in logged),
                      f"{label}, {name}: logged traffic per rank per step {logged[0]:.0f} B = analytic {expect:.0f} B")
            reductions = re.search(r"FP8 all-gather: (\d+) weight-amax all-reduce", runs["e4m3, precomputed"][1])
            check(reductions is not None and int(reductions.group(1)) == STEPS,
                  f"{label}: precomputed scales take one amax all-reduce per step "
                  f"({reductions.group(1) if reductions else 'none logged'} over {STEPS} steps)")
            plain = re.search(r"FP8 all-gather: (\d+) weight-amax all-reduce", runs["e4m3 gathers"][1])
            check(plain is not None and int(plain.group(1)) == STEPS * 7 * (2 * LAYERS - 1),
                  f"{label}: without precompute one amax all-reduce per float8 weight gather")
            f32 = runs["float32 gathers"][0][0]["comm_bytes"]
            e4 = runs["e4m3 gathers"][0][0]["comm_bytes"]
            check(e4 < f32, f"{label}: e4m3 gathers move {e4 / f32:.2f}x float32's bytes per step")
    print(f"{len(FAILURES)} failures")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
