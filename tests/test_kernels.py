"""Every kernel path against the plain-NumPy reference, bit for bit.

Kernels are compiled with FMA contraction off and round hyper-parameters once to the dtype, so
every ISA and thread count must reproduce reference.py exactly: the tolerance is zero.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastmomentum as fm

from reference import ema_sgd, keras_sgd, torch_sgd

DTYPES = [np.float32, np.float64]
# Empty, single, tails around every vector width (4/8/16 floats, 2/4/8 doubles), and one past the
# caches' comfort with an odd tail.
SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 1000, 1_000_003]
DECAYS = [("coupled", 0.0), ("coupled", 1e-2), ("decoupled", 1e-2), ("sgdw", 1e-2)]


def _torch_variants():
    out = []
    for momentum, dampening, nesterov, (mode, wd), maximize, first in itertools.product(
        [0.0, 0.9], [0.0, 0.3], [False, True], DECAYS, [False, True], [False, True]
    ):
        if nesterov and (momentum == 0 or dampening != 0):
            continue  # invalid in PyTorch too
        if momentum == 0 and (dampening != 0 or first):
            continue  # no buffer: these change nothing
        out.append(dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=wd, weight_decay_mode=mode, schedule_multiplier=0.5,
                        maximize=maximize, first_step=first))
    return out


def _keras_variants():
    out = []
    for momentum, nesterov, (mode, wd), maximize in itertools.product(
        [0.0, 0.9], [False, True], DECAYS, [False, True]
    ):
        if nesterov and momentum == 0:
            continue
        out.append(dict(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd,
                        weight_decay_mode=mode, schedule_multiplier=0.5, maximize=maximize))
    return out


def _ema_variants():
    return [dict(lr=0.05, beta=beta, weight_decay=wd, weight_decay_mode=mode, maximize=maximize)
            for beta, (mode, wd), maximize in itertools.product([0.0, 0.9], DECAYS, [False, True])]


CASES = [
    *[("torch", v) for v in _torch_variants()],
    *[("keras", v) for v in _keras_variants()],
    *[("ema", v) for v in _ema_variants()],
]
FUNCTIONS = {"torch": fm.functional.sgd_, "keras": fm.functional.keras_sgd_,
             "ema": fm.functional.ema_sgd_}
REFERENCES = {"torch": torch_sgd, "keras": keras_sgd, "ema": ema_sgd}


def _case_id(case):
    style, v = case
    return style + "-" + "-".join(f"{k}={v[k]}" for k in sorted(v) if k != "lr")


def _arrays(rng, n, dtype):
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    return p, g, b


def _assert_same_bits(actual, expected, what):
    assert actual.dtype == expected.dtype
    mismatch = np.flatnonzero(actual.view(np.uint8) != expected.view(np.uint8))
    assert mismatch.size == 0, (
        f"{what}: {mismatch.size} bytes differ, first at element "
        f"{mismatch[0] // actual.itemsize}: {actual.ravel()[mismatch[0] // actual.itemsize]!r} "
        f"!= {expected.ravel()[mismatch[0] // actual.itemsize]!r}"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_single_step_matches_reference_bitwise(case, dtype, isa, threads):
    style, hyper = case
    rng = np.random.default_rng(len(SIZES))
    for n in SIZES:
        p, g, b = _arrays(rng, n, dtype)
        want_p, want_b = REFERENCES[style](p.copy(), g, b.copy(), **hyper)
        FUNCTIONS[style]([p], [g], [b], **hyper)
        _assert_same_bits(p, want_p, f"params, n={n}")
        _assert_same_bits(b, want_b, f"buffers, n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_many_arrays_of_mixed_sizes_and_first_steps(dtype, isa, threads):
    rng = np.random.default_rng(7)
    sizes = [*rng.integers(0, 3000, size=250), 0, 1, 70_001]
    params, grads, bufs = zip(*(_arrays(rng, int(n), dtype) for n in sizes), strict=True)
    first = [bool(f) for f in rng.integers(0, 2, size=len(sizes))]
    hyper = dict(lr=0.01, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    want = [torch_sgd(p.copy(), g, b.copy(), first_step=f, **hyper)
            for p, g, b, f in zip(params, grads, bufs, first, strict=True)]
    fm.functional.sgd_(list(params), list(grads), list(bufs), first_step=first, **hyper)
    for i, (p, b, (want_p, want_b)) in enumerate(zip(params, bufs, want, strict=True)):
        _assert_same_bits(p, want_p, f"params[{i}] (n={p.size})")
        _assert_same_bits(b, want_b, f"buffers[{i}] (n={p.size})")


def test_float32_and_float64_in_one_call(isa, threads):
    rng = np.random.default_rng(3)
    arrays = [_arrays(rng, n, dt) for n, dt in [(1000, np.float32), (777, np.float64),
                                                  (50_000, np.float64), (33, np.float32)]]
    hyper = dict(lr=0.1, momentum=0.5, nesterov=True)
    want = [torch_sgd(p.copy(), g, b.copy(), **hyper) for p, g, b in arrays]
    fm.functional.sgd_(*map(list, zip(*arrays, strict=True)), **hyper)
    for (p, _, b), (want_p, want_b) in zip(arrays, want, strict=True):
        _assert_same_bits(p, want_p, f"params {p.dtype}")
        _assert_same_bits(b, want_b, f"buffers {p.dtype}")


@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_trajectory_of_60_steps_with_a_changing_lr(style, dtype, isa, threads):
    """Several arrays for 60 steps; one joins at step 20 (its own first step then)."""
    rng = np.random.default_rng(11)
    sizes = [1, 17, 1000, 40_003]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    bufs = [np.zeros_like(p) for p in params]
    ref_p = [p.copy() for p in params]
    ref_b = [b.copy() for b in bufs]
    started = [False] * len(sizes)
    for step in range(60):
        lr = 0.1 * 0.97**step  # a changing lr is where torch and keras conventions split
        active = [i for i in range(len(sizes)) if i != 2 or step >= 20]
        grads = {i: rng.standard_normal(sizes[i]).astype(dtype) for i in active}
        first = [not started[i] for i in active]
        args = ([params[i] for i in active], [grads[i] for i in active], [bufs[i] for i in active])
        if style == "torch":
            hyper = dict(lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-3)
            fm.functional.sgd_(*args, first_step=first, **hyper)
            for i, f in zip(active, first, strict=True):
                ref_p[i], ref_b[i] = torch_sgd(ref_p[i], grads[i], ref_b[i], first_step=f, **hyper)
        elif style == "keras":
            hyper = dict(lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-3)
            fm.functional.keras_sgd_(*args, **hyper)
            for i in active:
                ref_p[i], ref_b[i] = keras_sgd(ref_p[i], grads[i], ref_b[i], **hyper)
        else:
            hyper = dict(lr=lr, beta=0.8, weight_decay=1e-3, weight_decay_mode="decoupled")
            fm.functional.ema_sgd_(*args, **hyper)
            for i in active:
                ref_p[i], ref_b[i] = ema_sgd(ref_p[i], grads[i], ref_b[i], **hyper)
        for i in active:
            started[i] = True
    for i in range(len(sizes)):
        _assert_same_bits(params[i], ref_p[i], f"params[{i}] after 60 steps")
        _assert_same_bits(bufs[i], ref_b[i], f"buffers[{i}] after 60 steps")


@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (2, 3, 4, 5), (0, 7)])
def test_any_shape_is_updated_as_flat_memory(shape):
    rng = np.random.default_rng(5)
    p = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    b = rng.standard_normal(shape)
    want_p, want_b = torch_sgd(p.ravel().copy(), g.ravel(), b.ravel().copy(), lr=0.1, momentum=0.9)
    fm.functional.sgd_([p], [g], [b], lr=0.1, momentum=0.9)
    assert p.shape == shape
    _assert_same_bits(p.ravel(), want_p, "params")
    _assert_same_bits(b.ravel(), want_b, "buffers")


def test_empty_lists_are_a_no_op():
    fm.functional.sgd_([], [], [], lr=0.1, momentum=0.9)
    fm.functional.sgd_((), (), lr=0.1)


def test_plain_sgd_needs_no_buffers_and_leaves_given_ones_alone():
    p = np.ones(10, np.float32)
    b = np.full(10, 7.0, np.float32)
    fm.functional.sgd_([p], [np.ones_like(p)], lr=0.5)
    np.testing.assert_array_equal(p, 0.5)
    fm.functional.sgd_([p], [np.ones_like(p)], [b], lr=0.5)
    np.testing.assert_array_equal(p, 0.0)
    np.testing.assert_array_equal(b, 7.0)


def test_zero_weight_decay_keeps_infinite_params_free_of_nan():
    """wd == 0 skips the decay term entirely (as PyTorch does): 0 * inf would be NaN."""
    p = np.array([np.inf, -np.inf, 1.0])
    fm.functional.sgd_([p], [np.zeros(3)], lr=0.1, weight_decay=0.0)
    np.testing.assert_array_equal(p, [np.inf, -np.inf, 1.0])


def test_torch_and_keras_conventions_split_when_the_lr_changes():
    """README, "Conventions": g = 1, mu = 0.9, lr 0.1 then 0.01 gives p2 = -0.119 (torch) vs
    -0.200 (keras)."""
    p_t, b_t = np.zeros(1), np.zeros(1)
    p_k, v_k = np.zeros(1), np.zeros(1)
    for step, lr in enumerate([0.1, 0.01]):
        fm.functional.sgd_([p_t], [np.ones(1)], [b_t], lr=lr, momentum=0.9, first_step=step == 0)
        fm.functional.keras_sgd_([p_k], [np.ones(1)], [v_k], lr=lr, momentum=0.9)
    np.testing.assert_allclose(p_t, -0.119, rtol=1e-12)
    np.testing.assert_allclose(p_k, -0.200, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_bandwidth_probe_adds_s_times_g_to_p_and_b(dtype, isa, threads):
    """_core.bandwidth_probe (the benchmarks' floor): p += s*g and b += s*g, in the dtype, over
    arrays of several sizes in one call, checked like a step's arrays."""
    rng = np.random.default_rng(4)
    sizes = [1000, 7, 0, 333]
    p, g, b = ([rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(3))
    s = dtype(0.25)
    want_p = [x + s * y for x, y in zip(p, g, strict=True)]
    want_b = [x + s * y for x, y in zip(b, g, strict=True)]
    ran = fm._core.bandwidth_probe(p, g, b, 0.25)
    assert ran == (threads if threads > 1 else 1)
    for got, want in zip(p + b, want_p + want_b, strict=True):
        assert got.tobytes() == want.tobytes()
    before = [x.copy() for x in p]
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype"):
        fm._core.bandwidth_probe(p[:2], [g[0], g[1].astype(np.float16)], b[:2], 0.25)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(p, before, strict=True))
