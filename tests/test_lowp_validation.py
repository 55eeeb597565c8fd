"""Low-precision arguments the functional API refuses: each with TypeError or ValueError naming the
argument and its index, and then NOTHING modified, not even the valid arrays before the bad one
(every array of the call is snapshotted first). The messages are the kernels' (cpp/bindings/
call.cpp kind_of, array_desc.cpp); only the parts that name what is wrong are matched.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm

from lowp_cases import BF16, F16, F32, State, snapshot, untouched

SHAPES = [(600,), (7, 45), (1000,)]  # 3, 2 and 4 blocks of 256


def valid_call():
    """Three parameters of three kinds, all valid together (rounding "nearest"):
    0: bfloat16 with bfloat16 grads, an 8-bit buffer and a compensation;
    1: float16 with float32 grads, a bfloat16 buffer and a compensation;
    2: float32 with an 8-bit buffer, no compensation."""
    rng = np.random.default_rng(30)

    def arr(shape, dtype):
        return rng.standard_normal(shape).astype(np.float32).astype(dtype)

    def quantized(shape):
        n = int(np.prod(shape))
        return (rng.integers(-127, 128, shape).astype(np.int8),
                rng.random(-(-n // 256)).astype(np.float32))

    s0, s1, s2 = SHAPES
    return State(params=[arr(s0, BF16), arr(s1, F16), arr(s2, F32)],
                 grads=[arr(s0, BF16), arr(s1, F32), arr(s2, F32)],
                 buffers=[quantized(s0), arr(s1, BF16), quantized(s2)],
                 comps=[arr(s0, BF16), arr(s1, F16), None])


def read_only(a):
    a.flags.writeable = False
    return a


def _with_codes(s, i, codes):
    s.buffers[i] = (codes, s.buffers[i][1])


def _with_scales(s, i, scales):
    s.buffers[i] = (s.buffers[i][0], scales)


def _overlapping_codes(s):
    """buffers[1] an 8-bit buffer whose codes are the bytes of buffers[0].codes, shifted."""
    pool = np.zeros(2000, np.int8)
    _with_codes(s, 0, pool[:600])
    s.buffers[1] = (pool[500:815].reshape(SHAPES[1]), np.zeros(2, np.float32))


# (id, how the valid call is broken, keyword arguments, error type, what the message says)
CASES = [
    ("compensation-for-float32", lambda s: s.comps.__setitem__(2, np.zeros(SHAPES[2], F32)), {},
     ValueError, r"compensations\[2\] is given but params\[2\] is float32"),
    ("compensation-with-stochastic", lambda s: s.comps.__setitem__(0, None),
     dict(rounding="stochastic"), ValueError,
     r"compensations\[1\] is given with rounding='stochastic'"),
    ("compensation-dtype", lambda s: s.comps.__setitem__(1, np.zeros(SHAPES[1], BF16)), {},
     TypeError, r"compensations\[1\] has dtype bfloat16 but params\[1\] has dtype float16"),
    ("compensation-shape", lambda s: s.comps.__setitem__(1, np.zeros(315, F16)), {},
     ValueError, r"compensations\[1\] has shape \(315,\) but params\[1\] has shape \(7, 45\)"),
    ("compensations-too-few", lambda s: s.comps.pop(), {},
     ValueError, r"compensations has 2 entries but params has 3"),
    ("compensations-too-many", lambda s: s.comps.append(None), {},
     ValueError, r"compensations has 4 entries but params has 3"),
    ("codes-uint8", lambda s: _with_codes(s, 2, np.zeros(SHAPES[2], np.uint8)), {},
     TypeError, r"buffers\[2\]\.codes has dtype uint8; an 8-bit buffer's codes are int8"),
    ("codes-int16", lambda s: _with_codes(s, 2, np.zeros(SHAPES[2], np.int16)), {},
     TypeError, r"buffers\[2\]\.codes has dtype int16; an 8-bit buffer's codes are int8"),
    ("buffer-as-list", lambda s: s.buffers.__setitem__(2, list(s.buffers[2])), {},
     TypeError, r"buffers\[2\] must be a numpy\.ndarray, got list \(an 8-bit buffer is a "
                r"\(codes, scales\) tuple: fastmomentum\.QuantizedBuffer\)"),
    ("codes-float32", lambda s: _with_codes(s, 2, np.zeros(SHAPES[2], np.float32)), {},
     TypeError, r"buffers\[2\]\.codes has dtype float32; an 8-bit buffer's codes are int8"),
    ("codes-flat-for-2d", lambda s: s.buffers.__setitem__(
        1, (np.zeros(315, np.int8), np.zeros(2, np.float32))), {},
     ValueError, r"buffers\[1\]\.codes has shape \(315,\) but params\[1\] has shape \(7, 45\)"),
    ("codes-one-too-many", lambda s: _with_codes(s, 2, np.zeros(1001, np.int8)), {},
     ValueError, r"buffers\[2\]\.codes has shape \(1001,\)"),
    ("codes-strided", lambda s: _with_codes(s, 2, np.zeros(2000, np.int8)[::2]), {},
     ValueError, r"buffers\[2\]\.codes is not dense"),
    ("scales-float64", lambda s: _with_scales(s, 2, np.zeros(4, np.float64)), {},
     TypeError, r"buffers\[2\]\.scales has dtype float64; an 8-bit buffer's scales are float32"),
    ("scales-int32", lambda s: _with_scales(s, 2, np.zeros(4, np.int32)), {},
     TypeError, r"buffers\[2\]\.scales has dtype int32; an 8-bit buffer's scales are float32"),
    ("scales-float16", lambda s: _with_scales(s, 2, np.zeros(4, np.float16)), {},
     TypeError, r"buffers\[2\]\.scales has dtype float16"),
    ("scales-too-short", lambda s: _with_scales(s, 2, np.zeros(3, np.float32)), {},
     ValueError, r"buffers\[2\]\.scales has shape \(3,\) but params\[2\] has 1000 elements: "
                 r"one scale per block of 256, shape \(4,\)"),
    ("scales-too-long", lambda s: _with_scales(s, 2, np.zeros(5, np.float32)), {},
     ValueError, r"buffers\[2\]\.scales has shape \(5,\)"),
    ("scales-2d", lambda s: _with_scales(s, 2, np.zeros((4, 1), np.float32)), {},
     ValueError, r"buffers\[2\]\.scales has shape \(4, 1\)"),
    ("tuple-of-1", lambda s: s.buffers.__setitem__(2, (s.buffers[2][0],)), {},
     TypeError, r"buffers\[2\] is a tuple of 1 items"),
    ("tuple-of-3", lambda s: s.buffers.__setitem__(2, (*s.buffers[2], s.buffers[2][1])), {},
     TypeError, r"buffers\[2\] is a tuple of 3 items"),
    ("float16-grads-for-bfloat16", lambda s: s.grads.__setitem__(0, np.zeros(SHAPES[0], F16)),
     {}, TypeError, r"grads\[0\] has dtype float16; a bfloat16 parameter's gradient is "
                    r"bfloat16 or float32"),
    ("bfloat16-grads-for-float16", lambda s: s.grads.__setitem__(1, np.zeros(SHAPES[1], BF16)),
     {}, TypeError, r"grads\[1\] has dtype bfloat16"),
    ("bfloat16-grads-for-float32", lambda s: s.grads.__setitem__(2, np.zeros(SHAPES[2], BF16)),
     {}, TypeError, r"grads\[2\] has dtype bfloat16 but params\[2\] has dtype float32"),
    ("float64-buffer-for-float32", lambda s: s.buffers.__setitem__(2, np.zeros(SHAPES[2])),
     {}, TypeError, r"buffers\[2\] has dtype float64; a float32 parameter's buffer is"),
    ("float64-buffer-for-float16", lambda s: s.buffers.__setitem__(1, np.zeros(SHAPES[1])),
     {}, TypeError, r"buffers\[1\] has dtype float64"),
    ("int8-buffer-array", lambda s: s.buffers.__setitem__(1, np.zeros(SHAPES[1], np.int8)),
     {}, TypeError, r"buffers\[1\] has dtype int8"),
    ("8bit-buffer-for-float64", lambda s: (s.params.__setitem__(2, np.zeros(SHAPES[2])),
                                           s.grads.__setitem__(2, np.zeros(SHAPES[2]))), {},
     TypeError, r"buffers\[2\]\.codes: a float64 parameter's buffer is a float64 array"),
    ("int8-params", lambda s: (s.params.__setitem__(1, np.zeros(SHAPES[1], np.int8)),
                               s.grads.__setitem__(1, np.zeros(SHAPES[1], np.int8))), {},
     TypeError, r"params\[1\] has dtype int8"),
    ("codes-share-codes", _overlapping_codes, {},
     ValueError, r"buffers\[0\]\.codes and buffers\[1\]\.codes share memory"),
    ("scales-share-a-param", lambda s: _with_scales(s, 2, s.params[2][:4]), {},
     ValueError, r"(params\[2\] and buffers\[2\]\.scales|buffers\[2\]\.scales and params\[2\]) "
                 r"share memory"),
    ("codes-share-a-compensation", lambda s: _with_codes(
        s, 2, s.comps[0].view(np.int8)[:1000]), {},
     ValueError, r"(compensations\[0\] and buffers\[2\]\.codes|buffers\[2\]\.codes and "
                 r"compensations\[0\]) share memory"),
    ("codes-share-a-gradient", lambda s: _with_codes(s, 2, s.grads[2].view(np.int8)[:1000]), {},
     ValueError, r"(grads\[2\] and buffers\[2\]\.codes|buffers\[2\]\.codes and grads\[2\]) "
                 r"share memory"),
    ("scales-share-own-codes", lambda s: s.buffers.__setitem__(2, (
        s.buffers[2][0], s.buffers[2][0][:16].view(np.float32))), {},
     ValueError, r"buffers\[2\]\.(codes|scales) and buffers\[2\]\.(codes|scales) share memory"),
    ("compensation-is-the-param", lambda s: s.comps.__setitem__(1, s.params[1]), {},
     ValueError, r"(params\[1\] and compensations\[1\]|compensations\[1\] and params\[1\]) "
                 r"share memory"),
    ("read-only-codes", lambda s: _with_codes(s, 2, read_only(s.buffers[2][0])), {},
     ValueError, r"buffers\[2\]\.codes is read-only"),
    ("read-only-scales", lambda s: _with_scales(s, 2, read_only(s.buffers[2][1])), {},
     ValueError, r"buffers\[2\]\.scales is read-only"),
    ("read-only-compensation", lambda s: read_only(s.comps[1]), {},
     ValueError, r"compensations\[1\] is read-only"),
    ("rounding-kahan", lambda s: None, dict(rounding="kahan"),
     ValueError, r"rounding must be 'nearest' or 'stochastic', got 'kahan'"),
    ("seed-negative", lambda s: None, dict(seed=-1), ValueError, r"seed"),
    ("step-negative", lambda s: None, dict(step=-1), ValueError, r"step"),
    ("seed-float", lambda s: None, dict(seed=1.0), TypeError, r"seed"),
]


@pytest.mark.parametrize("style", ["torch", "keras"])
@pytest.mark.parametrize("name, breaks, kwargs, error, message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_argument_is_named_and_nothing_is_modified(name, breaks, kwargs, error, message,
                                                         style):
    state = valid_call()
    breaks(state)
    before = snapshot(state)
    if style == "keras":  # the buffers are called velocities there
        message = message.replace(r"buffers\[", r"velocities\[")
        step, hyper = fm.functional.keras_sgd_, dict(momentum=0.9)
    else:
        step, hyper = fm.functional.sgd_, dict(momentum=0.9, first_step=[False, True, False])
    with pytest.raises(error, match=message):
        step(state.params, state.grads, state.buffers, lr=0.1, compensations=state.comps,
             max_grad_norm=1.0, **hyper, **kwargs)
    untouched(state, before, name)


def test_the_valid_call_is_valid():
    """The call the cases break runs (so each case fails for its own reason) and writes every
    array it should."""
    state = valid_call()
    before = snapshot(state)
    fm.functional.sgd_(state.params, state.grads, state.buffers, lr=0.1, momentum=0.9,
                       compensations=state.comps, max_grad_norm=1.0)
    changed = {name for name, a in state.arrays() if a.tobytes() != before[name][2]}
    assert changed == {name for name in before if not name.startswith("grads")}
