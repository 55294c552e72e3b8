"""The whole model (logits, loss, every parameter gradient) against the PyTorch oracle."""
import argparse
import sys

import torch
import torch.nn.functional as F

import model_configs
import torch_llama as ref
from run_dump import dump


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    chk = ref.Checker()
    for i, cfg in enumerate(model_configs.configs(a.seed, extra=2)):
        d = dump(a.dump, "model", seed=a.seed + i, theta=500000.0, **cfg)
        params = {k[6:]: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                  for k, v in d.items() if k.startswith("param.")}
        model = ref.Llama(params, cfg["dim"], cfg["layers"], cfg["heads"], cfg["kv_heads"], 500000.0)
        logits = model.logits(torch.tensor(d["tokens"]).long())
        loss = F.cross_entropy(logits.flatten(0, 1), torch.tensor(d["labels"]).long().flatten(),
                               ignore_index=-100)
        loss.backward()
        name = " ".join(f"{k}={v}" for k, v in cfg.items())
        chk.close(f"[{name}] logits", d["logits"], logits.detach(), 1e-4)
        chk.close(f"[{name}] loss", d["loss"], loss.detach().reshape(1), 1e-4)
        for pname, p in params.items():
            chk.close(f"[{name}] grad {pname}", d["grad." + pname], p.grad, 1e-3)
    return chk.finish()


if __name__ == "__main__":
    sys.exit(main())
