"""Per-call and per-array overheads: what a step costs when the arrays are too small to matter.

Prints, each a median of >= 7 samples of >= 20 ms of back-to-back calls (the README's performance
targets in brackets):

- ``sgd_`` on one float32 array of 1,000 elements, called as a user writes it (<= 0.6 us);
- ``sgd_`` on a list of 200 one-element arrays, per array (<= 0.2 us of overhead per array);
- ``SGD.step`` with one group of one array, and of 200 arrays (<= 3 us per group + 0.2 us per
  array), on its kept lists (made by the first step).

Example: ``python bench/overhead.py``
"""

from __future__ import annotations

import numpy as np

import fastmomentum as fm
from fastmomentum.commands.bench.timing import seconds_per_call

SAMPLES, MIN_SAMPLE_S = 9, 0.02
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


def _arrays(n_arrays: int, size: int) -> tuple[list[np.ndarray], ...]:
    # Values that stay far from overflow and subnormals over millions of steps (see
    # fastmomentum.commands.bench.problems): a fixed small gradient and a weight decay.
    rng = np.random.default_rng(0)
    params = [rng.random(size, dtype=np.float32) for _ in range(n_arrays)]
    grads = [rng.random(size, dtype=np.float32) * np.float32(1e-3) for _ in range(n_arrays)]
    buffers = [np.zeros(size, np.float32) for _ in range(n_arrays)]
    return params, grads, buffers


def functional_us(n_arrays: int, size: int) -> float:
    """Microseconds per ``sgd_`` call on ``n_arrays`` arrays of ``size`` elements."""
    params, grads, buffers = _arrays(n_arrays, size)

    def step() -> None:
        fm.functional.sgd_(params, grads, buffers, lr=LR, momentum=MOMENTUM,
                           weight_decay=WEIGHT_DECAY)

    return seconds_per_call(step, samples=SAMPLES, min_sample_s=MIN_SAMPLE_S) * 1e6


def optimizer_us(n_arrays: int) -> float:
    """Microseconds per ``SGD.step`` of one group of ``n_arrays`` one-element arrays."""
    params, grads, _ = _arrays(n_arrays, 1)
    opt = fm.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    opt.step(grads)  # the first step makes the lists and buffers

    def step() -> None:
        opt.step(grads)

    return seconds_per_call(step, samples=SAMPLES, min_sample_s=MIN_SAMPLE_S) * 1e6


def main() -> None:
    """Print the four figures."""
    print(f"# fastmomentum {fm.__version__}, float32, heavy-ball with coupled weight decay; "
          f"median of {SAMPLES} samples of >= {MIN_SAMPLE_S * 1e3:g} ms")
    one = functional_us(1, 1000)
    print(f"sgd_, one array of 1e3 elements:      {one:6.3f} us per call   (target <= 0.6)")
    tiny = functional_us(1, 1)
    many = functional_us(200, 1)
    print(f"sgd_, 200 one-element arrays:         {(many - tiny) / 199:6.3f} us per extra array "
          "(target <= 0.2)")
    step_one = optimizer_us(1)
    step_many = optimizer_us(200)
    print(f"SGD.step, one group of 1 array:       {step_one:6.3f} us per step    (target <= 3.2)")
    print(f"SGD.step, one group of 200 arrays:    {step_many:6.3f} us per step    "
          f"({(step_many - step_one) / 199:.3f} us per extra array; target <= 0.2)")


if __name__ == "__main__":
    main()
