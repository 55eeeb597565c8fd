"""SGD.step's kept lists: the parameters and buffers each group hands the kernels, kept between
steps in Python and made again when a group, its ``params`` or the state changes.

Steps on kept lists must give the same bits as steps on lists made afresh (and as the plain-NumPy
references of reference.py), raise the same errors with nothing modified, and notice every change
they rely on: stale lists would silently update old buffers or skip new ones. A "fresh" twin
optimizer has its lists dropped before each step (``_lists = None``); the other counts the steps at
which it made its lists, so that a test also shows which case it exercised.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _core
from fastmomentum._backend import HOST
from fastmomentum._protocol import Call, Guard, Hyper
from fastmomentum.optim import BUFFER_KEY, ArrayState

from conftest import rand, same_bits
from reference import ema_sgd, keras_sgd, torch_sgd

F32, F64 = np.float32, np.float64



def count_full_steps(opt):
    """Records opt.iterations at each step that makes its lists afresh."""
    calls = []
    real = opt._make_lists

    def wrapped(*args):
        calls.append(opt.iterations)
        return real(*args)

    opt._make_lists = wrapped
    return calls


def full_step(opt, grads):
    opt._lists = None  # the step makes its lists afresh
    opt.step(grads)


def ref_step(style, p, g, b, *, lr, momentum, dampening=0.0, nesterov=False, weight_decay=0.0,
             weight_decay_mode="coupled", schedule_multiplier=1.0, maximize=False):
    """One reference update as SGD does it: (new p, new buffer or None)."""
    nesterov = nesterov and momentum != 0
    kw = dict(lr=lr, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
              schedule_multiplier=schedule_multiplier, maximize=maximize)
    if style == "torch":
        p, b = torch_sgd(p, g, b, momentum=momentum, dampening=dampening, nesterov=nesterov,
                         first_step=b is None and momentum != 0, **kw)
    else:
        if momentum != 0 and b is None:
            b = np.zeros_like(p)
        if style == "keras":
            p, b = keras_sgd(p, g, b, momentum=momentum, nesterov=nesterov, **kw)
        else:
            p, b = ema_sgd(p, g, b, beta=momentum, **kw)
    return np.asarray(p), None if b is None else np.asarray(b)


# -- (a) a long mixed trajectory -----------------------------------------------------------------

def _trajectory_groups(style):
    """Four groups: nesterov + coupled decay; a lr schedule, dampening, decoupled decay and
    maximize, with a scalar and an empty array; a momentum that is 0 for 4 steps, sgdw; plain SGD.
    """
    return [
        dict(shapes=[((7,), F32), ((3, 4), F64), ((33,), F32)], lr=0.1, momentum=0.9,
             nesterov=style != "ema", weight_decay=1e-3, weight_decay_mode="coupled"),
        dict(shapes=[((300,), F64), ((), F32), ((0,), F32), ((2, 20), F32)],
             lr=lambda t: 0.05 * 0.9 ** t, momentum=0.8,
             dampening=0.25 if style == "torch" else 0.0, weight_decay=1e-2,
             weight_decay_mode="decoupled", maximize=True),
        dict(shapes=[((5,), F32), ((6,), F64)], lr=0.02,
             momentum=lambda t: 0.0 if t < 4 else 0.7, nesterov=style != "ema",
             weight_decay=0.5, weight_decay_mode="sgdw", schedule_multiplier=lambda t: 1 / (1 + t)),
        dict(shapes=[((17,), F64)], lr=0.03, momentum=0.0),
    ]


def _evaluated(spec, t):
    def value(v):
        return float(v(t)) if callable(v) else v

    return dict(lr=value(spec["lr"]), momentum=value(spec["momentum"]),
                dampening=spec.get("dampening", 0.0), nesterov=spec.get("nesterov", False),
                weight_decay=spec.get("weight_decay", 0.0),
                weight_decay_mode=spec.get("weight_decay_mode", "coupled"),
                schedule_multiplier=value(spec.get("schedule_multiplier", 1.0)),
                maximize=spec.get("maximize", False))


@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_long_mixed_trajectory_matches_reference_and_full_path(style, threads):
    specs = _trajectory_groups(style)
    rng = np.random.default_rng(10)
    initial = [rand(rng, shape, dtype) for spec in specs for shape, dtype in spec["shapes"]]
    owner = [gi for gi, spec in enumerate(specs) for _ in spec["shapes"]]
    late = 1  # the (3, 4) float64 parameter of group 0: first gradient at step 6, momentum 0.9

    def make():
        params = [p.copy() for p in initial]
        groups, k = [], 0
        for spec in specs:
            n = len(spec["shapes"])
            group = {key: v for key, v in spec.items() if key != "shapes"}
            groups.append({"params": params[k:k + n], **group})
            k += n
        return params, fm.SGD(groups, style=style)

    fast_params, fast = make()
    full_params, full = make()
    full_steps = count_full_steps(fast)
    ref = [p.copy() for p in initial]
    bufs = [None] * len(ref)
    key = BUFFER_KEY[style]
    expected_full_steps = []
    for t in range(25):
        grads = [None if (i == late and t < 6) or rng.random() < 0.25
                 else rand(rng, p.shape, p.dtype) for i, p in enumerate(initial)]
        hypers = [_evaluated(spec, t) for spec in specs]
        # The lists serve every step but the first: a new buffer joins them.
        if t == 0:
            expected_full_steps.append(t)
        fast.step(grads)
        full_step(full, [None if g is None else g.copy() for g in grads])
        for i, g in enumerate(grads):
            if g is not None:
                ref[i], bufs[i] = ref_step(style, ref[i], g, bufs[i], **hypers[owner[i]])
        for i in range(len(ref)):
            same_bits(fast_params[i], ref[i])
            same_bits(full_params[i], ref[i])
            for opt, params in ((fast, fast_params), (full, full_params)):
                entry = opt.state.entry(params[i])
                buf = None if entry is None else entry.get(key)
                if bufs[i] is None:
                    assert buf is None, (t, i)
                else:
                    same_bits(buf, bufs[i])
    assert full_steps == expected_full_steps
    assert fast.iterations == full.iterations == 25


# -- (b) invalidation ---------------------------------------------------------------------------

class Setup:
    """An optimizer over three float64 arrays (one group, momentum 0.9, lr 0.1, torch style unless
    told), two steps taken so that its lists are kept, and the reference state."""

    def __init__(self, style="torch", sizes=(5, 3, 4), seed=0, **options):
        self.style = style
        self.key = BUFFER_KEY[style]
        self.rng = np.random.default_rng(seed)
        self.params = [rand(self.rng, n, F64) for n in sizes]
        self.options = dict(lr=0.1, momentum=0.9, **options)
        self.opt = fm.SGD(self.params, style=style, **self.options)
        self.full_steps = count_full_steps(self.opt)
        self.ref = [p.copy() for p in self.params]
        self.bufs = [None] * len(sizes)
        for _ in range(2):
            self.step()
        assert self.full_steps == [0]

    def grads(self, params=None):
        return [rand(self.rng, p.shape, p.dtype) for p in (params or self.params)]

    def step(self, grads=None, **hyper):
        """Steps the optimizer and the reference (hyper: the reference's hyper-parameters)."""
        grads = self.grads() if grads is None else grads
        self.opt.step(grads)
        h = {**self.options, **hyper}
        for i, g in enumerate(grads):
            if g is not None:
                self.ref[i], self.bufs[i] = ref_step(self.style, self.ref[i], g, self.bufs[i], **h)
        self.check()
        return grads

    def buf(self, i):
        return self.opt.state[self.params[i]][self.key]

    def check(self):
        for i, p in enumerate(self.params):
            same_bits(p, self.ref[i])
            if self.bufs[i] is not None:
                same_bits(self.buf(i), self.bufs[i])


@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_a_replaced_buffer_is_used_and_the_old_one_is_left_alone(style):
    s = Setup(style)
    old = s.buf(1)
    old_bits = old.copy()
    new = rand(s.rng, old.shape, F64)
    s.opt.state[s.params[1]][s.key] = new  # an edit inside the entry: it counts the change
    s.bufs[1] = new.copy()
    s.step()
    assert s.buf(1) is new
    same_bits(old, old_bits)
    s.step()  # and from the lists made at it
    assert s.buf(1) is new
    same_bits(old, old_bits)
    assert s.full_steps == [0, 2]


@pytest.mark.parametrize("how", ["del entry", "del key", "key None", "clear", "assign {}"])
def test_a_removed_buffer_restarts_the_momentum(how):
    s = Setup()
    p = s.params[2]
    old = s.buf(2)
    old_bits = old.copy()
    if how == "del entry":
        del s.opt.state[p]
    elif how == "del key":
        del s.opt.state[p][s.key]
    elif how == "key None":
        s.opt.state[p][s.key] = None
    elif how == "clear":
        s.opt.state[p].clear()
    else:
        s.opt.state[p] = {}
    s.bufs[2] = None  # the next step is a first step: b = g
    grads = s.step()
    assert s.buf(2) is not old
    same_bits(s.buf(2), grads[2])
    same_bits(old, old_bits)
    s.step()
    # An assigned dict is the user's, which may change unseen: looked up at every step.
    assert s.full_steps == ([0, 2, 3] if how == "assign {}" else [0, 2])


def test_an_assigned_state_entry_is_used():
    s = Setup()
    new = rand(s.rng, 3, F64)
    old = s.buf(1)
    old_bits = old.copy()
    s.opt.state[s.params[1]] = {s.key: new, "other": 1}
    s.bufs[1] = new.copy()
    s.step()
    assert s.buf(1) is new
    same_bits(old, old_bits)


def test_a_new_state_object_is_used():
    s = Setup()
    olds = [s.buf(i) for i in range(3)]
    old_bits = [b.copy() for b in olds]
    s.opt.state = ArrayState()
    s.bufs = [None] * 3
    s.step()
    for b, bits in zip(olds, old_bits, strict=True):
        same_bits(b, bits)
    assert all(s.buf(i) is not olds[i] for i in range(3))


def test_appending_to_the_params_list():
    s = Setup()
    q = rand(s.rng, 6, F64)
    s.opt.param_groups[0]["params"].append(q)
    with pytest.raises(ValueError, match=r"step\(\) got 3 gradients for 4 parameters"):
        s.opt.step(s.grads())
    s.check()
    s.params.append(q)
    s.ref.append(q.copy())
    s.bufs.append(None)
    s.step()
    s.step()
    assert s.full_steps == [0, 2]


def test_replacing_the_params_list_reorders_the_gradients():
    s = Setup()
    order = [2, 0, 1]
    s.opt.param_groups[0]["params"] = [s.params[i] for i in order]
    s.params = [s.params[i] for i in order]
    s.ref = [s.ref[i] for i in order]
    s.bufs = [s.bufs[i] for i in order]
    s.step()
    s.step()
    assert s.full_steps == [0, 2]


@pytest.mark.parametrize("how", ["item", "reverse in place"])
def test_editing_the_params_list_in_place(how):
    s = Setup(sizes=(4, 4, 4))
    params = s.opt.param_groups[0]["params"]
    if how == "item":
        q = rand(s.rng, 4, F64)
        old = s.params[1]
        old_bits = old.copy()
        params[1] = q
        s.params[1] = q
        s.ref[1] = q.copy()
        s.bufs[1] = None
        s.step()
        same_bits(old, old_bits)  # no longer a parameter: untouched
    else:
        params.reverse()
        s.params.reverse()
        s.ref.reverse()
        s.bufs.reverse()
        s.step()
    s.step()
    assert s.full_steps == [0, 2]


def test_reordering_and_editing_the_groups_list():
    s = Setup(sizes=(4, 5))
    p0, p1 = s.params
    opt = fm.SGD([{"params": [p0]}, {"params": [p1], "lr": 0.5}], lr=0.1, momentum=0.9)
    full_steps = count_full_steps(opt)
    ref, bufs = [p0.copy(), p1.copy()], [None, None]
    lrs = [0.1, 0.5]

    def step(order):
        grads = s.grads([s.params[i] for i in order])
        opt.step(grads)
        for g, i in zip(grads, order, strict=True):
            ref[i], bufs[i] = ref_step("torch", ref[i], g, bufs[i], lr=lrs[i], momentum=0.9)
        for i in range(2):
            same_bits(s.params[i], ref[i])

    step([0, 1])
    step([0, 1])
    opt.param_groups.reverse()
    step([1, 0])
    opt.param_groups[1] = {**opt.param_groups[1], "lr": 0.25}  # p0's, as a new dict
    lrs[0] = 0.25  # holding the same list: the lists still serve it
    step([1, 0])
    assert full_steps == [0, 2]


def test_add_param_group():
    s = Setup()
    q = rand(s.rng, (2, 3), F32)
    q_ref, q_buf = q.copy(), None
    s.opt.add_param_group({"params": [q], "lr": 0.5, "nesterov": True})
    for _ in range(3):
        grads = [*s.grads(), rand(s.rng, q.shape, F32)]
        s.opt.step(grads)
        for i in range(3):
            s.ref[i], s.bufs[i] = ref_step("torch", s.ref[i], grads[i], s.bufs[i], lr=0.1,
                                           momentum=0.9)
        q_ref, q_buf = ref_step("torch", q_ref, grads[3], q_buf, lr=0.5, momentum=0.9,
                                nesterov=True)
        s.check()
        same_bits(q, q_ref)
        same_bits(s.opt.state[q]["momentum_buffer"], q_buf)
    assert s.full_steps == [0, 2]


def test_load_state_dict_buffers_are_used():
    s = Setup()
    other = Setup(seed=1)  # same shapes, other values
    saved = other.opt.state_dict()
    saved_bits = [saved["state"][i]["momentum_buffer"].copy() for i in range(3)]
    olds = [s.buf(i) for i in range(3)]
    old_bits = [b.copy() for b in olds]
    saved["param_groups"][0]["lr"] = 0.05
    s.opt.load_state_dict(saved)
    s.bufs = [b.copy() for b in saved_bits]
    s.options["lr"] = 0.05
    s.step()
    s.step()
    for i in range(3):
        same_bits(olds[i], old_bits[i])  # the old buffers are no longer written
        same_bits(saved["state"][i]["momentum_buffer"], saved_bits[i])  # nor the loaded ones
        assert s.buf(i) is not saved["state"][i]["momentum_buffer"]
    assert s.full_steps == [0, 2]


@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_a_momentum_schedule_from_zero_creates_buffers_late(style):
    params = [rand(np.random.default_rng(3), n, F32) for n in (8, 3)]
    opt = fm.SGD(params, lr=0.1, momentum=lambda t: 0.0 if t < 3 else 0.9, nesterov=style != "ema",
                 style=style)
    full_steps = count_full_steps(opt)
    rng = np.random.default_rng(4)
    ref, bufs = [p.copy() for p in params], [None, None]
    for t in range(7):
        grads = [rand(rng, p.shape, F32) for p in params]
        opt.step(grads)
        momentum = 0.0 if t < 3 else 0.9
        for i, g in enumerate(grads):
            ref[i], bufs[i] = ref_step(style, ref[i], g, bufs[i], lr=0.1, momentum=momentum,
                                       nesterov=style != "ema")
            same_bits(params[i], ref[i])
            if t < 3:
                assert params[i] not in opt.state
            else:
                same_bits(opt.state[params[i]][BUFFER_KEY[style]], bufs[i])
        if t == 3 and style == "torch":
            same_bits(opt.state[params[0]]["momentum_buffer"], grads[0])  # b = g
    assert full_steps == [0]  # the buffers made at step 3 join the kept lists


def test_momentum_back_to_zero_and_up_again_keeps_the_buffers():
    s = Setup()
    bufs = [s.buf(i) for i in range(3)]
    s.opt.param_groups[0]["momentum"] = 0.0
    s.step(momentum=0.0)
    s.step(momentum=0.0)
    for i in range(3):
        same_bits(bufs[i], s.bufs[i])  # untouched while the momentum is 0
    s.opt.param_groups[0]["momentum"] = 0.5
    s.step(momentum=0.5)
    assert all(s.buf(i) is bufs[i] for i in range(3))
    assert s.full_steps == [0]


@pytest.mark.parametrize("edit", [
    dict(lr=0.3), dict(momentum=0.5), dict(nesterov=True), dict(dampening=0.4),
    dict(weight_decay=0.1), dict(weight_decay=0.1, weight_decay_mode="decoupled"),
    dict(weight_decay=0.1, weight_decay_mode="sgdw", schedule_multiplier=0.5),
    dict(maximize=True),
], ids=lambda e: "+".join(e))
def test_hyper_parameter_edits_between_steps_are_used(edit):
    s = Setup()
    s.opt.param_groups[0].update(edit)
    s.options.update(edit)
    s.step()
    s.step()
    assert s.full_steps == [0]


def test_lr_edits_every_step():
    s = Setup(sizes=(40, 1))
    for t in range(6):
        lr = 0.01 * (t + 1)
        s.opt.param_groups[0]["lr"] = lr
        s.step(lr=lr)
    assert s.full_steps == [0]


# -- (c) errors with kept lists: those of fresh lists, with nothing modified ----------------------

class Twins:
    """The same optimizer twice (kept lists, and fresh lists at every step) over two groups of
    mixed dtypes, after two steps; the reference follows. Grads are built per optimizer:
    ``make(params, opt)``."""

    SIZES = ((6, F64), (5, F32), (4, F64), (7, F32))

    def __init__(self, style="torch"):
        rng = np.random.default_rng(5)
        self.style = style
        self.key = BUFFER_KEY[style]
        initial = [rand(rng, n, dtype) for n, dtype in self.SIZES]
        self.hyper = [dict(lr=0.1, momentum=0.9, nesterov=style != "ema"),
                      dict(lr=0.05, momentum=0.5, weight_decay=1e-2,
                           weight_decay_mode="coupled")]
        self.owner = [0, 0, 1, 1]
        self.sides = []
        for _ in range(2):
            params = [p.copy() for p in initial]
            opt = fm.SGD([{"params": params[:2], **self.hyper[0]},
                          {"params": params[2:], **self.hyper[1]}], style=style)
            self.sides.append((params, opt))
        self.fast_full_steps = count_full_steps(self.sides[0][1])
        self.ref = [p.copy() for p in initial]
        self.bufs = [None] * 4
        self.rng = rng
        for _ in range(2):
            self.step()

    @property
    def fast(self):
        return self.sides[0][1]

    def step(self, make=None):
        """A valid step of both, compared with the reference. make(params, opt) -> grads (None:
        random, from self.draw, reseeded alike for both); the reference copies the gradients
        before the update."""
        make = make or (lambda params, opt: [rand(self.draw, p.shape, p.dtype) for p in params])
        seed = int(self.rng.integers(2**31))
        self.draw = np.random.default_rng(seed)  # the same draws for both optimizers
        grads = make(*self.sides[0])
        ref_grads = [None if g is None else g.copy() for g in grads]
        self.fast.step(grads)
        self.draw = np.random.default_rng(seed)
        full_step(self.sides[1][1], make(*self.sides[1]))
        for i, g in enumerate(ref_grads):
            if g is not None:
                self.ref[i], self.bufs[i] = ref_step(self.style, self.ref[i], g, self.bufs[i],
                                                     **self.hyper[self.owner[i]])
        self.check()

    def check(self):
        for params, opt in self.sides:
            for i, p in enumerate(params):
                same_bits(p, self.ref[i])
                if self.bufs[i] is not None:
                    same_bits(opt.state[p][self.key], self.bufs[i])

    def errors(self, make, mutate=None):
        """Applies mutate(params, opt) to both, steps both with make(params, opt) expecting an
        error; checks nothing changed; returns the two exceptions."""
        out = []
        for k, (params, opt) in enumerate(self.sides):
            if mutate:
                mutate(params, opt)
            steps = len(self.fast_full_steps)
            with pytest.raises((TypeError, ValueError)) as info:
                if k == 0:
                    opt.step(make(params, opt))
                else:
                    full_step(opt, make(params, opt))
            if k == 0:
                assert len(self.fast_full_steps) == steps, "the kept lists were not used"
            out.append(info.value)
        self.check()
        for _, opt in self.sides:
            assert opt.iterations == 2
        return out


def _replace(i, value):
    def make(params, opt):
        grads = [np.ones_like(p) for p in params]
        grads[i] = value(params, opt) if callable(value) else value
        return grads
    return make


ERROR_CASES = {
    "wrong dtype": _replace(1, np.ones(5, F64)),
    "wrong shape": _replace(2, np.ones((2, 2), F64)),
    "non-contiguous": _replace(3, np.ones(14, F32)[::2]),
    "a list": _replace(0, [1.0] * 6),
    "a masked array": _replace(0, np.ma.masked_array(np.ones(6))),
    "byte-swapped": _replace(0, np.ones(6, ">f8" if np.little_endian else "<f8")),
    "misaligned": _replace(0, np.zeros(6 * 8 + 1, np.uint8)[1:].view(F64)),
    "grad is its own param (group 1)": _replace(2, lambda params, opt: params[2]),
    # Views that start inside the array they overlap (1 element in): both paths then name the
    # written array first.
    "grad overlaps another param": _replace(2, lambda params, opt: params[0][1:5]),
    "grad overlaps another group's param": _replace(1, lambda params, opt: params[3][1:6]),
    "grad overlaps a buffer": _replace(
        2, lambda params, opt: opt.state[params[0]][BUFFER_KEY[opt.style]][1:5]),
    "grad overlaps a buffer of the other group": _replace(
        1, lambda params, opt: opt.state[params[3]][BUFFER_KEY[opt.style]][1:6]),
}


@pytest.mark.parametrize("style", ["torch", "keras"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_a_bad_gradient_raises_the_same_error_and_modifies_nothing(case, style):
    t = Twins(style)
    fast_error, full_error = t.errors(ERROR_CASES[case])
    assert type(fast_error) is type(full_error)
    assert str(fast_error) == str(full_error)
    t.step()  # and the kept lists still serve the next valid step
    t.step()
    assert t.fast_full_steps == [0]


def test_overlap_errors_name_both_arrays():
    t = Twins()
    fast_error, _ = t.errors(ERROR_CASES["grad overlaps another param"])
    assert str(fast_error).startswith("params[0] and grads[2] share memory")
    fast_error, _ = t.errors(ERROR_CASES["grad overlaps a buffer"])
    assert str(fast_error).startswith("buffers[0] and grads[2] share memory")
    t2 = Twins("keras")
    fast_error, _ = t2.errors(ERROR_CASES["grad overlaps a buffer of the other group"])
    assert str(fast_error).startswith("velocities[3] and grads[1] share memory")


@pytest.mark.parametrize("what", ["param", "buffer"])
def test_a_grad_may_overlap_memory_this_step_does_not_write(what):
    """A gradient inside a parameter (or its buffer) whose own gradient is None this step is
    only read: accepted."""
    t = Twins()

    def make(params, opt):
        grads = [rand(t.draw, p.shape, p.dtype) for p in params]
        grads[3] = None  # params[3] (float32, 7) is not written; params[1] (float32, 5) reads it
        source = params[3] if what == "param" else opt.state[params[3]]["momentum_buffer"]
        grads[1] = source[1:6]
        return grads

    t.step(make)
    t.step()
    assert t.fast_full_steps == [0]


@pytest.mark.parametrize("force_full", [False, True], ids=["fast", "full"])
def test_a_grad_may_overlap_a_buffer_while_the_momentum_is_zero(force_full):
    """With momentum 0 the buffers are neither read nor written: a gradient inside one (of a
    parameter that has a gradient too) is accepted."""
    s = Setup(sizes=(4, 6, 5))
    s.opt.param_groups[0]["momentum"] = 0.0
    grads = s.grads()
    grads[0] = s.buf(1)[1:5]
    if force_full:
        s.opt._lists = None
    s.step(grads, momentum=0.0)
    assert s.full_steps == ([0, 2] if force_full else [0])


def test_read_only_and_shared_gradients_are_accepted():
    t = Twins()

    def make(params, opt):
        grads = [rand(t.draw, p.shape, p.dtype) for p in params]
        grads[0].flags.writeable = False
        grads[2] = grads[0][:4]  # two reads may share memory
        return grads

    t.step(make)
    assert t.fast_full_steps == [0]


def test_a_grad_overlapping_many_params_is_found_by_position():
    """Forty params as views of one block, every other one without a gradient: a gradient
    starting in param k (k odd: written) must be reported with params[k]; one that starts in an
    unwritten param and reaches a written one, with that one."""
    blocks = [np.zeros(40 * 4), np.zeros(40 * 4)]
    opts = [fm.SGD([b[4 * i:4 * i + 4] for i in range(40)], lr=0.1, momentum=0.9)
            for b in blocks]
    for opt in opts:
        opt.step([np.ones(4)] * 40)
    full_steps = count_full_steps(opts[0])
    before = blocks[0].copy()
    for k in range(1, 40, 2):
        target = 1 if k != 1 else 3
        for start in (min(4 * k + 1, 156), 4 * k - 2):
            names = []
            for force_full, (opt, block) in enumerate(zip(opts, blocks, strict=True)):
                grads = [np.ones(4) if i % 2 else None for i in range(40)]
                grads[target] = block[start:start + 4]
                if force_full:
                    opt._lists = None
                with pytest.raises(ValueError, match="share memory") as info:
                    opt.step(grads)
                names.append(set(re.findall(r"\w+\[\d+\]", str(info.value))))
                if not force_full:  # named in address order; at one address, in list order
                    pair = (f"params[{k}]", f"grads[{target}]")  # (the list: p, g, b per param)
                    grad_first = start < 4 * k or (start == 4 * k and target < k)
                    first, second = pair[::-1] if grad_first else pair
                    assert str(info.value).startswith(f"{first} and {second} share")
            assert names[0] == names[1] == {f"params[{k}]", f"grads[{target}]"}
        same_bits(blocks[0], before)
    assert full_steps == []


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", None])
def test_an_invalid_lr_set_between_steps(bad):
    t = Twins()

    def mutate(params, opt):
        opt.param_groups[1]["lr"] = bad

    fast_error, full_error = t.errors(_replace(0, lambda params, opt: np.ones(6)), mutate)
    assert type(fast_error) is type(full_error) and str(fast_error) == str(full_error)
    for _, opt in t.sides:
        opt.param_groups[1]["lr"] = 0.05
    t.step()
    assert t.fast_full_steps == [0]


@pytest.mark.parametrize("edit", [dict(momentum=1.5), dict(dampening=0.5, nesterov=True),
                                  dict(weight_decay=-1.0), dict(weight_decay_mode="l2"),
                                  dict(lr=1e39)], ids=str)
def test_other_invalid_hyper_parameters_set_between_steps(edit):
    t = Twins()
    saved = dict(t.sides[0][1].param_groups[1])

    def mutate(params, opt):
        opt.param_groups[1].update(edit)

    fast_error, full_error = t.errors(lambda params, opt: [np.ones_like(p) for p in params],
                                      mutate)
    assert type(fast_error) is type(full_error) and str(fast_error) == str(full_error)
    for _, opt in t.sides:
        opt.param_groups[1].update({k: saved[k] for k in edit})
    t.step()


def test_the_wrong_number_of_gradients():
    t = Twins()
    for make in (lambda params, opt: [np.ones_like(p) for p in params[:3]],
                 lambda params, opt: [np.ones_like(p) for p in params] + [None]):
        fast_error, full_error = t.errors(make)
        assert str(fast_error) == str(full_error)
    t.step()


# Kept and fresh lists go through the same checks: the next three tests guard cases in which the
# old optimizer's two paths (a C++ plan, and a general path) disagreed.

def test_overlap_message_when_the_grad_starts_before_the_param():
    """Named in address order, the lower one first ("grads[1] and params[0]")."""
    messages = []
    for force_full in (False, True):
        block = np.zeros(12)
        p0, p1 = block[4:8], np.zeros(4)
        opt = fm.SGD([p0, p1], lr=0.1)
        opt.step([np.ones(4), np.ones(4)])
        if force_full:
            opt._lists = None
        with pytest.raises(ValueError) as info:
            opt.step([np.ones(4), block[2:6]])
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_an_invalid_hyper_parameter_of_a_group_without_gradients():
    """Every group's hyper-parameters are parsed, with or without gradients: the step raises,
    whether its lists were kept or made afresh."""
    t = Twins()
    for _, opt in t.sides:
        opt.param_groups[1]["lr"] = -1.0

    def make(params, opt):
        return [np.ones_like(params[0]), np.ones_like(params[1]), None, None]

    outcomes = []
    for k, (params, opt) in enumerate(t.sides):
        try:
            opt.step(make(params, opt)) if k == 0 else full_step(opt, make(params, opt))
            outcomes.append("ok")
        except ValueError as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("case", ["lr overflow, then a bad grad in a later group",
                                  "lr overflow, then an overlapping grad",
                                  "read-only buffer and a bad grad of one param"])
def test_error_precedence_matches_the_full_path(case):
    """When two things are wrong, kept and fresh lists report the same one."""
    t = Twins()
    if case.startswith("lr overflow"):
        def mutate(params, opt):
            opt.param_groups[0]["lr"] = 1e39  # overflows float32 (params[1])
        if case.endswith("later group"):
            make = _replace(2, np.ones(4, F32))
        else:
            make = _replace(2, lambda params, opt: params[2])
    else:
        def mutate(params, opt):
            opt.state[params[2]]["momentum_buffer"].flags.writeable = False
        make = _replace(2, np.ones(4, F32))
    fast_error, full_error = t.errors(make, mutate)
    assert (type(fast_error), str(fast_error)) == (type(full_error), str(full_error))


# -- (d) a parameter made read-only between steps ------------------------------------------------

def test_a_read_only_param_raises_and_modifies_nothing():
    t = Twins()

    def mutate(params, opt):
        params[2].flags.writeable = False

    fast_error, full_error = t.errors(lambda params, opt: [np.ones_like(p) for p in params],
                                      mutate)
    assert str(fast_error) == str(full_error)
    assert str(fast_error).startswith("params[2] is read-only")
    for params, _ in t.sides:
        params[2].flags.writeable = True
    t.step()
    assert t.fast_full_steps == [0]


def test_a_read_only_param_without_a_gradient_is_accepted():
    """It is not written: not checked (as torch skips a parameter without a gradient)."""
    s = Setup()
    s.params[1].flags.writeable = False
    for _ in range(2):
        grads = s.grads()
        grads[1] = None
        s.step(grads)
    assert s.full_steps == [0]


def test_a_read_only_frozen_param_does_not_break_a_step_that_makes_its_lists():
    """A step that makes its lists afresh checks only what it writes, like any step: a frozen
    parameter without a gradient does not make it raise (the old optimizer's plan, made after
    such a step, raised from a step that HAD updated the parameters)."""
    s = Setup()
    s.params[1].flags.writeable = False  # frozen: its gradient is None from now on
    del s.opt.state[s.params[0]]  # the next step makes its lists afresh
    s.bufs[0] = None
    grads = s.grads()
    grads[1] = None
    s.step(grads)
    assert s.opt.iterations == 3


def test_a_tuple_of_params_is_stepped():
    """group["params"] set to a tuple: stepped as a list would be."""
    s = Setup()
    s.opt.param_groups[0]["params"] = tuple(s.params)
    s.step()
    assert s.opt.iterations == 3


# -- (e) the host backend's new buffers --------------------------------------------------------

@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_new_buffers_are_views_into_one_block_per_dtype_in_order(style):
    rng = np.random.default_rng(6)
    shapes = [((3,), F32), ((2, 2), F64), ((), F32), ((0,), F32), ((4, 1), F32), ((5,), F64)]
    params = [rand(rng, shape, dtype) for shape, dtype in shapes]
    bufs = HOST.new_buffers(params, zero=style != "torch")
    assert len(bufs) == len(params)
    for dtype in (F32, F64):
        chosen = [i for i, p in enumerate(params) if p.dtype == dtype]
        bases = {id(bufs[i].base) for i in chosen}
        assert len(bases) == 1  # one block
        block = bufs[chosen[0]].base
        assert block.ndim == 1 and block.size == sum(params[i].size for i in chosen)
        offset = 0
        for i in chosen:
            b = bufs[i]
            assert b.shape == params[i].shape and b.dtype == dtype and b.flags.c_contiguous
            assert b.flags.writeable
            if b.size:  # (an empty view's address is meaningless)
                assert b.ctypes.data == block.ctypes.data + offset * block.itemsize
            offset += b.size
        if style != "torch":
            assert not block.any()  # zero: keras' and ema's buffers start from 0
    assert HOST.new_buffers([], zero=style != "torch") == []


def test_new_buffers_of_a_group_are_adjacent_in_the_optimizer():
    rng = np.random.default_rng(7)
    params = [rand(rng, 3, F32), rand(rng, 4, F64), rand(rng, (2, 3), F32), rand(rng, 2, F64)]
    opt = fm.SGD(params, lr=0.1, momentum=0.9)
    opt.step([rand(rng, p.shape, p.dtype) for p in params])
    bufs = [opt.state[p]["momentum_buffer"] for p in params]
    assert bufs[0].base is bufs[2].base and bufs[1].base is bufs[3].base
    assert bufs[2].ctypes.data == bufs[0].ctypes.data + bufs[0].nbytes
    assert bufs[3].ctypes.data == bufs[1].ctypes.data + bufs[1].nbytes


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_torch_first_step_writes_every_new_buffer_exactly(monkeypatch, nesterov):
    """b = g on the first step, whatever the fresh block held (here NaN), even with lr = 0 and a
    dampening (PyTorch's first step ignores it), for params that join late too."""
    real_full = np.full
    monkeypatch.setattr(np, "empty", lambda shape, dtype=float, **kw: real_full(shape, np.nan,
                                                                                 dtype))
    rng = np.random.default_rng(8)
    params = [rand(rng, n, dtype) for n, dtype in ((9, F32), (1, F64), (0, F32), (130, F32))]
    opt = fm.SGD(params, lr=0.0, momentum=0.9, dampening=0.0 if nesterov else 0.5,
                 nesterov=nesterov)
    first = [rand(rng, p.shape, p.dtype) for p in params]
    first[3] = None
    opt.step(first)
    for p, g in zip(params, first, strict=True):
        if g is not None:
            same_bits(opt.state[p]["momentum_buffer"], g)
    later = [rand(rng, p.shape, p.dtype) for p in params]
    before = opt.state[params[0]]["momentum_buffer"].copy()
    opt.step(later)
    same_bits(opt.state[params[3]]["momentum_buffer"], later[3])  # its first step
    expected = torch_sgd(params[0], later[0], before, lr=0.0, momentum=0.9,
                         dampening=0.0 if nesterov else 0.5, nesterov=nesterov)[1]
    same_bits(opt.state[params[0]]["momentum_buffer"], expected)


# -- (f) the step protocol directly ---------------------------------------------------------------

HYPER = Hyper("torch", 0.1, 0.9, 0.0, False, 0.0, "coupled", 1.0, False)


NO_GUARD = Guard()


def protocol_step(calls, grads, guard=NO_GUARD):
    outcome = _core.StepOutcome()
    _core.sgd_steps(calls, grads, guard, outcome)
    return outcome


def test_protocol_errors_name_what_is_wrong():
    params, grads = [np.zeros(4), np.zeros(4)], [np.ones(4), np.ones(4)]
    buffers = [np.zeros(4), np.zeros(4)]
    call = Call(params, buffers, False, HYPER, 0)
    cases = [
        ([tuple(call)[:4]], grads, Guard(), TypeError, r"each call must be a "
         r"fastmomentum._protocol.Call \(a tuple of 6 fields\), got tuple"),
        ([call._replace(hyper=tuple(HYPER)[:8])], grads, Guard(), TypeError,
         r"a call's hyper must be a fastmomentum._protocol.Hyper \(a tuple of 12 fields\)"),
        ([call], grads, ("ignore", None, 1.0), TypeError,
         r"guard must be a fastmomentum._protocol.Guard \(a tuple of 6 fields\)"),
        ([call], grads, Guard(clip_rule="tf"), ValueError,
         r"clip_rule must be 'torch' or 'keras', got 'tf'"),
        ([call], grads, Guard(clip_rule=None), TypeError, r"clip_rule must be a str"),
        ([call._replace(first_index=-1)], grads, Guard(), ValueError, r"first_index must be >= 0"),
        ([call._replace(first_index=True)], grads, Guard(), TypeError,
         r"first_index must be an int, got bool"),
        ([call], grads[:1], Guard(), ValueError, r"grads has 1 arrays but params has 2"),
        ([call, call._replace(first_index=2)], grads * 2, Guard(), ValueError,
         r"(params|buffers)\[[0-3]\] and \1\[[0-3]\] share memory"),  # the same arrays twice
        ([call._replace(first_index=1)], grads, Guard(), ValueError,
         r"calls\[0\]\.first_index is 1 but the calls before it have 0 params"),
        ([call, call._replace(params=[np.zeros(4), np.zeros(4)], buffers=[np.zeros(4)] * 2)],
         grads * 2, Guard(), ValueError,  # the second call's gradients would be the first's
         r"calls\[1\]\.first_index is 0 but the calls before it have 2 params"),
        ([call], grads, Guard(stats=(True,)), TypeError, r"stats must be None or a tuple"),
        ([call], grads, Guard(stats=(True, -1.0)), ValueError, r"sum_squares\) must be >= 0"),
        ({0: call}, grads, Guard(), TypeError, r"calls must be a list or tuple, got dict"),
    ]
    for calls, g, guard, error, message in cases:
        with pytest.raises(error, match=message):
            protocol_step(calls, g, guard)
        assert not any(p.any() for p in params + buffers)
    with pytest.raises(TypeError, match=r"outcome must be a fastmomentum\._core\.StepOutcome"):
        _core.sgd_steps([call], grads, Guard(), object())
    assert not any(p.any() for p in params + buffers)


def test_protocol_steps_and_none_gradients():
    params, buffers = [np.zeros(4), np.zeros(4)], [np.zeros(4), np.zeros(4)]
    outcome = protocol_step([Call(params, buffers, False, HYPER, 0)], [np.ones(4), None])
    assert (outcome.ran, outcome.applied, outcome.norm) == (True, True, None)
    # momentum 0.9, not a first step: b = 0.9*0 + g; p = 0 - 0.1*b. A None gradient: untouched.
    same_bits(buffers[0], np.ones(4))
    same_bits(params[0], np.zeros(4) + (-0.1) * np.ones(4))
    same_bits(params[1], np.zeros(4))
    same_bits(buffers[1], np.zeros(4))
    # The caller's statistics instead of a pass over the gradients.
    outcome = protocol_step([Call(params, buffers, False, HYPER, 0)], [np.ones(4), None],
                            Guard("skip", 1.0, 1.0, (False, 4.0)))
    assert (outcome.ran, outcome.applied, outcome.norm) == (True, False, 2.0)
    assert outcome.result([np.ones(4), None]) == (True, 2.0)
    # Only a NaN gradient makes a NaN sum of squares: not finite, whatever all_finite says.
    before = [a.copy() for a in params + buffers]
    outcome = protocol_step([Call(params, buffers, False, HYPER, 0)], [np.ones(4), None],
                            Guard("skip", None, 1.0, (True, float("nan"))))
    assert (outcome.ran, outcome.applied) == (True, False)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params + buffers, before, strict=True))


def test_protocol_fields_are_the_compiled_modules():
    """The NamedTuples spell the C++ field lists (and the package refuses to import if not)."""
    assert Hyper._fields == _core.HYPER_FIELDS
    assert Call._fields == _core.CALL_FIELDS
    assert Guard._fields == _core.GUARD_FIELDS


def test_protocol_steps_hold_their_objects():
    """Every array is held from its check to the end of the kernels: lists and tuples made for
    one call may go away without the kernels reading freed memory."""
    import gc

    params = [np.zeros(3), np.zeros(5)]
    calls = [Call(list(params), [np.zeros(3), np.zeros(5)], False, HYPER, 0)]
    grads = [np.ones(3), None]
    outcome = _core.StepOutcome()
    _core.sgd_steps(calls, grads, Guard(), outcome)
    del calls, grads
    gc.collect()
    junk = [np.ones(3) for _ in range(100)]  # may reuse freed addresses
    same_bits(params[0], np.zeros(3) + (-0.1) * np.ones(3))
    del junk
