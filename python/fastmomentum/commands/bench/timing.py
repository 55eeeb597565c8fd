"""Timing: medians of loops of back-to-back calls, each loop lasting at least a minimum time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from .contention import CpuMeter

Step = Callable[[], object]

#: The minimums of honest printed timings: a median of at least 7 samples of at least 20 ms each.
MIN_SAMPLES = 7
MIN_SAMPLE_S = 0.020


def _loop_seconds(step: Step, loops: int, finish: Step | None) -> float:
    calls = range(loops)
    start = time.perf_counter()
    for _ in calls:
        step()
    if finish is not None:
        finish()
    return time.perf_counter() - start


def calibrate(step: Step, *, min_sample_s: float, finish: Step | None = None) -> int:
    """The calls per loop for loops of >= ``min_sample_s``: doubling (or more) until one loop
    lasts 25% longer than needed, a margin for noise. Also the warm-up."""
    target = 1.25 * min_sample_s
    loops = 1
    while (elapsed := _loop_seconds(step, loops, finish)) < target:
        loops = max(2 * loops, int(loops * 1.2 * target / max(elapsed, 1e-9)))
    return loops


def sample_seconds_per_call(step: Step, *, samples: int, min_sample_s: float,
                            finish: Step | None = None) -> list[float]:
    """``samples`` values of (loop time / calls), each loop lasting >= ``min_sample_s``
    (:func:`calibrate`). ``finish`` ends each loop inside its time (for a GPU: waiting for the
    device, as the steps only enqueue work)."""
    loops = calibrate(step, min_sample_s=min_sample_s, finish=finish)
    return [_loop_seconds(step, loops, finish) / loops for _ in range(samples)]


def interleaved_samples(steps: Mapping[str, Step], *, samples: int, min_sample_s: float
                        ) -> dict[str, list[float] | Exception]:
    """:func:`sample_seconds_per_call` of several steps, taking their samples in turn (one of
    each, then again), so that a machine that slows down or speeds up during a row (a shared VM
    does, by tens of percent over seconds) shifts every implementation's median alike and their
    ratios hold. A step that raises gets its exception instead, and is not sampled again."""
    out: dict[str, list[float] | Exception] = {}
    loops: dict[str, int] = {}
    for name, step in steps.items():
        try:
            loops[name] = calibrate(step, min_sample_s=min_sample_s)
            out[name] = []
        except Exception as exc:
            out[name] = exc
    for _ in range(samples):
        for name, n in loops.items():
            taken = out[name]
            if isinstance(taken, Exception):
                continue
            try:
                taken.append(_loop_seconds(steps[name], n, None) / n)
            except Exception as exc:
                out[name] = exc
    return out


class TimedRow(Protocol):
    """A mode's record of one row at one thread count, as :func:`time_rows` fills it."""

    status: str
    note: str
    samples: list[float]
    seconds: float | None
    others_cpu: float | None


def time_rows(records: Mapping[str, TimedRow], steps: Mapping[str, Step], *, samples: int,
              min_sample_s: float) -> None:
    """Sample ``steps`` in turn (:func:`interleaved_samples`) into their ``records``: the
    samples and their median, or ``failed`` with the exception. Every record, timed or not,
    gets the CPUs other processes kept busy meanwhile (the busy column)."""
    meter = CpuMeter()
    taken = interleaved_samples(steps, samples=samples, min_sample_s=min_sample_s)
    others = meter.others()
    for name, got in taken.items():
        record = records[name]
        if isinstance(got, Exception):
            record.status, record.note = "failed", f"while timing: {type(got).__name__}: {got}"
            continue
        record.samples = got
        record.seconds = statistics.median(got)
    for record in records.values():
        record.others_cpu = others


def seconds_per_call(step: Step, *, samples: int, min_sample_s: float) -> float:
    """Median over ``samples`` of (loop time / calls), each loop lasting >= ``min_sample_s``;
    see :func:`sample_seconds_per_call`."""
    return statistics.median(
        sample_seconds_per_call(step, samples=samples, min_sample_s=min_sample_s))
