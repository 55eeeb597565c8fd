"""Bad input is rejected with an error naming the argument, and NOTHING is modified.

Each case builds a three-array call whose LAST index (2) is bad, so the arrays before it, which a
naive implementation would already have updated, prove the all-or-nothing guarantee.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm

from conftest import core_step

N = 64


def _good(dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(N).astype(dtype) for _ in range(3)]


def _call():
    """A valid call: params, grads, buffers (3 arrays each) and keyword arguments."""
    return dict(params=_good(), grads=_good(), buffers=_good(),
                kw=dict(lr=0.1, momentum=0.9, weight_decay=1e-4))


def _readonly(a):
    a.flags.writeable = False
    return a


def _unaligned(dtype=np.float32):
    raw = np.zeros(N * np.dtype(dtype).itemsize + 1, np.uint8)
    a = np.frombuffer(raw.data, dtype=dtype, count=N, offset=1)
    return a if not a.flags.aligned else pytest.skip("could not make an unaligned array")


def _set(which, index, make):
    def mutate(call):
        if which == "kw":
            call["kw"].update(make)
        else:
            call[which][index] = make(call)
    return mutate


# (id, mutation, exception type, message regex)
BAD_ARRAYS = [
    ("params-int8", _set("params", 2, lambda c: np.zeros(N, np.int8)), TypeError,
     r"params\[2\] has dtype int8; expected float32, float64, bfloat16 or float16"),
    ("params-int64", _set("params", 2, lambda c: np.zeros(N, np.int64)), TypeError,
     r"params\[2\] has dtype int64"),
    ("params-complex", _set("params", 2, lambda c: np.zeros(N, np.complex64)), TypeError,
     r"params\[2\] has dtype complex64"),
    ("params-byteswapped", _set("params", 2, lambda c: np.zeros(N, ">f4")), TypeError,
     r"params\[2\] has dtype >f4; expected float32, float64, bfloat16 \(ml_dtypes\) or float16 in "
     r"native byte order"),
    ("params-list", _set("params", 2, lambda c: [0.0] * N), TypeError,
     r"params\[2\] must be a numpy.ndarray, got list"),
    ("grads-none", _set("grads", 2, lambda c: None), TypeError,
     r"grads\[2\] must be a numpy.ndarray, got NoneType"),
    ("grads-dtype-mismatch", _set("grads", 2, lambda c: np.zeros(N, np.float64)), TypeError,
     r"grads\[2\] has dtype float64 but params\[2\] has dtype float32; they must match"),
    ("buffers-dtype-mismatch", _set("buffers", 2, lambda c: np.zeros(N, np.float64)), TypeError,
     r"buffers\[2\] has dtype float64; a float32 parameter's buffer is a float32, bfloat16 or "
     r"float16 array"),
    ("params-strided", _set("params", 2, lambda c: np.zeros(2 * N, np.float32)[::2]), ValueError,
     r"params\[2\] is not dense \(shape \(64,\), strides \(8,\)\): its elements leave gaps or "
     r"overlap in memory; fastmomentum never copies"),
    # 2-D, with gaps between its columns (dense layouts of any order are accepted:
    # tests/test_dense_layouts.py)
    ("params-gapped-2d", _set("params", 2, lambda c: np.zeros((8, 16), np.float32)[:, ::2]),
     ValueError, r"params\[2\] is not dense \(shape \(8, 8\), strides \(64, 8\)\)"),
    ("params-broadcast", _set("params", 2, lambda c: np.lib.stride_tricks.as_strided(
        np.zeros(1, np.float32), (N,), (0,))), ValueError,
     r"params\[2\] is not dense \(shape \(64,\), strides \(0,\)\)"),
    ("grads-strided", _set("grads", 2, lambda c: np.zeros(2 * N, np.float32)[::2]), ValueError,
     r"grads\[2\] is not dense"),
    # dense, but not the layout of its parameter: the update pairs elements in memory order
    ("buffers-reversed", _set("buffers", 2, lambda c: np.zeros(N, np.float32)[::-1]), ValueError,
     r"buffers\[2\] has strides \(-4,\) but params\[2\] has strides \(4,\) \(shape \(64,\)\); "
     r"a parameter, its gradient and its buffers must share one memory layout"),
    ("params-unaligned", _set("params", 2, lambda c: _unaligned()), ValueError,
     r"params\[2\] is not aligned"),
    ("params-readonly", _set("params", 2, lambda c: _readonly(np.zeros(N, np.float32))), ValueError,
     r"params\[2\] is read-only"),
    ("buffers-readonly", _set("buffers", 2, lambda c: _readonly(np.zeros(N, np.float32))),
     ValueError, r"buffers\[2\] is read-only"),
    ("grads-short", _set("grads", 2, lambda c: np.zeros(N - 1, np.float32)), ValueError,
     r"grads\[2\] has shape \(63,\) but params\[2\] has shape \(64,\); they must match"),
    ("buffers-reshaped", _set("buffers", 2, lambda c: np.zeros((8, 8), np.float32)), ValueError,
     r"buffers\[2\] has shape \(8, 8\) but params\[2\] has shape \(64,\)"),
    ("params-is-grads", _set("grads", 2, lambda c: c["params"][2]), ValueError,
     r"params\[2\] and grads\[2\] share memory"),
    ("params-is-buffers", _set("buffers", 2, lambda c: c["params"][2]), ValueError,
     r"params\[2\] and buffers\[2\] share memory"),
    ("params-repeated", _set("params", 2, lambda c: c["params"][0]), ValueError,
     r"params\[0\] and params\[2\] share memory|params\[2\] and params\[0\] share memory"),
    ("grads-overlap-other-params", _set("grads", 2, lambda c: c["params"][0]), ValueError,
     r"share memory"),
]


def _masked(call):
    call["params"][2] = np.ma.masked_array(np.zeros(N, np.float32), mask=[0, 1] * (N // 2))


def _read_first_overlap(call):
    """grads[0] starts first and runs into params[1]: a read range overlapping a later write."""
    block = np.zeros(2 * N, np.float32)
    call["grads"][0] = block[:N]
    call["params"][1] = block[N // 2:N // 2 + N]


def _nested(call):
    """params[2] (half length) lies strictly inside grads[1]."""
    block = np.zeros(N, np.float32)
    call["grads"][1] = block
    call["params"][2] = block[8:8 + N // 2]
    call["grads"][2] = np.zeros(N // 2, np.float32)
    call["buffers"][2] = np.zeros(N // 2, np.float32)


BAD_ARRAYS += [
    ("params-masked", _masked, TypeError, r"params\[2\] is a numpy.ma.MaskedArray"),
    ("read-first-partial-overlap", _read_first_overlap, ValueError,
     r"grads\[0\] and params\[1\] share memory"),
    ("nested-overlap", _nested, ValueError, r"grads\[1\] and params\[2\] share memory"),
    ("shape-0d-vs-1", _set("grads", 2, lambda c: np.zeros((), np.float32)), ValueError,
     r"grads\[2\] has shape \(\) but params\[2\] has shape \(64,\)"),
]


def _overlapping_views(call):
    """params[2] and buffers[1] are overlapping halves of one block."""
    block = np.zeros(N + N // 2, np.float32)
    call["buffers"][1] = block[:N]
    call["params"][2] = block[N // 2:]


BAD_ARRAYS.append(("partial-overlap", _overlapping_views, ValueError,
                   r"buffers\[1\] and params\[2\] share memory"))

BAD_CALLS = [
    ("grads-fewer", lambda c: c["grads"].pop(), ValueError,
     r"grads has 2 arrays but params has 3"),
    ("buffers-more", lambda c: c["buffers"].append(np.zeros(N, np.float32)), ValueError,
     r"buffers has 4 arrays but params has 3"),
    ("buffers-missing", lambda c: c.update(buffers=None), ValueError,
     r"buffers is required when momentum != 0"),
    ("params-ndarray", lambda c: c.update(params=np.zeros((3, N), np.float32)), TypeError,
     r"params must be a list or tuple, got numpy.ndarray \(wrap a single array as \[a\]\)"),
    ("grads-generator", lambda c: c.update(grads=(g for g in c["grads"])), TypeError,
     r"grads must be a list or tuple, got generator"),
    ("first-step-length", _set("kw", None, dict(first_step=[True, False])), ValueError,
     r"first_step has 2 entries but params has 3"),
    ("first-step-int", _set("kw", None, dict(first_step=[True, False, 1])), TypeError,
     r"first_step\[2\] must be a bool, got int"),
    ("lr-negative", _set("kw", None, dict(lr=-0.1)), ValueError,
     r"Invalid learning rate: -0.1 \(expected a finite lr >= 0\)"),
    ("lr-nan", _set("kw", None, dict(lr=float("nan"))), ValueError, r"Invalid learning rate: nan"),
    ("lr-inf", _set("kw", None, dict(lr=float("inf"))), ValueError, r"Invalid learning rate: inf"),
    ("momentum-negative", _set("kw", None, dict(momentum=-0.5)), ValueError,
     r"Invalid momentum value: -0.5 \(expected 0 <= momentum <= 1\)"),
    ("momentum-above-1", _set("kw", None, dict(momentum=1.5)), ValueError,
     r"Invalid momentum value: 1.5"),
    ("momentum-nan", _set("kw", None, dict(momentum=float("nan"))), ValueError,
     r"Invalid momentum value: nan"),
    ("dampening-above-1", _set("kw", None, dict(dampening=2.0)), ValueError,
     r"Invalid dampening value: 2.0"),
    ("weight-decay-negative", _set("kw", None, dict(weight_decay=-1e-4)), ValueError,
     r"Invalid weight_decay value: -0.0001"),
    ("weight-decay-nan", _set("kw", None, dict(weight_decay=float("nan"))), ValueError,
     r"Invalid weight_decay value: nan"),
    ("schedule-multiplier-negative", _set("kw", None, dict(schedule_multiplier=-1.0)), ValueError,
     r"Invalid schedule_multiplier value: -1.0"),
    ("nesterov-dampening", _set("kw", None, dict(nesterov=True, dampening=0.1)), ValueError,
     r"Nesterov momentum requires a momentum and zero dampening"),
    ("nesterov-no-momentum", _set("kw", None, dict(nesterov=True, momentum=0.0)), ValueError,
     r"Nesterov momentum requires a momentum and zero dampening"),
    ("decay-mode", _set("kw", None, dict(weight_decay_mode="l2")), ValueError,
     r"weight_decay_mode must be 'coupled', 'decoupled' or 'sgdw', got 'l2'"),
    ("maximize-float", _set("kw", None, dict(maximize=0.5)), TypeError,
     r"maximize must be a bool, got float"),
    ("nesterov-int", _set("kw", None, dict(nesterov=1)), TypeError,
     r"nesterov must be a bool, got int"),
    ("first-step-array", _set("kw", None, dict(first_step=np.array([True, True, True]))),
     TypeError, r"first_step must be a bool, got numpy.ndarray"),
    ("lr-array", _set("kw", None, dict(lr=np.array([0.5]))), TypeError,
     r"lr must be a real number, got numpy.ndarray"),
    ("lr-bool", _set("kw", None, dict(lr=True)), TypeError, r"lr must be a real number, got bool"),
    ("lr-str", _set("kw", None, dict(lr="0.1")), TypeError, r"lr must be a real number, got str"),
    ("lr-overflows-float32", _set("kw", None, dict(lr=1e39)), ValueError,
     r"lr=1e\+39 overflows float32, the arrays' dtype"),
    ("decoupled-product-overflows", _set("kw", None, dict(
        lr=1e300, weight_decay=1e300, weight_decay_mode="decoupled")), ValueError,
     r"Invalid lr \* weight_decay: inf \(expected <= 1"),
    ("decoupled-decay-flips-sign", _set("kw", None, dict(
        lr=0.5, weight_decay=3.0, weight_decay_mode="decoupled")), ValueError,
     r"Invalid lr \* weight_decay: 1.5 \(expected <= 1: a larger decoupled decay would flip"),
    ("sgdw-scale-overflows-float32", _set("kw", None, dict(
        schedule_multiplier=1e39, weight_decay=1e-40, weight_decay_mode="sgdw")), ValueError,
     r"schedule_multiplier=1e\+39 overflows float32"),
]

CASES = BAD_ARRAYS + BAD_CALLS


@pytest.mark.parametrize(("mutate", "error", "message"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_raises_and_modifies_nothing(mutate, error, message):
    call = _call()
    mutate(call)
    arrays = [a for key in ("params", "grads", "buffers") if isinstance(call[key], list)
              for a in call[key] if isinstance(a, np.ndarray)]
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match=message):
        fm.functional.sgd_(call["params"], call["grads"], call["buffers"], **call["kw"])
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b, err_msg="an array was modified by a rejected call")


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(style="keras", dampening=0.1, nesterov=False),
     "dampening is not part of the keras convention"),
    (dict(style="adam"), "style must be 'torch', 'keras' or 'ema', got 'adam'"),
    (dict(style="ema", nesterov=False, dampening=0.5),
     "dampening is not part of the ema convention"),
    (dict(style="ema", nesterov=True), "Nesterov momentum is not part of the ema convention"),
], ids=["keras-dampening", "unknown-style", "ema-dampening", "ema-nesterov"])
def test_core_rejects_what_the_python_layer_never_sends(overrides, message):
    p, g, v = _good(np.float64)
    before = p.copy()
    with pytest.raises(ValueError, match=message):
        core_step([p], [g], [v], **overrides)
    np.testing.assert_array_equal(p, before)


def test_what_is_allowed_is_not_rejected():
    """Read-only gradients, gradients sharing memory with each other, numpy bools, tuples."""
    p = _good()
    g = _readonly(np.ones(N, np.float32))
    b = [np.zeros(N, np.float32) for _ in range(3)]
    fm.functional.sgd_(tuple(p), (g, g, g), b, lr=0.5, momentum=0.9,
                       first_step=[np.bool_(True), False, True])
    np.testing.assert_array_equal(b[0], 1.0)  # b <- g on a first step
    np.testing.assert_array_equal(b[1], 1.0)  # 0.9 * 0 + 1 * g
    np.testing.assert_array_equal(b[2], 1.0)


def test_buffers_given_with_zero_momentum_are_still_checked():
    p, g = _good(), _good()
    with pytest.raises(TypeError, match="buffers must be a list or tuple, got int"):
        fm.functional.sgd_(p, g, 42, lr=0.1)


def test_each_style_names_its_own_arguments():
    p, g, v = _good(), _good(), _good()
    with pytest.raises(ValueError, match="velocities is required when momentum != 0"):
        fm.functional.keras_sgd_(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"velocities\[1\] is read-only"):
        fm.functional.keras_sgd_(p, g, [v[0], _readonly(v[1]), v[2]], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"Invalid beta value: 1.5 \(expected 0 <= beta <= 1\)"):
        fm.functional.ema_sgd_(p, g, v, lr=0.1, beta=1.5)


def test_a_float64_lr_that_float32_cannot_hold_is_fine_for_float64():
    p, g = np.zeros(4), np.ones(4)
    fm.functional.sgd_([p], [g], lr=1e39)
    np.testing.assert_array_equal(p, -1e39)


def test_a_list_subclass_is_read_from_its_storage_and_its_methods_never_run():
    """No __iter__, __len__ or __getitem__ of a list or tuple subclass runs (they could change the
    arrays between the checks and the writes): a step uses the items the list holds."""
    calls = []

    class Lying(list):
        def __iter__(self):
            calls.append("__iter__")
            return iter([np.ones(4, np.float32)])

        def __len__(self):
            calls.append("__len__")
            return 7

        def __getitem__(self, i):
            calls.append("__getitem__")
            return np.zeros(4, np.float32)

    p = np.zeros(4, np.float32)
    fm.functional.sgd_(Lying([p]), Lying([np.ones(4, np.float32)]), lr=0.5)
    np.testing.assert_array_equal(p, -0.5)
    with pytest.raises(ValueError, match="grads has 1 arrays but params has 0"):
        fm.functional.sgd_(Lying(), Lying([np.ones(4, np.float32)]), lr=0.5)
    assert calls == []


def test_views_of_one_block_that_do_not_overlap_are_fine():
    block = np.zeros(3 * N, np.float64)
    p, b, g = block[:N], block[N:2 * N], block[2 * N:]
    g[:] = 1.0
    fm.functional.sgd_([p], [g], [b], lr=1.0, momentum=0.5, first_step=True)
    np.testing.assert_array_equal(p, -1.0)
    np.testing.assert_array_equal(b, 1.0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda f, a: f(*a, a[2], lr=0.1), r"sgd_\(\) takes from 2 to 3 positional arguments but 4 "
     r"were given"),
    (lambda f, a: f(lr=0.1), r"sgd_\(\) missing 2 required positional arguments: 'params' and "
     r"'grads'"),
    (lambda f, a: f(a[0], lr=0.1), r"sgd_\(\) missing 1 required positional argument: 'grads'"),
    (lambda f, a: f(*a), r"sgd_\(\) missing 1 required keyword-only argument: 'lr'"),
    (lambda f, a: f(*a, lr=0.1, velocities=None), r"sgd_\(\) got an unexpected keyword argument "
     r"'velocities'"),
    (lambda f, a: f(*a, lr=0.1, buffers=a[2]), r"sgd_\(\) got multiple values for argument "
     r"'buffers'"),
    (lambda f, a: f(*a, 0.1), r"sgd_\(\) takes from 2 to 3 positional arguments but 4 were "
     r"given"),
], ids=["too-many", "none", "no-grads", "no-lr", "unknown", "twice", "lr-by-position"])
def test_the_entry_points_match_arguments_as_python_does(call, message):
    """The compiled entry points take their keywords directly, with CPython's rules and words."""
    args = ([np.zeros(3, np.float32)], [np.ones(3, np.float32)], [np.zeros(3, np.float32)])
    with pytest.raises(TypeError, match="^" + message + "$"):
        call(fm.functional.sgd_, args)
    assert not args[0][0].any()


def test_each_entry_point_has_its_own_signature():
    with pytest.raises(TypeError, match=r"^ema_sgd_\(\) missing 1 required keyword-only "
                                        r"argument: 'beta'$"):
        fm.functional.ema_sgd_([], [], lr=0.1)
    with pytest.raises(TypeError, match=r"^keras_sgd_\(\) got an unexpected keyword argument "
                                        r"'dampening'$"):
        fm.functional.keras_sgd_([], [], lr=0.1, dampening=0.5)
    p, g = np.zeros(2), np.ones(2)
    fm.functional.keras_sgd_(params=[p], grads=[g], velocities=None, lr=0.5)
    np.testing.assert_array_equal(p, -0.5)
    kwargs = {"".join(["l", "r"]): 0.5}  # a keyword made at run time: not an interned string
    fm.functional.ema_sgd_([p], [g], beta=0.0, **kwargs)
    np.testing.assert_array_equal(p, -1.0)
