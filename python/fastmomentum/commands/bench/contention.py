"""How much CPU other processes took while we measured: the shared-machine warning light.

A 2-thread parallel region on 2 CPUs waits for a whole scheduler time slice (milliseconds) when
another process holds one of the CPUs, so multi-thread timings are the first to suffer. The
meter reads the machine's busy time (``/proc/stat``, including time stolen by a hypervisor) and
subtracts this process's own CPU time (:func:`os.times`).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

#: Above this many CPUs' worth of other work during a row, the table marks the row.
BUSY_WARNING = 0.25


def _machine_busy_s() -> float | None:
    """CPU-seconds all processes were busy since boot (``None`` without /proc/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        if fields[0] == "cpu":
            # user nice system idle iowait irq softirq steal (guest is inside user)
            ticks = [int(x) for x in fields[1:9]]
            busy = sum(ticks) - ticks[3] - ticks[4]
            return busy / os.sysconf("SC_CLK_TCK")
    return None


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class CpuMeter:
    """``others()``: CPUs' worth of work by other processes since the meter was started."""

    def __init__(self) -> None:
        self.start_wall = time.perf_counter()
        self.start_busy = _machine_busy_s()
        self.start_own = _own_cpu_s()

    def others(self) -> float | None:
        """Average number of CPUs other processes kept busy (``None`` where unknown)."""
        busy = _machine_busy_s()
        wall = time.perf_counter() - self.start_wall
        if busy is None or self.start_busy is None or wall <= 0:
            return None
        other = (busy - self.start_busy) - (_own_cpu_s() - self.start_own)
        return max(other / wall, 0.0)


def busy_summary(others: float | None) -> str | None:
    """The run's closing line about other processes' load (None without a measure)."""
    if others is None:
        return None
    return (f"# other processes kept {others:.2f} CPUs busy on average during the run"
            + (" (timings disturbed: rerun on a quiet machine)" if others > BUSY_WARNING else ""))
