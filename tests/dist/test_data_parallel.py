"""Data parallel over MPI ranks on the CPU. FSDP on 2, 3 and 4 ranks (with gradient
accumulation, each reshard policy), HSDP (2 x 2) and replicated parameters give the same losses
over 20 steps as one process; per-rank parameter, gradient and optimizer bytes fall as 1/N; the
logged traffic per rank equals the analytic value; a checkpoint saved by 2 FSDP ranks (and by
2 x 2 HSDP ranks, asynchronously) resumes at 4, 3, 2 replicated and 1 rank with the
uninterrupted run's losses, and its Hugging Face export equals one process's; a rank that hangs
or dies ends the job with an error instead of a hang."""
import argparse
import json
import os
import re
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
    """{step: (loss, grad_norm)}: the norm is compared too, since under clipping a gradient summed
    over ranks instead of averaged moves the losses by only ~1e-11 (unclipped, by ~3e-6)."""
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return {r["step"]: (r["loss"], r["grad_norm"]) for r in map(json.loads, f) if "loss" in r}


def comm_bytes(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [r["comm_bytes"] for r in map(json.loads, f) if "comm_bytes" in r]


def summary(stdout):
    """Parameters, the root's elements and this rank's state bytes from the start summary."""
    model = re.search(r"model: llama3 \S+ \(dim (\d+), layers (\d+), .* vocab (\d+)\)", stdout)
    params = re.search(r"^parameters: (\d+)", stdout, re.M)
    state = re.search(r"state per rank \(bytes.*\): parameters (\d+), gradients (\d+), optimizer (\d+)", stdout)
    if not (model and params and state):
        return None
    dim, layers, vocab = int(model.group(1)), int(model.group(2)), int(model.group(3))
    p, root = int(params.group(1)), 2 * vocab * dim + dim
    return {"P": p, "root": root, "block": (p - root) // layers, "state": [int(x) for x in state.groups()]}


def analytic_traffic(info, replicate, shard, reshard, micro):
    """Bytes per rank per step: REFERENCE.md's (W-1)/W x P x (4 + 4 + 4) in float32 when every unit
    gathers twice ("always"); the default keeps the root's and the last block's weights for
    backward (one gather fewer each)."""
    p, root, block = info["P"], info["root"], info["block"]
    gathered = {"always": 2 * p, "default": 2 * p - root - block, "never": p}[reshard]
    fsdp = (shard - 1) / shard * 4 * (gathered + p) * micro
    return fsdp + 2 * (replicate - 1) / replicate * 4 * p / shard


def close(a, b, steps, what):
    # Measured worst over every case here (OMP_NUM_THREADS=1): loss 3.6e-9, grad norm 8.7e-9 (the
    # same float sums in another order); bounds 5e-8. A sum over ranks instead of a mean gives a
    # grad norm off by 1.0 (2 ranks) to 3.0 (4), and moves the clipped losses by only 1.4e-6.
    if not all(s in a for s in steps):
        check(False, f"{what}: steps {[s for s in steps if s not in a]} not logged")
        return
    loss = max(abs(a[s][0] - b[s][0]) / abs(b[s][0]) for s in steps)
    norm = max(abs(a[s][1] - b[s][1]) / abs(b[s][1]) for s in steps)
    check(loss < 5e-8 and norm < 5e-8,
          f"{what}: worst relative loss difference {loss:.2e}, grad norm {norm:.2e} (bounds 5e-8) "
          f"over steps {steps[0]}-{steps[-1]}")


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
            check(re.search(r"rank 0 of 2: an? (all-reduce|all-gather|reduce-scatter|barrier) did not finish within 5 s",
                            err) is not None,
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
        one = summary(r.stdout)
        check(one is not None, "one process prints its parameters and state bytes")
        cases = [  # ranks, batch, replicate, shard, reshard, label
            (1, 12, 1, 1, "default", "1 rank"),
            (2, 6, 1, 2, "default", "FSDP 2"),
            (3, 4, 1, 3, "default", "FSDP 3"),
            (4, 3, 1, 4, "default", "FSDP 4"),
            (2, 2, 1, 2, "default", "FSDP 2, 3 micro-batches"),
            (3, 4, 1, 3, "always", "FSDP 3, reshard always"),
            (2, 6, 1, 2, "never", "FSDP 2, reshard never"),
            (4, 3, 2, 2, "default", "HSDP 2 x 2"),
            (2, 6, 2, 1, "default", "replicated 2"),
        ]
        for ranks, batch, replicate, shard, reshard, label in cases:
            folder = os.path.join(tmp, label.replace(" ", "_").replace(",", ""))
            r = train(a.titan, a.configs, folder, ranks, batch, "--training.steps", "20",
                      "--training.data_parallel_replicate_degree", str(replicate),
                      "--training.data_parallel_shard_degree", str(shard),
                      "--training.fsdp_reshard_after_forward", reshard)
            check(r.returncode == 0, f"{label}: trains ({r.stderr.strip()[-300:]})")
            if r.returncode != 0:
                continue
            close(losses(folder), ref, steps, f"{label} (mpirun) vs one process")
            if ranks == 1:
                continue
            check("ranks: %d (mpi)" % ranks in r.stdout, f"{label}: the start summary names the ranks")
            info = summary(r.stdout)
            if info is None or one is None:
                check(False, f"{label}: start summary parsed")
                continue
            # Rank 0 holds the largest shard: at most 3% above an even split (uneven rows).
            for name, got, whole in zip(["parameter", "gradient", "optimizer"], info["state"], one["state"]):
                even = whole / shard
                check(even <= got <= 1.03 * even,
                      f"{label}: rank 0 {name} bytes {got} = 1/{shard} of one process's {whole} (+3% for uneven rows)")
            micro = 12 // (batch * ranks)
            want = analytic_traffic(info, replicate, shard, reshard, micro)
            got = comm_bytes(folder)
            check(len(got) == 20 and all(abs(g - want) <= 1e-9 * want for g in got),
                  f"{label}: logged traffic per rank per step {got[:1]} B equals the analytic {want:.1f} B")
            if reshard == "always":
                formula = (shard - 1) / shard * info["P"] * 12 * micro
                check(abs(want - formula) <= 1e-9 * formula, f"{label}: REFERENCE.md's (W-1)/W x P x 12 B = {formula:.0f}")
        # Clipping off: nothing rescales a wrong gradient (sum instead of mean) before AdamW.
        unclipped = {}
        for ranks, batch, label in [(1, 12, "one process"), (2, 2, "FSDP 2, 3 micro-batches")]:
            folder = os.path.join(tmp, "unclipped_" + str(ranks))
            r = train(a.titan, a.configs, folder, ranks, batch, "--training.steps", "10", "--training.max_norm", "0")
            check(r.returncode == 0, f"{label}, clipping off: trains ({r.stderr.strip()[-300:]})")
            if r.returncode == 0:
                unclipped[ranks] = losses(folder)
        if len(unclipped) == 2:
            close(unclipped[2], unclipped[1], list(range(1, 11)), "FSDP 2, 3 micro-batches, clipping off, vs one process")
        # Checkpoints written by 2 FSDP ranks (one file per shard) and by 2 x 2 HSDP ranks in the
        # background resume at other layouts with the uninterrupted run's losses (saved at step 10
        # of a 20-step run, so the schedule is the same).
        flags = ["--checkpoint.enable_checkpoint", "true", "--checkpoint.interval", "10", "--training.steps", "20",
                 "--checkpoint.model_weights_only", "true"]
        saves = {"fsdp2": (2, 6, []), "hsdp": (4, 3, ["--training.data_parallel_replicate_degree", "2",
                                                       "--checkpoint.async_mode", "async"])}
        for name, (ranks, batch, extra) in saves.items():
            ckpt = os.path.join(tmp, "ckpt_" + name)
            r = train(a.titan, a.configs, ckpt, ranks, batch, *flags, *extra)
            check(r.returncode == 0, f"{name}: {ranks} ranks save checkpoints at steps 10 and 20 ({r.stderr.strip()[-300:]})")
            if r.returncode != 0:
                continue
            step10 = os.path.join(ckpt, "checkpoint", "step-10")
            with open(os.path.join(step10, "metadata.json")) as f:
                meta = json.load(f)
            check(meta["world"] == 2 and sorted(os.listdir(step10)) == ["metadata.json", "rank-00000.bin", "rank-00001.bin"],
                  f"{name}: one file per shard and the metadata, nothing else ({sorted(os.listdir(step10))}, world {meta['world']})")
            resumes = [(4, 3, []), (3, 4, []), (2, 6, ["--training.data_parallel_shard_degree", "1",
                                                       "--training.data_parallel_replicate_degree", "2"]), (1, 12, [])]
            for ranks_now, batch_now, extra_now in (resumes if name == "fsdp2" else resumes[-1:]):
                folder = os.path.join(tmp, f"resume_{name}_{ranks_now}_{len(extra_now)}")
                shutil.copytree(ckpt, folder)
                os.remove(os.path.join(folder, "metrics.jsonl"))
                r = train(a.titan, a.configs, folder, ranks_now, batch_now, *flags, *extra_now, "--checkpoint.load_step", "10")
                check(r.returncode == 0 and "resumed from" in r.stdout,
                      f"{name}: resume at {ranks_now} ranks {extra_now} ({r.stderr.strip()[-300:]})")
                if r.returncode == 0:
                    close(losses(folder), ref, list(range(11, 21)), f"{name}: saved at {ranks} ranks, resumed at {ranks_now} {extra_now}")
        # The Hugging Face export of a sharded run holds the whole model: one process's weights.
        single = os.path.join(tmp, "export_one")
        r = train(a.titan, a.configs, single, 1, 12, *flags)
        check(r.returncode == 0, f"one process exports ({r.stderr.strip()[-300:]})")
        try:
            import numpy as np
            from safetensors.numpy import load_file
            want = load_file(os.path.join(single, "checkpoint", "export-step-20", "model.safetensors"))
            got = load_file(os.path.join(tmp, "ckpt_fsdp2", "checkpoint", "export-step-20", "model.safetensors"))
            worst = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
            check(sorted(got) == sorted(want) and all(got[k].shape == want[k].shape for k in want) and worst < 1e-4,
                  f"FSDP 2 ranks' export equals one process's (worst |diff| {worst:.2e})")
        except (OSError, KeyError, ValueError) as e:
            check(False, f"exports readable: {e}")
        test_failed_rank(a.titan, a.configs, tmp, "hangs")
        test_failed_rank(a.titan, a.configs, tmp, "dies")
        # Bad combinations are one-line errors.
        r = train(a.titan, a.configs, os.path.join(tmp, "bad"), 2, 4, "--training.steps", "2")
        lines = r.stderr.strip().splitlines()
        check(r.returncode != 0 and any("not a multiple of training.batch_size x data-parallel ranks = 4 x 2" in l for l in lines),
              f"global batch 12 with 2 ranks x batch 4 is refused: {lines[-3:]}")
        # titan estimate --ngpu N predicts what an FSDP rank really uses (rank 0: the largest shard).
        shape = ["--config", os.path.join(a.configs, "debug_model.toml"), "--training.seq_len", "512",
                 "--training.batch_size", "4", "--training.dataset", "synthetic", "--training.device", "cpu"]
        for ranks in (2, 4):
            est = subprocess.run([a.titan, "estimate", *shape, "--ngpu", str(ranks)], capture_output=True, text=True)
            m = re.search(r"FSDP over %d devices: ([0-9.]+) GiB per device" % ranks, est.stdout)
            folder = os.path.join(tmp, f"mem{ranks}")
            cmd = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", str(ranks), a.titan, "train",
                   *shape, "--training.steps", "3", "--metrics.log_freq", "1", "--job.dump_folder", folder]
            t = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
            check(m is not None and t.returncode == 0, f"estimate and run at {ranks} ranks ({est.stdout.strip()[-200:]} {t.stderr.strip()[-200:]})")
            if m and t.returncode == 0:
                with open(os.path.join(folder, "metrics.jsonl")) as f:
                    measured = max(json.loads(line)["mem_active_gib"] for line in f if "mem_active_gib" in line)
                predicted = float(m.group(1))
                check(abs(predicted - measured) <= 0.1 * measured,
                      f"{ranks} ranks: estimate {predicted:.3f} GiB within 10% of rank 0's {measured:.3f} GiB")
        # Validation under FSDP (a forward-only pass through the gathers) equals one process's over the
        # same validation batches (batch_size rows each, so that process accumulates 2 micro-batches).
        val = ["--training.steps", "4", "--validation.enabled", "true", "--validation.freq", "2", "--validation.steps", "2"]
        runs = {}
        for ranks in (1, 2):
            folder = os.path.join(tmp, f"val{ranks}")
            r = train(a.titan, a.configs, folder, ranks, 6, *val)
            check(r.returncode == 0, f"validation at {ranks} ranks ({r.stderr.strip()[-300:]})")
            if r.returncode == 0:
                with open(os.path.join(folder, "metrics.jsonl")) as f:
                    runs[ranks] = [json.loads(line)["val_loss"] for line in f if "val_loss" in line]
        if len(runs) == 2:
            check(len(runs[1]) == 2 and len(runs[2]) == 2 and
                  all(abs(x - y) <= 1e-6 * abs(x) for x, y in zip(runs[1], runs[2])),
                  f"FSDP 2 ranks' validation losses {runs[2]} equal one process's {runs[1]}")
        # scripts/run_train.sh (torchtitan's NGPU / CONFIG_FILE / overrides) starts the same FSDP run.
        script = os.path.join(os.path.dirname(os.path.abspath(a.configs)), "scripts", "run_train.sh")
        folder = os.path.join(tmp, "run_train")
        env = dict(os.environ, NGPU="2", TITAN=a.titan, CONFIG_FILE=os.path.join(a.configs, "debug_model.toml"))
        r = subprocess.run(["bash", script, "--training.device", "cpu", "--training.dataset", "synthetic",
                            "--training.seq_len", "32", "--training.batch_size", "6", "--training.global_batch_size", "12",
                            "--training.steps", "20", "--metrics.log_freq", "1", "--job.dump_folder", folder],
                           capture_output=True, text=True, timeout=600, env=env)
        check(r.returncode == 0 and "ranks: 2 (mpi), FSDP" in r.stdout, f"run_train.sh NGPU=2 ({r.stderr.strip()[-300:]})")
        if r.returncode == 0:
            close(losses(folder), ref, steps, "run_train.sh NGPU=2 vs one process")
        # FSDP over one rank (training.fsdp_on_one_rank): every sharded path, the plain run's losses bit for bit.
        folder = os.path.join(tmp, "fsdp_one")
        r = train(a.titan, a.configs, folder, 1, 12, "--training.steps", "20", "--training.fsdp_on_one_rank", "true")
        check(r.returncode == 0 and "FSDP's gathers and reduce-scatters over it" in r.stdout,
              f"FSDP over one rank trains and says so ({r.stderr.strip()[-300:]})")
        if r.returncode == 0:
            got = losses(folder)
            check(all(got[s] == ref[s] for s in steps), "FSDP over one rank: losses bit-identical to the plain run")
        # torchrun-style variables: malformed ones, and (CPU build) the start that needs NCCL, are one-line errors.
        for env, expect in [({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "localhost"}, "RANK=2 is not below WORLD_SIZE=2"),
                            ({"WORLD_SIZE": "2", "RANK": "1"}, "needs MASTER_ADDR"),
                            ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "x"}, "MASTER_PORT=x"),
                            ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost"}, "that start runs over NCCL")]:
            cmd = [a.titan, "train", "--config", os.path.join(a.configs, "debug_model.toml"), "--training.steps", "1",
                   "--training.dataset", "synthetic", "--job.dump_folder", os.path.join(tmp, "torchrun")]
            t = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, **env))
            lines = t.stderr.strip().splitlines()
            check(t.returncode == 2 and len(lines) == 1 and expect in lines[0], f"torchrun env {env}: one-line error {lines}")
        r = train(a.titan, a.configs, os.path.join(tmp, "bad_mesh"), 2, 6, "--training.steps", "2",
                  "--training.data_parallel_replicate_degree", "3")
        lines = r.stderr.strip().splitlines()
        check(r.returncode != 0 and any("the ranks do not divide into 3 replicas" in l for l in lines),
              f"replicate degree 3 on 2 ranks is refused: {lines[-3:]}")
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
