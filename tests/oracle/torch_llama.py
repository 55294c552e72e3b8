"""An independent Llama 3 in PyTorch (torchtitan's formulation), used as the oracle.

Computes in float64 so the oracle's own rounding does not hide titan's fp32 errors.
"""
import math

import torch
import torch.nn.functional as F


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def freqs_cis(head_dim, seq, theta):
    # torchtitan computes the frequencies in fp32; the oracle follows it there.
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    t = torch.arange(seq, dtype=torch.float64)
    angles = torch.outer(t, freqs.double())
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x, fc):
    # x: [b, t, h, hd]; pairs (2i, 2i+1) are the real and imaginary parts.
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * fc[None, :, None, :]).flatten(3)
    return out


def attention(q, k, v):
    # q: [b, t, h, hd], k/v: [b, t, kv, hd]; causal, grouped-query.
    b, t, h, hd = q.shape
    rep = h // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def swiglu(a, b):
    return F.silu(a) * b


class Llama:
    def __init__(self, params, dim, layers, heads, kv_heads, theta, eps=1e-5):
        self.p = params
        self.dim, self.layers, self.heads, self.kv_heads = dim, layers, heads, kv_heads
        self.hd, self.theta, self.eps = dim // heads, theta, eps

    def logits(self, tokens):
        p, b, t = self.p, tokens.shape[0], tokens.shape[1]
        fc = freqs_cis(self.hd, t, self.theta)
        x = p["tok_embeddings.weight"][tokens]
        for i in range(self.layers):
            L = lambda n: p[f"layers.{i}.{n}"]
            xn = rmsnorm(x, L("attention_norm.weight"), self.eps)
            q = (xn @ L("attention.wq.weight").T).view(b, t, self.heads, self.hd)
            k = (xn @ L("attention.wk.weight").T).view(b, t, self.kv_heads, self.hd)
            v = (xn @ L("attention.wv.weight").T).view(b, t, self.kv_heads, self.hd)
            o = attention(apply_rope(q, fc), apply_rope(k, fc), v).reshape(b, t, -1)
            h = x + o @ L("attention.wo.weight").T
            hn = rmsnorm(h, L("ffn_norm.weight"), self.eps)
            ff = swiglu(hn @ L("feed_forward.w1.weight").T, hn @ L("feed_forward.w3.weight").T)
            x = h + ff @ L("feed_forward.w2.weight").T
        return rmsnorm(x, p["norm.weight"], self.eps) @ p["output.weight"].T


def rel_err(a, b):
    """Relative L2 error of a against the reference b."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


class Checker:
    """Collects comparisons, prints each, and says at the end whether all passed."""

    def __init__(self):
        self.failures, self.count = [], 0

    def close(self, what, got, want, tol):
        err = rel_err(got, want)
        self.count += 1
        ok = err < tol
        print(f"{'ok  ' if ok else 'FAIL'} {what}: rel err {err:.2e} (tol {tol:.0e})")
        if not ok:
            self.failures.append(what)

    def finish(self):
        print(f"{self.count - len(self.failures)} passed, {len(self.failures)} failed")
        return 1 if self.failures else 0
