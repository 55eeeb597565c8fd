"""Print ns/element of ``fastmomentum.functional.sgd_`` and of the best in-place NumPy update.

One step of heavy-ball momentum with coupled weight decay on one array, for each dtype, size and
thread count. Each time is the median of >= 7 samples, each sample a loop of back-to-back calls
lasting >= 20 ms, after a warm-up; both results are checked against each other first. See
``../shared/design/PERFORMANCE.md`` for why: absolute times drift between runs on a shared
machine, so compare the speed-up column, measured side by side in one run.

Example: ``python bench/sgd_table.py --threads 1 2 --sizes 1e6 1e7 --dtype float32``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

import fastmomentum

from _common import (
    HEAVY_BALL,
    Hyper,
    Step,
    check_agreement,
    make_fastmomentum_step,
    make_numpy_step,
    make_problem,
    parse_size,
    size_label,
)

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: NumPy's ufuncs are single-threaded anyway, only BLAS would care
    threadpool_limits = None

COLUMNS = ("dtype", "size", "threads", "fastmomentum ns/el", "numpy ns/el", "speed-up")
WIDTHS = (7, 5, 7, 18, 11, 8)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        metavar="N",
        help="thread counts (fastmomentum.set_num_threads and threadpoolctl, if installed)",
    )
    parser.add_argument(
        "--sizes",
        type=parse_size,
        nargs="+",
        default=[10**k for k in range(3, 8)],
        metavar="N",
        help="elements per array, e.g. 1e6",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32", "float64"],
        choices=["float32", "float64"],
    )
    parser.add_argument("--samples", type=int, default=7, help="timed samples per median (>= 7)")
    parser.add_argument(
        "--min-sample-ms", type=float, default=20.0, help="minimum duration of one sample (>= 20)"
    )
    args = parser.parse_args(argv)
    if args.samples < 7 or args.min_sample_ms < 20:
        parser.error("honest timings need --samples >= 7 and --min-sample-ms >= 20")
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    return args


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[int]:
    """Limit fastmomentum (and, via threadpoolctl, NumPy's BLAS/OpenMP) to ``n`` threads.

    Yields the thread count fastmomentum will actually use: lower than ``n`` when OpenMP's limit
    for this thread is (``OMP_NUM_THREADS`` or the CPU count; threadpoolctl sets it to ``n``).
    """
    previous = fastmomentum.get_num_threads()
    limits = threadpool_limits(n) if threadpool_limits is not None else contextlib.nullcontext()
    with limits:
        fastmomentum.set_num_threads(n)
        try:
            yield fastmomentum.get_num_threads()
        finally:
            fastmomentum.set_num_threads(previous)


def _loop_seconds(step: Step, loops: int) -> float:
    calls = range(loops)
    start = time.perf_counter()
    for _ in calls:
        step()
    return time.perf_counter() - start


def seconds_per_call(step: Step, *, samples: int, min_sample_s: float) -> float:
    """Median over ``samples`` of (loop time / calls), each loop lasting >= ``min_sample_s``.

    The calibration that picks the loop length (doubling it, or more, until one loop lasts 25%
    longer than needed, a margin for noise) is also the warm-up.
    """
    target = 1.25 * min_sample_s
    loops = 1
    while (elapsed := _loop_seconds(step, loops)) < target:
        loops = max(2 * loops, int(loops * 1.2 * target / max(elapsed, 1e-9)))
    return statistics.median(_loop_seconds(step, loops) / loops for _ in range(samples))


class Progress:
    """A one-line progress indication on stderr, shown only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.enabled = sys.stderr.isatty()

    def show(self, what: str) -> None:
        """Show ``what`` as the case now being measured."""
        if self.enabled:
            sys.stderr.write(f"\r\x1b[K[{self.done + 1}/{self.total}] measuring {what} ...")
            sys.stderr.flush()

    def clear(self) -> None:
        """Erase the progress line (before printing a result)."""
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def print_row(cells: Sequence[str]) -> None:
    """One table row, right-aligned to :data:`WIDTHS`."""
    print("  ".join(f"{c:>{w}}" for c, w in zip(cells, WIDTHS)), flush=True)


def print_header(args: argparse.Namespace, hyper: Hyper) -> None:
    """The command, versions, machine and method, then the column titles."""
    config = fastmomentum.show_config(mode="dicts")
    tpc = "threadpoolctl" if threadpool_limits is not None else "no threadpoolctl (not installed)"
    print(f"# command: {shlex.join(['python', *sys.argv])}")
    print(f"# python: {sys.executable} {platform.python_version()}")
    print(
        f"# fastmomentum {fastmomentum.__version__}, isa: {config['isa']}, "
        f"numpy {np.__version__}, {tpc}"
    )
    print(f"# CPU: {cpu_model()}, {os.cpu_count()} logical CPUs")
    print(
        f"# update: {hyper.name}, coupled weight decay, lr={hyper.lr}, "
        f"momentum={hyper.momentum}, weight_decay={hyper.weight_decay}; one array"
    )
    print(
        f"# time: median of {args.samples} samples, each >= {args.min_sample_ms:g} ms of "
        "back-to-back calls, after a warm-up"
    )
    print("# speed-up = numpy time / fastmomentum time (results checked to agree first)")
    print(f"# fastmomentum stays serial below {config['grain']} elements per thread")
    cpus = os.cpu_count() or 1
    for threads in args.threads:
        with thread_limit(threads) as used:
            if used != threads:
                print(f"# note: {threads} threads requested, fastmomentum will use {used}")
            elif used > cpus:
                print(f"# note: {used} threads on {cpus} logical CPUs: oversubscribed")
    print_row(COLUMNS)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure every dtype x size x thread count and print the table."""
    args = parse_args(argv)
    hyper = HEAVY_BALL
    min_sample_s = args.min_sample_ms / 1e3
    print_header(args, hyper)
    progress = Progress(len(args.dtype) * len(args.sizes) * len(args.threads))
    for dtype in args.dtype:
        for size in args.sizes:
            base = make_problem(1, size, dtype)
            # Each implementation steps its own copy; values stay bounded (see _common).
            fm_step = make_fastmomentum_step(base.copy(), hyper)
            np_step = make_numpy_step(base.copy(), hyper)
            for threads in args.threads:
                progress.show(f"{dtype} n={size_label(size)} threads={threads}")
                with thread_limit(threads) as used:
                    check_agreement(base, hyper)
                    t_fm, t_np = (
                        seconds_per_call(step, samples=args.samples, min_sample_s=min_sample_s)
                        for step in (fm_step, np_step)
                    )
                progress.clear()
                print_row(
                    (
                        dtype,
                        size_label(size),
                        str(used),
                        f"{t_fm / size * 1e9:.3f}",
                        f"{t_np / size * 1e9:.3f}",
                        f"{t_np / t_fm:.2f}x",
                    )
                )
                progress.done += 1


if __name__ == "__main__":
    main()
