"""Verification before timing: each implementation's result against the reference.

An implementation takes :data:`STEPS` steps on a fresh copy of a problem of the same structure
(dtype, layout, update) as the timed one, capped at ``max_elements`` elements in all, under the
thread count of the timing; then its params and buffers must match the reference, the same steps
of :func:`fastmomentum.commands.bench.numpy_baseline.sgd_inplace_` (plain NumPy in the arrays'
dtype, checked bit for bit against the transcribed PyTorch formula by the tests), with
``np.testing.assert_allclose(rtol=RTOL[dtype], atol=RTOL[dtype] * max|reference|)``. The ``atol``
covers elements whose value cancels to near zero (``b = m*b + d``), where a correctly rounded
alternative order of operations or an FMA (torch's kernel) differs by an ulp of the operands,
which is a large relative error of the result; a wrong update differs by far more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .numpy_baseline import sgd_inplace_
from .peers import Builder
from .problems import RTOL, Layout, Problem, Variant, make_layout_problem

STEPS = 3
#: Verification problems hold at most this many elements (2**21: 64 threads could split it).
MAX_ELEMENTS = 2**21
#: References kept for later checks: up to about this many bytes (then one at a time).
REFERENCE_CACHE_BYTES = 256 * 2**20


def reference_steps(problem: Problem, hyper: Variant) -> Problem:
    """:data:`STEPS` steps of :func:`~fastmomentum.commands.bench.numpy_baseline.sgd_inplace_` on a
    copy of ``problem``: what every implementation must match."""
    result = problem.copy()
    for p, g, b in zip(result.params, result.grads, result.buffers, strict=True):
        scratch = [np.empty_like(p) for _ in range(2 if hyper.nesterov else 1)]
        for _ in range(STEPS):
            sgd_inplace_(p, g, b, scratch, **hyper.kwargs())
    return result


def run_steps(build: Builder, problem: Problem, hyper: Variant) -> Problem:
    """``STEPS`` steps of ``build``'s implementation on a fresh copy of ``problem``; returns
    the arrays it updated."""
    step, arrays = build(problem.copy(), hyper)
    for _ in range(STEPS):
        step()
    return arrays


def compare(actual: Problem, desired: Problem, against: str) -> None:
    """Raise AssertionError (naming the array) unless ``actual`` matches ``desired``."""
    rtol = RTOL[desired.dtype]
    pairs = (("params", actual.params, desired.params), ("buffers", actual.buffers,
                                                         desired.buffers))
    for what, got, want in pairs:
        for i, (x, y) in enumerate(zip(got, want, strict=True)):
            atol = rtol * float(np.max(np.abs(y))) if y.size else 0.0
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                                       err_msg=f"{what}[{i}] vs {against}")


def summarize(exc: BaseException) -> str:
    """A one-line account of a failed check."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    keep = [line for line in lines if line.startswith(("Mismatched", "Max abs", "Max rel", "vs "))
            or " vs " in line]
    text = "; ".join(keep or lines[:3]) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


@dataclass
class Verifier:
    """Checks implementations, caching the references and each verdict by (implementation,
    dtype, layout, size checked, update, threads)."""

    max_elements: int = MAX_ELEMENTS
    _references: dict[tuple[Any, ...], tuple[Problem, Problem]] = field(default_factory=dict)
    _verdicts: dict[tuple[Any, ...], str | None] = field(default_factory=dict)

    def checked_size(self, size: int) -> int:
        """Elements of the problem that checks a timed problem of ``size`` elements."""
        return min(size, self.max_elements)

    def _reference(self, dtype: np.dtype[Any], layout: Layout, n: int,
                   hyper: Variant) -> tuple[Problem, Problem]:
        key = (dtype, layout, n, hyper)
        if key not in self._references:
            while self._references and self._reference_bytes() > REFERENCE_CACHE_BYTES:
                del self._references[next(iter(self._references))]  # the oldest first
            start = make_layout_problem(layout, n, dtype, seed=1)
            self._references[key] = (start, reference_steps(start, hyper))
        return self._references[key]

    def _reference_bytes(self) -> int:
        return sum(2 * 3 * problem.n_elements * problem.dtype.itemsize
                   for problem, _ in self._references.values())

    def verify(self, name: str, build: Builder, dtype: np.dtype[Any], layout: Layout,
               size: int, hyper: Variant, threads: int) -> str | None:
        """``None`` if ``name``'s implementation passes, else why it fails (one line)."""
        n = self.checked_size(size)
        key = (name, dtype, layout, n, hyper, threads)
        if key not in self._verdicts:
            start, reference = self._reference(dtype, layout, n, hyper)
            try:
                compare(run_steps(build, start, hyper), reference, "the reference")
                verdict = None
            except Exception as exc:  # any failure of a peer is a FAILED cell, not a crash
                verdict = summarize(exc)
            self._verdicts[key] = verdict
        return self._verdicts[key]
