"""Keras' own options in the keras style: ``global_clipnorm`` and ``clipvalue`` in Keras'
formulas (``keras/src/optimizers/base_optimizer.py``: ``clip_by_global_norm`` and ``ops.clip``),
fused into the step, and ``nesterov=True`` with ``momentum=0`` taken as plain SGD.

Each is compared bit for bit with a plain NumPy reference (the gradient the option should have
produced, fed to tests/reference.py's keras_sgd) under every ISA and 1 and 2 threads; the same
options against the installed Keras are in tests/test_parity_keras.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import functional as F

from conftest import rand, same_bits
from reference import keras_sgd
from test_guards import ordered_norm_squares

SIZES = [5, 4097, 300]


def keras_global_factor(clip_norm, norm):
    """clip_by_global_norm's scale, in double: clip_norm * min(1/norm, 1/clip_norm), made NaN by
    a non-finite norm (Keras adds norm - norm)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.float64(1.0) / np.float64(norm)
        return float(clip_norm * np.minimum(inverse, 1.0 / clip_norm) + (norm - norm))


def _problem(seed, dtype, scale=1.0):
    rng = np.random.default_rng(seed)
    params = [rand(rng, n, dtype) for n in SIZES]
    grads = [rand(rng, n, dtype) * dtype(scale) for n in SIZES]
    vels = [rand(rng, n, dtype) for n in SIZES]
    return params, grads, vels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip_norm", [0.5, 1e9, 0.09])  # clipped, not clipped, c*(1/c) != 1
@pytest.mark.parametrize("nesterov", [False, True])
def test_global_clipnorm_is_keras_formula(isa, threads, dtype, clip_norm, nesterov):
    params, grads, vels = _problem(1, dtype)
    norm = float(np.sqrt(ordered_norm_squares(grads) / 4.0))  # loss_scale 2: the norm of g / 2
    factor = dtype(keras_global_factor(clip_norm, norm) / 2.0)  # one rounding of the product
    kw = dict(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    expected = [keras_sgd(p, g * factor, v, **kw)
                for p, g, v in zip(params, grads, vels, strict=True)]
    out = F.keras_sgd_(params, grads, vels, global_clipnorm=clip_norm, loss_scale=2, **kw)
    assert out == fm.StepResult(False, norm)
    for p, v, (ep, ev) in zip(params, vels, expected, strict=True):
        same_bits(p, ep)
        same_bits(v, ev)


def test_global_clipnorm_is_not_torchs_formula():
    # Below the bound torch's factor is exactly 1; Keras' is c*(1/c), which for c = 0.09 is not 1
    # in double: float64 gradients are scaled by it, as Keras scales them.
    assert keras_global_factor(0.09, 0.01) != 1.0
    p, g, v = (np.full(4, x) for x in (0.0, 0.025, 0.0))  # p = 0: the step's bits show
    ref_p, _ = keras_sgd(p, g * keras_global_factor(0.09, 0.05), v, lr=1.0, momentum=0.9)
    F.keras_sgd_([p], [g], [v], lr=1.0, momentum=0.9, global_clipnorm=0.09)
    same_bits(p, ref_p)
    p2, v2 = np.zeros(4), np.zeros(4)
    F.keras_sgd_([p2], [g], [v2], lr=1.0, momentum=0.9, max_grad_norm=0.09)
    assert not np.array_equal(p, p2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip_value", [0.05, 0.3, 1e30])
def test_clipvalue_clips_each_element(isa, threads, dtype, clip_value):
    params, grads, vels = _problem(2, dtype, scale=2.0)
    grads[1][:4] = [np.nan, -0.0, np.inf, -np.inf]
    v = dtype(clip_value)
    kw = dict(lr=0.05, momentum=0.5, weight_decay=0.02)
    with np.errstate(invalid="ignore"):
        expected = [keras_sgd(p, np.clip(g * dtype(0.5), -v, v), b, **kw)
                    for p, g, b in zip(params, grads, vels, strict=True)]
        out = F.keras_sgd_(params, grads, vels, clipvalue=clip_value, loss_scale=2.0, **kw)
    assert out == fm.StepResult(False, None)
    for p, b, (ep, eb) in zip(params, vels, expected, strict=True):
        same_bits(p, ep)
        same_bits(b, eb)


@pytest.mark.parametrize("maximize", [False, True])
def test_clipvalue_in_the_optimizer_over_steps(isa, maximize):
    rng = np.random.default_rng(3)
    w = rand(rng, 1000, np.float32)
    ref_w, ref_v = w.copy(), np.zeros_like(w)
    opt = fm.SGD([w], lr=0.1, momentum=0.9, nesterov=True, style="keras", clipvalue=0.1,
                 maximize=maximize)
    for _ in range(20):
        g = rand(rng, 1000, np.float32)
        # clip(-g) == -clip(g): the reference negates the clipped gradient for maximize
        ref_w, ref_v = keras_sgd(ref_w, np.clip(g, -0.1, 0.1), ref_v, lr=0.1, momentum=0.9,
                                 nesterov=True, maximize=maximize)
        opt.step([g])
    same_bits(w, ref_w)


def test_global_clipnorm_in_the_optimizer_reports_the_norm():
    rng = np.random.default_rng(4)
    ws = [rand(rng, n, np.float64) for n in SIZES]
    opt = fm.SGD(ws, lr=0.1, momentum=0.9, style="keras", global_clipnorm=0.5)
    grads = [rand(rng, n, np.float64) for n in SIZES]
    expected = [keras_sgd(w.copy(), g * keras_global_factor(0.5, np.sqrt(
        ordered_norm_squares(grads))), np.zeros_like(w), lr=0.1, momentum=0.9)
        for w, g in zip(ws, grads, strict=True)]
    out = opt.step(grads)
    assert out.grad_norm == float(np.sqrt(ordered_norm_squares(grads)))
    for w, (ew, _) in zip(ws, expected, strict=True):
        same_bits(w, ew)


def test_a_nonfinite_norm_makes_keras_clipping_nan_or_skips():
    p, v = np.ones(3), np.zeros(3)
    g = np.array([1.0, np.inf, 0.0])
    with np.errstate(invalid="ignore"):
        F.keras_sgd_([p], [g], [v], lr=0.1, momentum=0.9, global_clipnorm=1.0)
    assert np.isnan(p).all()  # Keras' scale is NaN: every element, not only the infinite one
    q = np.ones(3)
    out = F.keras_sgd_([q], [g], [np.zeros(3)], lr=0.1, momentum=0.9, global_clipnorm=1.0,
                       nonfinite="skip")
    assert out.skipped and (q == 1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nesterov_without_momentum_is_plain_sgd_in_keras_style(isa, dtype):
    rng = np.random.default_rng(5)
    p, g = rand(rng, 100, dtype), rand(rng, 100, dtype)
    expected, _ = keras_sgd(p, g, None, lr=0.1, momentum=0.0, nesterov=True)
    q = p.copy()
    F.keras_sgd_([p], [g], lr=0.1, momentum=0.0, nesterov=True)
    same_bits(p, expected)
    opt = fm.SGD([q], lr=0.1, momentum=0.0, nesterov=True, style="keras")
    opt.step([g])
    same_bits(q, expected)


def test_torch_style_still_refuses_nesterov_without_momentum():
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        fm.SGD([np.zeros(3)], lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        F.sgd_([np.zeros(3)], [np.zeros(3)], lr=0.1, nesterov=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(global_clipnorm=0.0), "global_clipnorm must be None or a finite number > 0, got 0.0"),
    (dict(global_clipnorm=np.inf), "global_clipnorm must be None or a finite number > 0"),
    (dict(global_clipnorm="1"), "global_clipnorm"),
    (dict(clipvalue=-1.0), "clipvalue must be None or a finite number > 0, got -1.0"),
    (dict(clipvalue=np.nan), "clipvalue must be None or a finite number > 0"),
    (dict(clipvalue=1.0, global_clipnorm=1.0), "clipvalue cannot be combined with global_clipnorm"),
    (dict(clipvalue=1.0, max_grad_norm=1.0), "clipvalue cannot be combined with max_grad_norm"),
    (dict(global_clipnorm=1.0, max_grad_norm=1.0),
     "max_grad_norm cannot be combined with global_clipnorm"),
])
def test_bad_keras_clipping_is_refused_before_anything_changes(kwargs, message):
    p, g, v = np.ones(3), np.ones(3), np.zeros(3)
    with pytest.raises((TypeError, ValueError), match=message):
        F.keras_sgd_([p], [g], [v], lr=0.1, momentum=0.9, **kwargs)
    with pytest.raises((TypeError, ValueError), match=message):
        fm.SGD([p], lr=0.1, momentum=0.9, style="keras", **kwargs)
    assert (p == 1).all() and (v == 0).all()


@pytest.mark.parametrize("style", ["torch", "ema"])
@pytest.mark.parametrize("option", ["global_clipnorm", "clipvalue"])
def test_keras_clipping_is_for_the_keras_style(style, option):
    with pytest.raises(ValueError, match="Keras' options, for style='keras'"):
        fm.SGD([np.zeros(3)], lr=0.1, momentum=0.9, style=style, **{option: 1.0})
    with pytest.raises(TypeError, match=option):
        step = F.sgd_ if style == "torch" else F.ema_sgd_
        kw = dict(momentum=0.9) if style == "torch" else dict(beta=0.9)
        step([np.zeros(3)], [np.zeros(3)], [np.zeros(3)], lr=0.1, **kw, **{option: 1.0})


@pytest.mark.parametrize("style, settings, message", [
    ("torch", dict(global_clipnorm=1.0), "Keras' options, for style='keras'"),
    ("ema", dict(clipvalue=1.0), "Keras' options, for style='keras'"),
    ("keras", dict(global_clipnorm=1.0, max_grad_norm=1.0),
     "max_grad_norm cannot be combined with global_clipnorm"),
    ("keras", dict(clipvalue=1.0, max_grad_norm=1.0),
     "clipvalue cannot be combined with max_grad_norm"),
    ("keras", dict(clipvalue=-1.0), "clipvalue must be None or a finite number > 0"),
])
def test_clipping_set_between_steps_is_checked_at_the_step(style, settings, message):
    w = np.ones(3)
    opt = fm.SGD([w], lr=0.1, momentum=0.9, style=style)
    opt.step([np.ones(3)])
    before, state = w.copy(), opt.state_dict()
    for name, value in settings.items():
        setattr(opt, name, value)
    with pytest.raises(ValueError, match=message):
        opt.step([np.ones(3)])
    same_bits(w, before)
    assert opt.iterations == 1 and opt.state_dict()["state"][0].keys() == state["state"][0].keys()
