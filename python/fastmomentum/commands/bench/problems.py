"""The benchmark's problems: hyper-parameters, layouts, and the arrays one update steps.

Values stay bounded over any number of steps: the gradient is fixed with ``|g| <= 1e-3``, so the
update is heavy-ball descent on ``wd/2 * p**2 + g*p``, a stable quadratic whose minimum
``p = -g/wd`` has ``|p| <= 10``; ``p`` drifts towards it at a rate of ``lr*wd = 1e-6`` per step and
the buffers stay near ``(g + wd*p) / (1 - momentum)``, far from overflow and from subnormals. So
every implementation may step the SAME arrays in turn, any number of times: only one problem per
size needs to be alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

Array = NDArray[np.floating[Any]]


@dataclass(frozen=True)
class Variant:
    """The hyper-parameters of a timed step (one variant of the update): torch's convention,
    coupled weight decay, dampening 0."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False

    @property
    def name(self) -> str:
        """``"nesterov"`` or ``"heavy-ball"``."""
        return "nesterov" if self.nesterov else "heavy-ball"

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`fastmomentum.functional.sgd_` for this update."""
        return dict(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    nesterov=self.nesterov)


HEAVY_BALL = Variant()
NESTEROV = Variant(nesterov=True)
#: ``--variant`` names; ``"momentum"`` is an alias of ``"heavy-ball"``.
VARIANTS: dict[str, Variant] = {"heavy-ball": HEAVY_BALL, "momentum": HEAVY_BALL,
                              "nesterov": NESTEROV}

#: Relative tolerance of the verification, per dtype (see :mod:`.verify`).
RTOL: dict[np.dtype[Any], float] = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


@dataclass(frozen=True)
class Layout:
    """How a problem's elements are stored: one array, or ``n_arrays`` arrays of equal size."""

    name: str
    n_arrays: int

    def sizes(self, total: int) -> list[int]:
        """``total`` elements split as evenly as possible over the arrays (none empty)."""
        if total < self.n_arrays:
            raise ValueError(f"{self.name}: {total} elements cannot fill {self.n_arrays} arrays")
        base, extra = divmod(total, self.n_arrays)
        return [base + (i < extra) for i in range(self.n_arrays)]

    def describe(self) -> str:
        """``"single array"`` or ``"list of 200 arrays"``."""
        return "single array" if self.n_arrays == 1 else f"list of {self.n_arrays} arrays"


SINGLE = Layout("single", 1)
LIST_ARRAYS = 200
LIST = Layout("list", LIST_ARRAYS)
LAYOUTS: dict[str, Layout] = {"single": SINGLE, "list": LIST}


@dataclass
class Problem:
    """Parameters, gradients and momentum buffers: equal-length lists of 1-D arrays."""

    params: list[Array]
    grads: list[Array]
    buffers: list[Array]

    @property
    def dtype(self) -> np.dtype[Any]:
        """The arrays' dtype."""
        return self.params[0].dtype

    @property
    def n_elements(self) -> int:
        """Elements per array list (one update touches 5 times as many values)."""
        return sum(p.size for p in self.params)

    def copy(self) -> Problem:
        """A deep copy, for running another implementation from the same state."""
        return Problem([p.copy() for p in self.params], [g.copy() for g in self.grads],
                       [b.copy() for b in self.buffers])


def make_problem(
    n_arrays: int, size: int, dtype: DTypeLike, seed: int = 0, *, total: bool = False,
) -> Problem:
    """``n_arrays`` arrays of ``size`` elements each (``total=True``: ``size`` elements in all,
    split evenly): ``p`` in [-1, 1), ``g`` in [-1e-3, 1e-3), buffers in [-1e-2, 1e-2)
    (mid-training, so no step is a special first one).

    Each array is allocated on its own, ``p``, ``g`` and ``b`` of one index after the other, so
    that no two parameters are neighbours in memory (as in a model built layer by layer):
    fastmomentum merges adjacent arrays into one span, which flat storage is there to measure.
    """
    dt: Any = np.dtype(dtype)
    sizes = Layout("", n_arrays).sizes(size) if total else [size] * n_arrays
    triples = [tuple(np.empty(n, dt) for _ in range(3)) for n in sizes]
    problem = Problem(*(list(arrays) for arrays in zip(*triples, strict=True)))
    rng = np.random.default_rng(seed)
    for arrays, scale in ((problem.params, 1.0), (problem.grads, 1e-3), (problem.buffers, 1e-2)):
        for a in arrays:
            rng.random(out=a, dtype=dt)  # float32 drawn directly: no float64 temporary
            a *= 2 * scale
            a -= scale
    return problem


def make_layout_problem(layout: Layout, total: int, dtype: DTypeLike, seed: int = 0) -> Problem:
    """``total`` elements stored as ``layout`` says."""
    return make_problem(layout.n_arrays, total, dtype, seed, total=True)


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
