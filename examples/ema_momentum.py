"""EMA momentum, the "(1 - β)" form of many tutorials, checked bit for bit against plain NumPy.

From b₀ = 0, each step of fm.functional.ema_sgd_ does, element-wise and in place:

    b ← β·b + (1 - β)·g
    p ← p - η·b

Here it minimises a separable quadratic f(p) = ½·Σ aᵢ·(pᵢ - cᵢ)² (gradient g = a·(p - c),
curvatures aᵢ in [0.05, 1]) from p = 0. The same steps written as a NumPy loop give exactly
the same bits (np.array_equal), in float64 and in float32: the fused kernel rounds its
hyper-parameters like NumPy does and has no FMA contraction.
"""

from __future__ import annotations

import numpy as np

import fastmomentum as fm

LR, BETA, STEPS, N = 0.5, 0.9, 400, 10_000


def make_problem(dtype: type, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Curvatures a and minimiser c of the quadratic, in the given dtype."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.05, 1.0, N).astype(dtype), rng.normal(0.0, 1.0, N).astype(dtype)


def run_fastmomentum(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """STEPS fused EMA-momentum steps from p = 0; p and b are updated in place."""
    p, b = np.zeros_like(c), np.zeros_like(c)
    for _ in range(STEPS):
        fm.functional.ema_sgd_([p], [a * (p - c)], [b], lr=LR, beta=BETA)
    return p


def run_numpy(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The same formula as a plain NumPy loop (new arrays every step, scalars as Python floats)."""
    p, b = np.zeros_like(c), np.zeros_like(c)
    for _ in range(STEPS):
        g = a * (p - c)
        b = BETA * b + (1 - BETA) * g
        p = p - LR * b
    return p


def main(quiet: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Returns {dtype name: {"fastmomentum": p, "numpy": p, "minimiser": c}}."""
    results: dict[str, dict[str, np.ndarray]] = {}
    if not quiet:
        print(f"EMA momentum: lr = {LR}, beta = {BETA}, {STEPS} steps on {N} parameters")
        print(f"{'dtype':<8} {'max |p - c|':>12} {'array_equal(fastmomentum, numpy)':>34}")
    for dtype in (np.float64, np.float32):
        a, c = make_problem(dtype)
        p_fm, p_np = run_fastmomentum(a, c), run_numpy(a, c)
        results[np.dtype(dtype).name] = {"fastmomentum": p_fm, "numpy": p_np, "minimiser": c}
        if not quiet:
            err = float(np.max(np.abs(p_fm - c)))
            print(f"{np.dtype(dtype).name:<8} {err:12.3e} {np.array_equal(p_fm, p_np)!s:>34}")
    return results


if __name__ == "__main__":
    main()
