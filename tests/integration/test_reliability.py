"""Reliability: the promises of docs/reliability.md, one class of fault at a time. A run owns
its folders (a kernel lock, nothing stale after kill -9); ranks with different configs or
checkpoints refuse to train together; inputs that would block (FIFOs) are refused and a second
stop signal ends a step at once; errors reading the checkpoint folder are errors, never "no
checkpoint"; non-finite state is never saved; metrics writes are checked and never leave half a
line; metadata.json is checksummed; messages name the path and the real cause; huge documents
are refused (or skipped) with bounded memory; SIGHUP stops like SIGTERM; left-out data files
and a changed global batch are stated."""
import argparse
import json
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import numpy as np

FAILURES, PASSED = [], [0]


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    (PASSED.__setitem__(0, PASSED[0] + 1) if ok else FAILURES.append(what))


BASE = ["--training.dataset", "synthetic", "--training.seq_len", "16", "--training.batch_size", "2",
        "--metrics.log_freq", "1", "--training.warmup_steps", "2", "--training.threads", "1"]


def cmd(titan, folder, *extra):
    return [titan, "train", *BASE, "--job.dump_folder", folder, *extra]


def train(titan, folder, *extra, timeout=300, **kw):
    return subprocess.run(cmd(titan, folder, *extra), capture_output=True, text=True, timeout=timeout, **kw)


def one_line(r):
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def wait_for(pred, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def wait_or_kill(p, seconds):
    """Waits for p to end; kills it if it has not after `seconds`."""
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def metrics_rows(folder):
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f]


def step_dirs(folder):
    d = os.path.join(folder, "checkpoint")
    return sorted(n for n in os.listdir(d) if n.startswith("step-")) if os.path.isdir(d) else []


# --- running as an unprivileged user, so that permissions mean something (CI runs as root) ---
def nobody_ids():
    if os.geteuid() != 0:
        return None
    e = pwd.getpwnam("nobody")
    return e.pw_uid, e.pw_gid


def demote():
    ids = nobody_ids()
    if ids:
        os.setgid(ids[1])
        os.setuid(ids[0])


def open_to_all(path):
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666)


# 1. ------------------------------------------------------------------------------------------
def test_folder_lock(titan, tmp):
    folder = os.path.join(tmp, "lock")
    log = open(os.path.join(tmp, "lock-a.log"), "w")
    a = subprocess.Popen(cmd(titan, folder, "--training.steps", "1000000", "--checkpoint.enable_checkpoint",
                             "--checkpoint.interval", "5", "--checkpoint.keep_latest_k", "2"),
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        started = wait_for(lambda: len(metrics_rows(folder)) >= 2, 120)
        check(started, "the first run is training")
        b = train(titan, folder, "--training.steps", "3", "--checkpoint.enable_checkpoint", timeout=60)
        check(b.returncode == 2 and folder in one_line(b) and f"pid {a.pid}" in one_line(b) and len(b.stderr.strip().splitlines()) == 1,
              f"a second run on the same dump folder is refused naming the folder and the owner: exit {b.returncode}, {one_line(b)[:300]}")
        check(a.poll() is None, "the first run goes on")
        other = os.path.join(tmp, "lock-other")
        c = train(titan, other, "--training.steps", "3", "--checkpoint.enable_checkpoint",
                  "--checkpoint.folder", os.path.join(folder, "checkpoint"), timeout=60)
        check(c.returncode == 2 and os.path.join(folder, "checkpoint") in one_line(c),
              f"an absolute checkpoint.folder in use by another run is refused: exit {c.returncode}, {one_line(c)[:300]}")
        # A copy of the folder's files (a restore from a backup, an S3 sync) holds no lock.
        restored = os.path.join(tmp, "lock-restored")
        os.makedirs(restored)
        for name in os.listdir(folder):
            if os.path.isfile(os.path.join(folder, name)):
                shutil.copy(os.path.join(folder, name), restored)
        d = train(titan, restored, "--training.steps", "2", timeout=60)
        check(d.returncode == 0, f"files copied from a folder in use do not block a run: exit {d.returncode}, {one_line(d)[:200]}")
    finally:
        a.kill()
        a.wait()
        log.close()
    e = train(titan, folder, "--training.steps", "3", "--checkpoint.enable_checkpoint", timeout=120)
    check(e.returncode == 0 and "in use" not in e.stderr, f"after kill -9 nothing stale blocks the folder: exit {e.returncode}, {one_line(e)[:200]}")
    same = os.path.join(tmp, "lock-same")
    f = train(titan, same, "--training.steps", "2", "--checkpoint.enable_checkpoint", "--checkpoint.folder", ".", timeout=120)
    check(f.returncode == 0 and os.path.isdir(os.path.join(same, "step-2")),
          f"a checkpoint folder that is the dump folder is locked once, not against itself: exit {f.returncode}, {one_line(f)[:200]}")


# 2. ------------------------------------------------------------------------------------------
def mpmd(titan, per_rank, timeout=180):
    """mpirun with one command line per rank."""
    argv = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe"]
    for i, args in enumerate(per_rank):
        argv += ([":"] if i else []) + ["-np", "1", titan, "train", *BASE, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_ranks_agree(titan, tmp):
    if shutil.which("mpirun") is None:
        check(False, "mpirun not found (scripts/install_deps.sh installs openmpi-bin)")
        return
    folder = os.path.join(tmp, "mpmd")
    common = ["--job.dump_folder", folder, "--training.steps", "3", "--comm.train_timeout_seconds", "30"]
    r = mpmd(titan, [common + ["--optimizer.lr", "0.001"], common + ["--optimizer.lr", "0.002"]])
    check(r.returncode != 0 and "optimizer.lr" in r.stderr and "0.001" in r.stderr and "0.002" in r.stderr
          and "step     1" not in r.stdout,
          f"ranks with different learning rates refuse to train, naming the key and both values: exit {r.returncode}, {r.stderr.strip()[-300:]}")
    r = mpmd(titan, [common + ["--model.vocab_size", "256"], common + ["--model.vocab_size", "512"]])
    said = [l for l in r.stderr.splitlines() if l.startswith("titan: error:") and "model.vocab_size" in l]
    check(r.returncode != 0 and len(said) == 1 and "256" in said[0] and "512" in said[0],
          f"a different vocab_size is one line naming it: exit {r.returncode}, {r.stderr.strip()[-300:]}")
    r = mpmd(titan, [common + ["--training.threads", "1"], ["--job.dump_folder", folder + "-rank1", "--training.steps", "3",
                                                             "--comm.train_timeout_seconds", "30", "--training.threads", "2"]])
    check(r.returncode == 0, f"per-host values (threads, dump folder) may differ: exit {r.returncode}, {r.stderr.strip()[-300:]}")
    # The same dataset at two paths trains; different content does not.
    data_a, data_b, data_c = (os.path.join(tmp, n) for n in ("data-a", "data-b", "data-c"))
    for d, text in ((data_a, "alpha beta gamma "), (data_b, "alpha beta gamma "), (data_c, "delta epsilon zeta eta ")):
        os.makedirs(d)
        with open(os.path.join(d, "train.jsonl"), "w") as f:
            for i in range(50):
                f.write(json.dumps({"text": text * (10 + i)}) + "\n")
    text_args = ["--job.dump_folder", folder + "-text", "--training.steps", "2", "--comm.train_timeout_seconds", "30",
                 "--training.dataset_path", ""]
    r = mpmd(titan, [text_args + ["--training.dataset", data_a], text_args + ["--training.dataset", data_b]])
    check(r.returncode == 0, f"the same data files at two paths train together: exit {r.returncode}, {r.stderr.strip()[-300:]}")
    r = mpmd(titan, [text_args + ["--training.dataset", data_a], text_args + ["--training.dataset", data_c]])
    check(r.returncode != 0 and "training.dataset" in r.stderr and "step     1" not in r.stdout,
          f"different data files refuse to train together: exit {r.returncode}, {r.stderr.strip()[-300:]}")
    # Rank-local folders holding different checkpoints: the ranks would resume at different steps.
    p, q = os.path.join(tmp, "ckpt-p"), os.path.join(tmp, "ckpt-q")
    for f, steps in ((p, "4"), (q, "2")):
        r = train(titan, f, "--training.steps", steps, "--checkpoint.enable_checkpoint", "--checkpoint.interval", "2")
        check(r.returncode == 0, f"checkpoint at step {steps} for the mismatch test")
    extra = ["--training.steps", "6", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "2",
             "--comm.train_timeout_seconds", "20"]
    t0 = time.time()
    r = mpmd(titan, [["--job.dump_folder", p, *extra], ["--job.dump_folder", q, *extra]])
    check(r.returncode != 0 and "step-4" in r.stderr and "step-2" in r.stderr and time.time() - t0 < 15,
          f"ranks that would resume from different checkpoints refuse at once, naming both: exit {r.returncode}, "
          f"{time.time() - t0:.0f} s, {r.stderr.strip()[-300:]}")


# 3. ------------------------------------------------------------------------------------------
def test_inputs_that_block(titan, tmp):
    fifo = os.path.join(tmp, "fifo.jsonl")
    os.mkfifo(fifo)
    folder = os.path.join(tmp, "fifo")
    for what, args in (("dataset", ["--training.dataset", fifo, "--training.steps", "2"]),
                       ("tokenizer", ["--model.tokenizer_path", fifo, "--training.dataset", "c4_test", "--training.steps", "2"]),
                       ("--config", ["--config", fifo])):
        try:
            r = train(titan, folder, *args, timeout=30)
            check(r.returncode == 2 and fifo in one_line(r) and "FIFO" in one_line(r),
                  f"a FIFO as {what} is refused: exit {r.returncode}, {one_line(r)[:200]}")
        except subprocess.TimeoutExpired:
            check(False, f"a FIFO as {what} is refused (it hung for 30 s)")
    # A long step: the first SIGTERM waits for it (then saves), a second one ends the process at once.
    slow = os.path.join(tmp, "slow")
    out = open(os.path.join(tmp, "slow.log"), "w")
    p = subprocess.Popen([titan, "train", "--training.dataset", "synthetic", "--training.seq_len", "4096",
                          "--training.batch_size", "16", "--training.steps", "100", "--metrics.log_freq", "1",
                          "--job.dump_folder", slow, "--training.threads", "1"], stdout=out, stderr=subprocess.STDOUT)
    started = wait_for(lambda: "step 1 still running" in open(os.path.join(tmp, "slow.log")).read()
                       or "step     1" in open(os.path.join(tmp, "slow.log")).read(), 120)
    p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    wait_or_kill(p, 5)
    out.close()
    check(started and time.time() - t0 < 5 and p.returncode != 0,
          f"a second SIGTERM ends a long step at once: {time.time() - t0:.1f} s, exit {p.returncode}")


# 4. ------------------------------------------------------------------------------------------
def test_checkpoint_folder_errors(titan, tmp):
    root = os.path.join(tmp, "perm")
    os.makedirs(root)
    os.chmod(tmp, 0o755)
    os.chmod(root, 0o777)
    binary = os.path.join(root, "titan")
    shutil.copy(titan, binary)
    os.chmod(binary, 0o755)
    folder = os.path.join(root, "run")
    r = train(binary, folder, "--training.steps", "4", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "2",
              preexec_fn=demote)
    check(r.returncode == 0 and step_dirs(folder) == ["step-2", "step-4"], f"two checkpoints to protect: {r.stderr[-200:]}")
    ckpt = os.path.join(folder, "checkpoint")
    before = open(os.path.join(ckpt, "step-4", "metadata.json")).read()
    os.chmod(ckpt, 0o000)
    try:
        r = train(binary, folder, "--training.steps", "8", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "2",
                  preexec_fn=demote)
    finally:
        os.chmod(ckpt, 0o777)
    check(r.returncode == 2 and ckpt in one_line(r) and "ermission denied" in one_line(r) and "step     1" not in r.stdout,
          f"a checkpoint folder that cannot be listed is an error, not an empty folder: exit {r.returncode}, {one_line(r)[:200]}")
    check(step_dirs(folder) == ["step-2", "step-4"] and open(os.path.join(ckpt, "step-4", "metadata.json")).read() == before,
          f"nothing saved was replaced: {step_dirs(folder)}")
    # A deliberate resume from an earlier step replaces the later one by a swap, leaving no leftovers.
    r = train(binary, folder, "--training.steps", "4", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "2",
              "--checkpoint.load_step", "2", "--optimizer.lr", "0.0005", preexec_fn=demote)
    after = json.load(open(os.path.join(ckpt, "step-4", "metadata.json")))
    check(r.returncode == 0 and step_dirs(folder) == ["step-2", "step-4"] and "lr = 0.0005" in after["state"]["config"],
          f"load_step 2 replaced step-4 with the new run's state, no leftovers: {step_dirs(folder)}")


# 5. ------------------------------------------------------------------------------------------
def read_checkpoint(step_dir):
    meta = json.load(open(os.path.join(step_dir, "metadata.json")))
    out = {}
    for e in meta["shards"]:
        with open(os.path.join(step_dir, f"rank-{e['rank']:05d}.bin"), "rb") as f:
            f.seek(e["offset"])
            out[e["tensor"]] = np.frombuffer(f.read(e["bytes"]), dtype=np.float32)
    return out


def test_nonfinite_state(titan, tmp):
    folder = os.path.join(tmp, "nonfinite")
    for key, value in (("optimizer.lr", "1e308"), ("optimizer.eps", "1e-300"), ("optimizer.weight_decay", "1e308")):
        r = train(titan, folder, "--training.steps", "2", f"--{key}", value)
        check(r.returncode == 2 and key in one_line(r) and "expected" in one_line(r),
              f"{key} = {value} is refused with the valid range: exit {r.returncode}, {one_line(r)[:200]}")
    # An lr that passes validation but overflows the AdamW moments: no checkpoint or export may hold it.
    r = train(titan, folder, "--training.steps", "2", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "1")
    check(r.returncode == 0, "two finite checkpoints first")
    r = train(titan, folder, "--training.steps", "4", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "1",
              "--optimizer.lr", "3e38", "--training.warmup_steps", "1", "--optimizer.weight_decay", "0", "--training.max_norm", "0",
              "--training.on_nonfinite", "skip", "--checkpoint.model_weights_only")
    bad = []
    for d in step_dirs(folder):
        if d.startswith("step-") and d[5:].isdigit():
            for name, t in read_checkpoint(os.path.join(folder, "checkpoint", d)).items():
                if not np.isfinite(t).all():
                    bad.append(f"{d}:{name}")
    check(not bad, f"no checkpoint holds non-finite values: {bad[:3]}")
    check(r.returncode == 2 and "not finite" in one_line(r) and "checkpoint.load_step = 2" in one_line(r),
          f"the save that would hold them is an error naming the tensor and how to resume: exit {r.returncode}, {one_line(r)[:300]}")
    export = os.path.join(folder, "checkpoint", "export-step-4")
    check(not os.path.exists(export), "no export of a non-finite model")
    # inspect --verify reads the values, not only their checksums.
    good = os.path.join(tmp, "finite")
    r = train(titan, good, "--training.steps", "2", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "2")
    step = os.path.join(good, "checkpoint", "step-2")
    meta = json.load(open(os.path.join(step, "metadata.json")))
    import xxhash
    entry = meta["shards"][0]
    with open(os.path.join(step, "rank-00000.bin"), "r+b") as f:
        f.seek(entry["offset"])
        data = bytearray(f.read(entry["bytes"]))
        data[0:4] = np.array([np.nan], dtype=np.float32).tobytes()
        f.seek(entry["offset"])
        f.write(data)
    entry["xxh3"] = format(xxhash.xxh3_64_intdigest(bytes(data)), "x")
    meta.pop("metadata_xxh3", None)  # a checkpoint written before metadata checksums
    json.dump(meta, open(os.path.join(step, "metadata.json"), "w"))
    v = subprocess.run([titan, "inspect", step, "--verify"], capture_output=True, text=True)
    check(v.returncode == 2 and entry["tensor"] in v.stderr and "not finite" in v.stderr,
          f"inspect --verify refuses a NaN whose checksum matches: exit {v.returncode}, {v.stderr.strip()[:200]}")


# 6. ------------------------------------------------------------------------------------------
def test_metrics_write_failures(titan, tmp):
    folder = os.path.join(tmp, "fsize")

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # as a shell would leave it
        resource.setrlimit(resource.RLIMIT_FSIZE, (24000, 24000))

    r = train(titan, folder, "--training.steps", "120", "--metrics.enable_tensorboard", preexec_fn=small_files)
    rows = metrics_rows(folder)
    parsed = 0
    for line in rows:
        try:
            json.loads(line)
            parsed += line.endswith("\n")
        except ValueError:
            pass
    check(r.returncode == 0, f"the run goes on when metrics cannot be written: exit {r.returncode}, {r.stderr.strip()[-200:]}")
    check(0 < parsed == len(rows), f"metrics.jsonl holds only whole lines: {parsed} of {len(rows)}")
    warn = [l for l in (r.stdout + r.stderr).splitlines() if "metrics.jsonl" in l and "warning" in l]
    check(len(warn) == 1, f"the first failed metrics write is reported once: {warn[:2]}")
    tb = [l for l in (r.stdout + r.stderr).splitlines() if "tfevents" in l and "warning" in l]
    check(len(tb) == 1, f"the first failed TensorBoard write is reported once: {tb[:2]}")


# 7. ------------------------------------------------------------------------------------------
def test_metadata_checksum(titan, tmp):
    folder = os.path.join(tmp, "metasum")
    r = train(titan, folder, "--training.steps", "2", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "2")
    path = os.path.join(folder, "checkpoint", "step-2", "metadata.json")
    m = json.load(open(path))
    state = json.loads(m["state"]["data"])
    key = next(k for k, v in state.items() if isinstance(v, int))
    state[key] += 1
    m["state"]["data"] = json.dumps(state)
    json.dump(m, open(path, "w"), indent=1)
    r = train(titan, folder, "--training.steps", "4", "--checkpoint.enable_checkpoint")
    check(r.returncode == 2 and path in one_line(r) and "checksum" in one_line(r),
          f"a changed value in metadata.json is refused at resume: exit {r.returncode}, {one_line(r)[:200]}")
    v = subprocess.run([titan, "inspect", os.path.dirname(path), "--verify"], capture_output=True, text=True)
    check(v.returncode == 2 and "checksum" in v.stderr, f"and by inspect --verify: exit {v.returncode}")


# 8. ------------------------------------------------------------------------------------------
def test_messages(titan, tmp):
    def fresh(name):
        f = os.path.join(tmp, name)
        r = train(titan, f, "--training.steps", "3", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "3")
        assert r.returncode == 0, r.stderr
        return f, os.path.join(f, "checkpoint", "step-3")

    f, step = fresh("msg-rank")
    os.remove(os.path.join(step, "rank-00000.bin"))
    os.mkdir(os.path.join(step, "rank-00000.bin"))
    r = train(titan, f, "--training.steps", "5", "--checkpoint.enable_checkpoint")
    check(r.returncode == 2 and "rank-00000.bin" in one_line(r) and "directory" in one_line(r),
          f"a rank file that is a directory says so: {one_line(r)[:200]}")
    f, step = fresh("msg-meta")
    os.remove(os.path.join(step, "metadata.json"))
    os.mkdir(os.path.join(step, "metadata.json"))
    r = train(titan, f, "--training.steps", "5", "--checkpoint.enable_checkpoint")
    check(r.returncode == 2 and "metadata.json" in one_line(r) and "directory" in one_line(r),
          f"metadata.json that is a directory: exit {r.returncode}, {one_line(r)[:200]}")
    f, step = fresh("msg-zero")
    os.rename(step, os.path.join(f, "checkpoint", "step-03"))
    r = train(titan, f, "--training.steps", "5", "--checkpoint.enable_checkpoint")
    check(r.returncode == 2 and "step-03" in one_line(r) and "step-3/" not in one_line(r),
          f"a folder step-03 is named as it is: exit {r.returncode}, {one_line(r)[:200]}")
    tokdir = os.path.join(tmp, "tokdir")
    os.makedirs(tokdir)
    r = train(titan, os.path.join(tmp, "msg-tok"), "--model.tokenizer_path", tokdir, "--training.dataset", "c4_test",
              "--training.steps", "1")
    check(r.returncode == 2 and tokdir in one_line(r) and "directory" in one_line(r) and "empty" not in one_line(r),
          f"a tokenizer path that is a directory says so: {one_line(r)[:200]}")
    bad = os.path.join(tmp, "bad-utf8.jsonl")
    with open(bad, "wb") as out:
        out.write(b'{"text": "fine text here"}\n{"text": "caf\xe9 au lait"}\n')
    r = train(titan, os.path.join(tmp, "msg-utf8"), "--training.dataset", bad, "--training.steps", "2",
              "--training.seq_len", "64")
    check(r.returncode == 2 and f"{bad}:2" in one_line(r) and "UTF-8" in one_line(r),
          f"invalid UTF-8 inside a JSON string says UTF-8: {one_line(r)[:200]}")
    if nobody_ids():  # permissions bind only an unprivileged user
        f, step = fresh("msg-perm")
        open_to_all(f)
        os.chmod(tmp, 0o755)
        os.chmod(os.path.join(step, "metadata.json"), 0o000)
        r = train(titan, f, "--training.steps", "5", "--checkpoint.enable_checkpoint", preexec_fn=demote)
        check(r.returncode == 2 and "metadata.json" in one_line(r) and "ermission denied" in one_line(r)
              and "not a titan checkpoint" not in one_line(r),
              f"an unreadable metadata.json says permission denied: {one_line(r)[:200]}")


# 9. ------------------------------------------------------------------------------------------
def run_measured(argv, tmp, timeout=300):
    """Exit code, stdout, stderr and peak RSS (MiB) of one child process."""
    with open(os.path.join(tmp, "measured.out"), "w") as o, open(os.path.join(tmp, "measured.err"), "w") as e:
        p = subprocess.Popen(argv, stdout=o, stderr=e)
        deadline = time.time() + timeout
        while True:  # os.wait4, not p.wait: it returns the child's own peak RSS
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
            time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    read = lambda n: open(os.path.join(tmp, n)).read()
    return subprocess.CompletedProcess(argv, p.returncode, read("measured.out"), read("measured.err")), usage.ru_maxrss / 1024


def test_huge_document(titan, tmp):
    data = os.path.join(tmp, "huge")
    os.makedirs(data)
    with open(os.path.join(data, "a_train.jsonl"), "w") as f:
        f.write('{"text": "' + "x" * (33 << 20) + '"}\n')
        for i in range(400):
            f.write(json.dumps({"text": "a small document number %d. " % i * 20}) + "\n")
        for i in range(40):
            f.write(json.dumps({"text": "another small document %d. " % i * 20}) + "\n")
    argv = [titan, "train", "--training.dataset", data, "--training.seq_len", "64", "--training.batch_size", "2",
            "--training.steps", "4", "--metrics.log_freq", "2", "--job.dump_folder", os.path.join(tmp, "huge-run")]
    r, _ = run_measured(argv, tmp)
    check(r.returncode == 2 and "a_train.jsonl:1:" in one_line(r) and "MiB" in one_line(r),
          f"a 33 MiB document is refused with the maximum size: exit {r.returncode}, {one_line(r)[:200]}")
    r, peak_mib = run_measured(argv + ["--training.skip_bad_records"], tmp)
    check(r.returncode == 0 and "a_train.jsonl:1:" in r.stderr,
          f"skip_bad_records skips it and trains on: exit {r.returncode}, {r.stderr.strip()[-200:]}")
    check(peak_mib < 1024, f"memory stays bounded while skipping it: peak {peak_mib:.0f} MiB")


# 10. -----------------------------------------------------------------------------------------
def test_sighup(titan, tmp):
    folder = os.path.join(tmp, "hup")
    log = open(os.path.join(tmp, "hup.log"), "w")
    p = subprocess.Popen(cmd(titan, folder, "--training.steps", "1000000", "--checkpoint.enable_checkpoint",
                             "--checkpoint.interval", "100000"), stdout=log, stderr=subprocess.STDOUT)
    check(wait_for(lambda: len(metrics_rows(folder)) >= 3, 120), "training before SIGHUP")
    p.send_signal(signal.SIGHUP)
    wait_or_kill(p, 60)
    log.close()
    text = open(os.path.join(tmp, "hup.log")).read()
    check(p.returncode == 0 and "SIGHUP" in text and "stopped cleanly" in text and step_dirs(folder),
          f"SIGHUP saves and stops like SIGTERM: exit {p.returncode}, {step_dirs(folder)}, {text.strip()[-200:]}")
    # Under nohup (SIGHUP ignored when titan starts) a hang-up is not a stop.
    folder = os.path.join(tmp, "nohup")
    p = subprocess.Popen(cmd(titan, folder, "--training.steps", "1000000"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for(lambda: len(metrics_rows(folder)) >= 2, 120)
    p.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    alive = p.poll() is None
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    check(alive and p.returncode == 0, f"under nohup SIGHUP is ignored, SIGTERM still stops cleanly: alive {alive}, exit {p.returncode}")


# 11. -----------------------------------------------------------------------------------------
def test_data_changes(titan, tmp):
    mix = os.path.join(tmp, "mix")
    os.makedirs(mix)
    for name in ("a.jsonl", "train_b.jsonl"):
        with open(os.path.join(mix, name), "w") as f:
            for i in range(30):
                f.write(json.dumps({"text": f"{name} document {i} " * 30}) + "\n")
    r = train(titan, os.path.join(tmp, "mix-run"), "--training.dataset", mix, "--training.steps", "1",
              "--training.seq_len", "64")
    said = [l for l in r.stdout.splitlines() if "a.jsonl" in l]
    check(r.returncode == 0 and said and "train" in said[0],
          f"a file of the folder that is left out is named, with the reason: {said[:1]} {one_line(r)[:200]}")
    if shutil.which("mpirun") is None:
        check(False, "mpirun not found")
        return
    folder = os.path.join(tmp, "batch")
    two = subprocess.run([shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", "2",
                          *cmd(titan, folder, "--training.steps", "2", "--checkpoint.enable_checkpoint",
                               "--checkpoint.interval", "2")],
                         capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    check(two.returncode == 0, f"2 ranks save a checkpoint: {two.stderr.strip()[-200:]}")
    one = train(titan, folder, "--training.steps", "4", "--checkpoint.enable_checkpoint", "--checkpoint.interval", "2")
    said = [l for l in one.stdout.splitlines() if "global batch" in l]
    check(one.returncode == 0 and said and "4" in said[0] and "2" in said[0],
          f"resuming at another rank count states the changed global batch: {said[:1]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    tests = [test_folder_lock, test_ranks_agree, test_inputs_that_block, test_checkpoint_folder_errors,
             test_nonfinite_state, test_metrics_write_failures, test_metadata_checksum, test_messages,
             test_huge_document, test_sighup, test_data_changes]
    with tempfile.TemporaryDirectory() as tmp:
        for t in tests:
            if a.only and a.only not in t.__name__:
                continue
            t0 = time.time()
            try:
                t(os.path.abspath(a.titan), tmp)
            except Exception as e:  # a crash inside a test is a failure of that class, not the end of the run
                check(False, f"{t.__name__} raised {type(e).__name__}: {e}")
            print(f"     {t.__name__}: {time.time() - t0:.1f} s", flush=True)
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
