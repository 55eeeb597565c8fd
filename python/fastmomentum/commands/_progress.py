"""A progress bar with a counter and an ETA, on stderr, only when stderr is a terminal (shared by
``bench`` and ``demo``)."""

from __future__ import annotations

import io
import os
import shutil
import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


class Progress:
    """``[#######.......]  12/48 rows  ETA 0:42  float32 single 1e6 2 thr: numba``.

    Work is counted in weights (an estimate of each unit's cost); the ETA extrapolates the
    elapsed time per unit of weight done. ``unit`` names what the counter counts. Writes nothing
    unless ``enabled`` (by default: the stream is a terminal).
    """

    WIDTH = 24

    def __init__(self, total_weight: float, total_rows: int, *, stream: TextIO | None = None,
                 enabled: bool | None = None, unit: str = "rows") -> None:
        self.stream = stream if stream is not None else sys.stderr
        # sys.stderr is None under pythonw: no terminal, no bar.
        if enabled is None:
            enabled = self.stream is not None and self.stream.isatty()
        self.enabled = enabled
        self.total_weight, self.total_rows = max(total_weight, 1e-12), total_rows
        self.unit = unit
        self.done_weight, self.rows_done = 0.0, 0
        self.start = time.perf_counter()

    def eta(self) -> str:
        """Remaining time, extrapolated; ``"?"`` before any work is done."""
        if self.done_weight <= 0:
            return "?"
        elapsed = time.perf_counter() - self.start
        return _clock(elapsed * (self.total_weight - self.done_weight) / self.done_weight)

    def show(self, what: str) -> None:
        """Redraw the bar, with ``what`` as the work now in progress. The counter is the unit in
        progress (the last one once all are done)."""
        if not self.enabled:
            return
        filled = int(self.WIDTH * min(self.done_weight / self.total_weight, 1.0))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        current = min(self.rows_done + 1, self.total_rows)
        self._draw(f"[{bar}] {current}/{self.total_rows} {self.unit}  ETA {self.eta()}  {what}")

    def advance(self, weight: float, *, row_done: bool = False) -> None:
        """Count ``weight`` as done (and one more row when ``row_done``)."""
        self.done_weight += weight
        self.rows_done += row_done

    def clear(self) -> None:
        """Erase the bar (before printing a table line to a terminal)."""
        if self.enabled:
            self._draw("")
            self.stream.write("\r")
            self.stream.flush()

    def _draw(self, line: str) -> None:
        # One line narrower than the terminal, padded with spaces over the previous one: a line
        # that wraps cannot be redrawn by "\r", and spaces work where escape codes do not.
        width = max(self._columns() - 1, 1)
        self.stream.write("\r" + line[:width].ljust(width))
        self.stream.flush()

    def _columns(self) -> int:
        # The width of the terminal the bar is drawn on: with stdout redirected
        # (`bench > table.txt`), shutil's answer would be its 80-column default.
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
            return shutil.get_terminal_size().columns
