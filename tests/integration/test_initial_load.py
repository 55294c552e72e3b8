"""Starting from weights elsewhere, torchtitan's keys (issue 24): checkpoint.initial_load_path with
initial_load_in_hf starts training from a Hugging Face folder with no convert step, and gives the
losses of a run resumed from `titan convert`'s import, bit for bit; from a titan step folder
likewise; it applies only while the run's checkpoint folder is empty (a resumed run does not
reload it); checkpoint.last_save_in_hf writes the final weights as an HF folder sharded like
Meta's (index + files), which round-trips: starting from it equals starting from the final
checkpoint; bad paths and other models are one-line errors."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

FAILURES = []


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        FAILURES.append(what)


def train(titan, folder, steps, *extra):
    cmd = [titan, "train", "--training.dataset", "synthetic", "--training.seq_len", "32", "--training.batch_size", "2",
           "--training.steps", str(steps), "--metrics.log_freq", "1", "--job.dump_folder", folder,
           "--checkpoint.enable_checkpoint", "--checkpoint.interval", "100", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def losses(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, f)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--titan", required=True)
    titan = ap.parse_args().titan
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "source")
        r = train(titan, src, 3, "--checkpoint.model_weights_only", "--checkpoint.last_save_in_hf",
                  "--checkpoint.last_save_model_only", "--checkpoint.hf_max_shard_mb", "10")
        check(r.returncode == 0, f"a source run exports its weights ({r.stderr.strip()[-300:]})")
        hf = os.path.join(src, "checkpoint", "export-step-3")
        step3 = os.path.join(src, "checkpoint", "step-3")

        # last_save_in_hf: sharded like Meta's.
        sharded = os.path.join(src, "checkpoint", "hf-step-3")
        files = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors")) if os.path.isdir(sharded) else []
        index = os.path.join(sharded, "model.safetensors.index.json")
        check(len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors" and os.path.exists(index),
              f"last_save_in_hf wrote {len(files)} shards with an index: {files[:2]}")
        if os.path.exists(index):
            mapped = set(json.load(open(index))["weight_map"].values())
            check(mapped == set(files), "the index maps every tensor to one of the shard files")

        # From an HF folder, no convert step ...
        direct = os.path.join(tmp, "direct")
        r = train(titan, direct, 3, "--checkpoint.initial_load_path", hf, "--checkpoint.initial_load_in_hf")
        check(r.returncode == 0 and "started from the weights of" in r.stdout,
              f"initial_load_in_hf starts from the HF folder ({r.stderr.strip()[-300:]})")
        # ... against titan convert, then a resume.
        converted = os.path.join(tmp, "converted")
        c = subprocess.run([titan, "convert", "--hf", hf, "--output", os.path.join(converted, "checkpoint")],
                           capture_output=True, text=True)
        r2 = train(titan, converted, 3)
        check(c.returncode == 0 and r2.returncode == 0, f"the converted folder trains ({c.stderr.strip()[-200:]} {r2.stderr.strip()[-200:]})")
        if r.returncode == 0 and r2.returncode == 0:
            check(losses(direct) == losses(converted), "initial_load_in_hf = titan convert + resume: losses and grad norms bit for bit")

        # From a titan step folder: the same weights (the export is float32).
        from_titan = os.path.join(tmp, "from_titan")
        r3 = train(titan, from_titan, 3, "--checkpoint.initial_load_path", step3)
        check(r3.returncode == 0 and r.returncode == 0 and losses(from_titan) == losses(direct),
              f"initial_load_path = a titan step folder gives the same losses ({r3.stderr.strip()[-200:]})")

        # Under FSDP each rank takes its own rows: 2 ranks x 1 sequence against one rank's 2.
        if shutil.which("mpirun") and r.returncode == 0:
            fsdp = os.path.join(tmp, "fsdp")
            cmd = [shutil.which("mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", "2", titan, "train",
                   "--training.dataset", "synthetic", "--training.seq_len", "32", "--training.batch_size", "1",
                   "--training.steps", "3", "--metrics.log_freq", "1", "--job.dump_folder", fsdp,
                   "--checkpoint.initial_load_path", hf, "--checkpoint.initial_load_in_hf"]
            rf = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            ok = rf.returncode == 0
            worst = max(abs(x[1] - y[1]) / y[1] for x, y in zip(losses(fsdp), losses(direct))) if ok else float("nan")
            check(ok and worst < 1e-6, f"FSDP over 2 ranks starts from the same weights: losses within 1e-6 (worst {worst:.1e})")

        # The HF folder's tokenizer.json is the run's tokenizer unless model.tokenizer_path names one
        # (a small byte-level BPE trained here with PyPI tokenizers, as Llama 3's is byte-level).
        from tokenizers import ByteLevelBPETokenizer
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator([f"the quick brown fox jumps over the lazy dog {i}" for i in range(200)], vocab_size=400,
                                min_frequency=1, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"])
        with_tok = os.path.join(tmp, "hf_with_tokenizer")
        shutil.copytree(hf, with_tok)
        bpe.save(os.path.join(with_tok, "tokenizer.json"))
        rt = train(titan, os.path.join(tmp, "tok"), 1, "--checkpoint.initial_load_path", with_tok,
                   "--checkpoint.initial_load_in_hf", "--model.vocab_size", "2048")
        check(rt.returncode == 0 and f"tokenizer: {with_tok}/tokenizer.json (the Hugging Face folder's" in rt.stdout,
              f"the HF folder's tokenizer.json becomes the run's tokenizer ({rt.stderr.strip()[-200:]})")

        # A resumed run does not reload the initial weights.
        r4 = train(titan, direct, 5, "--checkpoint.initial_load_path", hf, "--checkpoint.initial_load_in_hf")
        check(r4.returncode == 0 and "resumed from" in r4.stdout and "started from the weights of" not in r4.stdout
              and "is not read again" in r4.stdout, "a resumed run resumes and does not read initial_load_path again")

        # last_save_in_hf round-trips: starting from it = starting from the final checkpoint.
        a, b = os.path.join(tmp, "from_sharded"), os.path.join(tmp, "from_step3")
        ra = train(titan, a, 2, "--checkpoint.initial_load_path", sharded, "--checkpoint.initial_load_in_hf")
        rb = train(titan, b, 2, "--checkpoint.initial_load_path", step3)
        check(ra.returncode == 0 and rb.returncode == 0 and losses(a) == losses(b),
              f"the sharded last save round-trips: its losses are the final checkpoint's ({ra.stderr.strip()[-200:]})")

        # Exporting again into the sharded folder as one file leaves no stale shards or index behind.
        rc = subprocess.run([titan, "convert", "--checkpoint", step3, "--to-hf", sharded], capture_output=True, text=True)
        left = sorted(f for f in os.listdir(sharded) if f.startswith("model"))
        check(rc.returncode == 0 and left == ["model.safetensors"], f"a re-export replaces the earlier shards and index: {left}")

        # Bad input: one line, non-zero, nothing trained.
        bad = [("a missing folder", ["--checkpoint.initial_load_path", os.path.join(tmp, "nowhere"), "--checkpoint.initial_load_in_hf"],
                "config.json: missing"),
               ("another model", ["--checkpoint.initial_load_path", hf, "--checkpoint.initial_load_in_hf", "--model.vocab_size", "4096"],
                "saved for a different model: vocab_size"),
               ("in_hf without a path", ["--checkpoint.initial_load_in_hf"], "needs checkpoint.initial_load_path"),
               ("last_save_in_hf without model_only", ["--checkpoint.last_save_in_hf"], "needs checkpoint.last_save_model_only")]
        for i, (what, flags, message) in enumerate(bad):
            r = train(titan, os.path.join(tmp, f"bad{i}"), 2, *flags)
            lines = [l for l in r.stderr.strip().splitlines() if l]
            check(r.returncode != 0 and len(lines) == 1 and message in lines[0], f"{what}: one-line error ({lines[-1:] if lines else ''})")
    print(f"{len(FAILURES)} failures")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
