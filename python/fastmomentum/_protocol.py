"""The step protocol: the tuples in which a step's arguments travel from Python to the kernels.

Their layouts are defined once, in C++ (``cpp/bindings/protocol.hpp``), which reads each field by
name (``field::lr``) and exports the names; the NamedTuples below spell the same fields for Python
(``hyper.lr``) and are checked against those names at import, so the two cannot drift apart.

A step is ``backend.steps(calls, grads, guard, outcome)``: ``calls`` one :class:`Call` per
parameter group, ``grads`` one gradient (or ``None``) per parameter of all the calls in order,
``guard`` a :class:`Guard`, and ``outcome`` a ``_core.StepOutcome`` that the entry point fills in
after the kernels ran (see :mod:`fastmomentum._backend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from . import _core

__all__ = ["Call", "Guard", "Hyper"]


class Hyper(NamedTuple):
    """One call's hyper-parameters, as given (the kernels' parser converts and checks them: real
    numbers, real bools, the strings below), and how parameters narrower than float32 round:
    ``rounding`` ``"nearest"`` or ``"stochastic"``, whose random numbers ``seed`` and ``step``
    (ints >= 0) key."""

    style: str  # "torch", "keras" or "ema"
    lr: Any
    momentum: Any  # beta for the ema style
    dampening: Any
    nesterov: Any
    weight_decay: Any
    weight_decay_mode: str  # "coupled", "decoupled" or "sgdw"
    schedule_multiplier: Any
    maximize: Any
    rounding: str = "nearest"
    seed: Any = 0
    step: Any = 0


class Call(NamedTuple):
    """One parameter group of a step: its parameters, their buffers (``None`` without momentum;
    an entry may be ``None`` where the parameter has no gradient), ``first_step`` (one bool, or one
    per parameter), its :class:`Hyper`, and the position of ``params[0]`` among all the step's
    parameters (its gradient is ``grads[first_index]``; errors number arrays from it), and
    ``compensations``: None, or one Kahan compensation array (or None) per parameter."""

    params: Sequence[Any]
    buffers: Sequence[Any] | None
    first_step: bool | Sequence[bool]
    hyper: Hyper
    first_index: int
    compensations: Sequence[Any] | None = None


class Guard(NamedTuple):
    """A step's guards (README, "Guards"): what a non-finite gradient does (``"ignore"``,
    ``"skip"`` or ``"raise"``), clipping to the global norm ``max_norm`` (None: none), the loss
    scale the gradients are divided by, ``stats``: None to measure the gradients, or
    ``(all_finite, sum_squares)`` of them (before the division) as the caller measured them, e.g.
    over every rank's shard with ``_core.grad_stats``; ``clip_rule``: ``max_norm``'s formula,
    ``"torch"`` (``clip_grad_norm_``) or ``"keras"`` (``global_clipnorm``); ``clip_value``:
    Keras' ``clipvalue`` (None: none)."""

    nonfinite: str = "ignore"
    max_norm: float | None = None
    loss_scale: float = 1.0
    stats: tuple[bool, float] | None = None
    clip_rule: str = "torch"
    clip_value: float | None = None


for _tuple, _names in ((Hyper, _core.HYPER_FIELDS), (Call, _core.CALL_FIELDS),
                       (Guard, _core.GUARD_FIELDS)):
    if _tuple._fields != _names:
        raise ImportError(f"fastmomentum._protocol.{_tuple.__name__} has the fields "
                          f"{_tuple._fields}, but the compiled module reads {_names}: the package "
                          "and its extension module are from different versions; reinstall it")
