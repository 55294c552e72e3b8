"""scripts/sagemaker/entry.sh against a simulated /opt/ml (SM_ROOT): for 2 hosts x 2 GPUs it
gives each rank torchrun's variables (the first host as MASTER_ADDR) and titan's command with the
hyperparameters, the train channel, the checkpoint and TensorBoard folders; on one host with the
CPU build it trains the debug model with 2 ranks through mpirun, with `mpirun -np 2`'s losses;
SIGTERM to it ends in a saved checkpoint and exit 0, and a second start resumes."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(ROOT, "scripts", "sagemaker", "entry.sh")
FAILURES, PASSED = [], [0]


def check(ok, what):
    if ok:
        PASSED[0] += 1
        print("ok  ", what, flush=True)
    else:
        FAILURES.append(what)
        print("FAIL", what, flush=True)


def simulated_ml(tmp, name, hosts, current, hyper, channels=("train",)):
    root = os.path.join(tmp, name)
    config = os.path.join(root, "input", "config")
    os.makedirs(config)
    json.dump({"current_host": current, "hosts": hosts, "network_interface_name": "eth0"},
              open(os.path.join(config, "resourceconfig.json"), "w"))
    json.dump(hyper, open(os.path.join(config, "hyperparameters.json"), "w"))
    json.dump({c: {"TrainingInputMode": "File"} for c in channels}, open(os.path.join(config, "inputdataconfig.json"), "w"))
    for c in channels:
        os.makedirs(os.path.join(root, "input", "data", c))
    return root


def entry(titan, root, ngpu, dry_run=False, **kw):
    env = dict(os.environ, SM_ROOT=root, TITAN=titan, NGPU=str(ngpu), OMP_NUM_THREADS="1",
               TITAN_ENTRY_DRY_RUN="1" if dry_run else "0")
    return subprocess.Popen(["bash", ENTRY], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, **kw)


def losses(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    ap.add_argument("--configs", required=True)
    a = ap.parse_args()
    config = os.path.join(a.configs, "debug_model.toml")
    small = {"config": config, "training.dataset": "synthetic", "training.seq_len": "32", "training.batch_size": "2",
             "metrics.log_freq": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        # 2 hosts x 2 GPUs, seen from the second host; a CUDA build stands in as a script that
        # answers --version like one (the dry run starts nothing).
        fake = os.path.join(tmp, "titan")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'titan test (cuda build)'\n")
        os.chmod(fake, 0o755)
        root = simulated_ml(tmp, "two_hosts", ["algo-1", "algo-2"], "algo-2", dict(small, **{"training.steps": "7"}))
        p = entry(fake, root, 2, dry_run=True)
        out, err = p.communicate(timeout=60)
        lines = [l for l in out.splitlines() if l.strip()]
        want_env = [("RANK=2", "LOCAL_RANK=0"), ("RANK=3", "LOCAL_RANK=1")]
        ok = p.returncode == 0 and len(lines) == 2
        for line, (rank, local) in zip(lines, want_env):
            ok = ok and all(x in line.split() for x in (rank, local, "WORLD_SIZE=4", "MASTER_ADDR=algo-1", "MASTER_PORT=29500"))
            ok = ok and all(x in line for x in (f"--config {config}", "--training.steps 7",
                                                f"--training.dataset_path {root}/input/data/train",
                                                f"--checkpoint.folder {root}/checkpoints",
                                                f"--metrics.save_tb_folder {root}/output/tensorboard"))
        check(ok, f"2 hosts x 2 GPUs: each rank's torchrun variables and command ({err.strip()[-200:]} {lines})")
        bad = simulated_ml(tmp, "bad_host", ["algo-1"], "algo-9", small)
        p = entry(fake, bad, 2, dry_run=True)
        _, err = p.communicate(timeout=60)
        check(p.returncode == 2 and "current_host" in err, f"a resourceconfig.json without this host is refused ({err.strip()})")
        empty = simulated_ml(tmp, "empty_value", ["algo-1"], "algo-1", dict(small, **{"model.tokenizer_path": "", "job.description": "[x"}))
        p = entry(fake, empty, 1, dry_run=True)
        out, err = p.communicate(timeout=60)
        check(p.returncode == 0 and "--model.tokenizer_path ''" in out and "--job.description \\[x" in out,
              f"an empty value and text that only looks like JSON pass through as text ({err.strip()} {out.strip()[-200:]})")
        for what, hyper, expect in [("a hyperparameter that is no titan key", dict(small, steps="3"), "hyperparameter 'steps'"),
                                    ("malformed hyperparameters.json", None, "hyperparameters.json")]:
            bad = simulated_ml(tmp, "bad_" + what.split()[1], ["algo-1"], "algo-1", hyper or {})
            if hyper is None:
                with open(os.path.join(bad, "input", "config", "hyperparameters.json"), "w") as f:
                    f.write("{not json")
            p = entry(fake, bad, 1, dry_run=True)
            _, err = p.communicate(timeout=60)
            check(p.returncode != 0 and expect in err and len(err.strip().splitlines()) == 1,
                  f"{what} is refused in one line ({err.strip()})")

        # One host with the CPU build: 2 ranks through mpirun, the losses of mpirun -np 2 itself.
        if shutil.which("mpirun") is None:
            check(False, "mpirun not found (scripts/install_deps.sh installs openmpi-bin)")
            return 1
        root = simulated_ml(tmp, "one_host", ["algo-1"], "algo-1", dict(small, **{"training.steps": "6"}), channels=())
        p = entry(a.titan, root, 2)
        out, err = p.communicate(timeout=600)
        direct = os.path.join(tmp, "direct")
        d = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", a.titan, "train", "--config",
                            config, "--training.dataset", "synthetic", "--training.seq_len", "32", "--training.batch_size",
                            "2", "--metrics.log_freq", "1", "--training.steps", "6", "--job.dump_folder", direct],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
        run_dir = os.path.join(root, "output", "data")
        ok = p.returncode == 0 and d.returncode == 0
        check(ok and losses(run_dir) == losses(direct) and os.path.isdir(os.path.join(root, "checkpoints", "step-6"))
              and os.listdir(os.path.join(root, "output", "tensorboard")),
              f"one host, CPU build: 2 ranks train with mpirun -np 2's losses, checkpoint and TensorBoard in /opt/ml "
              f"({err.strip()[-300:]} {d.stderr.strip()[-200:]})")

        # SIGTERM (a spot reclaim, StopTrainingJob) to the entry: the ranks save and stop, exit 0.
        root = simulated_ml(tmp, "stopped", ["algo-1"], "algo-1", dict(small, **{"training.steps": "100000"}), channels=())
        p = entry(a.titan, root, 2, start_new_session=True)
        metrics = os.path.join(root, "output", "data", "metrics.jsonl")
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None and not (os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3):
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        ckpts = sorted(os.listdir(os.path.join(root, "checkpoints"))) if os.path.isdir(os.path.join(root, "checkpoints")) else []
        check(p.returncode == 0 and any(c.startswith("step-") for c in ckpts) and "stopped cleanly" in out,
              f"SIGTERM to the entry: a saved checkpoint and exit 0 (exit {p.returncode}, {ckpts}, {err.strip()[-300:]})")
        hyper = os.path.join(root, "input", "config", "hyperparameters.json")
        json.dump(dict(small, **{"training.steps": "3"}), open(hyper, "w"))
        p = entry(a.titan, root, 2)
        out, err = p.communicate(timeout=300)
        check(p.returncode == 0 and "resumed from" in out,
              f"a second start resumes from /opt/ml/checkpoints ({err.strip()[-300:]})")
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
