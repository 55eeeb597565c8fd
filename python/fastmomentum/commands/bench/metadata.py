"""What the results depend on: library versions, the CPU, its caches, the ISA in use."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

import fastmomentum

#: Libraries whose versions are reported (``None``: not installed).
LIBRARIES = ("numpy", "numexpr", "numba", "torch", "threadpoolctl", "matplotlib")
#: CPU flags that matter to a SIMD kernel.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl")


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty where there is none)."""
    with contextlib.suppress(OSError):
        block = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
        return {k.strip(): v.strip() for k, _, v in
                (line.partition(":") for line in block.splitlines())}
    return {}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    return _cpuinfo().get("model name") or platform.processor() or "unknown"


def cpu_isa_flags() -> list[str]:
    """Which of :data:`ISA_FLAGS` the CPU reports (empty where /proc/cpuinfo is missing)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in ISA_FLAGS if f in flags]


def caches() -> dict[str, str]:
    """Data and unified cache sizes of CPU 0, e.g. ``{"L1d": "32K", "L2": "1024K", ...}``."""
    found: dict[str, str] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    with contextlib.suppress(OSError):
        for index in sorted(base.glob("index*")):
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            level = (index / "level").read_text().strip()
            name = f"L{level}{'d' if kind == 'Data' else ''}"
            found[name] = (index / "size").read_text().strip()
    return found


def version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``None`` if not installed)."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Everything the header and the JSON report about the machine and the software."""
    config = fastmomentum.show_config(mode="dicts") or {}
    versions: dict[str, str | None] = {"python": platform.python_version(),
                                       "fastmomentum": fastmomentum.__version__}
    versions.update({name: version(name) for name in LIBRARIES})
    versions["numpy"] = np.__version__
    return {
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpu_isa_flags": cpu_isa_flags(),
        "caches": caches(),
        "versions": versions,
        "fastmomentum_config": {k: v for k, v in config.items()},
        "environment": {k: os.environ[k] for k in sorted(os.environ)
                        if k.startswith(("OMP_", "NUMBA_", "NUMEXPR_", "MKL_", "OPENBLAS_",
                                         "FASTMOMENTUM_"))},
    }
