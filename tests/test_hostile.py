"""Hostile objects: Python code that runs in the middle of a step, as a hostile user would write it.

The rule (docs/reliability.md): everything that can run Python code — a hyper-parameter's
``__float__``, an index's ``__index__``, an array interface — runs BEFORE the first array is
checked; from the first check to the last write only C reads struct fields, and every array is
held by a strong reference. So a side effect of such code (an array made read-only, resized,
freed, a list emptied) is seen by the checks, and raises with nothing written; and code that a
check could have run (an ndarray subclass's ``__class__``, a list subclass's ``__iter__``, a
flag's ``__bool__``) never runs at all. ``.ci/sanitizers`` runs this file under AddressSanitizer,
which reports a write through freed memory that these assertions could miss.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmomentum as fm
from fastmomentum import _core
from fastmomentum._protocol import Call, Guard, Hyper

N = 64


def _arrays(k=3, dtype=np.float32):
    rng = np.random.default_rng(0)
    return ([rng.standard_normal(N).astype(dtype) for _ in range(k)],
            [rng.standard_normal(N).astype(dtype) for _ in range(k)],
            [np.zeros(N, dtype) for _ in range(k)])


class Scalar:
    """A number whose conversion runs ``effect`` first."""

    def __init__(self, value, effect):
        self.value, self.effect = value, effect

    def __float__(self):
        self.effect()
        return self.value

    def __index__(self):
        self.effect()
        return int(self.value)


def _unchanged(arrays, before):
    return all(a.tobytes() == b.tobytes() for a, b in zip(arrays, before, strict=True))


def test_an_array_made_read_only_by_a_conversion_is_refused_and_nothing_is_written():
    params, grads, buffers = _arrays()
    before = [a.copy() for a in params + buffers]

    def freeze():
        params[0].flags.writeable = False

    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        fm.functional.sgd_(params, grads, buffers, lr=Scalar(0.1, freeze), momentum=0.9)
    assert _unchanged(params + buffers, before)


def test_an_array_freed_by_a_conversion_is_never_written():
    """resize(refcheck=False) frees the memory of an array others hold; the checks, after the
    conversion, see its new memory and shape (here a mismatch): nothing is written, and no
    kernel writes through the freed pointer (AddressSanitizer would report it)."""
    params, grads, buffers = _arrays()
    before = [a.copy() for a in params[1:] + buffers]

    def free():
        params[0].resize(4 * N, refcheck=False)

    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(64,\) but params\[0\] has "
                                         r"shape \(256,\)"):
        fm.functional.sgd_(params, grads, buffers, lr=Scalar(0.1, free), momentum=0.9)
    assert _unchanged(params[1:] + buffers, before)


def test_a_list_emptied_by_a_conversion_is_read_as_it_is_then():
    params, grads, buffers = _arrays()
    before = [a.copy() for a in params + buffers]
    held = list(params)

    def empty():
        params.clear()
        gc.collect()

    with pytest.raises(ValueError, match="grads has 3 arrays but params has 0"):
        fm.functional.sgd_(params, grads, buffers, lr=Scalar(0.1, empty), momentum=0.9)
    assert _unchanged(held + buffers, before)


def test_a_later_calls_conversion_cannot_change_an_earlier_calls_arrays():
    """Every call of a step is parsed before any array is checked: group 2's lr freezing group
    1's parameter is seen by group 1's checks."""
    params, grads, buffers = _arrays(4)
    before = [a.copy() for a in params + buffers]

    def freeze():
        params[0].flags.writeable = False

    hyper = Hyper("torch", 0.1, 0.9, 0.0, False, 0.0, "coupled", 1.0, False)
    calls = [Call(params[:2], buffers[:2], False, hyper, 0),
             Call(params[2:], buffers[2:], False, hyper._replace(lr=Scalar(0.1, freeze)), 2)]
    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        _core.sgd_steps(calls, grads, Guard(), _core.StepOutcome())
    assert _unchanged(params + buffers, before)
    first_index = Scalar(2, freeze)
    params[0].flags.writeable = True
    calls[1] = Call(params[2:], buffers[2:], False, hyper, first_index)
    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        _core.sgd_steps(calls, grads, Guard(), _core.StepOutcome())
    assert _unchanged(params + buffers, before)


@pytest.mark.parametrize("effect", ["freeze", "free"])
def test_a_later_groups_hyper_parameter_cannot_change_an_earlier_groups_arrays(effect):
    """fm.SGD with two groups, the second's weight_decay a number whose conversion freezes (or
    frees) the first group's parameter: converted before any array is checked, so the step
    refuses the frozen array (or sees the freed one's new memory), and nothing is written."""
    params, grads, _ = _arrays(4)
    armed = []

    def hostile():
        if armed:
            if effect == "freeze":
                params[0].flags.writeable = False
            else:
                params[0].resize(2 * N, refcheck=False)
            gc.collect()

    opt = fm.SGD([{"params": params[:2]}, {"params": params[2:], "weight_decay":
                  Scalar(1e-3, hostile)}], lr=0.1, momentum=0.9)
    opt.step(grads)
    before = [a.copy() for a in params[1:]]
    armed.append(True)
    message = r"params\[0\] is read-only" if effect == "freeze" else \
        r"grads\[0\] has shape \(64,\) but params\[0\] has shape \(128,\)"
    with pytest.raises(ValueError, match=message):
        opt.step(grads)
    assert _unchanged(params[1:], before) and opt.iterations == 1


def test_the_optimizers_schedule_runs_before_any_check():
    params, grads, _ = _arrays()
    opt = fm.SGD(params, lr=0.1, momentum=0.9)
    opt.step(grads)
    before = [a.copy() for a in params]

    def lr(step):
        params[1].flags.writeable = False
        return 0.1

    opt.param_groups[0]["lr"] = lr
    with pytest.raises(ValueError, match=r"params\[1\] is read-only"):
        opt.step(grads)
    assert _unchanged(params, before) and opt.iterations == 1


class SneakyClass(np.ndarray):
    """An ndarray subclass whose instances lie about their class, with a side effect."""

    calls = 0

    @property
    def __class__(self):
        SneakyClass.calls += 1
        raise RuntimeError("__class__ ran")


def test_an_ndarray_subclass_is_checked_by_its_type_never_its___class__():
    params, grads, _ = _arrays()
    params[1] = params[1].view(SneakyClass)
    grads[2] = grads[2].view(SneakyClass)
    reference = [p.copy() - np.float32(0.1) * g for p, g in zip(params, grads, strict=True)]
    fm.functional.sgd_(params, grads, lr=0.1)
    assert SneakyClass.calls == 0
    for p, r in zip(params, reference, strict=True):
        assert np.asarray(p).tobytes() == np.asarray(r).tobytes()
    masked = np.ma.masked_array(np.zeros(N, np.float32)).view(SneakyClass)
    assert type(masked) is SneakyClass  # not a MaskedArray (its type decides): accepted
    fm.functional.sgd_([masked], [grads[0]], lr=0.1)
    assert SneakyClass.calls == 0


class LyingShape(np.ndarray):
    """Claims another shape, size and dtype than its memory's."""

    @property
    def shape(self):
        return (1,)

    @property
    def size(self):
        return 1

    @property
    def dtype(self):
        return np.dtype(np.float64)


def test_the_optimizers_new_buffers_follow_the_arrays_memory_not_their_properties():
    params, grads, _ = _arrays()
    params[1] = params[1].view(LyingShape)
    reference = [np.asarray(p).copy() for p in params]
    opt = fm.SGD(params, lr=0.1, momentum=0.9)
    opt.step(grads)
    buf = opt.state[params[1]]["momentum_buffer"]
    assert type(buf) is np.ndarray and buf.shape == (N,) and buf.dtype == np.float32
    for p, r, g in zip(params, reference, grads, strict=True):
        assert np.asarray(p).tobytes() == (r - np.float32(0.1) * g).tobytes()


class Lying(list):
    def __iter__(self):
        raise AssertionError("__iter__ ran")

    def __len__(self):
        raise AssertionError("__len__ ran")

    def __getitem__(self, i):
        raise AssertionError("__getitem__ ran")


def test_list_and_tuple_subclasses_are_read_from_their_storage():
    params, grads, buffers = _arrays()
    fm.functional.sgd_(Lying(params), Lying(grads), Lying(buffers), lr=0.1, momentum=0.9,
                       first_step=Lying([True, False, True]))
    np.testing.assert_array_equal(buffers[0], grads[0])  # b <- g on a first step


class Truthy:
    """Not a bool: never asked for its truth."""

    def __bool__(self):
        raise AssertionError("__bool__ ran")


@pytest.mark.parametrize("name", ["nesterov", "maximize", "first_step"])
def test_flags_must_be_bools_and_are_never_asked_for_their_truth(name):
    params, grads, buffers = _arrays()
    with pytest.raises(TypeError, match=rf"{name} must be a bool, got test_hostile.Truthy"):
        fm.functional.sgd_(params, grads, buffers, lr=0.1, momentum=0.9, **{name: Truthy()})


def test_an_exception_of_a_conversion_propagates_as_it_is():
    """A KeyboardInterrupt (or any exception but a TypeError) raised by __float__ is the
    caller's, not a bad argument: it propagates unchanged."""
    params, grads, buffers = _arrays()
    before = [a.copy() for a in params + buffers]

    def interrupt():
        raise KeyboardInterrupt

    def fail():
        raise ZeroDivisionError("in __float__")

    with pytest.raises(KeyboardInterrupt):
        fm.functional.sgd_(params, grads, buffers, lr=Scalar(0.1, interrupt), momentum=0.9)
    with pytest.raises(ZeroDivisionError, match="in __float__"):
        fm.functional.sgd_(params, grads, buffers, lr=0.1, momentum=Scalar(0.9, fail))
    assert _unchanged(params + buffers, before)


# -- hypothesis: a random side effect in a random conversion ---------------------------------------

EFFECTS = ["none", "freeze-param", "freeze-buffer", "resize-param", "resize-grad", "clear-params",
           "swap-grads", "drop-buffer", "raise-type", "raise-value", "raise-interrupt"]


def _effect(kind, i, params, grads, buffers):
    def run():
        if kind == "freeze-param":
            params[i].flags.writeable = False
        elif kind == "freeze-buffer":
            buffers[i].flags.writeable = False
        elif kind == "resize-param":
            params[i].resize(2 * N, refcheck=False)
        elif kind == "resize-grad":
            grads[i].resize(N // 2, refcheck=False)
        elif kind == "clear-params":
            params.clear()
        elif kind == "swap-grads":
            grads[i], grads[0] = grads[0], grads[i]
        elif kind == "drop-buffer":
            buffers[i] = None
        elif kind == "raise-type":
            raise TypeError("no")
        elif kind == "raise-value":
            raise ValueError("no")
        elif kind == "raise-interrupt":
            raise KeyboardInterrupt
        gc.collect()  # what was freed is gone
    return run


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(EFFECTS), i=st.integers(0, 2),
       where=st.sampled_from(["lr", "momentum", "weight_decay", "max_grad_norm", "loss_scale"]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_any_side_effect_of_any_conversion_leaves_a_step_consistent(kind, i, where, dtype):
    """Whatever a conversion does, the step either raises (and every array that the effect did
    not itself touch is unchanged) or is applied to the arrays as they are after it (equal to a
    step with the plain value on copies of them)."""
    params, grads, buffers = _arrays(3, dtype)
    values = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, max_grad_norm=100.0, loss_scale=2.0)
    kw = dict(values)
    kw[where] = Scalar(values[where], _effect(kind, i, params, grads, buffers))
    held = [a for a in params + grads + buffers]  # alive whatever the effect drops
    before = [a.copy() for a in held]
    touched = {id(params[i])} if kind == "resize-param" else \
        {id(grads[i])} if kind == "resize-grad" else set()
    try:
        fm.functional.sgd_(params, grads, buffers, **kw)
    except (TypeError, ValueError, KeyboardInterrupt):
        for a, b in zip(held, before, strict=True):
            if id(a) not in touched:
                assert a.tobytes() == b.tobytes()
        return
    assert kind in ("none", "swap-grads")  # every other effect makes the step invalid
    # Applied to the arrays as the effect left them: as plain values on copies of them.
    ps, gs, bs = [b.copy() for b in before[:3]], before[3:6], [b.copy() for b in before[6:]]
    if kind == "swap-grads":
        gs[i], gs[0] = gs[0], gs[i]
    fm.functional.sgd_(ps, gs, bs, **values)
    for got, want in zip(params + buffers, ps + bs, strict=True):
        assert got.tobytes() == want.tobytes()
