"""A schedule for the weight decay, as optax's ``add_decayed_weights(weight_decay=schedule)``
takes one: evaluated at each step's count like the lr's, checked like a number, saved in the
state dict as a description. Compared with the plain NumPy reference step by step, and with the
installed optax when it is there."""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import schedules

from conftest import rand, same_bits
from reference import keras_sgd, torch_sgd

STEPS = 120


def _grads(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rand(rng, n, dtype) for _ in range(STEPS)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["coupled", "decoupled", "sgdw"])
def test_a_weight_decay_schedule_is_evaluated_at_each_step(isa, dtype, mode):
    wd = schedules.cosine_decay(0.05, decay_steps=100, alpha=0.1)
    grads = _grads(257, dtype)
    w = rand(np.random.default_rng(1), 257, dtype)
    ref_w, ref_b = w.copy(), np.zeros_like(w)
    opt = fm.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=wd,
                 weight_decay_mode=mode)
    for step, g in enumerate(grads):
        ref_w, ref_b = torch_sgd(ref_w, g, ref_b, lr=0.1, momentum=0.9, nesterov=True,
                                 weight_decay=wd(step), weight_decay_mode=mode,
                                 first_step=step == 0)
        opt.step([g])
    same_bits(w, ref_w)
    same_bits(opt.state[w]["momentum_buffer"], ref_b)


def test_keras_style_with_a_weight_decay_schedule():
    wd = schedules.exponential_decay(0.02, decay_steps=10, decay_rate=0.5)
    grads = _grads(100, np.float32, seed=2)
    w = rand(np.random.default_rng(3), 100, np.float32)
    ref_w, ref_v = w.copy(), np.zeros_like(w)
    opt = fm.SGD([w], lr=0.05, momentum=0.9, weight_decay=wd, style="keras")
    for step, g in enumerate(grads):
        ref_w, ref_v = keras_sgd(ref_w, g, ref_v, lr=0.05, momentum=0.9, weight_decay=wd(step))
        opt.step([g])
    same_bits(w, ref_w)


def test_a_bad_weight_decay_value_is_refused_at_construction_and_at_the_step():
    with pytest.raises(ValueError, match="weight_decay"):
        fm.SGD([np.zeros(3)], lr=0.1, weight_decay=lambda step: -1.0)
    w = np.ones(3)
    opt = fm.SGD([w], lr=0.1, weight_decay=lambda step: 0.1 if step < 2 else float("nan"))
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])
    before = w.copy()
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step([np.ones(3)])
    same_bits(w, before)
    assert opt.iterations == 2


def test_the_schedule_is_saved_and_restored_with_the_state_dict():
    wd = schedules.polynomial_decay(0.1, decay_steps=50, end_value=0.0)
    w = np.ones(10)
    opt = fm.SGD([w], lr=0.1, momentum=0.9, weight_decay=wd)
    for g in _grads(10, np.float64)[:5]:
        opt.step([g])
    state = opt.state_dict()
    assert state["param_groups"][0]["weight_decay"] == {"schedule": wd.to_dict()}
    w2 = w.copy()
    other = fm.SGD([w2], lr=0.1, momentum=0.9, weight_decay=0.0)
    other.load_state_dict(state)
    assert other.param_groups[0]["weight_decay"] == wd
    for g in _grads(10, np.float64, seed=9)[:20]:
        opt.step([g])
        other.step([g])
    same_bits(w2, w)


def test_parity_with_optax_add_decayed_weights_and_a_schedule():
    optax = pytest.importorskip("optax", reason="optax is not installed "
                                "(python -m pip install --group parity)")
    jnp = pytest.importorskip("jax.numpy")
    wd = schedules.cosine_decay(1e-2, decay_steps=80, alpha=0.0)
    wd_optax = optax.cosine_decay_schedule(1e-2, decay_steps=80, alpha=0.0)
    tx = optax.chain(optax.add_decayed_weights(wd_optax), optax.sgd(0.05, momentum=0.9,
                                                                    nesterov=True))
    grads = _grads(64, np.float32, seed=4)
    w = rand(np.random.default_rng(5), 64, np.float32)
    params = jnp.asarray(w)
    state = tx.init(params)
    opt = fm.SGD([w], lr=0.05, momentum=0.9, nesterov=True, weight_decay=wd)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        opt.step([g])
    # optax evaluates the schedule in float32 and may fuse a multiply-add under XLA; fm rounds
    # each operation of the same formula once in float32: the trajectories agree to rounding.
    np.testing.assert_allclose(w, np.asarray(params), rtol=2e-5, atol=2e-6)
