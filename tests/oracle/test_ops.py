"""Every CPU op, forward and backward, against PyTorch autograd on random shapes."""
import argparse
import random
import sys

import torch
import torch.nn.functional as F

import torch_llama as ref
from run_dump import dump

FWD_TOL, GRAD_TOL = 1e-4, 1e-3


def t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    chk = ref.Checker()
    for r in range(a.rounds):
        seed = rng.randint(1, 10**6)

        n, fi, fo = rng.randint(1, 70), rng.randint(1, 90), rng.randint(1, 80)
        d = dump(a.dump, "op linear", **{"n": n, "in_features": fi, "out_features": fo, "seed": seed})
        x, w = t(d["x"], True), t(d["w"], True)
        y = x @ w.T
        y.backward(t(d["dy"]))
        chk.close(f"linear {n}x{fi}->{fo} fwd", d["y"], y.detach(), FWD_TOL)
        chk.close(f"linear dx", d["dx"], x.grad, GRAD_TOL)
        chk.close(f"linear dw", d["dw"], w.grad, GRAD_TOL)

        n, dim = rng.randint(1, 50), rng.randint(2, 300)
        # Inputs of scale 2 hide eps (mean square 4 against 1e-5: eps moves y by ~1e-6); scale 3e-3
        # makes the mean square ~1e-5, where dropping eps moves y by ~46% (measured).
        for x_scale in (2.0, 3e-3):
            d = dump(a.dump, "op rmsnorm", **{"n": n, "d": dim, "seed": seed, "x_scale": x_scale})
            x, w = t(d["x"], True), t(d["w"], True)
            y = ref.rmsnorm(x, w)
            y.backward(t(d["dy"]))
            chk.close(f"rmsnorm {n}x{dim} x scale {x_scale} fwd", d["y"], y.detach(), FWD_TOL)
            chk.close(f"rmsnorm dx", d["dx"], x.grad, GRAD_TOL)
            chk.close(f"rmsnorm dw", d["dw"], w.grad, GRAD_TOL)

        b, s, h, hd = rng.randint(1, 3), rng.randint(1, 40), rng.randint(1, 5), 2 * rng.randint(1, 12)
        theta = rng.choice([10000.0, 500000.0])
        d = dump(a.dump, "op rope", **{"batch": b, "seq": s, "heads": h, "head_dim": hd, "theta": theta, "seed": seed})
        x = t(d["x"], True)
        y = ref.apply_rope(x, ref.freqs_cis(hd, s, theta))
        y.backward(t(d["dy"]))
        chk.close(f"rope b{b} t{s} h{h} hd{hd} fwd", d["y"], y.detach(), FWD_TOL)
        chk.close(f"rope dx", d["dx"], x.grad, GRAD_TOL)

        kv = rng.randint(1, 3)
        h = kv * rng.randint(1, 4)
        b, s, hd = rng.randint(1, 3), rng.randint(1, 200), rng.randint(1, 24)
        d = dump(a.dump, "op attention", **{"batch": b, "seq": s, "heads": h, "kv_heads": kv, "head_dim": hd, "seed": seed})
        q, k, v = t(d["q"], True), t(d["k"], True), t(d["v"], True)
        o = ref.attention(q, k, v)
        o.backward(t(d["dy"]))
        name = f"attention b{b} t{s} h{h} kv{kv} hd{hd}"
        chk.close(f"{name} fwd", d["o"], o.detach(), FWD_TOL)
        chk.close(f"{name} dq", d["dq"], q.grad, GRAD_TOL)
        chk.close(f"{name} dk", d["dk"], k.grad, GRAD_TOL)
        chk.close(f"{name} dv", d["dv"], v.grad, GRAD_TOL)

        n = rng.randint(1, 5000)
        d = dump(a.dump, "op swiglu", **{"n": n, "seed": seed})
        x, y2 = t(d["a"], True), t(d["b"], True)
        g = ref.swiglu(x, y2)
        g.backward(t(d["dg"]))
        chk.close(f"swiglu {n} fwd", d["g"], g.detach(), FWD_TOL)
        chk.close(f"swiglu da", d["da"], x.grad, GRAD_TOL)
        chk.close(f"swiglu db", d["db"], y2.grad, GRAD_TOL)

        n, vocab, dim = rng.randint(1, 300), rng.randint(2, 60), rng.randint(1, 40)
        d = dump(a.dump, "op embedding", **{"n": n, "vocab": vocab, "d": dim, "seed": seed})
        w = t(d["w"], True)
        y = w[torch.tensor(d["tokens"]).long()]
        y.backward(t(d["dy"]))
        chk.close(f"embedding {n} tokens vocab {vocab} fwd", d["y"], y.detach(), FWD_TOL)
        chk.close(f"embedding dw", d["dw"], w.grad, GRAD_TOL)

        n, dim, vocab = rng.randint(2, 300), rng.randint(1, 64), rng.randint(2, 3000)
        d = dump(a.dump, "op cross_entropy", **{"n": n, "d": dim, "vocab": vocab, "seed": seed})
        hh, w = t(d["h"], True), t(d["w"], True)
        loss = F.cross_entropy(hh @ w.T, torch.tensor(d["labels"]).long(), ignore_index=-100)
        loss.backward()
        chk.close(f"cross_entropy n{n} d{dim} vocab{vocab} loss", d["loss"], loss.detach().reshape(1), 1e-4)
        chk.close(f"cross_entropy dh", d["dh"], hh.grad, GRAD_TOL)
        chk.close(f"cross_entropy dw", d["dw"], w.grad, GRAD_TOL)
    return chk.finish()


if __name__ == "__main__":
    sys.exit(main())
