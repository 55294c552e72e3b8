"""Loads a titan export with Hugging Face transformers' LlamaForCausalLM and compares its logits
with titan's own (the titan checkpoint run through tests/oracle/torch_llama.py, Meta layout).
For the GPU machine, where transformers is installed:
  python3 bench/hf_check_transformers.py DUMP/checkpoint/export-step-N DUMP/checkpoint/step-N
Exits 1 when the relative error exceeds 1e-4.
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "oracle"))
import torch_llama as ref  # noqa: E402


def titan_weights(step_dir):
    meta = json.load(open(os.path.join(step_dir, "metadata.json")))
    out = {}
    for e in meta["shards"]:
        if e["tensor"].startswith("model/"):
            with open(os.path.join(step_dir, "rank-%05d.bin" % e["rank"]), "rb") as f:
                f.seek(e["offset"])
                out[e["tensor"][6:]] = torch.tensor(np.frombuffer(f.read(e["bytes"]), np.float32).reshape(e["global_shape"]),
                                                    dtype=torch.float64)
    return out


def main():
    export, step_dir = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(export, "config.json")))
    model = LlamaForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
    tokens = torch.tensor([[5, 17, 300, 2, 99, 1000, 7, 7, 64, 12, 1500, 3]])
    with torch.no_grad():
        hf = model(tokens).logits[0].double()
    want = ref.Llama(titan_weights(step_dir), cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                     cfg["num_key_value_heads"], cfg["rope_theta"]).logits(tokens)[0]
    err = ref.rel_err(hf, want)
    print(f"transformers {__import__('transformers').__version__}: logits rel err vs titan weights {err:.2e}")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
