"""Thread-count policy, thread-count independence, and the GIL released during a kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _core

from conftest import DEFAULT_GRAIN_BYTES, DEFAULT_ISA, SUPPORTED_ISAS, core_step

OPENMP = fm.show_config(mode="dicts")["openmp"]
needs_openmp = pytest.mark.skipif(not OPENMP, reason="built without OpenMP")


def test_set_num_threads_caps_the_count(restore_threads):
    uncapped = fm.get_num_threads()
    fm.set_num_threads(1)
    assert fm.get_num_threads() == 1
    with pytest.raises(ValueError, match=r"n must be >= 1 \(or None to remove the cap\), got 0"):
        fm.set_num_threads(0)
    with pytest.raises(TypeError):
        fm.set_num_threads(2.5)
    assert fm.get_num_threads() == 1
    fm.set_num_threads(None)
    assert fm.get_num_threads() == uncapped


@needs_openmp
def test_two_threads_run_for_large_calls_and_one_for_small(restore_threads):
    if fm.get_num_threads() < 2:
        pytest.skip("OpenMP allows only one thread here")
    fm.set_num_threads(2)
    for dtype in (np.float32, np.float64):
        grain = DEFAULT_GRAIN_BYTES // np.dtype(dtype).itemsize  # in elements of this dtype
        two_grains = [np.zeros(2 * grain, dtype) for _ in range(3)]
        assert core_step(*([a] for a in two_grains)) == 2
        short = [np.zeros(2 * grain - 1, dtype) for _ in range(3)]
        assert core_step(*([a] for a in short)) == 1  # below 2 grains: serial
    # Many small arrays add up: still ONE call, split across both threads.
    many = [[np.zeros(1000, np.float32) for _ in range(200)] for _ in range(3)]
    assert core_step(*many) == 2
    assert core_step([], [], []) == 0
    assert core_step(*([np.zeros(0, np.float32)] for _ in range(3))) == 0


@needs_openmp
def test_threadpoolctl_limits_apply(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    # The library that defines the omp_get_max_threads _core calls (dladdr), e.g. a wheel's
    # vendored fastmomentum.libs/libgomp-<hash>.so.1.0.0.
    runtime = fm.show_config(mode="dicts")["openmp_runtime"]
    assert os.path.isfile(runtime), f"_core reports no OpenMP runtime file: {runtime!r}"
    controller = threadpoolctl.ThreadpoolController()
    ours = [lib.filepath for lib in controller.select(user_api="openmp").lib_controllers
            if os.path.samefile(lib.filepath, runtime)]  # the paths may differ by symlinks
    assert ours, f"threadpoolctl lists no {runtime} (_core's OpenMP): {controller.info()}"
    arrays = [np.zeros(DEFAULT_GRAIN_BYTES, np.float32) for _ in range(3)]  # 4 grains each

    def kernel_threads():
        return core_step(*([a] for a in arrays))

    # 2 threads even on one core, so that a limit to 1 and its undoing both show.
    with threadpoolctl.threadpool_limits(2, user_api="openmp"):
        assert (fm.get_num_threads(), kernel_threads()) == (2, 2)
        # Limiting that library alone limits our kernels: it is the runtime they run on.
        with controller.select(filepath=ours[0]).limit(limits=1):
            assert (fm.get_num_threads(), kernel_threads()) == (1, 1)
        assert (fm.get_num_threads(), kernel_threads()) == (2, 2)
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            assert (fm.get_num_threads(), kernel_threads()) == (1, 1)
        assert (fm.get_num_threads(), kernel_threads()) == (2, 2)


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_bitwise_identical_for_any_thread_count_and_grain(isa, dtype, restore_threads):
    rng = np.random.default_rng(1)
    sizes = [1_000_003, 5, 70_000, 0, 129]
    start = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(3)]
    _core.select_isa(isa)
    results = []
    try:
        grains = [(1, DEFAULT_GRAIN_BYTES), (2, DEFAULT_GRAIN_BYTES), (2, 1), (2, 4000), (7, 256)]
        for threads, grain in grains:
            fm.set_num_threads(threads)
            _core.set_grain_bytes(grain)
            p, g, b = ([a.copy() for a in arrays] for arrays in start)
            for _ in range(3):
                core_step(p, g, b)
            results.append(np.concatenate(p + b))
    finally:
        _core.select_isa(DEFAULT_ISA)
    for r in results[1:]:
        assert r.tobytes() == results[0].tobytes()


def _python(code, **env):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@needs_openmp
def test_partitions_into_many_threads_are_bitwise_identical():
    """Up to 7 threads (more than this machine's cores) over mixed-size lists."""
    out = _python("""
        import numpy as np, fastmomentum as fm
        from fastmomentum import _core
        from fastmomentum._protocol import Call, Guard, Hyper
        _core.set_grain_bytes(1)
        rng = np.random.default_rng(0)
        sizes = [1, 0, 1000, 3, 129, 70001, 5]
        start = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(3)]
        results, ran = [], []
        for threads in (1, 3, 5, 7):
            fm.set_num_threads(threads)
            p, g, b = ([a.copy() for a in arrays] for arrays in start)
            outcome = _core.StepOutcome()
            hyper = Hyper("torch", 0.1, 0.9, 0.0, True, 1e-3, "coupled", 1.0, False)
            _core.sgd_steps([Call(p, b, False, hyper, 0)], g, Guard(), outcome)
            ran.append(outcome.threads)
            results.append(np.concatenate(p + b).tobytes())
        print(ran, all(r == results[0] for r in results))
    """, OMP_NUM_THREADS="7")
    assert out.strip() == "[1, 3, 5, 7] True"


@needs_openmp
def test_omp_thread_limit_is_honoured():
    out = _python("import fastmomentum as fm; print(fm.get_num_threads())",
                  OMP_NUM_THREADS="4", OMP_THREAD_LIMIT="1")
    assert out.strip() == "1"


@needs_openmp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_runs_serially_instead_of_hanging():
    """libgomp's threads do not survive fork(): a child's parallel region would hang."""
    out = _python("""
        import os, signal, numpy as np, fastmomentum as fm
        arrays = [[np.ones(400_000, np.float32)] for _ in range(3)]
        fm.functional.sgd_(*arrays, lr=0.1, momentum=0.9)  # the parent's threads now exist
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)  # a hang ends the child with SIGALRM
            fm.functional.sgd_(*arrays, lr=0.1, momentum=0.9)
            os._exit(0 if fm.get_num_threads() == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), fm.get_num_threads())
    """, OMP_NUM_THREADS="2")
    assert out.split()[0] == "0"


def test_gil_is_released_while_the_kernel_runs(restore_threads):
    """The main thread runs Python code WHILE a worker thread's kernel is half-way through.

    On one thread the kernel sweeps p from front to back, so "p[0] updated, p[-1] not yet" exists
    only during the kernel. Holding the GIL, the kernel would never let the main thread look then.
    """
    fm.set_num_threads(1)
    n = 40_000_000
    p, g = np.zeros(n, np.float32), np.ones(n, np.float32)
    worker = threading.Thread(target=fm.functional.sgd_, args=([p], [g]), kwargs=dict(lr=1.0))
    seen_mid_kernel = False
    worker.start()
    while worker.is_alive() and not seen_mid_kernel:
        seen_mid_kernel = bool(p[0] != 0 and p[-1] == 0)
    worker.join()
    assert p[-1] == -1.0
    assert seen_mid_kernel
