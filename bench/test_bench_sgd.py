"""pytest-benchmark: ``fastmomentum.functional.sgd_`` vs the best in-place NumPy update.

Run ``python -m pytest bench --benchmark-only`` to time (results grouped by case, dtype and size),
or ``python -m pytest bench -q --benchmark-disable`` to run each body once as a plain test. Every
benchmark first checks that both implementations give the same result on fresh copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fastmomentum

from _common import (
    HEAVY_BALL,
    NESTEROV,
    STEP_BUILDERS,
    Hyper,
    Problem,
    check_agreement,
    make_problem,
    size_label,
)

SIZES = [10**3, 10**4, 10**5, 10**6, 10**7]
NESTEROV_SIZES = [10**6]
LIST_ARRAYS, LIST_SIZE = 200, 5_000

dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
impls = pytest.mark.parametrize("impl", list(STEP_BUILDERS))


def _run(benchmark: Any, impl: str, problem: Problem, hyper: Hyper, case: str) -> None:
    """Check agreement, label the benchmark (grouped by ``case``), warm up once, then time."""
    check_agreement(problem, hyper)
    step = STEP_BUILDERS[impl](problem, hyper)
    n_arrays = len(problem.params)
    benchmark.group = f"{case} {problem.dtype.name}"
    benchmark.extra_info.update(
        impl=impl,
        update=hyper.name,
        dtype=problem.dtype.name,
        n_arrays=n_arrays,
        elements_per_array=problem.n_elements // n_arrays,
        n_elements=problem.n_elements,
        threads=fastmomentum.get_num_threads(),
        isa=fastmomentum.show_config(mode="dicts")["isa"],
    )
    step()  # warm-up: first-call costs stay out of the timings
    benchmark(step)


ONE_ARRAY_CASES = [(HEAVY_BALL, n) for n in SIZES] + [(NESTEROV, n) for n in NESTEROV_SIZES]


@impls
@pytest.mark.parametrize(
    ("hyper", "size"),
    ONE_ARRAY_CASES,
    ids=[f"{h.name}-n={size_label(n)}" for h, n in ONE_ARRAY_CASES],
)
@dtypes
def test_one_array(benchmark: Any, dtype: type, hyper: Hyper, size: int, impl: str) -> None:
    """One array, heavy-ball or Nesterov momentum with coupled weight decay."""
    problem = make_problem(1, size, dtype)
    _run(benchmark, impl, problem, hyper, f"{hyper.name} n={size_label(size)}")


@impls
@dtypes
def test_list_of_arrays(benchmark: Any, dtype: type, impl: str) -> None:
    """200 arrays of 5,000 elements: one fastmomentum call vs a NumPy loop over the arrays."""
    problem = make_problem(LIST_ARRAYS, LIST_SIZE, dtype)
    _run(benchmark, impl, problem, HEAVY_BALL, f"list {LIST_ARRAYS}x{size_label(LIST_SIZE)}")
