"""Shared setup for the benchmarks: problems, hyper-parameters and the two update steps compared.

Imported as ``_common`` by ``test_bench_sgd.py`` (pytest puts ``bench/`` on ``sys.path`` for its
rootdir-less test files) and by ``sgd_table.py`` (Python puts the script's folder there).

Values stay bounded over any number of steps: the gradient is fixed with ``|g| <= 1e-3``, so the
update is heavy-ball descent on ``wd/2 * p**2 + g*p``, a stable quadratic whose minimum
``p = -g/wd`` has ``|p| <= 10``; ``p`` drifts towards it at a rate of ``lr*wd = 1e-6`` per step and
the buffers stay near ``(g + wd*p) / (1 - momentum)``, far from overflow and from subnormals.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike, NDArray

import fastmomentum
from fastmomentum.numpy_baseline import sgd_inplace_

Step = Callable[[], None]


@dataclass(frozen=True)
class Hyper:
    """Hyper-parameters of one torch-convention step with coupled weight decay, dampening 0."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False

    @property
    def name(self) -> str:
        """``"nesterov"`` or ``"heavy-ball"``."""
        return "nesterov" if self.nesterov else "heavy-ball"


HEAVY_BALL = Hyper()
NESTEROV = Hyper(nesterov=True)

# Tolerances of the NumPy-vs-fastmomentum check (both evaluate the same ops in the same order, so
# they normally agree bit for bit; allclose leaves room for a differently ordered NumPy variant).
RTOL: dict[np.dtype, float] = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


@dataclass
class Problem:
    """Parameters, gradients and momentum buffers: equal-length lists of 1-D arrays."""

    params: list[NDArray[np.floating]]
    grads: list[NDArray[np.floating]]
    buffers: list[NDArray[np.floating]]

    @property
    def dtype(self) -> np.dtype:
        """The arrays' dtype."""
        return self.params[0].dtype

    @property
    def n_elements(self) -> int:
        """Elements per array list (one update touches 5 times as many values)."""
        return sum(p.size for p in self.params)

    def copy(self) -> Problem:
        """A deep copy, for running two implementations from the same state."""
        return Problem(
            [p.copy() for p in self.params],
            [g.copy() for g in self.grads],
            [b.copy() for b in self.buffers],
        )


def make_problem(n_arrays: int, size: int, dtype: DTypeLike, seed: int = 0) -> Problem:
    """``n_arrays`` arrays of ``size`` elements: ``p`` in [-1, 1), ``g`` in [-1e-3, 1e-3),
    buffers in [-1e-2, 1e-2) (mid-training, so no step is a special first one)."""
    rng = np.random.default_rng(seed)

    def uniform(scale: float) -> NDArray[np.floating]:
        a = rng.random(size, dtype=dtype)  # float32 drawn directly: no float64 temporary
        a *= 2 * scale
        a -= scale
        return a

    return Problem(
        [uniform(1.0) for _ in range(n_arrays)],
        [uniform(1e-3) for _ in range(n_arrays)],
        [uniform(1e-2) for _ in range(n_arrays)],
    )


def make_fastmomentum_step(problem: Problem, hyper: Hyper) -> Step:
    """``fastmomentum.functional.sgd_`` on all of ``problem``'s arrays in one call."""
    return functools.partial(
        fastmomentum.functional.sgd_,
        problem.params,
        problem.grads,
        problem.buffers,
        lr=hyper.lr,
        momentum=hyper.momentum,
        weight_decay=hyper.weight_decay,
        nesterov=hyper.nesterov,
    )


def make_numpy_step(problem: Problem, hyper: Hyper) -> Step:
    """The best in-place NumPy equivalent (:func:`fastmomentum.numpy_baseline.sgd_inplace_`),
    in a Python loop over the arrays, with scratch allocated here so a call allocates nothing."""
    # np.zeros_like then a write: the first timed call pays no page faults.
    scratch = [np.zeros_like(problem.params[0]) for _ in range(2 if hyper.nesterov else 1)]
    for s in scratch:
        s.fill(0)
    sizes = {p.size for p in problem.params}
    if len(sizes) != 1:
        raise ValueError(f"make_numpy_step needs arrays of one size, got sizes {sorted(sizes)}")
    arrays = list(zip(problem.params, problem.grads, problem.buffers))
    kw = dict(lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay,
              nesterov=hyper.nesterov)

    def step() -> None:
        for p, g, b in arrays:
            sgd_inplace_(p, g, b, scratch, **kw)

    return step


STEP_BUILDERS: dict[str, Callable[[Problem, Hyper], Step]] = {
    "fastmomentum": make_fastmomentum_step,
    "numpy": make_numpy_step,
}


def check_agreement(problem: Problem, hyper: Hyper, steps: int = 3) -> None:
    """Run both implementations ``steps`` times on fresh copies of ``problem`` (left untouched)
    and assert that their params and buffers agree to ``RTOL``."""
    results = {}
    for impl, build in STEP_BUILDERS.items():
        copy = problem.copy()
        step = build(copy, hyper)
        for _ in range(steps):
            step()
        results[impl] = copy
    fm, ref = results["fastmomentum"], results["numpy"]
    rtol = RTOL[problem.dtype]
    for i, (p_fm, p_ref, b_fm, b_ref) in enumerate(
        zip(fm.params, ref.params, fm.buffers, ref.buffers)
    ):
        np.testing.assert_allclose(p_fm, p_ref, rtol=rtol, err_msg=f"params[{i}], {hyper.name}")
        np.testing.assert_allclose(b_fm, b_ref, rtol=rtol, err_msg=f"buffers[{i}], {hyper.name}")


def size_label(n: int) -> str:
    """``1000 -> "1e3"``, ``30_000_000 -> "3e7"``; other sizes as plain integers."""
    exp = len(str(n)) - 1
    mantissa, rest = divmod(n, 10**exp)
    return f"{mantissa}e{exp}" if rest == 0 and exp >= 3 else str(n)


def parse_size(text: str) -> int:
    """``"1e6"`` or ``"1000000"`` -> 1000000; rejects non-integral and non-positive sizes."""
    value = float(text)
    if not value.is_integer() or value < 1:
        raise ValueError(f"size must be a positive integer, got {text!r}")
    return int(value)
