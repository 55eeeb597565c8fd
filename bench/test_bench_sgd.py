"""pytest-benchmark: fastmomentum against its peers and the read-modify-write bound.

The same cases as ``python -m fastmomentum bench --full`` up to 1e7 elements: every
implementation x sizes 1e3..1e7 x one array / a list of 200 arrays x heavy-ball / Nesterov x
float32 / float64, on :data:`_common.THREADS` threads for every library. Each benchmark first
verifies its implementation (``fastmomentum.commands.bench.verify``); a missing peer is skipped.

Run ``python -m pytest bench --benchmark-only`` to time (grouped by problem), or
``python -m pytest bench -q --benchmark-disable`` to run each body once as a plain test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import fastmomentum
from fastmomentum.commands.bench.peers import IMPLEMENTATIONS
from fastmomentum.commands.bench.threads import thread_limit

from _common import CASES, THREADS, Case, builder, problem, verifier


@pytest.fixture(scope="module", autouse=True)
def every_library_on_the_same_threads() -> Iterator[None]:
    """One thread count for fastmomentum, OpenMP/BLAS, torch, numba and numexpr."""
    libraries = {info.library for info in IMPLEMENTATIONS.values()}
    for impl in IMPLEMENTATIONS:
        builder(impl)  # imports the peers, so that their thread counts are set too
    with thread_limit(THREADS, libraries):
        yield


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sgd_step(benchmark: Any, case: Case) -> None:
    """Verify ``case.impl`` on this problem's structure, then time one step of it."""
    build = builder(case.impl)
    if isinstance(build, str):
        pytest.skip(build)
    arrays = problem(case.dtype, case.layout, case.size)
    if IMPLEMENTATIONS[case.impl].kind != "bound":  # the bound was checked when loaded
        verdict = verifier().verify(case.impl, build, arrays.dtype, case.layout, case.size,
                                    case.hyper, THREADS)
        assert verdict is None, verdict
    step = build(arrays, case.hyper).step
    benchmark.group = case.group
    benchmark.extra_info.update(
        impl=case.impl, update=case.hyper.name, dtype=case.dtype, layout=case.layout.name,
        n_arrays=case.layout.n_arrays, n_elements=case.size, threads=THREADS,
        isa=(fastmomentum.show_config(mode="dicts") or {}).get("isa"))
    step()  # warm-up: first-call costs stay out of the timings
    benchmark(step)
