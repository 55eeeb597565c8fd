"""Build and runtime configuration: ISA, threads, version."""

from __future__ import annotations

import numbers
import platform
from typing import Any, Literal

import numpy as np

from . import _core
from ._backend import cuda_status


def set_num_threads(n: int | None) -> None:
    """Cap the number of threads any fastmomentum call may use, process-wide; ``None`` removes
    the cap.

    A call uses ``min(n, OpenMP's limit for the calling thread)`` threads, so ``OMP_NUM_THREADS``,
    ``OMP_THREAD_LIMIT`` and ``threadpoolctl.threadpool_limits`` still apply on top of this cap.
    Results never depend on the thread count. In a child process created by ``fork()`` calls run
    on one thread (OpenMP's threads do not survive a fork).
    """
    if n is None:
        _core.set_num_threads(0)
        return
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: n must be an int >= 1 (or None to remove the cap), "
                        f"got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1 (or None to remove the cap), got {n}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads a call made from this Python thread may use (1 without OpenMP)."""
    return int(_core.get_num_threads())


def show_config(mode: Literal["stdout", "dicts"] = "stdout") -> dict[str, Any] | None:
    """Print (``mode="stdout"``) or return (``mode="dicts"``) the build and runtime configuration.

    Keys: ``version``, ``isa`` (in use), ``isas_compiled``, ``isas_supported`` (compiled and
    runnable on this CPU), ``openmp``, ``openmp_version``, ``openmp_runtime`` (the path of the
    OpenMP library in use), ``threads``, ``grain_bytes`` (bytes of parameters per thread below
    which a call stays serial), ``compiler``, ``fp_contract``, ``cuda`` (whether the CUDA module was
    built, and the devices it can use here or why there are none), ``numpy``, ``python``.
    Set the environment variable ``FASTMOMENTUM_ISA=baseline|avx2|avx512`` before import to
    force an ISA.
    """
    config: dict[str, Any] = dict(_core.config())
    config["cuda"] = cuda_status()
    config["numpy"] = np.__version__
    config["python"] = f"{platform.python_version()} ({platform.machine()}, {platform.system()})"
    if mode == "dicts":
        return config
    if mode != "stdout":
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    width = max(map(len, config))
    for key, value in config.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown}")
    return None
