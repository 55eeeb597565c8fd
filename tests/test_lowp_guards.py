"""The step's guards with the low-precision kinds, on every ISA this CPU runs and 1, 2 and 3
threads: a non-finite gradient skips or raises with every array as it was (parameters, buffers,
codes, scales, compensations); clipping, loss scaling and Keras' global_clipnorm and clipvalue
read bfloat16/float16 gradients widened to float32, so a call gives the same norm and the same
bits as the call on float32 copies of its gradients, and the reference fed the float32 gradients
times the documented factor (tests/test_guards.py, tests/test_keras_options.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastmomentum as fm

import reference_lowp as lp
from lowp_cases import (
    BF16,
    CONFIGS,
    F16,
    F32,
    MIXED,
    Kind,
    kernel_config,
    make_state,
    run_kernels,
    run_reference,
    same_state,
    snapshot,
    untouched,
)
from test_guards import clip_factor, ordered_norm_squares
from test_keras_options import keras_global_factor

# Around the norm's blocks of 4096 elements and the buffers' blocks of 256.
NORM_SHAPES = [(5,), (4097,), (300,), (7, 45)]


def widened(state):
    """The state with float32 copies of its gradients."""
    out = state.copy()
    out.grads = [lp.widen(g) for g in state.grads]
    return out


# --- non-finite gradients --------------------------------------------------------------------

@pytest.mark.parametrize("mix", sorted(MIXED))
@pytest.mark.parametrize("where, value", [
    ((0, 1536), np.nan), ((1, 0), np.inf), ((4, 699), -np.inf), ((2, 314), np.nan)])
def test_a_nonfinite_gradient_skips_or_raises_with_nothing_modified(mix, where, value):
    """The bad element in gradients of each mix's dtypes and kinds, first or last in its array
    (parameter 2 is 2-D): with "skip" the result says skipped, with "raise" FloatingPointError;
    either way no parameter, buffer, code, scale or compensation has changed (nor a gradient)."""
    start = make_state(np.random.default_rng(20), MIXED[mix])
    i, j = where
    start.grads[i].reshape(-1)[j] = value
    hyper = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    rounding = "stochastic" if mix == "stochastic" else "nearest"
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            state = start.copy()
            before = snapshot(state)
            out = run_kernels("torch", state, hyper, rounding=rounding, nonfinite="skip")
            assert out == fm.StepResult(True, None)
            untouched(state, before, f"skip {cfg}")
            with pytest.raises(FloatingPointError):
                run_kernels("torch", state, hyper, rounding=rounding, nonfinite="raise",
                            max_grad_norm=1.0)
            untouched(state, before, f"raise {cfg}")


# --- clipping and loss scaling ---------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.5, 1e9])  # clipped, untouched
@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_clipping_and_loss_scale_read_16bit_gradients_widened(dtype, style, max_norm):
    """One kind per call, so the norm is test_guards' documented order over the widened
    gradients; the result is the reference fed g * (clip factor / loss scale) in float32, and the
    same as the call with float32 copies of the gradients."""
    kind = Kind(dtype, dtype, "int8", "kahan")
    start = make_state(np.random.default_rng(21), [kind], NORM_SHAPES)
    g32 = [lp.widen(g) for g in start.grads]
    norm = float(np.sqrt(ordered_norm_squares(g32) / 4.0))  # loss_scale 2: the norm of g / 2
    factor = np.float32(clip_factor(max_norm, norm) / 2.0)  # one rounding of the product
    hyper = {"torch": dict(lr=0.1, momentum=0.9, dampening=0.1),
             "keras": dict(lr=0.1, momentum=0.9, nesterov=True),
             "ema": dict(lr=0.1, beta=0.9)}[style]
    hyper.update(weight_decay=0.01, maximize=True)
    want = run_reference(style, start, hyper, grads=[g * factor for g in g32])
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            for state in (start.copy(), widened(start)):
                out = run_kernels(style, state, hyper, max_grad_norm=max_norm, loss_scale=2)
                assert out == fm.StepResult(False, norm), cfg
                state.grads = want.grads
                same_state(state, want, f"{cfg} grads {state.grads[0].dtype}")


@pytest.mark.parametrize("mix", sorted(MIXED))
def test_a_mixed_call_measures_its_gradients_as_float32_copies_would(mix):
    """Several kinds in one call, gradients of three dtypes: the norm, the skip decision and the
    clipped results equal those of the same call with every gradient widened to float32."""
    start = make_state(np.random.default_rng(22), MIXED[mix])
    hyper = dict(lr=0.1, momentum=0.9, nesterov=True)
    rounding = "stochastic" if mix == "stochastic" else "nearest"
    results = []
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            for state in (start.copy(), widened(start)):
                out = run_kernels("torch", state, hyper, rounding=rounding, seed=5, step=6,
                                  max_grad_norm=1.0, loss_scale=8.0)
                state.grads = start.grads
                results.append((cfg, out, state))
    for cfg, out, state in results[1:]:
        assert out == results[0][1], cfg
        assert not out.skipped and out.grad_norm > 1.0  # clipped: the factor matters
        same_state(state, results[0][2], str(cfg))


# --- Keras' clipping ---------------------------------------------------------------------------

@pytest.mark.parametrize("clip_norm", [0.5, 0.09, 1e9])  # clipped, c*(1/c) != 1, untouched
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_keras_global_clipnorm_reads_16bit_gradients_widened(dtype, clip_norm):
    kind = Kind(dtype, dtype, "bfloat16", "stochastic")
    start = make_state(np.random.default_rng(23), [kind], NORM_SHAPES)
    g32 = [lp.widen(g) for g in start.grads]
    norm = float(np.sqrt(ordered_norm_squares(g32) / 4.0))
    factor = np.float32(keras_global_factor(clip_norm, norm) / 2.0)
    hyper = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    kw = dict(rounding="stochastic", seed=8, step=1)
    want = run_reference("keras", start, hyper, grads=[g * factor for g in g32], **kw)
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            for state in (start.copy(), widened(start)):
                out = run_kernels("keras", state, hyper, global_clipnorm=clip_norm,
                                  loss_scale=2, **kw)
                assert out == fm.StepResult(False, norm), cfg
                state.grads = want.grads
                same_state(state, want, f"{cfg} grads {state.grads[0].dtype}")


@pytest.mark.parametrize("clip_value", [0.05, 0.3, 1e30])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_keras_clipvalue_clips_the_widened_gradients(dtype, clip_value):
    """clipvalue rounded to float32 (the arithmetic's dtype) clips g / loss_scale element by
    element; a NaN stays NaN, infinities clip."""
    kind = Kind(dtype, dtype, "float16")
    start = make_state(np.random.default_rng(24), [kind, Kind(F32, F32, "bfloat16"), kind],
                       NORM_SHAPES[:3])
    start.grads[1][:4] = [np.nan, -0.0, np.inf, -np.inf]
    start.grads[0][:3] = lp.narrow(np.array([np.nan, np.inf, -np.inf], np.float32), dtype)
    v = np.float32(clip_value)
    hyper = dict(lr=0.05, momentum=0.5, weight_decay=0.02)
    with np.errstate(invalid="ignore"):
        grads = [np.clip(lp.widen(g) * np.float32(0.5), -v, v) for g in start.grads]
    want = run_reference("keras", start, hyper, grads=grads)
    for cfg in CONFIGS:
        with kernel_config(*cfg), np.errstate(invalid="ignore"):
            for state in (start.copy(), widened(start)):
                out = run_kernels("keras", state, hyper, clipvalue=clip_value, loss_scale=2.0)
                assert out == fm.StepResult(False, None), cfg
                state.grads = want.grads
                same_state(state, want, f"{cfg} grads {state.grads[0].dtype}")


# The norm is summed list by list (run_updates: float32, float64, then each low-precision kind in
# order of appearance), each list cut in blocks of 4096 from its own first element: a call whose
# gradients are of one storage kind has the norm of their float32 copies (the tests above); one
# that mixes kinds sums kind by kind, in that documented order.
def test_a_norm_over_mixed_gradient_kinds_is_summed_kind_by_kind():
    params = [np.zeros(2, BF16), np.zeros(1, BF16)]
    grads = [np.array([1.5, 1.5], BF16), np.array([2.0**27], F32)]
    mixed = fm.functional.sgd_([p.copy() for p in params], grads, lr=0.0, max_grad_norm=np.inf)
    first = fm._core.grad_stats([lp.widen(grads[0])])[1]   # the bfloat16-gradient kind's list
    second = fm._core.grad_stats([grads[1]])[1]            # then the float32-gradient kind's
    assert mixed.grad_norm == math.sqrt(first + second)
    copies = fm.functional.sgd_([p.copy() for p in params], [lp.widen(g) for g in grads],
                                lr=0.0, max_grad_norm=np.inf)
    assert copies.grad_norm != mixed.grad_norm  # one float32 list: another order (1 ulp here)
