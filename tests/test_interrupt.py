"""Ctrl-C during a step: a step is all or nothing.

A KeyboardInterrupt that arrives while the kernels run (the GIL released) is raised as soon as
they return. The optimizer's record of the step (new momentum buffers, ``iterations``, the skip
counters) must be complete before it propagates, or the step must not have been applied at all;
otherwise interrupting a notebook cell and carrying on trains a different run.

The interrupt is made deterministic with a profile hook: on the kernels' entry point's return
(``c_return``) it raises SIGINT, so Python's own handler raises KeyboardInterrupt at the next
opportunity, exactly as after a real Ctrl-C during the kernels; on its call (``c_call``), before
the kernels run.
"""

from __future__ import annotations

import signal
import sys

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _core

pytestmark = pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="Python >= 3.8")


def interrupt_at(event):
    """Raise SIGINT once, at ``event`` ("c_call" or "c_return") of ``_core.sgd_steps``."""

    def hook(frame, what, arg):
        if what == event and arg is _core.sgd_steps:
            sys.setprofile(None)
            signal.raise_signal(signal.SIGINT)

    sys.setprofile(hook)


def _problem(style="torch", **options):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in (5, 3, 100)]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(6)]
    opt = fm.SGD(params, lr=0.1, momentum=0.9, dampening=0.0, style=style, **options)
    return params, grads, opt


def _state(opt, params):
    d = opt.state_dict()
    return ([p.tobytes() for p in params], d["iterations"], d["skipped_steps"],
            d["consecutive_skips"],
            {k: {n: v.tobytes() for n, v in e.items()} for k, e in d["state"].items()})


@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
@pytest.mark.parametrize("at_step", [0, 3], ids=["first-step", "later-step"])
def test_an_interrupt_during_the_kernels_leaves_the_step_applied_and_recorded(style, at_step):
    params, grads, opt = _problem(style)
    ref_params, _, ref = _problem(style)
    for t in range(6):
        ref.step(grads[t])
        if t == at_step:
            interrupt_at("c_return")
            with pytest.raises(KeyboardInterrupt):
                opt.step(grads[t])
        else:
            opt.step(grads[t])
        assert _state(opt, params) == _state(ref, ref_params), t  # first-step buffers included


def test_an_interrupt_before_the_kernels_applies_nothing():
    params, grads, opt = _problem()
    opt.step(grads[0])
    before = _state(opt, params)
    interrupt_at("c_call")
    with pytest.raises(KeyboardInterrupt):
        opt.step(grads[1])
    assert _state(opt, params) == before
    fresh = [p.copy() for p in params]
    new_param = np.zeros(4, np.float32)  # a first step interrupted before the kernels: no buffer
    opt.add_param_group({"params": [new_param]})
    interrupt_at("c_call")
    with pytest.raises(KeyboardInterrupt):
        opt.step([*grads[1], np.ones(4, np.float32)])
    assert new_param not in opt.state and all(a.tobytes() == b.tobytes()
                                              for a, b in zip(params, fresh, strict=True))


def test_an_interrupted_skip_is_counted():
    params, grads, opt = _problem(nonfinite="skip")
    opt.step(grads[0])
    bad = [g.copy() for g in grads[1]]
    bad[2][7] = np.nan
    before = _state(opt, params)
    interrupt_at("c_return")
    with pytest.raises(KeyboardInterrupt):
        opt.step(bad)
    after = _state(opt, params)
    assert after[0] == before[0] and after[4] == before[4]  # nothing written
    assert (after[1], after[2], after[3]) == (1, 1, 1)  # not counted as a step; as a skip


def test_the_optimizer_steps_on_after_an_interrupt():
    """Not left holding its lock, or with lists that no longer match its state."""
    _, grads, opt = _problem()
    for t in range(3):
        interrupt_at("c_return" if t % 2 else "c_call")
        with pytest.raises(KeyboardInterrupt):
            opt.step(grads[t])
    assert opt.iterations == 1
    opt.step(grads[3])
    assert opt.iterations == 2
