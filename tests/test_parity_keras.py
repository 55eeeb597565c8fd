"""fastmomentum's schedules and keras-style SGD against the INSTALLED Keras 3 (skipped without it).

Runs Keras on the JAX backend (``KERAS_BACKEND=jax``, set here before keras is imported).
Keras evaluates its schedules in float32 (``initial_learning_rate`` becomes a float32 tensor),
so fm (double) and Keras agree to float32 rounding: ``|fm - keras| <= 2**-20 * scale``, ``scale``
the largest value of the scan (8 float32 ulps of it, for a chain of float32 operations on rounded
inputs). The one exception is Keras' own late restarts of ``CosineDecayRestarts`` (its float32
log ratio rounds below the period index at some restart steps); fm restarts on time, and the test
checks that every step where the two differ is such a restart. Trajectories: ``fm.SGD(style=
"keras")`` against ``keras.optimizers.SGD`` on float32 variables.

Install: ``pip install keras jax jaxlib``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import schedules as S

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras", reason="keras is not installed (pip install keras jax jaxlib)")
jax = pytest.importorskip("jax", reason="jax is not installed (pip install keras jax jaxlib)")
if keras.backend.backend() != "jax":
    pytest.skip("these tests run Keras on the JAX backend (KERAS_BACKEND=jax)",
                allow_module_level=True)
ks = keras.optimizers.schedules

STEPS = np.arange(0, 5000)
F32_BOUND = 2.0**-20

PAIRS = [
    ("exponential", S.exponential_decay(0.1, 100, 0.96), ks.ExponentialDecay(0.1, 100, 0.96)),
    ("exponential_staircase", S.exponential_decay(0.1, 70, 0.5, staircase=True),
     ks.ExponentialDecay(0.1, 70, 0.5, staircase=True)),
    ("inverse_time", S.inverse_time_decay(0.1, 10, 0.5), ks.InverseTimeDecay(0.1, 10, 0.5)),
    ("inverse_time_staircase", S.inverse_time_decay(0.1, 30, 0.5, staircase=True),
     ks.InverseTimeDecay(0.1, 30, 0.5, staircase=True)),
    ("polynomial", S.polynomial_decay(0.1, 1000, 0.001, 2.0), ks.PolynomialDecay(0.1, 1000, 0.001,
                                                                                   2.0)),
    ("polynomial_cycle", S.polynomial_decay(0.1, 300, 0.0, 1.5, cycle=True),
     ks.PolynomialDecay(0.1, 300, 0.0, 1.5, cycle=True)),
    ("piecewise_constant", S.piecewise_constant([100, 1000], [1.0, 0.5, 0.1]),
     ks.PiecewiseConstantDecay([100, 1000], [1.0, 0.5, 0.1])),
    ("cosine_decay", S.cosine_decay(0.1, 2000, 0.1), ks.CosineDecay(0.1, 2000, 0.1)),
    ("warmup_cosine_decay",
     S.warmup_cosine_decay(0.0, 0.1, 100, 2000, 0.1 * 0.05, decay_steps_include_warmup=False),
     ks.CosineDecay(0.0, 2000, 0.05, warmup_target=0.1, warmup_steps=100)),
] + [
    (f"cosine_decay_restarts_{first}_{t_mul}", S.cosine_decay_restarts(0.1, first, t_mul, 0.8, 0.1),
     ks.CosineDecayRestarts(0.1, first, t_mul, 0.8, 0.1))
    for first, t_mul in [(10, 2.0), (10, 3.0), (7, 1.5), (16, 1.5), (3, 1.0), (4.5, 2.0), (1, 2.0)]
]


def keras_values(schedule):
    return np.asarray(jax.jit(jax.vmap(schedule))(jax.numpy.asarray(STEPS)), dtype=np.float64)


@pytest.mark.parametrize(("name", "ours", "theirs"), PAIRS, ids=[p[0] for p in PAIRS])
def test_schedule_matches_keras(name, ours, theirs):
    got = np.array([ours(int(t)) for t in STEPS])
    want = keras_values(theirs)
    scale = np.max(np.abs(want))
    bad = np.flatnonzero(np.abs(got - want) > F32_BOUND * scale)
    if isinstance(ours, S.CosineDecayRestarts):
        # Keras' float32 late restarts: at a restart step S_i it gives the previous period's end
        # (alpha * init) where fm gives the new period's top.
        for step in bad.tolist():
            _, r = ours.restart_index(step)
            assert r == 0.0, (name, step)
            assert want[step] == pytest.approx(ours.init_value * ours.alpha, rel=1e-6)
        bad = []
    assert len(bad) == 0, (name, bad[:5], got[bad[:5]], want[bad[:5]])


def test_keras_restarts_late_where_fm_is_on_time():
    # The documented float32 quirk: Keras restarts one step late at step 81910 (T0=10, t_mul=2);
    # fm restarts there, and the step after agrees again.
    ours, theirs = S.cosine_decay_restarts(1.0, 10, 2.0), ks.CosineDecayRestarts(1.0, 10, 2.0)
    steps = jax.numpy.asarray([81909, 81910, 81911])
    want = np.asarray(jax.jit(jax.vmap(theirs))(steps), dtype=np.float64)
    assert ours(81910) == 1.0 and want[1] < 1e-6
    assert ours(81911) == pytest.approx(want[2], rel=1e-5)


@pytest.mark.parametrize(("momentum", "nesterov", "weight_decay"),
                         [(0.9, False, 0.0), (0.9, True, 0.0), (0.9, False, 1e-2),
                          (0.8, True, 5e-3), (0.0, False, 1e-2), (0.0, True, 0.0)])
def test_sgd_trajectory_matches_keras(momentum, nesterov, weight_decay):
    rng = np.random.default_rng(11)
    shapes = [(13,), (3, 7)]
    params0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    n_steps = 120
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n_steps)]

    params = [p.copy() for p in params0]
    opt = fm.SGD(params, lr=S.cosine_decay(0.05, 100, 0.1), momentum=momentum, nesterov=nesterov,
                 weight_decay=weight_decay, style="keras")
    for g in grads:
        opt.step(g)

    kvars = [keras.Variable(p) for p in params0]
    kopt = keras.optimizers.SGD(learning_rate=ks.CosineDecay(0.05, 100, 0.1), momentum=momentum,
                                nesterov=nesterov, weight_decay=weight_decay or None)
    kopt.build(kvars)
    for g in grads:
        kopt.apply(g, kvars)
    for ours, var in zip(params, kvars, strict=True):
        theirs = keras.ops.convert_to_numpy(var.value)
        assert ours.dtype == theirs.dtype == np.float32
        # Keras' lr is float32, fm's a double cast to float32 by the kernel: lr values differ by
        # float32 rounding, which the velocity carries; bound 1e-5 relative to the params' scale
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clipping", [dict(global_clipnorm=0.5), dict(global_clipnorm=1e3),
                                      dict(clipvalue=0.05), dict(clipvalue=1e3)],
                         ids=["global_clipnorm-clips", "global_clipnorm-1", "clipvalue-clips",
                              "clipvalue-none"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_keras_clipping_trajectory_matches_keras(clipping, nesterov):
    rng = np.random.default_rng(12)
    shapes = [(13,), (3, 7)]
    params0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(120)]

    params = [p.copy() for p in params0]
    opt = fm.SGD(params, lr=0.05, momentum=0.9, nesterov=nesterov, style="keras", **clipping)
    norms = [opt.step(g).grad_norm for g in grads]

    kvars = [keras.Variable(p) for p in params0]
    kopt = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=nesterov, **clipping)
    kopt.build(kvars)
    for g in grads:
        kopt.apply(g, kvars)
    for ours, var in zip(params, kvars, strict=True):
        theirs = keras.ops.convert_to_numpy(var.value)
        # Keras sums the norm in float32 and forms c*min(1/n, 1/c) in float32, fm in double
        # rounded once to float32: the factors differ by float32 rounding, which the velocity
        # carries (bound as above).
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    if "global_clipnorm" in clipping:  # the norm fm reports is Keras' global_norm, in double
        for g, norm in zip(grads[:3], norms[:3], strict=True):
            ops = keras.ops  # Keras' global_norm: sqrt of the summed per-variable sums
            expected = float(ops.convert_to_numpy(
                ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(x)) for x in g])))))
            assert norm == pytest.approx(expected, rel=1e-6)
