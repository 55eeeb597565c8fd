"""Python threads: independent work in parallel gives the sequential bits; the kernels run with the
GIL released (and small calls keep it); one optimizer refuses a second stepping thread.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import fastmomentum as fm

from conftest import rand, same_bits
from reference import torch_sgd

# The tests of the GIL's release; the rest run on a free-threaded Python too.
needs_gil = pytest.mark.skipif(not getattr(sys, "_is_gil_enabled", lambda: True)(),
                               reason="free-threaded Python: there is no GIL to release")

STEPS = 40
GRAD_SETS = 3  # gradients cycle through a few precomputed sets (1e6-element arrays are big)


# -- independent work in two threads ----------------------------------------------------------

def _problem(seed, n32=1_000_003, n64=500_001):
    """Parameters of both dtypes (>= 1e6 elements in all, so every call releases the GIL and is
    split across OpenMP threads) and GRAD_SETS sets of gradients."""
    rng = np.random.default_rng(seed)
    params = [rand(rng, n32, np.float32), rand(rng, n64, np.float64), rand(rng, 17, np.float32)]
    grads = [[rand(rng, p.shape, p.dtype) for p in params] for _ in range(GRAD_SETS)]
    return params, grads


def _optimizer_run(seed, style, sync=None):
    """STEPS steps of an fm.SGD of its own; returns (params, buffers)."""
    params, grads = _problem(seed)
    if style == "torch":
        opt = fm.SGD([{"params": params[:1], "lr": 0.05}, {"params": params[1:]}], lr=0.1,
                     momentum=0.9, nesterov=True, weight_decay=1e-3)
    else:
        opt = fm.SGD(params, lr=fm.schedules.exponential_decay(0.1, 10, 0.5), momentum=0.8,
                     weight_decay=1e-3, style=style)
    for k in range(STEPS):
        opt.step(grads[k % GRAD_SETS])
        if sync is not None:
            sync.wait(timeout=60)
    key = "velocity" if style == "keras" else "momentum_buffer"
    return params, [opt.state[p][key] for p in params]


def _functional_run(seed, style, sync=None):
    """STEPS functional calls on lists of its own arrays; returns (params, buffers)."""
    params, grads = _problem(seed)
    buffers = [np.zeros_like(p) for p in params]
    for k in range(STEPS):
        lr = 0.1 * 0.97**k
        if style == "torch":
            fm.functional.sgd_(params, grads[k % GRAD_SETS], buffers, lr=lr, momentum=0.9,
                               dampening=0.1, weight_decay=1e-3, first_step=k == 0)
        elif style == "keras":
            fm.functional.keras_sgd_(params, grads[k % GRAD_SETS], buffers, lr=lr, momentum=0.9,
                                     nesterov=True, maximize=True)
        else:
            fm.functional.ema_sgd_(params, grads[k % GRAD_SETS], buffers, lr=lr, beta=0.8,
                                   weight_decay=1e-2, weight_decay_mode="decoupled")
        if sync is not None:
            sync.wait(timeout=60)
    return params, buffers


def _in_two_threads(run, jobs):
    """Runs ``run(*job)`` for both jobs at once: a barrier starts them together, and again after
    every step, so that step k of one thread runs at the same time as step k of the other (the
    kernels release the GIL, so both run at once), whatever the OS scheduler does."""
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    errors = []

    def worker(k, job):
        try:
            barrier.wait(timeout=60)
            results[k] = run(*job, sync=barrier)
        except BaseException as e:  # reported in the main thread
            errors.append(e)
            barrier.abort()  # the other thread must not wait for this one

    threads = [threading.Thread(target=worker, args=(k, job)) for k, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a stepping thread hung"
    if errors:
        raise errors[0]
    return results


# Guards against: state shared between calls of different threads that should be independent: a
# global/static scratch buffer, hyper-parameters or a "current call" kept in a global, a thread
# pool whose work items get mixed up between two concurrent callers, an optimizer's kept lists
# shared per module instead of per optimizer. Any of these changes the bits of one run or the other.
@pytest.mark.parametrize("run", [_optimizer_run, _functional_run], ids=["SGD", "functional"])
@pytest.mark.parametrize("styles", [("torch", "keras"), ("ema", "torch")], ids="-".join)
def test_two_threads_on_their_own_arrays_give_the_sequential_bits(run, styles):
    jobs = [(1, styles[0]), (2, styles[1])]
    sequential = [run(*job) for job in jobs]
    concurrent = _in_two_threads(run, jobs)
    for (want_p, want_b), (got_p, got_b) in zip(sequential, concurrent, strict=True):
        for a, b in zip(got_p + got_b, want_p + want_b, strict=True):
            same_bits(a, b)


# -- the GIL ----------------------------------------------------------------------------------

SPINS = 10_000


def other_thread_ran_during(call):
    """Whether another Python thread ran while this thread ran ``call()``.

    The switch interval is set to 1000 s: a thread waiting for the GIL asks the holder to drop it
    only after that interval, so during ``call()`` this thread never hands the GIL over by
    itself. A spinner thread is made to wait for the GIL just before ``call()``; it can increment
    its counter during ``call()`` only if ``call()`` releases the GIL. Once it runs, it keeps the
    GIL for SPINS increments and exits, so the result is exactly 0 (never released, or released
    too briefly for the spinner to wake up) or SPINS (released), and no clock is read.
    """
    counter = [0]
    go = threading.Event()

    def spin():
        go.wait()
        for _ in range(SPINS):
            counter[0] += 1

    spinner = threading.Thread(target=spin, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        spinner.start()
        # The spinner is blocked in go.wait(), or waiting for the GIL before it: either way it
        # cannot run until this thread releases the GIL, which go.set() does not do.
        go.set()
        before = counter[0]
        call()
        return counter[0] - before
    finally:
        go.set()
        spinner.join(timeout=60)  # releases the GIL: the spinner finishes
        sys.setswitchinterval(interval)


def _released(call, attempts=3):
    """True if the other thread ran during one of a few attempts (a release that is detected is
    certain; one that is missed can only be the OS not waking the spinner in time)."""
    return any(other_thread_ran_during(call) == SPINS for _ in range(attempts))


def _repeat(call, times):
    """A short release gives the spinner a small chance to wake in time; many calls in a row make
    a release certain to be seen (measured: 20,000 calls of 8192 elements, 10 of 10 runs)."""
    def repeated():
        for _ in range(times):
            call()
    return repeated


@pytest.fixture
def one_thread(restore_threads):
    """One OpenMP thread: the kernel leaves the other core to the spinner."""
    fm.set_num_threads(1)


# Guards against: the harness itself: it must tell a call that holds the GIL (a pure-Python loop,
# a NumPy reduction over Python objects, both as long as the big kernel call below) from one that
# releases it (time.sleep, a NumPy ufunc on floats, even one of only 8191 elements, repeated).
# This is what makes the two tests below fail if the bindings' GIL release were removed (the big
# call would then behave like the loops) or made unconditional (the small calls would behave like
# NumPy's small ufunc).
@needs_gil
def test_the_gil_probe_tells_holding_from_releasing():
    def python_loop():
        for _ in range(2_000_000):
            pass

    objects = np.arange(1_000_000, dtype=object)
    assert other_thread_ran_during(python_loop) == 0
    assert other_thread_ran_during(objects.sum) == 0
    assert _released(lambda: time.sleep(0.02))
    x, y = np.ones(20_000_000, np.float32), np.ones(20_000_000, np.float32)
    assert _released(lambda: np.add(x, y, out=x))
    small = np.zeros(8191, np.float32)
    assert _released(_repeat(lambda: np.add(small, small, out=small), 20_000))


# Guards against: a kernel that runs holding the GIL (every other Python thread of the program
# would stall for the whole update), in the functional API and in fm.SGD.step (the first step,
# which makes its lists and buffers, and a later one on the kept lists).
@needs_gil
def test_big_calls_release_the_gil(one_thread):
    n = 20_000_000
    p, g, b = np.zeros(n, np.float32), np.ones(n, np.float32), np.zeros(n, np.float32)
    assert _released(lambda: fm.functional.sgd_([p], [g], [b], lr=0.1, momentum=0.9))
    assert _released(lambda: fm.functional.keras_sgd_([p], [g], [b], lr=0.1, momentum=0.9))
    assert _released(lambda: fm.functional.ema_sgd_([p], [g], [b], lr=0.1, beta=0.9))
    # A new optimizer's first step (its lists and buffers made) ...
    assert _released(lambda: fm.SGD([p], lr=0.1, momentum=0.9).step([g]))
    # ... and a later step, on the kept lists.
    opt = fm.SGD([p], lr=0.1, momentum=0.9)
    opt.step([g])
    assert _released(lambda: opt.step([g]))


# Guards against: the threshold moving or counting the wrong thing: a call of fewer than 8192
# elements in all (summed over arrays and dtypes) must keep the GIL (releasing it would cost more
# than the update), and one of 8192 must release it. Holding is certain to be seen (0 exactly);
# a release of such a short call is seen thanks to 20,000 calls in a row.
@needs_gil
@pytest.mark.parametrize(("sizes", "released"), [
    ([8191], False), ([8192], True), ([4095, 4096], False), ([4096, 4096], True), ([1], False),
], ids=["8191", "8192", "4095+4096", "4096+4096", "1"])
def test_small_calls_keep_the_gil_and_8192_elements_release_it(sizes, released, one_thread):
    dtypes = [np.float32, np.float64]
    params = [np.zeros(n, dtypes[k % 2]) for k, n in enumerate(sizes)]
    grads = [np.ones_like(p) for p in params]
    buffers = [np.zeros_like(p) for p in params]
    call = _repeat(lambda: fm.functional.sgd_(params, grads, buffers, lr=1e-3, momentum=0.9),
                   20_000)
    if released:
        assert _released(call)
    else:
        assert other_thread_ran_during(call) == 0
        small_opt = fm.SGD(params, lr=1e-3, momentum=0.9)
        assert other_thread_ran_during(_repeat(lambda: small_opt.step(grads), 2_000)) == 0


# -- one optimizer, two threads -----------------------------------------------------------------

class BlockingLr:
    """A constant lr of 0.1 that, evaluated by the ``holder`` thread, signals ``entered`` and waits
    for ``release``: the holder is then stopped INSIDE the optimizer's method that evaluates the
    lr (step, load_state_dict, add_param_group). Other threads get 0.1 at once, so that an
    optimizer without the rule does not deadlock the test but fails it."""

    def __init__(self):
        self.holder = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, step):
        if threading.current_thread() is self.holder:
            self.entered.set()
            self.release.wait(timeout=60)
        return 0.1


def _state(opt, params):
    key = "momentum_buffer"
    buffers = [opt.state[p][key].tobytes() for p in params
               if opt.state.entry(p) is not None and opt.state[p].get(key) is not None]
    return ([p.tobytes() for p in params], buffers, opt.iterations, len(opt.state),
            len(opt.param_groups))


def _scenario(holder):
    """The optimizer, what the blocked thread A runs, and what A's completed call must leave."""
    rng = np.random.default_rng(0)
    w, w2 = rand(rng, 1000, np.float64), rand(rng, 10, np.float64)
    g, g_b = rand(rng, 1000, np.float64), rand(rng, 1000, np.float64)
    lr = BlockingLr()
    w0 = w.copy()
    if holder == "step":
        opt = fm.SGD([w], lr=lr, momentum=0.9)
        want_w, want_b = torch_sgd(w0, g, None, lr=0.1, momentum=0.9, first_step=True)

        def a():
            opt.step([g])

        def check():
            assert opt.iterations == 1, "not exactly one step was taken"
            same_bits(w, want_w)
            same_bits(opt.state[w]["momentum_buffer"], want_b)
    elif holder == "load_state_dict":
        opt = fm.SGD([w], lr=lr, momentum=0.9)
        saved = opt.state_dict()
        saved["state"] = {0: {"momentum_buffer": np.full(1000, 2.0)}}
        saved["iterations"] = 7

        def a():
            opt.load_state_dict(saved)

        def check():
            assert opt.iterations == 7
            same_bits(w, w0)
            same_bits(opt.state[w]["momentum_buffer"], np.full(1000, 2.0))
    else:
        opt = fm.SGD([w], lr=0.1, momentum=0.9)

        def a():
            opt.add_param_group({"params": [w2], "lr": lr})

        def check():
            assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"] == [w2]
            assert opt.iterations == 0 and len(opt.state) == 0
            same_bits(w, w0)
    return opt, lr, a, check, [w], g_b


# Guards against: two threads stepping ONE optimizer at once (a data race on its arrays, its state
# and its step count). While thread A is inside step() (or load_state_dict / add_param_group),
# a step() from another thread must raise RuntimeError at once, without waiting for A (the call
# is made from a third thread with a timeout, so a blocking lock fails the test instead of
# hanging it), modify nothing, and leave A's call to complete as if alone.
@pytest.mark.parametrize("holder", ["step", "load_state_dict", "add_param_group"])
def test_a_busy_optimizer_rejects_a_step_from_another_thread(holder):
    opt, lr, a, check, params, g_b = _scenario(holder)
    after = [g_b, np.ones(10)] if holder == "add_param_group" else [g_b]  # a step after A's call
    outcome = []
    thread_a = threading.Thread(target=a)
    lr.holder = thread_a
    thread_b = threading.Thread(target=lambda: outcome.append(_catch(opt.step, [g_b])))
    try:
        thread_a.start()
        assert lr.entered.wait(timeout=60), "thread A never reached the lr"
        before = _state(opt, params)
        thread_b.start()
        thread_b.join(timeout=10)
        assert not thread_b.is_alive(), "the second step() waited for the first instead of raising"
        assert outcome and isinstance(outcome[0], RuntimeError), \
            f"the second step() was not rejected: {outcome}"
        assert "already running" in str(outcome[0])
        assert _state(opt, params) == before, "the rejected step() modified the optimizer"
    finally:
        lr.release.set()
        thread_a.join(timeout=60)
        thread_b.join(timeout=60)
    assert not thread_a.is_alive()
    check()
    opt.step(after)  # and the optimizer is free again
    assert opt.iterations == (8 if holder == "load_state_dict" else 2 if holder == "step" else 1)


def _catch(f, *args):
    try:
        f(*args)
    except BaseException as e:
        return e
    return None


# Guards against: an optimizer left "busy" after a step that raised (a lock taken and not released
# on the error path): every later step would be rejected. Passes with or without the rule.
def test_a_step_that_raises_leaves_the_optimizer_usable_from_another_thread():
    w = np.zeros(8)
    opt = fm.SGD([w], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"grads\[0\] has shape"):
        opt.step([np.ones(9)])
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(_catch(opt.step, [np.ones(8)])))
    t.start()
    t.join(timeout=60)
    assert outcome == [None] and opt.iterations == 1
    np.testing.assert_array_equal(w, -0.1)
