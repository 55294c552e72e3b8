"""Checkpoints without a shared filesystem: two ranks (mpirun's MPMD form) each save into their
own checkpoint folder, as hosts with local disks do (SageMaker's /opt/ml/checkpoints, synced per
instance to one S3 prefix). Each folder gets its own rank file and the same metadata.json listing
both; the folders merged (an S3 restore) resume at one rank with the uninterrupted run's losses;
one folder alone is refused naming the missing rank file. A shared folder still gets one commit."""
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
        print("ok  ", what, flush=True)
    else:
        FAILURES.append(what)
        print("FAIL", what, flush=True)


def args(configs, dump, *extra):
    return ["train", "--config", os.path.join(configs, "debug_model.toml"), "--training.device", "cpu",
            "--training.dataset", "synthetic", "--training.seq_len", "32", "--training.batch_size", "2",
            "--training.global_batch_size", "4",
            "--training.steps", "8", "--metrics.log_freq", "1", "--checkpoint.enable_checkpoint",
            "--checkpoint.interval", "4", "--job.dump_folder", dump, *extra]


def mpirun():
    return [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe"]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))


def losses(dump):
    with open(os.path.join(dump, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    ap.add_argument("--configs", required=True)
    a = ap.parse_args()
    if shutil.which("mpirun") is None:
        print("FAIL mpirun not found (scripts/install_deps.sh installs openmpi-bin)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "run")
        host = [os.path.join(tmp, "host0"), os.path.join(tmp, "host1")]
        # Rank 0 and rank 1 name different checkpoint folders, as two hosts' local disks.
        cmd = mpirun() + ["-np", "1", a.titan] + args(a.configs, dump, "--checkpoint.folder", host[0]) + \
            [":", "-np", "1", a.titan] + args(a.configs, dump, "--checkpoint.folder", host[1])
        r = run(cmd)
        check(r.returncode == 0, f"2 ranks train and save into their own folders ({r.stderr.strip()[-400:]})")
        if r.returncode != 0:
            return 1
        full = losses(dump)
        for step in (4, 8):
            d0, d1 = (os.path.join(h, f"step-{step}") for h in host)
            files0, files1 = sorted(os.listdir(d0)), sorted(os.listdir(d1))
            m0, m1 = open(os.path.join(d0, "metadata.json")).read(), open(os.path.join(d1, "metadata.json")).read()
            ranks = sorted({s["rank"] for s in json.loads(m0)["shards"]})
            check(files0 == ["metadata.json", "rank-00000.bin"] and files1 == ["metadata.json", "rank-00001.bin"]
                  and m0 == m1 and ranks == [0, 1],
                  f"step {step}: each folder holds its own rank file and the same metadata.json listing both "
                  f"({files0}, {files1}, ranks {ranks})")
        # One host's folder alone cannot resume: the other rank's file is named as missing.
        alone = os.path.join(tmp, "alone")
        os.makedirs(os.path.join(alone, "checkpoint"))
        shutil.copytree(os.path.join(host[0], "step-4"), os.path.join(alone, "checkpoint", "step-4"))
        r = run([a.titan] + args(a.configs, alone, "--checkpoint.load_step", "4"))
        check(r.returncode == 2 and "rank-00001.bin: missing rank file" in r.stderr,
              f"one host's folder alone is refused naming the missing file ({r.stderr.strip()[-200:]})")
        # Merged (what an S3 prefix holds once every instance has synced): resumes at one rank.
        merged = os.path.join(tmp, "merged")
        for h in host:
            shutil.copytree(os.path.join(h, "step-4"), os.path.join(merged, "checkpoint", "step-4"), dirs_exist_ok=True)
        r = run([a.titan] + args(a.configs, merged))
        ok = r.returncode == 0 and "resumed from" in r.stdout
        got = losses(merged) if ok else {}
        worst = max(abs(got[s] - full[s]) / abs(full[s]) for s in range(5, 9)) if ok and all(s in got for s in range(5, 9)) else 1
        # Measured 0 (2026-12-07): FSDP 2 and one rank with 2 micro-batches sum the same; bound as dist.data_parallel's.
        check(ok and worst < 5e-8, f"the merged folders resume at one rank with the uninterrupted losses "
                                   f"(worst relative difference {worst:.1e}; {r.stderr.strip()[-200:]})")
        # A shared folder: one commit, both files in it.
        shared = os.path.join(tmp, "shared")
        r = run(mpirun() + ["-np", "2", a.titan] + args(a.configs, shared))
        files = sorted(os.listdir(os.path.join(shared, "checkpoint", "step-8"))) if r.returncode == 0 else []
        check(files == ["metadata.json", "rank-00000.bin", "rank-00001.bin"],
              f"a shared folder holds both rank files and one metadata.json, no marks left ({files}; {r.stderr.strip()[-200:]})")
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
