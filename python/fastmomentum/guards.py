"""The guards of a step: non-finite gradients, global-norm clipping and loss-scale unscaling.

All three happen inside the step's kernel call (``_core.sgd_step_guarded``, ``_core.sgd_steps``):
the gradients are read once more, for a statistics pass, only when a check or clipping is asked
for, and never copied or written. This module turns the user's options into the kernel's
arguments and the kernel's outcome into a :class:`StepResult` (or an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from ._devices import is_device_array, to_host

__all__ = ["NonFinite", "StepResult"]

#: What a step does when a gradient holds a NaN or an infinity: ``"raise"`` a
#: ``FloatingPointError``, ``"skip"`` the step (nothing is modified; the result says so), or
#: ``"ignore"`` it (no check: the NaN reaches the parameters, as in PyTorch; the default).
NonFinite = Literal["raise", "skip", "ignore"]

# Whether each mode needs the kernel's finiteness check.
_CHECKS = {"raise": True, "skip": True, "ignore": False}


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


#: The result of a step that had nothing to report.
APPLIED = StepResult(False, None)

#: The default loss scale, 1.0. A step whose ``loss_scale`` IS this object (and has no other
#: guard) takes the unguarded kernel entry: an identity test is the cheapest check of the hot
#: path; any other value, 1.0 included, goes through the guarded entry, with the same result.
UNSCALED = 1.0


def checks_finite(nonfinite: Any) -> bool:
    """Whether ``nonfinite`` (a :data:`NonFinite` mode) asks for the finiteness check."""
    check = _CHECKS.get(nonfinite) if isinstance(nonfinite, str) else None
    if check is None:
        raise ValueError(f"nonfinite must be 'raise', 'skip' or 'ignore', got {nonfinite!r}")
    return check


def result(outcome: tuple[bool, float | None, int], nonfinite: str,
           grads: Sequence[Any]) -> StepResult:
    """The kernel's ``(applied, norm, threads)`` as a result; raises ``FloatingPointError`` for
    a gradient that stopped the step under ``nonfinite="raise"``."""
    applied, norm, _ = outcome
    if applied:
        return APPLIED if norm is None else StepResult(False, norm)
    if nonfinite == "raise":
        raise nonfinite_error(grads)
    return StepResult(True, norm)


def nonfinite_error(grads: Sequence[Any]) -> FloatingPointError:
    """The error naming the first gradient with a NaN or an infinity (found again here, on the
    error path only: the kernel's check only says whether there is one)."""
    for i, g in enumerate(grads):
        if g is None:
            continue
        flat = (to_host(g) if is_device_array(g) else np.asarray(g)).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(flat))
        if bad.size:
            return FloatingPointError(
                f"grads[{i}] is not finite ({bad.size} of its {flat.size} elements; element "
                f"{bad[0]} is {flat[bad[0]]}); nothing was updated (nonfinite='raise')")
    return FloatingPointError("a gradient is not finite; nothing was updated (nonfinite='raise')")
