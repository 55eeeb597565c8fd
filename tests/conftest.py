"""Fixtures that run a test under every compiled ISA and under 1 and 2 threads, and helpers
shared by the test files."""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _core
from fastmomentum._protocol import Call, Guard, Hyper

CONFIG = fm.show_config(mode="dicts")
COMPILED_ISAS = CONFIG["isas_compiled"]
SUPPORTED_ISAS = CONFIG["isas_supported"]
DEFAULT_ISA = CONFIG["isa"]
DEFAULT_GRAIN_BYTES = CONFIG["grain_bytes"]
# A grain this small makes even short arrays split across threads, so the partition of the
# concatenated element range (tensor boundaries, tails, empty parts) is exercised.
SMALL_GRAIN_BYTES = 64


def core_step(params, grads, buffers, **overrides):
    """One call through the step protocol (``_core.sgd_steps``) with torch-convention defaults;
    returns the number of threads that ran."""
    kw = dict(style="torch", lr=0.01, momentum=0.9, dampening=0.0, nesterov=True,
              weight_decay=1e-4, weight_decay_mode="coupled", schedule_multiplier=1.0,
              maximize=False)
    first_step = overrides.pop("first_step", False)
    unknown = set(overrides) - set(kw)
    assert not unknown, f"not a Hyper field: {unknown}"
    kw.update(overrides)
    outcome = _core.StepOutcome()
    _core.sgd_steps([Call(params, buffers, first_step, Hyper(**kw), 0)], grads, Guard(), outcome)
    assert outcome.ran and outcome.applied
    return outcome.threads


def same_bits(actual, expected):
    """Equal dtype, shape and bytes (NaN payloads and signed zeros included)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


def rand(rng, shape, dtype):
    """Standard-normal values of ``shape``, rounded to ``dtype``."""
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


@pytest.fixture(params=COMPILED_ISAS)
def isa(request):
    """Selects each compiled ISA in turn (skipping those this CPU cannot run)."""
    if request.param not in SUPPORTED_ISAS:
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    _core.select_isa(request.param)
    yield request.param
    _core.select_isa(DEFAULT_ISA)


@pytest.fixture
def restore_threads():
    """Puts the thread cap and the grain back as they were at import."""
    yield
    fm.set_num_threads(None)
    _core.set_grain_bytes(DEFAULT_GRAIN_BYTES)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request, restore_threads):
    """1 thread, or 2 threads with a small grain so that small calls split too."""
    fm.set_num_threads(request.param)
    if fm.get_num_threads() < request.param:
        pytest.skip(f"only {fm.get_num_threads()} thread(s) available (OpenMP off or limited)")
    _core.set_grain_bytes(SMALL_GRAIN_BYTES if request.param > 1 else DEFAULT_GRAIN_BYTES)
    yield request.param
