"""The phases of one distributed step, timed for ``mpi_step.py`` from outside the library.

Nothing in ``fastmomentum.distributed`` changes: :func:`install` wraps, in this process only, the
Python functions where each phase happens, and :class:`TimedComm` is an ``MPI.Intracomm`` (the
same communicator handle) whose buffer collectives are timed. Each wrapper adds its EXCLUSIVE time
(its own, less that of the timed calls inside it) to its phase, so the phases of a step never
count a moment twice, and what the step spends elsewhere (Python between the calls) is the rest.
The cost: two ``perf_counter`` calls and a Python frame per wrapped call, microseconds a step.
"""

from __future__ import annotations

import functools
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from mpi4py import MPI

from fastmomentum.distributed import _collectives
from fastmomentum.optim import SGD

#: The phases, in the order a step meets them (a variant shows those it has), and their headings.
PHASES = {
    "Allreduce": "Allreduce",
    "exchange": "RS sends",          # the rank-order reduce-scatter's messages (from the grads)
    "local_sum": "RS sums",          # its own work: the rank-order additions
    "update": "update",              # SGD._apply: the fused kernel, and its Python around it
    "Allgatherv": "Allgatherv",
    "gather": "gather",              # ShardedSGD's all-gather, straight into the parameters
    "other": "other",                # the rest of the step: Python, the checks, the lock
}
#: The collectives of the caller's communicator that are phases (timed by TimedComm).
COLLECTIVES = ["Allreduce", "Allgatherv"]


class PhaseClock:
    """Exclusive time per phase, accumulated until :meth:`take`; and the minor page faults of the
    timed calls (the pages a collective's freshly mapped scratch memory costs on first touch)."""

    def __init__(self) -> None:
        self._totals: defaultdict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open timed call: the time of the timed calls inside
        self.faults = 0

    def timed(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, adding its exclusive time to ``phase``."""

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            faults = _minor_faults()
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - begin
                if len(self._inner) == 1:  # the outermost timed call counts for those inside
                    self.faults += _minor_faults() - faults
                self._totals[phase] += elapsed - self._inner.pop()
                if self._inner:
                    self._inner[-1] += elapsed

        return wrapper

    def take(self) -> tuple[dict[str, float], int]:
        """The seconds per phase and the page faults since the last call, and a fresh start."""
        totals, faults = dict(self._totals), self.faults
        self._totals, self.faults = defaultdict(float), 0
        return totals, faults


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


CLOCK = PhaseClock()


class TimedComm(MPI.Intracomm):
    """``comm`` itself (``TimedComm(comm)`` shares its handle), with its buffer collectives timed
    as the phases of their names."""

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        return CLOCK.timed(name, attribute) if name in COLLECTIVES else attribute


def install() -> None:
    """Wrap the library's phase functions (once per process; every optimizer of it is timed)."""
    patches: list[tuple[Any, str, str]] = [
        (_collectives.ReduceScatter, "exchange", "exchange"),
        (_collectives.ReduceScatter, "add", "local_sum"),
        (_collectives.ParamGather, "__call__", "gather"),
        (SGD, "_apply", "update"),
    ]
    for owner, name, phase in patches:
        setattr(owner, name, CLOCK.timed(phase, getattr(owner, name)))
