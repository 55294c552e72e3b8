"""Data parallel over MPI ranks on the CPU: 1, 2, 3 and 4 ranks (and gradient accumulation
across ranks) give the same losses over 20 steps as one process; a checkpoint saved by 2 ranks
resumes at 4 ranks and at 1 with the same losses as the uninterrupted run; a rank that hangs
or dies ends the job with an error instead of a hang."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

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


def rank_pids(launcher_pid):
    out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(launcher_pid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.split()[1:] == ["titan"]]


def test_failed_rank(titan, configs, tmp, how):
    """A rank that is stopped (hangs) or killed (dies): the others end the job, with an error."""
    folder = os.path.join(tmp, f"fail_{how}")
    cmd = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", "2", titan, "train", "--config",
           os.path.join(configs, "debug_model.toml"), "--training.device", "cpu", "--training.dataset", "synthetic",
           "--training.seq_len", "32", "--training.batch_size", "2", "--training.steps", "100000",
           "--metrics.log_freq", "1", "--comm.train_timeout_seconds", "5", "--job.dump_folder", folder]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    pids = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            metrics = os.path.join(folder, "metrics.jsonl")
            if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 2:
                break
            time.sleep(0.2)
        pids = rank_pids(p.pid)
        check(len(pids) == 2, f"{how}: found the two rank processes ({pids})")
        if len(pids) != 2:
            return
        t0 = time.time()
        os.kill(pids[1], signal.SIGSTOP if how == "hangs" else signal.SIGKILL)
        try:
            _, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            check(False, f"{how}: the job did not end within 90 s")
            return
        elapsed = time.time() - t0
        check(p.returncode != 0, f"{how}: the job exits non-zero (exit {p.returncode})")
        if how == "hangs":
            check("rank 0 of 2: an all-reduce did not finish within 5 s" in err,
                  f"hangs: rank 0 names the stuck collective and the timeout: {err.strip()[-400:]}")
        check(elapsed < 60, f"{how}: the job ended {elapsed:.1f} s after the rank failed")
    finally:
        for pid in pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        if p.poll() is None:
            p.kill()
            p.wait()


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
        test_failed_rank(a.titan, a.configs, tmp, "hangs")
        test_failed_rank(a.titan, a.configs, tmp, "dies")
        # Bad combinations are one-line errors.
        r = train(a.titan, a.configs, os.path.join(tmp, "bad"), 2, 4, "--training.steps", "2")
        lines = r.stderr.strip().splitlines()
        check(r.returncode != 0 and any("not a multiple of training.batch_size x ranks = 4 x 2" in l for l in lines),
              f"global batch 12 with 2 ranks x batch 4 is refused: {lines[-3:]}")
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
