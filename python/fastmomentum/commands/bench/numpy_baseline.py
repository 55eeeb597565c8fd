"""The best plain-NumPy equivalent of one momentum step: what fastmomentum is measured against.

In-place ufunc passes with ``out=`` into caller-owned scratch arrays, so a call allocates nothing.
It evaluates the same expressions, in the same order and dtype, as
:func:`fastmomentum.functional.sgd_` with ``dampening=0`` and a non-zero coupled weight decay, so
its results are bit-for-bit those of the fused kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def sgd_inplace_(
    p: NDArray[np.floating],
    g: NDArray[np.floating],
    b: NDArray[np.floating],
    scratch: Sequence[NDArray[np.floating]],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool = False,
) -> None:
    """``d = g + wd*p;  b <- momentum*b + d;  p <- p - lr*(d + momentum*b if nesterov else b)``.

    Six ufunc passes over memory (eight with Nesterov). ``scratch`` holds one array shaped like
    ``p`` (two with Nesterov); its contents are overwritten.
    """
    t = p.dtype.type
    d = scratch[0]
    np.multiply(p, t(weight_decay), out=d)  # wd*p
    np.add(g, d, out=d)  # d = g + wd*p
    np.multiply(b, t(momentum), out=b)  # momentum*b
    np.add(b, d, out=b)  # b = momentum*b + d
    direction = b
    if nesterov:
        direction = scratch[1]
        np.multiply(b, t(momentum), out=direction)  # momentum*b
        np.add(d, direction, out=direction)  # d + momentum*b
    np.multiply(direction, t(lr), out=d)  # lr*direction
    np.subtract(p, d, out=p)  # p - lr*direction
