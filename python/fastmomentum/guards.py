"""The guards of a step: non-finite gradients, global-norm clipping and loss-scale unscaling.

All three happen inside the step's kernel call: the gradients are read once more, for a statistics
pass, only when a check or clipping is asked for, and never copied or written. This module defines
what a step returns (:class:`StepResult`) and the error of ``nonfinite="raise"``; the compiled
entry points build both from here (``_core._bind``), so each exists once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from ._backend import to_host

__all__ = ["NonFinite", "StepResult"]

#: What a step does when a gradient holds a NaN or an infinity: ``"raise"`` a
#: ``FloatingPointError``, ``"skip"`` the step (nothing is modified; the result says so), or
#: ``"ignore"`` it (no check: the NaN reaches the parameters, as in PyTorch; the default).
NonFinite = Literal["raise", "skip", "ignore"]

class StepResult(NamedTuple):
    """What one step did.

    Attributes:
        skipped: True when ``nonfinite="skip"`` found a non-finite gradient: then NO array was
            modified (parameters, buffers, and the optimizer's counters and first-step state).
        grad_norm: with ``max_grad_norm``, the global 2-norm ``‖g‖₂ = sqrt(Σ g²)`` over every
            gradient of the step, after dividing by ``loss_scale`` (summed in float64); ``inf``
            or ``nan`` when a gradient is not finite. ``None`` without ``max_grad_norm``.
    """

    skipped: bool
    grad_norm: float | None


def nonfinite_error(grads: Sequence[Any]) -> FloatingPointError:
    """The error naming the first gradient with a NaN or an infinity (found again here, on the
    error path only: the kernel's check only says whether there is one)."""
    for i, g in enumerate(grads):
        if g is None:
            continue
        flat = to_host(g).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(flat))
        if bad.size:
            return FloatingPointError(
                f"grads[{i}] is not finite ({bad.size} of its {flat.size} elements; element "
                f"{bad[0]} is {flat[bad[0]]}); nothing was updated (nonfinite='raise')")
    return FloatingPointError("a gradient is not finite; nothing was updated (nonfinite='raise')")
