"""Llama 3.1 and 3.2 checkpoints through the Hugging Face boundary (issue 24), against PyPI's
transformers (4.43+, which knows rope_type "llama3"). For a Llama 3.1-style random model (RoPE
scaling) and a Llama 3.2-style one (tied embeddings and scaling factor 32), each of the debug
model's shape and saved sharded over several safetensors files: titan's import gives
transformers' logits (fp32, relative error below 1e-5) while the same weights without the
scaling (or untied) do not; converted to a titan checkpoint and exported back, it loads in
transformers with the same settings and logits; a run resumed from it with the model keys
trains, and one without them is refused as a different model.

Runs with build/venv-hf (transformers on Debian's torch 1.13)."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle"))
import tensor_file  # noqa: E402

FAILURES = []
TOKENS = [5, 17, 300, 2, 99, 1000, 7, 7, 64, 12, 1500, 3, 40, 41, 42, 43, 44, 45, 46, 47]
SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           # small, so every frequency of the short test sequence is scaled or blended
           "original_max_position_embeddings": 16}


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    if not ok:
        FAILURES.append(what)


def hf_logits(folder):
    model = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].double()


def titan_logits(dump, folder, tmp):
    out = os.path.join(tmp, "logits.bin")
    subprocess.run([dump, "hf_logits", f"dir={folder}", "tokens=" + ",".join(map(str, TOKENS)), f"out={out}"], check=True)
    return torch.tensor(tensor_file.load(out)["logits"], dtype=torch.float64)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def one_style(titan, dump, tmp, label, scaling, tied, keys):
    tmp = os.path.join(tmp, label.split()[0])
    os.makedirs(tmp)
    if True:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                             num_attention_heads=16, num_key_value_heads=16, rope_theta=500000.0, rms_norm_eps=1e-5,
                             max_position_embeddings=2048, rope_scaling=scaling, tie_word_embeddings=tied)
        hf_dir = os.path.join(tmp, "hf")
        LlamaForCausalLM(config).save_pretrained(hf_dir, max_shard_size="10MB", safe_serialization=True)
        shards = [f for f in os.listdir(hf_dir) if f.endswith(".safetensors")]
        check(len(shards) >= 2 and os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json")),
              f"{label}: transformers saved the model over {len(shards)} safetensors files with an index")
        want = hf_logits(hf_dir)
        got = titan_logits(dump, hf_dir, tmp)
        err = rel(got, want)
        check(err < 1e-5, f"{label}: titan's import of the sharded model gives transformers' logits (relative error {err:.1e})")
        # The same weights without the scaling: what ignoring rope_scaling would compute.
        plain_dir = os.path.join(tmp, "plain")
        os.makedirs(plain_dir)
        for f in os.listdir(hf_dir):
            os.link(os.path.join(hf_dir, f), os.path.join(plain_dir, f)) if f != "config.json" else None
        cfg = json.load(open(os.path.join(hf_dir, "config.json")))
        cfg["rope_scaling"] = None
        json.dump(cfg, open(os.path.join(plain_dir, "config.json"), "w"))
        unscaled = rel(titan_logits(dump, plain_dir, tmp), want)
        check(unscaled > 100 * 1e-5, f"{label}: without the scaling the logits are off by {unscaled:.1e} (the test sees RoPE scaling)")

        # HF -> titan checkpoint -> HF: the scaling survives, and so do the logits.
        ckpt = os.path.join(tmp, "dump", "checkpoint")
        r = subprocess.run([titan, "convert", "--hf", hf_dir, "--output", ckpt], capture_output=True, text=True)
        check(r.returncode == 0, f"{label}: titan convert --hf ({r.stderr.strip()[-300:]})")
        back = os.path.join(tmp, "back")
        r = subprocess.run([titan, "convert", "--checkpoint", os.path.join(ckpt, "step-0"), "--to-hf", back],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"{label}: titan convert --to-hf ({r.stderr.strip()[-300:]})")
        exported = json.load(open(os.path.join(back, "config.json")))
        check(exported.get("rope_scaling") == scaling and exported.get("tie_word_embeddings") == tied,
              f"{label}: the export's config.json keeps rope_scaling and tie_word_embeddings: {exported.get('rope_scaling')}, "
              f"{exported.get('tie_word_embeddings')}")
        err = rel(hf_logits(back), want)
        check(err < 1e-5, f"{label}: transformers loads titan's export with the same logits (relative error {err:.1e})")

        # A training step from the HF folder (initial_load_in_hf, no convert): its loss on the first
        # batch is transformers' on the same tokens (titan's own pre-tokenized shards).
        text = os.path.join(tmp, "text.jsonl")
        with open(text, "w") as f:
            for i in range(40):
                f.write(json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog, {i * 7} times."}) + "\n")
        shards = os.path.join(tmp, "shards")
        r = subprocess.run([titan, "data", "tokenize", "--input", text, "--output", shards], capture_output=True, text=True)
        step = os.path.join(tmp, "step")
        r2 = subprocess.run([titan, "train", "--training.dataset", shards, "--training.seq_len", "32", "--training.batch_size", "2",
                             "--training.steps", "1", "--metrics.log_freq", "1", "--job.dump_folder", step,
                             "--checkpoint.initial_load_path", hf_dir, "--checkpoint.initial_load_in_hf", *keys],
                            capture_output=True, text=True)
        check(r.returncode == 0 and r2.returncode == 0, f"{label}: a step from the HF folder runs ({r.stderr[-200:]} {r2.stderr[-300:]})")
        if r2.returncode == 0:
            titan_loss = json.loads(open(os.path.join(step, "metrics.jsonl")).readline())["loss"]
            tokens = torch.tensor(np.fromfile(os.path.join(shards, "shard-00000.bin"), dtype=np.uint32)[:2 * 33].astype(np.int64))
            windows = tokens.view(2, 33)
            model = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
            with torch.no_grad():
                logits = model(windows[:, :-1]).logits.double()
            want_loss = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)))
            err = abs(titan_loss - want_loss) / want_loss
            check(err < 1e-5, f"{label}: titan's first training loss {titan_loss:.6f} = transformers' {want_loss:.6f} "
                  f"on the same batch (relative {err:.1e})")

        # Training resumes from the converted checkpoint only with the same scaling.
        base = [titan, "train", "--training.dataset", "synthetic", "--training.seq_len", "32", "--training.steps", "2",
                "--metrics.log_freq", "1", "--job.dump_folder", os.path.join(tmp, "dump"), "--checkpoint.enable_checkpoint",
                "--checkpoint.interval", "100", "--model.vocab_size", "2048"]
        r = subprocess.run(base, capture_output=True, text=True)
        check(r.returncode != 0 and "saved for a different model" in r.stderr,
              f"{label}: a run without the model keys is refused as a different model ({r.stderr.strip()[-200:]})")
        r = subprocess.run(base + keys, capture_output=True, text=True)
        check(r.returncode == 0 and "resumed from" in r.stdout,
              f"{label}: with {' '.join(keys)} it resumes and trains ({r.stderr.strip()[-300:]})")


def exported_tokenizer_loads(titan, tmp):
    """A run with a tokenizer.json exports it beside the weights with a tokenizer_config.json that
    transformers' AutoTokenizer reads: the same ids as titan's, the begin/end-of-text tokens named."""
    from transformers import AutoTokenizer
    tok = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "tokenizers",
                       "llama3_tokenizer.json")
    if not os.path.exists(tok):
        print(f"SKIP the exported tokenizer.json: {tok} (from ../shared) is not here")
        return
    folder = os.path.join(tmp, "tok_export")
    r = subprocess.run([titan, "train", "--training.dataset", "synthetic", "--training.seq_len", "32", "--training.steps", "1",
                        "--model.tokenizer_path", tok, "--checkpoint.enable_checkpoint", "--checkpoint.model_weights_only",
                        "true", "--job.dump_folder", folder], capture_output=True, text=True)
    check(r.returncode == 0, f"a run with a tokenizer.json exports ({r.stderr.strip()[-300:]})")
    if r.returncode != 0:
        return
    export = os.path.join(folder, "checkpoint", "export-step-1")
    hf = AutoTokenizer.from_pretrained(export)
    text = "Hello world, a tokenizer exported beside its weights."
    enc = subprocess.run([titan, "tokenizer", "encode", "--tokenizer", tok], input=json.dumps({"text": text}) + "\n",
                         capture_output=True, text=True)
    ids = json.loads(enc.stdout)["ids"] if enc.returncode == 0 else None
    cfg = json.load(open(os.path.join(export, "config.json")))
    check(ids is not None and hf.encode(text, add_special_tokens=False) == ids
          and hf.convert_tokens_to_ids(hf.bos_token) == cfg["bos_token_id"],
          f"AutoTokenizer reads the export: titan's ids, bos {hf.bos_token} = config.json's {cfg['bos_token_id']}")


def main():
    titan, dump = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        exported_tokenizer_loads(titan, tmp)
        one_style(titan, dump, tmp, "llama3.1-style (rope scaling)", SCALING, False,
                  ["--model.rope_scaling_factor", "8", "--model.rope_original_max_positions", "16"])
        one_style(titan, dump, tmp, "llama3.2-style (tied embeddings, scaling 32)", {**SCALING, "factor": 32.0}, True,
                  ["--model.tie_word_embeddings", "--model.rope_scaling_factor", "32", "--model.rope_original_max_positions", "16"])
    print(f"{len(FAILURES)} failures")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
