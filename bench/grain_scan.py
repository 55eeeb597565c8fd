"""Measure where a second thread starts to pay off: the basis of fastmomentum's grain size.

A call runs serially unless it has at least ``grain_bytes`` of parameters per thread
(``show_config()``'s ``grain_bytes``), because opening an OpenMP parallel region and waking a
thread costs more than it saves on a short array. This script times one heavy-ball step on one
array of each size with 1 thread, and with 2 threads forced (grain set to 1), side by side in one
run, and prints the ratio. The grain should sit where the ratio crosses 1:
``grain_bytes = size * itemsize / threads`` there.

Example: ``python bench/grain_scan.py --dtype float32``
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import fastmomentum
from fastmomentum import _core
from fastmomentum.commands.bench.problems import make_problem
from fastmomentum.commands.bench.timing import seconds_per_call

SIZES = [2**k for k in range(11, 21)]  # 2048 .. 1M elements


def main(argv: Sequence[str] | None = None) -> None:
    """Print size, 1-thread and 2-thread times and their ratio, for each size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--samples", type=int, default=9)
    parser.add_argument("--min-sample-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    default_grain = fastmomentum.show_config(mode="dicts")["grain_bytes"]
    print(f"# {args.dtype}, heavy-ball step, one array; median of {args.samples} samples of "
          f">= {args.min_sample_ms:g} ms; current grain {default_grain} bytes per thread")
    print(f"{'size':>8}  {'1 thread us':>11}  {'2 threads us':>12}  {'2t / 1t':>7}")
    try:
        for size in SIZES:
            problem = make_problem(1, size, args.dtype)
            step = functools.partial(fastmomentum.functional.sgd_, problem.params, problem.grads,
                                     problem.buffers, lr=0.01, momentum=0.9, weight_decay=1e-4)
            times = []
            for threads in (1, 2):
                fastmomentum.set_num_threads(threads)
                _core.set_grain_bytes(1)  # no serial cut-off: measure what threads would cost
                times.append(seconds_per_call(step, samples=args.samples,
                                              min_sample_s=args.min_sample_ms / 1e3))
            print(f"{size:>8}  {times[0] * 1e6:>11.2f}  {times[1] * 1e6:>12.2f}  "
                  f"{times[1] / times[0]:>7.2f}", flush=True)
    finally:
        _core.set_grain_bytes(default_grain)
        fastmomentum.set_num_threads(None)


if __name__ == "__main__":
    main()
