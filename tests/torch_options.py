"""The option matrix both PyTorch parity files run: every valid combination of momentum,
dampening, Nesterov, weight decay and maximize (PyTorch rejects Nesterov without momentum or with
dampening; without momentum, dampening changes nothing)."""

from __future__ import annotations

import itertools

TORCH_OPTIONS = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.5], [False, True], [0.0, 1e-2],
                                             [False, True])
    if not (n and (m == 0 or d != 0)) and not (m == 0 and d != 0)
]


def options_id(options: dict[str, object]) -> str:
    return "-".join(f"{k}={v}" for k, v in options.items())
