"""Free-threaded CPython (3.14t): fastmomentum's modules declare that they need no GIL, so importing
the package leaves it off; and the state that threads share (the thread cap, an optimizer's busy
lock, the lists a step reads) holds up when many threads use it at once. The threaded tests run on
every interpreter (with a GIL, the kernels of big steps still run in parallel); only the checks of
the GIL itself need a free-threaded one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import threading

import numpy as np
import pytest

import fastmomentum as fm

from conftest import rand, same_bits

FREE_THREADED_BUILD = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
needs_free_threaded = pytest.mark.skipif(
    not FREE_THREADED_BUILD, reason="not a free-threaded CPython: the GIL cannot be off")

THREADS = 4
STEPS = 30
# Big enough that each call releases the GIL (with one) and splits across OpenMP threads.
SIZE = 100_003


def _run_threads(target, count, *args):
    """Runs target(k, *args) in `count` threads started together; re-raises the first error."""
    barrier = threading.Barrier(count)
    errors = []

    def worker(k):
        try:
            barrier.wait(timeout=60)
            target(k, *args)
        except BaseException as e:  # reported in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def _problem(seed):
    rng = np.random.default_rng(seed)
    params = [rand(rng, SIZE, np.float32), rand(rng, SIZE // 2, np.float64),
              rand(rng, 7, np.float32)]
    grads = [rand(rng, p.shape, p.dtype) for p in params]
    return params, grads


def _functional_steps(params, grads, buffers, style):
    for k in range(STEPS):
        if style == "torch":
            fm.functional.sgd_(params, grads, buffers, lr=0.05, momentum=0.9, nesterov=True,
                               weight_decay=1e-3, first_step=k == 0)
        elif style == "keras":
            fm.functional.keras_sgd_(params, grads, buffers, lr=0.05, momentum=0.9)
        else:
            fm.functional.ema_sgd_(params, grads, buffers, lr=0.05, beta=0.8, max_grad_norm=1.0)


@pytest.fixture
def restore_cap():
    yield
    fm.set_num_threads(None)


# -- the GIL ------------------------------------------------------------------------------------

# Guards against: a module of the package that does not declare Py_mod_gil (PYBIND11_MODULE
# without py::mod_gil_not_used()): importing it turns the GIL back on for the whole process, with
# a RuntimeWarning. A fresh interpreter, so that nothing imported before (pytest's plugins) counts;
# PYTHON_GIL unset, so that the interpreter's default (off) applies.
@needs_free_threaded
def test_importing_the_package_leaves_the_gil_off():
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    # The package imports _core, and _cuda where it was built (fastmomentum._backend).
    code = "import sys, fastmomentum; print(sys._is_gil_enabled())"
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", out.stdout + out.stderr


@needs_free_threaded
def test_this_interpreter_runs_without_the_gil():
    # Everything the test session imported (NumPy, hypothesis, matplotlib's stack) left it off:
    # else the threaded tests below would not test what they are for.
    assert not sys._is_gil_enabled()


# -- shared state under many threads ------------------------------------------------------------

# Guards against: a thread cap that is not an atomic (a torn or lost write), and results that
# depend on the cap in effect while a call runs (they must not: the partition is deterministic).
def test_set_num_threads_while_other_threads_step(restore_cap):
    problems = [_problem(seed) for seed in range(THREADS)]
    expected = []
    for params, grads in problems:
        p = [x.copy() for x in params]
        b = [np.zeros_like(x) for x in params]
        _functional_steps(p, grads, b, "torch")
        expected.append((p, b))
    buffers = [[np.zeros_like(x) for x in params] for params, _ in problems]
    stop = threading.Event()
    seen = set()

    def toggle():
        caps = [1, 2, 3, None]
        k = 0
        while not stop.is_set():
            fm.set_num_threads(caps[k % len(caps)])
            seen.add(fm.get_num_threads())
            k += 1

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        _run_threads(lambda k: _functional_steps(problems[k][0], problems[k][1], buffers[k],
                                                 "torch"), THREADS)
    finally:
        stop.set()
        toggler.join(timeout=60)
    assert all(isinstance(n, int) and n >= 1 for n in seen)
    for (params, _), bufs, (want_p, want_b) in zip(problems, buffers, expected, strict=True):
        for got, want in zip(params + bufs, want_p + want_b, strict=True):
            same_bits(got, want)


# Guards against: state of one call leaking into another's (the parser's, the norm's per-thread
# partial sums, the result objects): each thread's arrays end as a sequential run leaves them.
@pytest.mark.parametrize("style", ["torch", "keras", "ema"])
def test_concurrent_functional_steps_on_distinct_arrays(style):
    problems = [_problem(100 + seed) for seed in range(THREADS)]
    expected = []
    for params, grads in problems:
        p = [x.copy() for x in params]
        b = [np.zeros_like(x) for x in params]
        _functional_steps(p, grads, b, style)
        expected.append(p + b)
    buffers = [[np.zeros_like(x) for x in params] for params, _ in problems]
    _run_threads(lambda k: _functional_steps(problems[k][0], problems[k][1], buffers[k], style),
                 THREADS)
    for (params, _), bufs, want in zip(problems, buffers, expected, strict=True):
        for got, w in zip(params + bufs, want, strict=True):
            same_bits(got, w)


# Guards against: a busy flag tested and then set in two steps (two threads could both pass the
# test and step at once, corrupting the buffers and the step count). Every call either steps or
# raises the busy RuntimeError; the optimizer then holds exactly the steps that ran, one after
# the other: the parameters of a sequential run of that many steps, bit for bit.
def test_concurrent_optimizer_steps_run_one_at_a_time_or_are_refused():
    params, grads = _problem(7)
    start = [p.copy() for p in params]
    opt = fm.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
    taken = [0] * THREADS
    refused = [0] * THREADS

    def stepper(k):
        for _ in range(STEPS):
            try:
                opt.step(grads)
            except RuntimeError as e:
                assert "already running" in str(e)
                refused[k] += 1
            else:
                taken[k] += 1

    _run_threads(stepper, THREADS)
    assert sum(taken) + sum(refused) == THREADS * STEPS
    assert opt.iterations == sum(taken) >= 1
    twin = [p.copy() for p in start]
    reference = fm.SGD(twin, lr=0.01, momentum=0.9, nesterov=True)
    for _ in range(sum(taken)):
        reference.step(grads)
    for got, want in zip(params, twin, strict=True):
        same_bits(got, want)


# Guards against: a step that reads the items of a list another thread is changing through
# borrowed pointers (without the GIL, the array replaced could be freed while the step reads it).
# The replacements are fresh copies of equal values, so the result is known whichever one a step
# sees; each old one is freed as soon as it is replaced.
def test_steps_over_a_list_that_another_thread_keeps_changing():
    params, grads = _problem(11)
    expected = [p.copy() for p in params]
    expected_bufs = [np.zeros_like(p) for p in params]
    _functional_steps(expected, grads, expected_bufs, "keras")
    shared = list(grads)
    bufs = [np.zeros_like(p) for p in params]
    stop = threading.Event()

    def replace():
        k = 0
        while not stop.is_set():
            i = k % len(shared)
            shared[i] = grads[i].copy()
            k += 1

    replacer = threading.Thread(target=replace)
    replacer.start()
    try:
        _functional_steps(params, shared, bufs, "keras")
    finally:
        stop.set()
        replacer.join(timeout=60)
    for got, want in zip(params + bufs, expected + expected_bufs, strict=True):
        same_bits(got, want)
