"""The cases of ``test_bench_sgd.py``, built from :mod:`fastmomentum.commands.bench` (which has the
problems, the implementations and their verification: nothing is duplicated here).

Imported as ``_common`` (pytest puts ``bench/`` on ``sys.path`` for its rootdir-less test files).
Problems are cached one at a time: the cases are ordered so that every implementation and update
of one (dtype, layout, size) runs on the same arrays, which stay bounded however often they are
stepped (see :mod:`fastmomentum.commands.bench.problems`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import fastmomentum
from fastmomentum.commands.bench.peers import IMPLEMENTATIONS, Builder, Unavailable
from fastmomentum.commands.bench.problems import (
    HEAVY_BALL,
    LAYOUTS,
    NESTEROV,
    Layout,
    Problem,
    Variant,
    make_layout_problem,
    size_label,
)
from fastmomentum.commands.bench.verify import Verifier

SIZES = [10**3, 10**4, 10**5, 10**6, 10**7]
DTYPES = ["float32", "float64"]
#: Thread count of every library (fastmomentum's default: OMP_NUM_THREADS or the CPU count).
THREADS = fastmomentum.get_num_threads()
#: Verification problems hold at most this many elements (2 threads still split them).
VERIFY_MAX_ELEMENTS = 2**20


class Case(NamedTuple):
    """One benchmark: an implementation on one problem and update."""

    dtype: str
    layout: Layout
    size: int
    hyper: Variant
    impl: str

    @property
    def id(self) -> str:
        """The pytest id, e.g. ``float32-list-heavy-ball-n=1e6-numba``."""
        return (f"{self.dtype}-{self.layout.name}-{self.hyper.name}-n={size_label(self.size)}-"
                f"{self.impl}")

    @property
    def group(self) -> str:
        """The pytest-benchmark group: every implementation of one problem and update."""
        return f"{self.layout.name} {self.hyper.name} n={size_label(self.size)} {self.dtype}"


CASES = [
    Case(dtype, layout, size, hyper, impl)
    for dtype in DTYPES
    for layout in LAYOUTS.values()
    for size in SIZES
    for hyper in (HEAVY_BALL, NESTEROV)
    for impl, info in IMPLEMENTATIONS.items()
    if layout.name in info.layouts
]


@functools.lru_cache(maxsize=1)
def problem(dtype: str, layout: Layout, size: int) -> Problem:
    """The problem of ``size`` elements (one alive at a time)."""
    return make_layout_problem(layout, size, dtype)


@functools.cache
def builder(impl: str) -> Builder | str:
    """``impl``'s builder, or why it cannot run here."""
    try:
        return IMPLEMENTATIONS[impl].load()
    except Unavailable as exc:
        return str(exc)


@functools.lru_cache(maxsize=1)
def verifier() -> Verifier:
    """The checker every benchmark passes first (verdicts cached per case)."""
    return Verifier(VERIFY_MAX_ELEMENTS)
