"""One thread count for every library at once, checked after setting it."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import fastmomentum


@dataclass
class ThreadReport:
    """What each library reports it will use after asking for ``requested`` threads."""

    requested: int
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def check(self, library: str, used: int, why: str = "") -> None:
        """Record ``used`` for ``library`` and a note when it differs from the request."""
        self.counts[library] = used
        if used != self.requested:
            reason = f" ({why})" if why else ""
            self.notes.append(f"{library}: {self.requested} threads requested, "
                              f"it will use {used}{reason}")


def _module(name: str) -> Any:
    """``name`` if it is already imported (the peers import what they use), else ``None``."""
    return sys.modules.get(name)


def _threadpoolctl() -> Any:
    try:
        return importlib.import_module("threadpoolctl")
    except ImportError:
        return None


@contextlib.contextmanager
def thread_limit(n: int, libraries: Collection[str] = ()) -> Iterator[ThreadReport]:
    """Give ``n`` threads to fastmomentum, to every OpenMP and BLAS runtime (threadpoolctl, if
    installed) and to those of ``torch``, ``numba`` and ``numexpr`` named in ``libraries`` and
    already imported; restore every previous setting on exit.

    Yields a :class:`ThreadReport` of what each library says it will use, with a note for each
    one that cannot use ``n`` (a capped pool, OpenMP off, fewer CPUs than asked for).
    """
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    report = ThreadReport(n)
    cpus = os.cpu_count() or 1
    if n > cpus:
        report.notes.append(f"{n} threads on {cpus} logical CPUs: oversubscribed")
    with contextlib.ExitStack() as stack:
        tpc = _threadpoolctl()
        if tpc is None:
            report.notes.append("threadpoolctl not installed: OpenMP/BLAS runtimes keep their "
                                "own thread counts (fastmomentum's cap is still set)")
        else:
            stack.enter_context(tpc.threadpool_limits(limits=n))
            for info in tpc.threadpool_info():
                report.check(f"{info['prefix']} ({info['user_api']}, {info['filepath']})",
                             int(info["num_threads"]))
        previous = fastmomentum.get_num_threads()
        stack.callback(fastmomentum.set_num_threads, previous)
        fastmomentum.set_num_threads(n)
        report.check("fastmomentum", fastmomentum.get_num_threads(),
                     "OpenMP's limit for this thread is lower, or OpenMP is off")
        _set_torch(n, libraries, report, stack)
        _set_numba(n, libraries, report, stack)
        _set_numexpr(n, libraries, report, stack)
        yield report


def _set_torch(n: int, libraries: Collection[str], report: ThreadReport,
               stack: contextlib.ExitStack) -> None:
    torch = _module("torch") if "torch" in libraries else None
    if torch is None:
        return
    stack.callback(torch.set_num_threads, torch.get_num_threads())
    torch.set_num_threads(n)
    report.check("torch", torch.get_num_threads())


def _set_numba(n: int, libraries: Collection[str], report: ThreadReport,
               stack: contextlib.ExitStack) -> None:
    numba = _module("numba") if "numba" in libraries else None
    if numba is None:
        return
    limit = int(numba.config.NUMBA_NUM_THREADS)
    stack.callback(numba.set_num_threads, numba.get_num_threads())
    numba.set_num_threads(min(n, limit))
    report.check("numba", numba.get_num_threads(), f"NUMBA_NUM_THREADS={limit} is its maximum")


def _set_numexpr(n: int, libraries: Collection[str], report: ThreadReport,
                 stack: contextlib.ExitStack) -> None:
    numexpr = _module("numexpr") if "numexpr" in libraries else None
    if numexpr is None:
        return
    limit = int(numexpr.MAX_THREADS)
    previous = numexpr.set_num_threads(min(n, limit))
    stack.callback(numexpr.set_num_threads, previous)
    report.check("numexpr", int(numexpr.get_num_threads()),
                 f"NUMEXPR_MAX_THREADS={limit} is its maximum")
