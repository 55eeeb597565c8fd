"""fastmomentum's schedules and torch-style SGD against the INSTALLED optax (skipped without it).

optax evaluates schedules in float32 by default (``jnp`` weak-typed Python floats), so a value of
fm (double) and optax agree to float32 rounding: ``|fm - optax| <= 2**-20 * scale`` with
``scale = max(|value| over the scan)``: 8 float32 ulps (2**-23 each) of the largest value, the
error of a chain of float32 operations (cos, pow, a division by the step count) whose inputs are
themselves rounded. With ``jax_enable_x64`` and a 64-bit count optax computes in double, and
the two agree to ``1e-12`` relative (a few double ulps: different but equivalent operation
orders). Trajectories: ``fm.SGD`` (torch style, coupled weight decay) against
``optax.chain(optax.add_decayed_weights(wd), optax.sgd(schedule, momentum, nesterov))``, on
float32 arrays.

Install: ``pip install jax jaxlib optax``.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import schedules as S

optax = pytest.importorskip("optax", reason="optax is not installed (pip install jax jaxlib optax)")
jax = pytest.importorskip("jax", reason="jax is not installed (pip install jax jaxlib optax)")
jnp = jax.numpy

STEPS = np.arange(0, 3000)
F32_BOUND = 2.0**-20

SGDR_CYCLES = [
    {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 50, "decay_steps": 500,
     "end_value": 0.1},
    {"init_value": 0.1, "peak_value": 0.5, "warmup_steps": 0, "decay_steps": 1000, "exponent": 2.0},
    {"init_value": 0.05, "peak_value": 0.25, "warmup_steps": 100, "decay_steps": 700},
]

# (fm schedule, optax schedule): every fm schedule with an optax counterpart
PAIRS = [
    ("constant", S.constant(0.1), optax.constant_schedule(0.1)),
    ("polynomial", S.polynomial_decay(1.0, 1000, 0.01, 2.0, transition_begin=50),
     optax.polynomial_schedule(1.0, 0.01, 2.0, 1000, 50)),
    ("linear", S.polynomial_decay(0.5, 700, 0.1, 1.0, transition_begin=0),
     optax.linear_schedule(0.5, 0.1, 700)),
    ("piecewise_constant_scales", S.piecewise_constant_scales(1.0, {100: 0.5, 1000: 0.1}),
     optax.piecewise_constant_schedule(1.0, {100: 0.5, 1000: 0.1})),
    ("exponential", S.exponential_decay(1.0, 100, 0.5, False, 30, 0.01),
     optax.exponential_decay(1.0, 100, 0.5, 30, False, 0.01)),
    ("exponential_staircase", S.exponential_decay(1.0, 100, 0.7, True, 0, None),
     optax.exponential_decay(1.0, 100, 0.7, 0, True)),
    ("cosine_decay", S.cosine_decay(0.1, 1000, 0.1, 2.0),
     optax.cosine_decay_schedule(0.1, 1000, 0.1, 2.0)),
    ("warmup_cosine_decay",
     S.warmup_cosine_decay(0.0, 1.0, 100, 1500, 0.01, 1.5, decay_steps_include_warmup=True),
     optax.warmup_cosine_decay_schedule(0.0, 1.0, 100, 1500, 0.01, 1.5)),
    ("linear_onecycle", S.linear_onecycle(2000, 1.0), optax.linear_onecycle_schedule(2000, 1.0)),
    ("linear_onecycle_custom", S.linear_onecycle(777, 0.3, 0.2, 0.7, 10.0, 100.0),
     optax.linear_onecycle_schedule(777, 0.3, 0.2, 0.7, 10.0, 100.0)),
    ("cosine_onecycle", S.cosine_onecycle(2000, 1.0), optax.cosine_onecycle_schedule(2000, 1.0)),
    ("cosine_onecycle_custom", S.cosine_onecycle(333, 0.2, 0.4, 5.0, 50.0),
     optax.cosine_onecycle_schedule(333, 0.2, 0.4, 5.0, 50.0)),
    ("sgdr", S.sgdr(SGDR_CYCLES), optax.sgdr_schedule(SGDR_CYCLES)),
    ("join_schedules",
     S.join_schedules([S.constant(1.0), S.cosine_decay(1.0, 500)], [200]),
     optax.join_schedules([optax.constant_schedule(1.0), optax.cosine_decay_schedule(1.0, 500)],
                          [200])),
]


def fm_values(schedule):
    return np.array([schedule(int(t)) for t in STEPS])


def optax_values(schedule, dtype):
    # vmap: piecewise_interpolate_schedule takes one count at a time; jit: one compilation
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(STEPS, dtype=dtype)),
                      dtype=np.float64)


@pytest.mark.parametrize(("name", "ours", "theirs"), PAIRS, ids=[p[0] for p in PAIRS])
def test_schedule_matches_optax_float32(name, ours, theirs):
    got, want = fm_values(ours), optax_values(theirs, jnp.int32)  # optax's own count dtype
    scale = np.max(np.abs(want))
    err = np.abs(got - want)
    assert err.max() <= F32_BOUND * scale, (name, int(STEPS[err.argmax()]), err.max() / scale)


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize(("name", "ours", "theirs"), PAIRS, ids=[p[0] for p in PAIRS])
def test_schedule_matches_optax_float64(x64, name, ours, theirs):
    # With x64 and an int64 count optax computes in double. (optax's own optimizers still pass an
    # int32 count, which makes several schedules compute in float32 even under x64.)
    got, want = fm_values(ours), optax_values(theirs, jnp.int64)
    scale = np.max(np.abs(want))
    err = np.abs(got - want)
    assert err.max() <= 1e-12 * scale, (name, int(STEPS[err.argmax()]), err.max() / scale)


def test_onecycle_starts_at_peak_over_div_factor():
    # issue 23: fm placed the first knot at step -1 (up to 31% off optax at the first steps)
    for ours, theirs in [(S.linear_onecycle(100, 1.0), optax.linear_onecycle_schedule(100, 1.0)),
                         (S.cosine_onecycle(100, 1.0), optax.cosine_onecycle_schedule(100, 1.0))]:
        assert float(theirs(0)) == pytest.approx(0.04, rel=1e-6)
        assert ours(0) == pytest.approx(0.04, rel=1e-12)
        assert ours(29) == pytest.approx(float(theirs(29)), rel=1e-6)


@pytest.mark.parametrize(("nesterov", "weight_decay"), [(False, 0.0), (True, 0.0),
                                                         (False, 1e-2), (True, 5e-3)])
def test_sgd_trajectory_matches_optax(nesterov, weight_decay):
    # fm's torch style is optax's trace convention: b <- g + mu*b (b0 = 0, the same numbers as
    # torch's first-step copy when dampening = 0), p <- p - lr_t * (b or g + mu*b).
    rng = np.random.default_rng(7)
    shapes = [(17,), (4, 9)]
    params0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    n_steps = 120
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n_steps)]
    ours_sched = S.warmup_cosine_decay(0.0, 0.1, 10, n_steps, 0.001,
                                       decay_steps_include_warmup=True)
    theirs_sched = optax.warmup_cosine_decay_schedule(0.0, 0.1, 10, n_steps, 0.001)

    params = [p.copy() for p in params0]
    opt = fm.SGD(params, lr=ours_sched, momentum=0.9, nesterov=nesterov,
                 weight_decay=weight_decay)
    for g in grads:
        opt.step(g)

    tx = optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(theirs_sched, momentum=0.9, nesterov=nesterov))
    jparams = [jnp.asarray(p) for p in params0]
    state = tx.init(jparams)

    @jax.jit
    def update(jparams, state, g):
        updates, state = tx.update(g, state, jparams)
        return optax.apply_updates(jparams, updates), state

    for g in grads:
        jparams, state = update(jparams, state, [jnp.asarray(x) for x in g])
    for ours, theirs in zip(params, jparams, strict=True):
        theirs = np.asarray(theirs)
        assert ours.dtype == theirs.dtype == np.float32
        # float32 rounding of both (lr in float32 vs double-then-cast, op order), carried by the
        # momentum over 120 steps: observed <= ~1e-6; bound 1e-5 relative to the parameter scale
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
