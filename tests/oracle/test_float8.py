"""Float8 emulation against independent references: titan's saturating casts against PyPI's
ml_dtypes (clamp, then cast: ml_dtypes does not saturate) bit for bit over a sweep of float32,
and the CPU backend's float8 linear per recipe against a numpy implementation of torchao's
recipes (docs/float8.md)."""
import argparse
import sys

import ml_dtypes
import numpy as np

from run_dump import dump

E4M3, E5M2 = ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2
FMAX = {E4M3: 448.0, E5M2: 57344.0}

# torchao's Float8LinearConfig.from_recipe_name, operand by operand: (scaling, format), None for
# high precision. x/w: forward; go/w_gi: dX = dY @ W; go_gw/x_gw: dW = dY^T @ X.
T4, T5, A4 = ("tensor", E4M3), ("tensor", E5M2), ("axis", E4M3)
RECIPES = {
    "tensorwise": dict(x=T4, w=T4, go=T5, w_gi=T4, go_gw=T5, x_gw=T4, pow2=False),
    "rowwise": dict(x=A4, w=A4, go=A4, w_gi=A4, go_gw=A4, x_gw=A4, pow2=True),
    "rowwise_with_gw_hp": dict(x=A4, w=A4, go=A4, w_gi=T4, go_gw=None, x_gw=None, pow2=True),
}


def scale(amax, fmt, pow2):
    s = (FMAX[fmt] / np.maximum(np.asarray(amax, np.float64), 1e-12)).astype(np.float32)
    if pow2:  # the power of two at or below, exactly
        s = np.ldexp(np.float32(1), np.frexp(s)[1] - 1).astype(np.float32)
    return s


def qdq(a, cast, reduce_axis, pow2):
    """Quantise then dequantise in float32; reduce_axis 1: one scale per row, 0: per column."""
    if cast is None:
        return a.astype(np.float64)
    kind, fmt = cast
    amax = np.abs(a).max() if kind == "tensor" else np.abs(a).max(axis=reduce_axis, keepdims=True)
    s = scale(amax, fmt, pow2)
    q = np.clip((a * s).astype(np.float32), -FMAX[fmt], FMAX[fmt]).astype(fmt)
    return (q.astype(np.float32) / s).astype(np.float64)


def reference_linear(x, w, dy, r):
    """y, dx, dw, and for each the magnitude |A| @ |B| of its GEMM (what float32 rounding scales with)."""
    p = r["pow2"]
    gemms = ((qdq(x, r["x"], 1, p), qdq(w, r["w"], 1, p).T),
             (qdq(dy, r["go"], 1, p), qdq(w, r["w_gi"], 0, p)),
             (qdq(dy, r["go_gw"], 0, p).T, qdq(x, r["x_gw"], 0, p)))
    return [(a @ b, np.abs(a) @ np.abs(b)) for a, b in gemms]


class Checker:
    def __init__(self):
        self.failures = 0

    def check(self, ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        self.failures += not ok


def check_casts(binary, chk):
    d = dump(binary, "op float8_cast", seed=0)
    x = d["x"]
    for fmt, key in ((E4M3, "e4m3"), (E5M2, "e5m2")):
        want = np.clip(x, -FMAX[fmt], FMAX[fmt]).astype(fmt)
        want_nan = np.isnan(want.astype(np.float32))
        bits, value, decoded = d[f"{key}_bits"].astype(np.uint8), d[f"{key}_value"], d[f"{key}_decoded"]
        finite = ~want_nan
        same_bits = np.array_equal(bits[finite], want.view(np.uint8)[finite])
        got_nan = np.isnan(value) & np.isnan(decoded)
        chk.check(same_bits and np.array_equal(got_nan, want_nan),
                  f"{key}: {x.size} casts bit for bit as ml_dtypes (clamped), NaN where it is NaN"
                  + ("" if same_bits else f"; first mismatch at x = {x[finite][bits[finite] != want.view(np.uint8)[finite]][:3]}"))
        # The value titan computes with is the value of those bits, sign of zero included.
        v32 = want.astype(np.float32)
        chk.check(np.array_equal(value[finite].view(np.uint32), v32[finite].view(np.uint32)) and
                  np.array_equal(decoded[finite].view(np.uint32), v32[finite].view(np.uint32)),
                  f"{key}: saturate_round and decode give the format's values")
        # The sweep reaches what it means to: ties, subnormals, the largest value and beyond.
        tiny = np.abs(v32[finite]) < np.float32(2.0 ** (-6 if fmt == E4M3 else -14))
        chk.check(np.count_nonzero(tiny & (v32[finite] != 0)) > 0 and np.any(x > FMAX[fmt]) and np.any(np.isinf(x)),
                  f"{key}: the sweep holds subnormals, values over the largest finite, and infinities")


def check_linears(binary, seed, chk):
    for name, r in RECIPES.items():
        for n, fi, fo in ((48, 64, 32), (33, 80, 16)):
            d = dump(binary, "op float8_linear", recipe=name, n=n, in_features=fi, out_features=fo, seed=seed)
            x, w, dy = d["x"], d["w"], d["dy"]
            ref = reference_linear(x, w, dy, r)
            exact = (x.astype(np.float64) @ w.T, dy.astype(np.float64) @ w, dy.astype(np.float64).T @ x)
            for what, got, (want, mag), hp in zip(("y", "dx", "dw"), (d["y"], d["dx"], d["dw"]), ref, exact):
                # Per element, against the magnitude of its own sum: float32 GEMMs against float64
                # on the same quantised operands differ by a few float32 ulps of that.
                err = (np.abs(got - want) / mag).max()
                chk.check(err < 1e-6, f"{name} {n}x{fi}->{fo} {what}: max difference {err:.1e} of |A|@|B| (bound 1e-6)")
                if name == "rowwise_with_gw_hp" and what == "dw":
                    continue  # high precision by the recipe: equal to the unquantised product
                gap = (np.abs(want - hp) / mag).max()
                chk.check(gap > 1e3 * 1e-6, f"{name} {what}: float8 moves the result by {gap:.1e} (the test sees quantisation)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--seed", type=int, default=77)
    a = ap.parse_args()
    chk = Checker()
    check_casts(a.dump, chk)
    check_linears(a.dump, a.seed, chk)
    print(f"{chk.failures} failures")
    sys.exit(1 if chk.failures else 0)


if __name__ == "__main__":
    main()
