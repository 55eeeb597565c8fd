"""What every bench mode (the array tables, ``--state-dtype``, ``--torch``) prints alike: the
line printer, the header's shared lines, the busy cell, the closing lines and the JSON file.
One definition each, so that the modes cannot drift apart in what they say."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, TextIO

from .._words import count
from .contention import BUSY_WARNING, CpuMeter, busy_summary
from .timing import MIN_SAMPLE_S, MIN_SAMPLES

MISSING = "--"


class LinePrinter:
    """Prints lines on ``out`` as they come (nothing when ``out`` is ``None``)."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out

    def line(self, text: str = "") -> None:
        """One line on ``out`` (nothing when ``out`` is ``None``)."""
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def lines(self, texts: Iterable[str]) -> None:
        """Each of ``texts`` as a line."""
        for text in texts:
            self.line(text)


def versions(metadata: dict[str, Any]) -> str:
    """The header's versions: each library's, numba's threading layer where it was chosen."""
    parts = []
    for name, ver in metadata["versions"].items():
        extra = ""
        if name == "numba" and metadata.get("numba_threading_layer"):
            extra = f" (threading layer {metadata['numba_threading_layer']})"
        parts.append(f"{name} {ver or 'not installed'}{extra}")
    return ", ".join(parts)


def time_line(opts: dict[str, Any], sampled: str) -> str:
    """The header's line on how a time is taken; ``sampled`` says which rows share a turn."""
    return (f"# time: median of {count(opts['samples'], 'sample')}, each >= "
            f"{opts['min_sample_s'] * 1e3:g} ms of back-to-back calls, after a warm-up; "
            f"{sampled}")


def closing_header_lines(opts: dict[str, Any], notes: list[str]) -> list[str]:
    """The header's last lines: the test-run warning (below the honest minimums), the notes."""
    lines = []
    if opts["samples"] < MIN_SAMPLES or opts["min_sample_s"] < MIN_SAMPLE_S:
        lines.append("# WARNING: fewer samples or shorter ones than honest timings need "
                     "(a test run): do not quote these numbers")
    return lines + [f"# note: {note}" for note in notes]


def busy_cell(busy: float | None) -> str:
    """Other processes' CPUs during a row, ``!`` past :data:`.contention.BUSY_WARNING`."""
    return MISSING if busy is None else f"{busy:.1f}" + ("!" if busy > BUSY_WARNING else "")


class _Run(Protocol):
    metadata: dict[str, Any]
    duration_s: float


def close_run(printer: LinePrinter, results: _Run, started: float, run_meter: CpuMeter,
              lines: Iterable[str], done: str = "") -> None:
    """The end of a run: its duration and other processes' load into ``results``, then
    ``lines`` (failures, notes), the load's line and ``# done in N s`` (+ ``done``)."""
    results.duration_s = time.perf_counter() - started
    others = run_meter.others()
    results.metadata["others_cpu_during_run"] = others
    printer.lines(lines)
    summary = busy_summary(others)
    if summary is not None:
        printer.line(summary)
    printer.line(f"# done in {results.duration_s:.0f} s{done}")


def dump_json(data: dict[str, Any], path: str | Path) -> Path:
    """Write ``data`` as indented JSON to ``path``; returns the path."""
    target = Path(path)
    target.write_text(json.dumps(data, indent=1) + "\n")
    return target
