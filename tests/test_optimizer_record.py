"""The optimizer's record of its steps (iterations, skip counters, state, parameter groups) under
interrupts and code that runs in the middle of a step.

``tests/test_interrupt.py`` interrupts the kernels; here an interrupt arrives at every line of
the record that follows them (and of ``add_param_group``), and schedules edit what the step is
reading. Each case is compared with an optimizer stepped without interference.
"""

from __future__ import annotations

import copy
import functools
import linecache
import sys
import threading

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import optim


def _problem(nonfinite="ignore", style="torch"):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in (5, 3, 100)]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(4)]
    opt = fm.SGD(params, lr=0.1, momentum=0.9, style=style, nonfinite=nonfinite)
    return params, grads, opt


def _snapshot(opt, params):
    d = opt.state_dict()
    return ([p.tobytes() for p in params], d["iterations"], d["skipped_steps"],
            d["consecutive_skips"],
            {k: {n: v.tobytes() for n, v in e.items()} for k, e in d["state"].items()})


def interrupt_at_line(code, k):
    """Raise KeyboardInterrupt at the ``k``-th line executed in a call of ``code``, in its frame
    or any it calls (a trace function's exception enters the traced frame, as a Ctrl-C's does).
    Returns a list that holds True once it was raised.

    Lines are a superset of where CPython delivers a Ctrl-C (at calls and backward jumps), and
    only lines inside ``code``'s call are tried: the lines around it, such as a ``finally``
    block's lock release, are not where a signal can land (see optim._busy_error)."""
    seen, fired = [0], [False]
    depth = [0]  # frames of code's call on the stack

    def local(frame, event, arg):
        if event == "return" and frame.f_code is code:
            depth[0] -= 1
        elif event == "line" and not fired[0] and not _around_the_lock(frame):
            if seen[0] == k:
                fired[0] = True
                sys.settrace(None)
                raise KeyboardInterrupt
            seen[0] += 1
        return local

    def tracer(frame, event, arg):
        if frame.f_code is code:
            depth[0] += 1
        return local if depth[0] and not fired[0] else None

    sys.settrace(tracer)
    return fired


def _around_the_lock(frame):
    """Whether the frame's line is one of the two around the optimizer's lock that the tracer
    must not interrupt: its release in a ``finally`` (its first call is a C function, which runs
    before a signal can be delivered), and the ``try:`` after its acquire (the one instruction
    after the acquire where CPython can deliver a signal, outside the promise: see
    docs/reliability.md)."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return line in ("busy.release()", "try:")


def _each_line(code, run):
    """Runs ``run`` with an interrupt at the 0th, 1st, ... line of ``code``'s execution, until a
    run completes without one; yields after each interrupted run."""
    for k in range(10_000):
        fired = interrupt_at_line(code, k)
        try:
            run()
        except KeyboardInterrupt:
            assert fired[0]
            yield k
            continue
        finally:
            sys.settrace(None)
        assert not fired[0]
        return
    raise AssertionError("the run never completed")


@pytest.mark.parametrize("nonfinite", ["ignore", "skip"])
@pytest.mark.parametrize("at_step", [0, 2], ids=["first-step", "later-step"])
def test_an_interrupt_anywhere_in_the_record_leaves_it_complete(nonfinite, at_step):
    """``step`` records the kernels' decision in a ``finally`` block; an interrupt there leaves
    the record to be completed by the next access (every property and method)."""
    cases = 0  # interrupted after the kernels ran
    code = optim.SGD._settle.__code__  # called before the kernels too: nothing done then
    for variant in ("applied", "skipped"):
        if variant == "skipped" and nonfinite != "skip":
            continue
        params, grads, opt = _problem(nonfinite)
        ref_params, _, ref = _problem(nonfinite)
        for t in range(at_step):
            opt.step(grads[t])
            ref.step(grads[t])
        g = [x.copy() for x in grads[at_step]]
        if variant == "skipped":
            g[1][0] = np.inf
        ref.step(g)
        expected = _snapshot(ref, ref_params)
        base = (copy.deepcopy(opt.state_dict()), [p.copy() for p in params])  # (live buffers)
        before = _snapshot(opt, params)
        for _ in _each_line(code, functools.partial(opt.step, g)):
            after = _snapshot(opt, params)
            assert after in (before, expected)
            cases += after == expected
            opt.load_state_dict(base[0])  # back to before the step, and again
            for p, b in zip(params, base[1], strict=True):
                p[...] = b
            if at_step == 0:
                opt.state = optim.ArrayState()
        assert _snapshot(opt, params) == expected  # the uninterrupted run
        opt.step(grads[3])
        ref.step(grads[3])
        assert _snapshot(opt, params) == _snapshot(ref, ref_params)
    assert cases > 5  # the record has that many lines: the loop did interrupt it


def test_an_interrupt_anywhere_in_add_param_group_adds_the_whole_group_or_nothing():
    _, grads, opt = _problem()
    new = np.ones(7, np.float32)
    cases = 0
    for _ in _each_line(optim.SGD.add_param_group.__code__,
                        lambda: opt.add_param_group({"params": [new], "lr": 0.5})):
        cases += 1
        groups = opt.param_groups
        if len(groups) == 2:  # added whole: a complete group; remove it to try the next line
            assert groups[1]["params"] == [new] and groups[1]["lr"] == 0.5
            assert groups[1]["momentum"] == 0.9
            del groups[1]
        assert len(groups) == 1
        opt.step(grads[0])  # the lock was released: steps on
    assert cases > 3
    assert len(opt.param_groups) == 2
    opt.step([*grads[1], np.ones(7, np.float32)])
    np.testing.assert_allclose(new, 0.5, rtol=1e-6)  # 1 - 0.5*1 (first step: the buffer is g)


def test_an_interrupt_anywhere_in_load_state_dict_loads_all_of_it_or_nothing():
    params, grads, opt = _problem()
    opt.step(grads[0])
    _, _, source = _problem()
    for t in range(3):
        source.step(grads[t])
    source.param_groups[0]["lr"] = 0.5
    saved = source.state_dict()

    def record():
        return _snapshot(opt, params), [g["lr"] for g in opt.param_groups]

    base = copy.deepcopy(opt.state_dict())
    before = record()
    _, _, expected_opt = _problem()
    expected_opt.load_state_dict(saved)
    expected = (_snapshot(expected_opt, params), [0.5])
    cases = 0
    for _ in _each_line(optim.SGD.load_state_dict.__code__, lambda: opt.load_state_dict(saved)):
        after = record()
        assert after in (before, expected)
        cases += 1
        opt.load_state_dict(base)  # the lock was released; back to before, for the next line
        assert record() == before
    assert cases > 20
    assert record() == expected


def test_setting_the_record_while_a_step_runs_is_refused_and_the_step_recorded():
    """A setter called from code the step runs (here a schedule) would be overwritten by the
    step's record: it raises, and the value and the step stay as they are."""
    params, grads, opt = _problem(nonfinite="skip")
    ref_params, _, ref = _problem(nonfinite="skip")
    refused = []

    def lr(t):
        for name, value in (("iterations", 100), ("state", optim.ArrayState()),
                            ("max_consecutive_skips", 3)):
            with pytest.raises(RuntimeError, match=f"setting {name} called while this optimizer "
                                                   "is already running"):
                setattr(opt, name, value)
            refused.append(name)
        return 0.1

    opt.param_groups[0]["lr"] = lr
    opt.step(grads[0])
    ref.step(grads[0])
    assert len(refused) == 3 and opt.max_consecutive_skips == 10
    opt.param_groups[0]["lr"] = 0.1
    assert _snapshot(opt, params) == _snapshot(ref, ref_params)
    opt.iterations = 100  # between steps: allowed
    assert opt.iterations == 100


def test_a_schedule_that_edits_the_gradient_list_does_not_change_the_step():
    """The step reads the gradients listed when it was called (a snapshot of the list)."""
    params, grads, opt = _problem()
    ref_params, _, ref = _problem()
    g = list(grads[0])

    def lr(t):
        g[0] = None  # would skip params[0], with no buffer made for it
        g[2] = np.zeros_like(g[2])
        return 0.1

    opt.param_groups[0]["lr"] = lr
    opt.step(g)
    ref.step(grads[0])
    assert _snapshot(opt, params) == _snapshot(ref, ref_params)


def test_a_buffer_replaced_while_a_step_runs_is_the_one_the_next_step_uses():
    """An entry counts its changes before and after the dict operation, so that a step taken
    by code that the operation runs sees the change."""
    params, grads, opt = _problem()
    opt.step(grads[0])
    old = opt.state[params[0]]["momentum_buffer"]
    old_bytes = old.tobytes()
    new = np.full_like(old, 2.0)

    def items():
        yield "momentum_buffer", new
        opt.step(grads[1])  # with the new buffer already in the entry
        yield "extra", 1

    opt.state[params[0]].update(items())
    assert old.tobytes() == old_bytes  # the replaced buffer was not stepped
    np.testing.assert_allclose(new, 0.9 * 2.0 + grads[1][0], rtol=1e-6)
    assert opt.state[params[0]]["momentum_buffer"] is new


@pytest.mark.parametrize("name", ["iterations"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "3", None])
def test_the_counters_take_only_integers(name, value):
    _, _, opt = _problem()
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 0"):
        setattr(opt, name, value)
    assert opt.iterations == 0
    opt.iterations = np.int64(4)
    assert opt.iterations == 4 and type(opt.iterations) is int


@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_max_consecutive_skips_is_checked_when_set(value):
    _, _, opt = _problem(nonfinite="skip")
    with pytest.raises(ValueError, match="max_consecutive_skips must be None or an integer"):
        opt.max_consecutive_skips = value
    assert opt.max_consecutive_skips == 10


def test_the_record_is_read_only_where_a_step_writes_it():
    _, _, opt = _problem()
    for name in ("skipped_steps", "consecutive_skips"):
        with pytest.raises(AttributeError):
            setattr(opt, name, 3)
    with pytest.raises(TypeError, match=r"state must be a fastmomentum\.optim\.ArrayState"):
        opt.state = {}


def test_an_initial_lr_that_is_not_a_number_is_refused_when_the_group_is_added():
    _, _, opt = _problem()
    with pytest.raises(TypeError):
        opt.add_param_group({"params": [np.ones(2, np.float32)], "initial_lr": "0.1"})
    assert len(opt.param_groups) == 1


def test_code_a_step_runs_may_read_the_record_without_losing_the_step():
    """A hyper-parameter's conversion runs inside the step (the kernels' parser converts it)
    after the step's record is pending: reading the record there sees it as before the step,
    and the step is still recorded."""
    params, grads, opt = _problem()
    ref_params, _, ref = _problem()
    seen = []

    class Peeking:
        def __float__(self):
            seen.append((opt.iterations, len(opt.state), opt.state_dict()["iterations"]))
            return 0.0

    opt.param_groups[0]["weight_decay"] = Peeking()
    for t in range(3):
        opt.step(grads[t])
        ref.step(grads[t])
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][1] == 0 and seen[1][1] == 3
    assert [s[2] for s in seen] == [0, 1, 2]
    opt.param_groups[0]["weight_decay"] = 0.0
    assert _snapshot(opt, params) == _snapshot(ref, ref_params)


def test_another_thread_reading_the_record_during_a_step_loses_none_of_it():
    """Another thread reads the record while a step is between its pending record and its
    kernels (held there by a hyper-parameter's conversion, which the kernels' parser runs): it
    reads the record as before the step, and the step is recorded whole."""
    params, grads, opt = _problem()
    ref_params, _, ref = _problem()
    seen = []

    def read():
        seen.append((opt.iterations, len(opt.state), opt.state_dict()["iterations"]))

    class HeldWhileAnotherThreadReads:
        def __float__(self):
            reader = threading.Thread(target=read)
            reader.start()
            reader.join()
            return 0.0

    opt.param_groups[0]["weight_decay"] = HeldWhileAnotherThreadReads()
    for t in range(3):
        opt.step(grads[t])
        ref.step(grads[t])
    assert seen == [(0, 0, 0), (1, 3, 1), (2, 3, 2)]
    opt.param_groups[0]["weight_decay"] = 0.0
    assert _snapshot(opt, params) == _snapshot(ref, ref_params)
