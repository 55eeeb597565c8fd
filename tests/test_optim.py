"""fastmomentum.SGD: parameter groups, per-array state, schedules, atomic steps, state dicts.

Trajectories are compared with the plain-NumPy references of reference.py, step by step, bit for
bit (the optimizer adds bookkeeping, never arithmetic). Parity with torch.optim.SGD itself is in
test_sgd_torch_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm

from reference import ema_sgd, keras_sgd, torch_sgd


def _arrays(seed, sizes, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for n in sizes]


def _grads(rng, params):
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def test_groups_hyper_parameters_and_late_joiners_follow_the_reference():
    """Two groups with their own hyper-parameters; param 1 gets its first gradient at step 5."""
    params = _arrays(0, [7, 5, 300])
    ref = [p.copy() for p in params]
    bufs = [None] * 3
    opt = fm.SGD([params[0], {"params": params[1:], "lr": 0.05, "dampening": 0.3}],
                 lr=0.1, momentum=0.9, weight_decay=1e-2)
    hyper = [dict(lr=0.1, momentum=0.9, weight_decay=1e-2),
             dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
             dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)]
    rng = np.random.default_rng(1)
    for step in range(12):
        grads = _grads(rng, params)
        if step < 5:
            grads[1] = None
        opt.step(grads)
        for i, g in enumerate(grads):
            if g is None:
                continue
            ref[i], bufs[i] = torch_sgd(ref[i], g, bufs[i], first_step=bufs[i] is None, **hyper[i])
        assert (params[1] in opt.state) == (step >= 5)  # no state before the first gradient
    for p, r in zip(params, ref, strict=True):
        np.testing.assert_array_equal(p, r)
    np.testing.assert_array_equal(opt.state[params[1]]["momentum_buffer"], bufs[1])


@pytest.mark.parametrize("style", ["keras", "ema"])
def test_other_styles_follow_their_reference(style):
    params = _arrays(2, [64, 3])
    ref = [p.copy() for p in params]
    bufs = [np.zeros_like(p) for p in params]
    opt = fm.SGD(params, lr=0.1, momentum=0.8, nesterov=style == "keras", weight_decay=1e-3,
                 style=style)
    rng = np.random.default_rng(3)
    for _ in range(20):
        grads = _grads(rng, params)
        opt.step(grads)
        for i, g in enumerate(grads):
            if style == "keras":
                ref[i], bufs[i] = keras_sgd(ref[i], g, bufs[i], lr=0.1, momentum=0.8,
                                            nesterov=True, weight_decay=1e-3)
            else:
                ref[i], bufs[i] = ema_sgd(ref[i], g, bufs[i], lr=0.1, beta=0.8, weight_decay=1e-3)
    key = "velocity" if style == "keras" else "momentum_buffer"
    for i in range(2):
        np.testing.assert_array_equal(params[i], ref[i])
        np.testing.assert_array_equal(opt.state[params[i]][key], bufs[i])


def test_lr_and_momentum_may_be_schedules_of_the_step():
    params = _arrays(4, [10])
    ref = params[0].copy()
    buf = None
    lr = fm.schedules.cosine_decay(0.1, decay_steps=30)
    opt = fm.SGD(params, lr=lr, momentum=lambda t: 0.5 + 0.01 * t)
    rng = np.random.default_rng(5)
    for t in range(30):
        g = rng.standard_normal(10)
        opt.step([g])
        ref, buf = torch_sgd(ref, g, buf, lr=lr(t), momentum=0.5 + 0.01 * t, first_step=t == 0)
    np.testing.assert_array_equal(params[0], ref)
    assert opt.iterations == 30


def test_param_groups_are_mutable_between_steps():
    (p,) = _arrays(6, [8])
    opt = fm.SGD([p], lr=0.1)
    opt.step([np.ones(8)])
    opt.param_groups[0]["lr"] = 0.0
    before = p.copy()
    opt.step([np.ones(8)])
    np.testing.assert_array_equal(p, before)


def test_sgdw_multiplier_follows_the_lr_schedule():
    """s = lr / initial_lr: a scheduler halving the lr halves the decoupled decay."""
    p = np.ones(4)
    opt = fm.SGD([p], lr=0.1, weight_decay=0.5, weight_decay_mode="sgdw")
    fm.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5).step()  # lr 0.05, initial_lr 0.1
    opt.step([np.zeros(4)])
    np.testing.assert_array_equal(p, 1.0 * (1 - 0.5 * 0.5))


def test_sgdw_with_an_lr_schedule_from_zero_asks_for_the_multiplier():
    """lr(0) = 0 leaves s = lr / lr(0) undefined: an error, not the full decay at every step."""
    p = np.ones(4)
    warmup = fm.schedules.warmup_cosine_decay(0.0, 0.1, 10, 100, decay_steps_include_warmup=True)
    with pytest.raises(ValueError, match="the lr schedule starts at 0; pass schedule_multiplier"):
        fm.SGD([p], lr=warmup, weight_decay=0.5, weight_decay_mode="sgdw")
    opt = fm.SGD([p], lr=warmup, weight_decay=0.5, weight_decay_mode="sgdw",
                 schedule_multiplier=lambda t: warmup(t) / 0.1)
    opt.step([np.zeros(4)])  # s = 0 at step 0: no decay
    np.testing.assert_array_equal(p, 1.0)
    opt.step([np.zeros(4)])  # s = lr(1) / 0.1
    np.testing.assert_array_equal(p, 1.0 * (1 - (warmup(1) / 0.1) * 0.5))
    fm.SGD([p], lr=warmup, weight_decay=0.0, weight_decay_mode="sgdw")  # no decay: no s needed


def test_step_takes_a_list_or_tuple_of_gradients_not_an_array():
    """An array's rows are not one gradient per parameter (fm.functional's rule too)."""
    params = _arrays(6, [3, 3])
    opt = fm.SGD(params, lr=0.1)
    before = [p.copy() for p in params]
    with pytest.raises(TypeError, match=r"grads must be a list or tuple, got numpy.ndarray .*"
                                        r"wrap a single gradient as \[g\]"):
        opt.step(np.ones((2, 3)))
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p, b)
    opt.step((np.ones(3), np.ones(3)))
    np.testing.assert_array_equal(params[0], before[0] - 0.1)


def test_a_step_without_any_gradient_changes_nothing_but_counts():
    """Schedules see training steps, as an lr scheduler's step() counts them."""
    p = np.ones(3)
    opt = fm.SGD([p], lr=lambda t: 0.5 ** t, momentum=0.9)
    opt.step([None])
    assert opt.iterations == 1 and opt.state == {}
    np.testing.assert_array_equal(p, 1.0)
    opt.step([np.ones(3)])  # lr(1) = 0.5
    np.testing.assert_array_equal(p, 0.5)


def test_a_bad_gradient_anywhere_modifies_nothing_and_names_its_position():
    params = _arrays(7, [5, 5, 5])
    before = [p.copy() for p in params]
    opt = fm.SGD([params[0], {"params": params[1:], "lr": 0.01}], lr=0.1, momentum=0.9)
    grads = [np.ones(5), np.ones(5), np.ones(5, np.float32)]
    with pytest.raises(TypeError, match=r"grads\[2\] has dtype float32 but params\[2\] has "
                                        r"dtype float64"):
        opt.step(grads)
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p, b)
    assert opt.state == {} and opt.iterations == 0
    with pytest.raises(ValueError, match="step\\(\\) got 2 gradients for 3 parameters"):
        opt.step(grads[:2])


def test_construction_checks_like_pytorch():
    (p,) = _arrays(8, [3])
    with pytest.raises(ValueError, match=r"Invalid learning rate: -0.1"):
        fm.SGD([p], lr=-0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero"):
        fm.SGD([p], nesterov=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        fm.SGD([])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        fm.SGD([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match=r"params\[1\] is read-only"):
        q = np.zeros(3)
        q.flags.writeable = False
        fm.SGD([p, q])
    with pytest.raises(TypeError, match="ordered collections"):
        fm.SGD([{"params": {1, 2}}])
    with pytest.raises(ValueError, match="style must be"):
        fm.SGD([p], style="adam")
    opt = fm.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] is not dense"):
        opt.add_param_group({"params": [np.zeros(6)[::2]]})
    assert len(opt.param_groups) == 1


def test_momentum_zero_keeps_no_state_like_pytorch():
    (p,) = _arrays(9, [4])
    opt = fm.SGD([p], lr=0.1)
    opt.step([np.ones(4)])
    assert len(opt.state) == 0 and opt.state_dict()["state"] == {}


def test_nesterov_with_a_momentum_schedule_through_zero_steps_as_plain_sgd():
    """PyTorch checks Nesterov at construction only; while the momentum is 0 a step is plain."""
    p = np.zeros(3)
    opt = fm.SGD([p], lr=0.1, momentum=lambda t: 0.0 if t == 0 else 0.9, nesterov=True)
    opt.step([np.ones(3)])
    np.testing.assert_array_equal(p, -0.1)
    assert p not in opt.state
    opt.step([np.ones(3)])  # first step with momentum: b <- g, p <- p - lr*(g + 0.9*b)
    np.testing.assert_array_equal(p, -0.1 - 0.1 * (1 + 0.9 * 1))


def test_state_follows_the_arrays_when_groups_are_edited():
    a, b, c = np.zeros(2), np.zeros(3), np.zeros(2)
    opt = fm.SGD([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9)
    opt.step([np.ones(2), np.full(3, 100.0)])
    opt.param_groups[0]["params"].append(c)  # c now sits at index 1, b at index 2
    opt.step([np.ones(2), np.ones(2), np.full(3, 100.0)])
    np.testing.assert_array_equal(c, -0.1)  # its own first step, not b's buffer
    np.testing.assert_array_equal(opt.state[b]["momentum_buffer"], 190.0)
    assert sorted(opt.state_dict()["state"]) == [0, 1, 2]


def test_a_single_array_is_not_an_iterable_of_parameters():
    with pytest.raises(TypeError, match="should be an iterable of arrays or dicts, but got "
                                        "ndarray"):
        fm.SGD(np.zeros((4, 3)))


def test_an_overlapping_group_is_rejected_and_not_added():
    a = np.zeros(4)
    opt = fm.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        opt.add_param_group({"params": [a.reshape(2, 2)]})
    assert len(opt.param_groups) == 1


def test_a_decoupled_decay_that_would_flip_signs_is_rejected():
    """SGDW with OneCycleLR: s = lr / initial_lr reaches div_factor, s*wd must stay <= 1."""
    p = np.ones(3)
    opt = fm.SGD([p], lr=0.1, weight_decay=0.1, weight_decay_mode="sgdw")
    sched = fm.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=30, cycle_momentum=False)
    with pytest.raises(ValueError, match=r"Invalid schedule_multiplier \* weight_decay"):
        for _ in range(30):
            opt.step([np.zeros(3)])
            sched.step()
    assert np.all(p > 0)


def _trained(opt, params, seed, steps):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        opt.step(_grads(rng, params))


@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_state_dict_round_trip_continues_bit_for_bit(style, tmp_path):
    def make():
        params = _arrays(10, [6, 9], np.float32)
        opt = fm.SGD([params[0], {"params": [params[1]], "lr": 0.02}], lr=0.1, momentum=0.9,
                     weight_decay=1e-3, style=style, nesterov=style != "ema")
        return params, opt

    params, opt = make()
    _trained(opt, params, 11, 7)
    fm.checkpoint.save(tmp_path / "ckpt.npz", {"opt": opt.state_dict(), "params": params})
    _trained(opt, params, 12, 5)

    _, fresh = make()
    ckpt = fm.checkpoint.load(tmp_path / "ckpt.npz")
    loaded = ckpt["params"]
    fresh = fm.SGD([loaded[0], {"params": [loaded[1]], "lr": 0.02}], lr=0.1, momentum=0.9,
                   weight_decay=1e-3, style=style, nesterov=style != "ema")
    fresh.load_state_dict(ckpt["opt"])
    assert fresh.iterations == 7
    _trained(fresh, loaded, 12, 5)
    for a, b in zip(params, loaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_dict_layout_is_pytorchs():
    params = _arrays(13, [3, 4])
    opt = fm.SGD([{"params": [params[0]]}, {"params": [params[1]], "momentum": 0.5}], lr=0.1,
                 momentum=0.9)
    opt.step([np.ones(3), np.ones(4)])
    sd = opt.state_dict()
    assert set(sd["state"]) == {0, 1}
    assert sd["state"][1]["momentum_buffer"] is opt.state[params[1]]["momentum_buffer"]
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert sd["param_groups"][1]["momentum"] == 0.5
    assert sd["iterations"] == 1 and sd["style"] == "torch"


def test_load_state_dict_rejects_mismatches_and_changes_nothing():
    params = _arrays(14, [3, 4])
    opt = fm.SGD(params, lr=0.1, momentum=0.9)
    opt.step([np.ones(3), np.ones(4)])
    sd = opt.state_dict()
    bad = {**sd, "state": {**sd["state"], 1: {"momentum_buffer": np.zeros(5)}}}
    other = fm.SGD(_arrays(15, [3, 4]), lr=0.3, momentum=0.9)
    with pytest.raises(ValueError, match=r"state\[1\]\['momentum_buffer'\] has shape \(5,\)"):
        other.load_state_dict(bad)
    assert other.state == {} and other.param_groups[0]["lr"] == 0.3
    with pytest.raises(ValueError, match="different number of parameter groups"):
        fm.SGD([{"params": [params[0]]}, {"params": [params[1]]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="style 'torch' but this optimizer's is 'keras'"):
        fm.SGD(params, momentum=0.9, style="keras").load_state_dict(sd)


def test_schedules_are_saved_as_data_and_lambdas_must_be_given_again():
    (p,) = _arrays(16, [3])
    opt = fm.SGD([p], lr=fm.schedules.exponential_decay(0.1, 10, 0.5), momentum=lambda t: 0.9)
    sd = fm.checkpoint.from_arrays(fm.checkpoint.to_arrays(opt.state_dict()))
    assert sd["param_groups"][0]["lr"] == {"schedule": opt.param_groups[0]["lr"].to_dict()}
    assert sd["param_groups"][0]["momentum"]["callable"].endswith("<locals>.<lambda>")
    again = fm.SGD([p], lr=0.1, momentum=lambda t: 0.8, schedule_multiplier=0.5)
    again.load_state_dict(sd)
    assert again.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert again.param_groups[0]["momentum"](0) == 0.8  # the live callable is kept
    assert again.param_groups[0]["schedule_multiplier"] is None  # a saved None stays None
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['momentum'\] was the callable "
                                         r"'.*<lambda>', which cannot be saved"):
        fm.SGD([p], lr=0.1, momentum=0.9).load_state_dict(sd)


def test_load_state_dict_checks_indices_iterations_and_casts_buffers():
    params = _arrays(17, [3, 4], np.float32)
    opt = fm.SGD(params, lr=0.1, momentum=0.9)
    opt.step([np.ones(3, np.float32), np.ones(4, np.float32)])
    sd = opt.state_dict()
    sd64 = {**sd, "state": {i: {"momentum_buffer": e["momentum_buffer"].astype(np.float64)}
                            for i, e in sd["state"].items()}}
    other = fm.SGD(_arrays(18, [3, 4], np.float32), lr=0.1, momentum=0.9)
    other.load_state_dict(sd64)
    assert all(other.state[p]["momentum_buffer"].dtype == np.float32 for p in other.state)
    duplicated = {**sd, "param_groups": [{**sd["param_groups"][0], "params": [0, 0]}]}
    with pytest.raises(ValueError, match=r"indices are not 0\.\.n-1, each once"):
        other.load_state_dict(duplicated)
    with pytest.raises(ValueError, match="iterations must be an integer >= 0"):
        other.load_state_dict({**sd, "iterations": 2.5})


def test_a_scheduler_over_a_schedule_lr_is_rejected_at_construction():
    (p,) = _arrays(19, [3])
    opt = fm.SGD([p], lr=fm.schedules.cosine_decay(0.1, 10))
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['lr'\] is a schedule"):
        fm.lr_scheduler.StepLR(opt, step_size=2)


def test_state_looked_up_by_a_view_or_copy_says_what_the_key_is():
    w, b = np.ones((4, 3)), np.ones(3)
    opt = fm.SGD([w, b], lr=0.1, momentum=0.9)
    opt.step([np.ones_like(w), np.ones_like(b)])
    assert opt.state[w] is opt.state[opt.param_groups[0]["params"][0]]
    assert w in opt.state and w.view() not in opt.state
    for key, view in ((w.view(), True), (w[1:], True), (w.reshape(-1), True), (w.copy(), False)):
        for lookup in (opt.state.__getitem__, opt.state.__delitem__):
            with pytest.raises(KeyError) as error:
                lookup(key)
            message = error.value.args[0]
            assert message.startswith("no state for this ndarray: the state is keyed by the very "
                                      "array objects given to the optimizer"), message
            assert "a view or a copy of a parameter" in message
            assert "opt.state[opt.param_groups[i]['params'][j]]" in message
            assert ("shares memory with a parameter of shape (4, 3)" in message) == view, message
    assert len(opt.state) == 2  # nothing was deleted
