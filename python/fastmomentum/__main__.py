"""``python -m fastmomentum [demo|info|bench]``: the package's front door."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import functional, numpy_baseline, show_config

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


def _median_seconds(run: Callable[[], None], repeats: int) -> float:
    run()  # warm-up: page faults, thread start-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def demo(size: int, repeats: int) -> int:
    """Time one fused momentum step against six in-place NumPy ufuncs; check they agree."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(size, dtype=np.float32)
    g = rng.standard_normal(size, dtype=np.float32) * np.float32(1e-3)
    b = np.zeros_like(p)
    p_np, b_np, scratch = p.copy(), b.copy(), np.empty_like(p)
    hyper = dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    print(f"Heavy-ball momentum step on {size:,} float32 parameters "
          f"(lr={LR}, momentum={MOMENTUM}, weight_decay={WEIGHT_DECAY}):")
    functional.sgd_([p], [g], [b], **hyper)
    numpy_baseline.sgd_inplace_(p_np, g, b_np, [scratch], **hyper)
    same = np.array_equal(p, p_np) and np.array_equal(b, b_np)
    print(f"  after one step, fastmomentum and NumPy agree bit for bit: {same}")

    fused = _median_seconds(lambda: functional.sgd_([p], [g], [b], **hyper), repeats)
    plain = _median_seconds(
        lambda: numpy_baseline.sgd_inplace_(p_np, g, b_np, [scratch], **hyper), repeats)
    print(f"  fastmomentum.functional.sgd_ (one fused pass)   {fused * 1e3:8.2f} ms")
    print(f"  NumPy, 6 in-place ufuncs with out=               {plain * 1e3:8.2f} ms")
    print(f"  speed-up: {plain / fused:.1f}x (median of {repeats})\n")
    show_config()
    return 0 if same else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser, so that `bench --help` lists its options
        from .benchmark import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fastmomentum",
                                     description="Fused momentum-SGD updates for NumPy arrays.")
    commands = parser.add_subparsers(dest="command")
    run_demo = commands.add_parser("demo", help="time a fused update against NumPy (default)")
    run_demo.add_argument("--size", type=int, default=10_000_000, help="parameters (10,000,000)")
    run_demo.add_argument("--repeats", type=int, default=15, help="timed repeats (15)")
    commands.add_parser("info", help="print the build and runtime configuration")
    commands.add_parser("bench", add_help=False,
                        help="time fastmomentum against NumPy, numexpr, numba and torch "
                        "(`bench --help` for its options)")
    args = parser.parse_args(argv)

    if args.command == "info":
        show_config()
        return 0
    if args.command is None:
        args = run_demo.parse_args([])
    if args.size < 1 or args.repeats < 1:
        parser.error("--size and --repeats must be >= 1")
    return demo(args.size, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
