"""Data parallel over MPI ranks on the CPU: 1, 2, 3 and 4 ranks (and gradient accumulation
across ranks) give the same losses over 20 steps as one process, and a checkpoint saved by 2
ranks resumes at 4 ranks and at 1 with the same losses as the uninterrupted run."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

FAILURES, PASSED = [], [0]


def check(ok, what):
    if ok:
        PASSED[0] += 1
    else:
        FAILURES.append(what)
        print("FAIL", what, flush=True)


def train(titan, configs, folder, ranks, batch, *extra):
    cmd = [titan, "train", "--config", os.path.join(configs, "debug_model.toml"), "--training.device", "cpu",
           "--training.dataset", "synthetic", "--training.seq_len", "32", "--training.batch_size", str(batch),
           "--training.global_batch_size", "12", "--metrics.log_freq", "1", "--job.dump_folder", folder, *extra]
    if ranks > 1:
        cmd = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def losses(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def close(a, b, steps, what):
    worst = max(abs(a[s] - b[s]) / abs(b[s]) for s in steps)
    check(worst < 1e-4, f"{what}: worst relative loss difference {worst:.2e} over steps {steps[0]}-{steps[-1]} (bound 1e-4)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    ap.add_argument("--configs", required=True)
    a = ap.parse_args()
    if shutil.which("mpirun") is None:
        print("FAIL mpirun not found (scripts/install_deps.sh installs openmpi-bin)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        steps = list(range(1, 21))
        base = os.path.join(tmp, "one")
        r = train(a.titan, a.configs, base, 1, 12, "--training.steps", "20")
        check(r.returncode == 0, f"one process trains ({r.stderr.strip()[-300:]})")
        if r.returncode != 0:
            return 1
        ref = losses(base)
        for ranks, batch in [(1, 12), (2, 6), (3, 4), (4, 3), (2, 2)]:  # (2, 2): 3 micro-batches per rank
            folder = os.path.join(tmp, f"np{ranks}_b{batch}")
            r = train(a.titan, a.configs, folder, ranks, batch, "--training.steps", "20")
            check(r.returncode == 0, f"{ranks} ranks x batch {batch} train ({r.stderr.strip()[-300:]})")
            if r.returncode == 0:
                close(losses(folder), ref, steps, f"{ranks} ranks x batch {batch} (mpirun) vs one process")
                if ranks > 1:
                    check("ranks: %d (mpi)" % ranks in r.stdout, f"{ranks} ranks: the start summary names them")
        # A checkpoint written by 2 ranks (at step 10 of a 20-step run, so the schedule is the
        # same) resumes at 4 ranks and at 1 with the uninterrupted run's losses.
        ckpt = os.path.join(tmp, "ckpt")
        flags = ["--checkpoint.enable_checkpoint", "true", "--checkpoint.interval", "10", "--training.steps", "20"]
        r = train(a.titan, a.configs, ckpt, 2, 6, *flags)
        check(r.returncode == 0, f"2 ranks save checkpoints at steps 10 and 20 ({r.stderr.strip()[-300:]})")
        for ranks, batch in [(4, 3), (1, 12)]:
            folder = os.path.join(tmp, f"resume{ranks}")
            shutil.copytree(ckpt, folder)
            os.remove(os.path.join(folder, "metrics.jsonl"))
            r = train(a.titan, a.configs, folder, ranks, batch, *flags, "--checkpoint.load_step", "10")
            check(r.returncode == 0 and "resumed from" in r.stdout, f"resume at {ranks} ranks ({r.stderr.strip()[-300:]})")
            if r.returncode == 0:
                close(losses(folder), ref, list(range(11, 21)), f"saved at 2 ranks, resumed at {ranks}")
        # Bad combinations are one-line errors.
        r = train(a.titan, a.configs, os.path.join(tmp, "bad"), 2, 4, "--training.steps", "2")
        lines = r.stderr.strip().splitlines()
        check(r.returncode != 0 and any("not a multiple of training.batch_size x ranks = 4 x 2" in l for l in lines),
              f"global batch 12 with 2 ranks x batch 4 is refused: {lines[-3:]}")
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
