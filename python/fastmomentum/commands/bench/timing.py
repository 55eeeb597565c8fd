"""Timing: medians of loops of back-to-back calls, each loop lasting at least a minimum time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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


def sample_seconds_per_call(step: Step, *, samples: int, min_sample_s: float,
                            finish: Step | None = None) -> list[float]:
    """``samples`` values of (loop time / calls), each loop lasting >= ``min_sample_s``.

    The calibration that picks the loop length (doubling it, or more, until one loop lasts 25%
    longer than needed, a margin for noise) is also the warm-up. ``finish`` ends each loop inside
    its time (for a GPU: waiting for the device, as the steps only enqueue work).
    """
    target = 1.25 * min_sample_s
    loops = 1
    while (elapsed := _loop_seconds(step, loops, finish)) < target:
        loops = max(2 * loops, int(loops * 1.2 * target / max(elapsed, 1e-9)))
    return [_loop_seconds(step, loops, finish) / loops for _ in range(samples)]


def seconds_per_call(step: Step, *, samples: int, min_sample_s: float) -> float:
    """Median over ``samples`` of (loop time / calls), each loop lasting >= ``min_sample_s``;
    see :func:`sample_seconds_per_call`."""
    return statistics.median(
        sample_seconds_per_call(step, samples=samples, min_sample_s=min_sample_s))
