"""Learning-rate schedulers for fastmomentum's optimizers, compatible with PyTorch 2.13.

Every class here has the constructor arguments, defaults, validation errors and step-by-step
values of its namesake in ``torch.optim.lr_scheduler`` (PyTorch 2.13): driven over the same
param groups, it writes the same Python floats into ``group["lr"]`` (bit for bit, because the
arithmetic is done in the same order).

The optimizer is duck-typed: any object with ``param_groups``, a list of dicts each holding at least
``"lr"`` (and ``"momentum"`` for :class:`CyclicLR` / :class:`OneCycleLR` with ``cycle_momentum``).
As in torch, a scheduler

- sets ``group["initial_lr"]`` (if absent) on construction when ``last_epoch == -1``, and
  requires it (``KeyError``) when resuming with ``last_epoch != -1``; ``base_lrs`` are these
  initial lrs;
- takes its first step in the constructor, so after construction ``last_epoch == 0`` and
  ``group["lr"]`` holds the lr of epoch 0;
- is advanced by ``step()`` after each epoch (or batch), after the optimizer's own step.

Chainable (recursive) forms. Most torch schedulers compute the new lr from the CURRENT
``group["lr"]`` (e.g. ExponentialLR: ``lr <- lr * gamma``) so that several schedulers can be
combined; these forms drift from the closed form of the schedule when anything else changes the lr
(pytorch issues #40971, #152081), and even on their own they may differ from the closed form in
the last bits. This module reproduces torch's recursion by default. :class:`StepLR`,
:class:`MultiStepLR`, :class:`ConstantLR`, :class:`LinearLR`, :class:`ExponentialLR`,
:class:`PolynomialLR` and :class:`CosineAnnealingLR` also take ``closed_form=True``, which computes
the lr from ``base_lrs`` and ``last_epoch`` only (the closed forms in each class's docstring).

Differences from torch (all deliberate):

- ``step()`` takes no ``epoch`` argument (deprecated in torch since 1.4), except
  :class:`CosineAnnealingWarmRestarts`, whose ``step(epoch)`` torch documents for per-batch use
  (``step(epoch + i / iters)``) and which is supported as torch computes it; no scheduler takes
  ``verbose``; ``ReduceLROnPlateau.step`` takes only ``metrics``.
- A negative lr is refused by :class:`fastmomentum.SGD`, not by the schedulers. torch's
  recursive forms can write one: two schedulers driving the same lr (a :class:`ChainedScheduler`
  of :class:`CosineAnnealingLR` with ``eta_min > 0`` and :class:`ExponentialLR`, for instance)
  push the recursive cosine below ``eta_min`` and then below 0. The scheduler writes that lr, as
  torch's does (bit for bit), and torch's SGD keeps stepping with it (ascending the loss);
  ``fastmomentum.SGD.step`` raises ``ValueError`` ("Invalid learning rate: ...") at the first
  step that would use it, with nothing updated. To avoid it pass ``closed_form=True`` to the
  chained schedulers (closed forms never go negative), or use a :mod:`fastmomentum.schedules`
  schedule as the lr.
- The optimizer's ``step`` is not wrapped, so torch's "lr_scheduler.step() before
  optimizer.step()" warning is not emitted.
- Only ``group["momentum"]`` is cycled (no Adam-style ``betas``).
- ``state_dict()`` holds only plain Python scalars, lists and str-keyed dicts, so that it can be
  saved with :mod:`json` (``ReduceLROnPlateau.best`` may be ``inf``, which :func:`json.dumps`
  writes as ``Infinity``). Callables are never stored: the ``lr_lambda`` of :class:`LambdaLR` /
  :class:`MultiplicativeLR` and the ``scale_fn`` of :class:`CyclicLR` must be passed again to the
  constructor of the scheduler that loads the state. The keys follow torch's attribute names.
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Literal, Protocol, SupportsFloat

from .schedules import cosine_interpolate, linear_interpolate, plain_data

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "OptimizerLike",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]


class OptimizerLike(Protocol):
    """What a scheduler needs from an optimizer: ``param_groups``, a list of dicts with ``"lr"``."""

    param_groups: list[dict[str, Any]]


#: A factor as a function of the epoch index, or a list or tuple of one per param group (as in
#: torch, any other object is taken as the one function).
LrLambda = (Callable[[int], float] | list[Callable[[int], float]]
            | tuple[Callable[[int], float], ...])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_optimizer(optimizer: Any) -> None:
    """Raise ``TypeError`` unless ``optimizer.param_groups`` is a list of dicts whose lrs are not
    schedules (callables): a scheduler and a schedule would both claim the lr."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TypeError(
            f"{type(optimizer).__name__} is not an optimizer: expected a `param_groups` list of "
            "dicts"
        )
    for i, group in enumerate(groups):
        if callable(group.get("lr")):
            raise TypeError(
                f"param_groups[{i}]['lr'] is a schedule (a callable); an lr scheduler needs a "
                "numeric lr to drive: use either the schedule or the scheduler"
            )


def _per_group(name: str, optimizer: OptimizerLike, value: Any) -> list[Any]:
    """One value per param group: ``value`` repeated, or a list/tuple of the right length."""
    n_groups = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} values, param_groups has {n_groups}."
            )
        return list(value)
    return [value] * n_groups


def _group_values(optimizer: OptimizerLike, key: str) -> list[Any]:
    """``[group[key] for group in optimizer.param_groups]`` (``KeyError`` if a group lacks it)."""
    return [group[key] for group in optimizer.param_groups]


def _require_momentum(optimizer: OptimizerLike) -> None:
    """Raise ``ValueError`` unless every param group has a ``"momentum"`` entry."""
    if not all("momentum" in group for group in optimizer.param_groups):
        raise ValueError(
            "optimizer must support momentum (a 'momentum' entry in every param group) with "
            "`cycle_momentum` option enabled"
        )


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


class LRScheduler:
    """Base class of the epoch-indexed schedulers.

    A subclass implements :meth:`get_lr`, the lrs of epoch ``last_epoch``. The constructor sets
    ``group["initial_lr"]`` (if absent, when ``last_epoch == -1``), ``base_lrs`` and takes the
    first :meth:`step`, so afterwards ``last_epoch == last_epoch_arg + 1``. Each :meth:`step` does
    ``last_epoch <- last_epoch + 1`` and then, with ``t = last_epoch``, writes
    ``lr_t = get_lr()[i]`` into ``group["lr"]`` for every group ``i``.

    Args:
        optimizer: Object with ``param_groups`` (a list of dicts holding ``"lr"``).
        last_epoch: Index of the last epoch seen; ``-1`` (default) starts a new schedule. Other
            values are for resuming, and need ``"initial_lr"`` in every group.

    Attributes:
        optimizer: The wrapped optimizer.
        base_lrs: ``group["initial_lr"]`` of every group, read on construction.
        last_epoch: Index of the current epoch (the one whose lr the groups hold).
    """

    # Attributes saved by state_dict(), in torch's names.
    _state_keys: ClassVar[tuple[str, ...]] = ("last_epoch", "base_lrs", "_step_count", "_last_lr")
    # True only while the constructor's first step runs; the chainable forms then keep the lr.
    _is_initial: bool = False
    # True only while step() calls get_lr(); get_lr() warns when called from outside.
    _in_step: bool = False

    def __init__(self, optimizer: OptimizerLike, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming "
                        "a scheduler with last_epoch != -1 (load the optimizer's state first)"
                    )
        self.base_lrs: list[float] = _group_values(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        self._initial_step()

    # -- stepping ------------------------------------------------------------------------------

    def _initial_step(self) -> None:
        """The constructor's step (also replayed by :class:`SequentialLR`)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def step(self) -> None:
        """Advance one epoch: ``last_epoch <- last_epoch + 1``, then ``lr_i <- get_lr()[i]``.

        Call it after the optimizer's step. torch's deprecated ``epoch`` argument is not supported.
        """
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self._compute_lrs())

    def _restart(self) -> None:
        """Jump to epoch 0 without counting a step (what :class:`SequentialLR` does at a milestone).

        torch does this through ``_update_lr(epoch=0)``, which uses the closed form where the class
        has one (see :class:`_ChainableLRScheduler`) and :meth:`get_lr` otherwise.
        """
        self.last_epoch = 0
        self._set_lrs(self._compute_lrs())

    def _compute_lrs(self) -> list[float]:
        """:meth:`get_lr`, flagged as called from within a step (so that it does not warn)."""
        self._in_step = True
        try:
            return self.get_lr()
        finally:
            self._in_step = False

    def _set_lrs(self, lrs: Sequence[float]) -> None:
        """Write ``lrs`` into the param groups and remember them for :meth:`get_last_lr`."""
        groups = self.optimizer.param_groups
        if len(lrs) != len(groups):
            raise ValueError(f"got {len(lrs)} learning rates for {len(groups)} param groups")
        for group, lr in zip(groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = _group_values(self.optimizer, "lr")

    def _warn_if_outside_step(self) -> None:
        """torch's warning for a :meth:`get_lr` call made by the user rather than :meth:`step`."""
        if not self._in_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, please use "
                "`get_last_lr()`.",
                UserWarning,
                stacklevel=3,
            )

    # -- queries -------------------------------------------------------------------------------

    def get_last_lr(self) -> list[float]:
        """The lrs this scheduler last wrote, one per param group (a copy)."""
        return list(self._last_lr)

    def get_lr(self) -> list[float]:
        """The lrs of epoch ``last_epoch``, one per param group; implemented by subclasses.

        It is called by :meth:`step` after ``last_epoch`` has been advanced; calling it directly
        warns (as in torch) and, for the chainable forms, computes one more step from the current
        lrs. Use :meth:`get_last_lr` to read the current lrs.
        """
        raise NotImplementedError

    # -- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state as plain data (JSON-serialisable); never the optimizer.

        The optimizer's own state (``lr``, ``initial_lr``, ... in its param groups) must be saved
        and restored separately, as with torch.
        """
        return {key: plain_data(self._state_value(key)) for key in self._state_keys}

    def _state_value(self, key: str) -> Any:
        """The value saved under ``key`` (an attribute, unless a subclass converts it)."""
        return getattr(self, key)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict` (possibly after a JSON round trip).

        Keys this class does not use are ignored; a missing key raises ``KeyError``. Atomic: on
        any error the scheduler, and the schedulers it chains, are left as they were.
        """
        saved = [(scheduler, dict(vars(scheduler))) for scheduler in self._family()]
        try:
            self._load_state(state_dict)
        except BaseException:
            for scheduler, attributes in saved:
                vars(scheduler).clear()
                vars(scheduler).update(attributes)
            raise

    def _family(self) -> list[LRScheduler]:
        """This scheduler and every scheduler whose state its state dict holds."""
        return [self]

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        """The body of :meth:`load_state_dict` (which undoes it on an error)."""
        missing = [key for key in self._state_keys if key not in state_dict]
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}")
        for key in self._state_keys:
            setattr(self, key, plain_data(state_dict[key]))


class _ChainableLRScheduler(LRScheduler):
    """A scheduler with torch's recursive form plus an optional closed form.

    Subclasses implement :meth:`_closed_form_lrs` (from ``base_lrs`` and ``last_epoch``) and, in
    :meth:`get_lr`, the recursive form unless ``self.closed_form``.
    """

    closed_form: bool = False

    def _closed_form_lrs(self) -> list[float]:
        raise NotImplementedError

    def _restart(self) -> None:
        # As torch's `_update_lr(epoch=0)`, which uses `_get_closed_form_lr` for these classes.
        self.last_epoch = 0
        self._set_lrs(self._closed_form_lrs())

    def _current_lrs(self) -> list[float]:
        return _group_values(self.optimizer, "lr")


# --------------------------------------------------------------------------------------------
# Multiplicative decays
# --------------------------------------------------------------------------------------------


class StepLR(_ChainableLRScheduler):
    """Decay the lr by ``gamma`` every ``step_size`` epochs.

    Closed form: ``lr_t = base_lr * gamma ** (t // step_size)``.
    torch's recursive form: ``lr_t = lr_{t-1} * gamma`` if ``t > 0`` and ``t % step_size == 0``,
    else ``lr_{t-1}`` (so a change made to the lr by anything else persists; with
    ``closed_form=True`` it is overwritten at the next step).

    Args:
        optimizer: Wrapped optimizer.
        step_size: Period of the decay, in epochs.
        gamma: Multiplicative factor of the decay. Default: 0.1.
        last_epoch: Index of the last epoch. Default: -1.
        closed_form: Compute the closed form instead of torch's recursion. Default: False.
    """

    _state_keys = (*LRScheduler._state_keys, "step_size", "gamma", "closed_form")

    def __init__(
        self,
        optimizer: OptimizerLike,
        step_size: int,
        gamma: float = 0.1,
        last_epoch: int = -1,
        *,
        closed_form: bool = False,
    ) -> None:
        self.step_size = step_size
        self.gamma = gamma
        self.closed_form = closed_form
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``lr * gamma`` at non-zero multiples of ``step_size``, else ``lr`` (or the closed form
        ``base_lr * gamma ** (last_epoch // step_size)``)."""
        self._warn_if_outside_step()
        if self.closed_form:
            return self._closed_form_lrs()
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _closed_form_lrs(self) -> list[float]:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size)
                for base_lr in self.base_lrs]


class MultiStepLR(_ChainableLRScheduler):
    """Decay the lr by ``gamma`` at each milestone epoch.

    Closed form: ``lr_t = base_lr * gamma ** (number of milestones <= t)`` (a milestone listed
    ``n`` times counts ``n`` times). torch's recursive form: ``lr_t = lr_{t-1} * gamma ** n`` where
    ``n`` is the number of times ``t`` is listed in ``milestones``.

    Args:
        optimizer: Wrapped optimizer.
        milestones: Epoch indices (need not be sorted; repeats compound).
        gamma: Multiplicative factor of the decay. Default: 0.1.
        last_epoch: Index of the last epoch. Default: -1.
        closed_form: Compute the closed form instead of torch's recursion. Default: False.

    ``state_dict()["milestones"]`` is the sorted list of milestones, repeats included.
    """

    _state_keys = (*LRScheduler._state_keys, "milestones", "gamma", "closed_form")

    def __init__(
        self,
        optimizer: OptimizerLike,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
        *,
        closed_form: bool = False,
    ) -> None:
        self.milestones: Counter[int] = Counter(milestones)
        self.gamma = gamma
        self.closed_form = closed_form
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``lr * gamma ** milestones[last_epoch]`` at a milestone, else ``lr`` (or the closed
        form ``base_lr * gamma ** (number of milestones <= last_epoch)``)."""
        self._warn_if_outside_step()
        if self.closed_form:
            return self._closed_form_lrs()
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _closed_form_lrs(self) -> list[float]:
        passed = bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base_lr * self.gamma**passed for base_lr in self.base_lrs]

    def _state_value(self, key: str) -> Any:
        if key == "milestones":  # a Counter has int keys, which JSON cannot hold
            return sorted(self.milestones.elements())
        return super()._state_value(key)

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        super()._load_state(state_dict)
        self.milestones = Counter(self.milestones)


class ExponentialLR(_ChainableLRScheduler):
    """Decay the lr by ``gamma`` every epoch.

    Closed form: ``lr_t = base_lr * gamma ** t``. torch's recursive form: ``lr_t = lr_{t-1} *
    gamma`` (``t`` repeated roundings, so it differs from the closed form in the last bits).

    Args:
        optimizer: Wrapped optimizer.
        gamma: Multiplicative factor of the decay.
        last_epoch: Index of the last epoch. Default: -1.
        closed_form: Compute the closed form instead of torch's recursion. Default: False.
    """

    _state_keys = (*LRScheduler._state_keys, "gamma", "closed_form")

    def __init__(
        self,
        optimizer: OptimizerLike,
        gamma: float,
        last_epoch: int = -1,
        *,
        closed_form: bool = False,
    ) -> None:
        self.gamma = gamma
        self.closed_form = closed_form
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``lr * gamma`` (the constructor's step keeps ``lr``), or ``base_lr * gamma **
        last_epoch`` with ``closed_form``."""
        self._warn_if_outside_step()
        if self.closed_form:
            return self._closed_form_lrs()
        if self._is_initial:
            return self._current_lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _closed_form_lrs(self) -> list[float]:
        return [base_lr * self.gamma**self.last_epoch for base_lr in self.base_lrs]


class MultiplicativeLR(LRScheduler):
    """Multiply the lr by ``lr_lambda(t)`` every epoch: ``lr_t = lr_{t-1} * lr_lambda(t)``.

    The constructor's step keeps the lr (``lr_0 = lr``). This form is recursive by definition.

    Args:
        optimizer: Wrapped optimizer.
        lr_lambda: Function of the epoch index giving the factor, or one per param group.
        last_epoch: Index of the last epoch. Default: -1.

    ``state_dict()`` does not store ``lr_lambda``: pass it again to the loading scheduler.
    """

    def __init__(
        self,
        optimizer: OptimizerLike,
        lr_lambda: LrLambda,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.lr_lambdas: list[Callable[[int], float]] = _lambdas(optimizer, lr_lambda)
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``lr * lr_lambda(last_epoch)`` (the constructor's step keeps ``lr``)."""
        self._warn_if_outside_step()
        if self._is_initial:
            return _group_values(self.optimizer, "lr")
        return [group["lr"] * fn(self.last_epoch)
                for fn, group in zip(self.lr_lambdas, self.optimizer.param_groups, strict=True)]


class LambdaLR(LRScheduler):
    """Set the lr to ``lr_t = base_lr * lr_lambda(t)`` (closed form; no recursion involved).

    Args:
        optimizer: Wrapped optimizer.
        lr_lambda: Function of the epoch index giving the factor, or one per param group.
        last_epoch: Index of the last epoch. Default: -1.

    ``state_dict()`` does not store ``lr_lambda`` (torch stores the ``__dict__`` of callable
    objects, but not functions): pass it again to the loading scheduler.
    """

    def __init__(
        self,
        optimizer: OptimizerLike,
        lr_lambda: LrLambda,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.lr_lambdas: list[Callable[[int], float]] = _lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``base_lr * lr_lambda(last_epoch)``."""
        self._warn_if_outside_step()
        return [base_lr * fn(self.last_epoch)
                for fn, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)]


def _lambdas(
    optimizer: OptimizerLike,
    lr_lambda: LrLambda,
) -> list[Callable[[int], float]]:
    """``lr_lambda`` repeated for every group, or the list itself if it has one per group."""
    n_groups = len(optimizer.param_groups)
    if not isinstance(lr_lambda, (list, tuple)):
        return [lr_lambda] * n_groups
    if len(lr_lambda) != n_groups:
        raise ValueError(f"Expected {n_groups} lr_lambdas, but got {len(lr_lambda)}")
    return list(lr_lambda)


# --------------------------------------------------------------------------------------------
# Warm-up and polynomial schedules
# --------------------------------------------------------------------------------------------


class ConstantLR(_ChainableLRScheduler):
    """Scale the lr by ``factor`` for the first ``total_iters`` epochs.

    Closed form: ``lr_t = base_lr * (factor if t < total_iters else 1)``.
    torch's recursive form: ``lr_0 = lr * factor``, ``lr_t = lr_{t-1} * (1.0 / factor)`` at
    ``t == total_iters``, else ``lr_{t-1}``. (With ``total_iters == 0`` torch scales at epoch 0 and
    never undoes it; the closed form gives ``base_lr`` throughout. ``factor == 0`` makes the
    recursive form divide by zero at ``total_iters``.)

    Args:
        optimizer: Wrapped optimizer.
        factor: The multiplier until the milestone, in ``[0, 1]``. Default: 1/3.
        total_iters: Number of epochs during which the lr is scaled. Default: 5.
        last_epoch: Index of the last epoch. Default: -1.
        closed_form: Compute the closed form instead of torch's recursion. Default: False.
    """

    _state_keys = (*LRScheduler._state_keys, "factor", "total_iters", "closed_form")

    def __init__(
        self,
        optimizer: OptimizerLike,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
        *,
        closed_form: bool = False,
    ) -> None:
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.factor = factor
        self.total_iters = total_iters
        self.closed_form = closed_form
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``lr * factor`` at epoch 0, ``lr * (1.0 / factor)`` at ``total_iters``, else ``lr``
        (or the closed form ``base_lr * (factor if last_epoch < total_iters else 1)``)."""
        self._warn_if_outside_step()
        if self.closed_form:
            return self._closed_form_lrs()
        if self.last_epoch == 0:
            return [group["lr"] * self.factor for group in self.optimizer.param_groups]
        if self.last_epoch != self.total_iters:
            return self._current_lrs()
        return [group["lr"] * (1.0 / self.factor) for group in self.optimizer.param_groups]

    def _closed_form_lrs(self) -> list[float]:
        # torch writes `factor + (t >= T) * (1 - factor)`; for 0 <= factor <= 1 that is exactly
        # 1.0 when t >= T (1 - factor is exact for factor >= 1/2, and otherwise within half an
        # ulp of 1 - factor, so the sum rounds to 1), hence the same values as torch.
        scale = self.factor if self.last_epoch < self.total_iters else 1.0
        return [base_lr * scale for base_lr in self.base_lrs]


class LinearLR(_ChainableLRScheduler):
    """Scale the lr by a factor going linearly from ``start_factor`` to ``end_factor``.

    Closed form (``s, e, T`` = start_factor, end_factor, total_iters):
    ``lr_t = base_lr * (s + (e - s) * min(T, t) / T)``.
    torch's recursive form: ``lr_0 = lr * s``; for ``0 < t <= T``,
    ``lr_t = lr_{t-1} * (1 + (e - s) / (T * s + (t - 1) * (e - s)))``; afterwards ``lr_{t-1}``.

    Args:
        optimizer: Wrapped optimizer.
        start_factor: Factor of the first epoch, in ``(0, 1]``. Default: 1/3.
        end_factor: Factor from epoch ``total_iters`` on, in ``[0, 1]``. Default: 1.0.
        total_iters: Number of epochs of the ramp. Default: 5.
        last_epoch: Index of the last epoch. Default: -1.
        closed_form: Compute the closed form instead of torch's recursion. Default: False.
    """

    _state_keys = (
        *LRScheduler._state_keys, "start_factor", "end_factor", "total_iters", "closed_form",
    )

    def __init__(
        self,
        optimizer: OptimizerLike,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
        *,
        closed_form: bool = False,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or equal "
                "to 1."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        self.closed_form = closed_form
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """Recursive: ``lr * s`` at epoch 0, ``lr * (1 + (e - s) / (T*s + (t-1)*(e - s)))`` for
        ``0 < t <= T``, else ``lr``; closed: ``base_lr * (s + (e - s) * min(T, t) / T)``."""
        self._warn_if_outside_step()
        if self.closed_form:
            return self._closed_form_lrs()
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        delta = self.end_factor - self.start_factor
        factor = 1.0 + delta / (
            self.total_iters * self.start_factor + (self.last_epoch - 1) * delta
        )
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _closed_form_lrs(self) -> list[float]:
        # The operation order of torch's `_get_closed_form_lr`: ((e - s) * min(T, t)) / T.
        factor = (
            self.start_factor
            + (self.end_factor - self.start_factor)
            * min(self.total_iters, self.last_epoch)
            / self.total_iters
        )
        return [base_lr * factor for base_lr in self.base_lrs]


class PolynomialLR(_ChainableLRScheduler):
    """Decay the lr polynomially to 0 over ``total_iters`` epochs.

    Closed form: ``lr_t = base_lr * (1 - min(T, t) / T) ** power``.
    torch's recursive form: for ``0 < t <= T``,
    ``lr_t = lr_{t-1} * ((1 - t / T) / (1 - (t - 1) / T)) ** power``, else ``lr_{t-1}``.

    Args:
        optimizer: Wrapped optimizer.
        total_iters: Number of epochs of the decay. Default: 5.
        power: Power of the polynomial. Default: 1.0.
        last_epoch: Index of the last epoch. Default: -1.
        closed_form: Compute the closed form instead of torch's recursion. Default: False.
    """

    _state_keys = (*LRScheduler._state_keys, "total_iters", "power", "closed_form")

    def __init__(
        self,
        optimizer: OptimizerLike,
        total_iters: int = 5,
        power: float = 1.0,
        last_epoch: int = -1,
        *,
        closed_form: bool = False,
    ) -> None:
        self.total_iters = total_iters
        self.power = power
        self.closed_form = closed_form
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """Recursive: ``lr * ((1 - t/T) / (1 - (t-1)/T)) ** power`` for ``0 < t <= T``, else
        ``lr``; closed: ``base_lr * (1 - min(T, t) / T) ** power``."""
        self._warn_if_outside_step()
        if self.closed_form:
            return self._closed_form_lrs()
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        t, total = self.last_epoch, self.total_iters
        factor = ((1.0 - t / total) / (1.0 - (t - 1) / total)) ** self.power
        return [group["lr"] * factor for group in self.optimizer.param_groups]

    def _closed_form_lrs(self) -> list[float]:
        remaining = 1.0 - min(self.total_iters, self.last_epoch) / self.total_iters
        return [base_lr * remaining**self.power for base_lr in self.base_lrs]


# --------------------------------------------------------------------------------------------
# Cosine schedules
# --------------------------------------------------------------------------------------------


class CosineAnnealingLR(_ChainableLRScheduler):
    """Cosine annealing from ``base_lr`` down to ``eta_min`` over ``T_max`` epochs (no restart:
    past ``T_max`` the cosine goes back up, with period ``2 * T_max``).

    Closed form: ``lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``.

    torch's recursive form (the default here), for ``t > 0``::

        lr_t = (1 + cos(pi * t / T_max)) / (1 + cos(pi * (t - 1) / T_max))
               * (lr_{t-1} - eta_min) + eta_min
        lr_t = lr_{t-1} + (base_lr - eta_min) * (1 - cos(pi / T_max)) / 2
               if (t - 1 - T_max) % (2 * T_max) == 0      (leaving the minimum, where the
                                                           ratio above would be 0/0)

    It equals the closed form only while nothing else touches the lr: after an external change
    (another scheduler, a manual edit, :class:`ReduceLROnPlateau`) the recursion rescales the
    CURRENT lr, so the schedule no longer reaches ``eta_min``/``base_lr`` at the expected epochs
    (pytorch issues #40971, #152081); even alone, it differs from the closed form by a few ulps.
    ``closed_form=True`` always writes the closed form, overriding external changes.

    Args:
        optimizer: Wrapped optimizer.
        T_max: Half-period, in epochs.
        eta_min: Minimum learning rate. Default: 0.0.
        last_epoch: Index of the last epoch. Default: -1.
        closed_form: Compute the closed form instead of torch's recursion. Default: False.
    """

    _state_keys = (*LRScheduler._state_keys, "T_max", "eta_min", "closed_form")

    def __init__(
        self,
        optimizer: OptimizerLike,
        T_max: int,
        eta_min: float = 0.0,
        last_epoch: int = -1,
        *,
        closed_form: bool = False,
    ) -> None:
        self.T_max = T_max
        self.eta_min = eta_min
        self.closed_form = closed_form
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The recursive or closed form given in the class docstring, at ``last_epoch``."""
        self._warn_if_outside_step()
        if self.closed_form:
            return self._closed_form_lrs()
        t, period, eta_min = self.last_epoch, self.T_max, self.eta_min
        groups = self.optimizer.param_groups
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and t > 0:
            # torch: a get_lr() right after resuming with last_epoch >= 0 gives the closed form.
            return self._closed_form_lrs()
        if (t - 1 - period) % (2 * period) == 0:
            return [
                group["lr"] + (base_lr - eta_min) * (1 - math.cos(math.pi / period)) / 2
                for base_lr, group in zip(self.base_lrs, groups, strict=True)
            ]
        ratio = (1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period))
        return [ratio * (group["lr"] - eta_min) + eta_min for group in groups]

    def _closed_form_lrs(self) -> list[float]:
        cos_term = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return [self.eta_min + (base_lr - self.eta_min) * cos_term / 2
                for base_lr in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing with warm restarts (SGDR), a closed form of the position in the period.

    ``lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``, where ``T_cur``
    counts the epochs since the last restart and ``T_i`` is the current period: ``T_0`` at first,
    and when ``T_cur`` reaches ``T_i``, ``T_cur <- T_cur % T_i`` and ``T_i <- T_i * T_mult``.

    Args:
        optimizer: Wrapped optimizer.
        T_0: Number of epochs until the first restart (a positive int).
        T_mult: Factor by which the period grows after each restart (an int >= 1). Default: 1.
        eta_min: Minimum learning rate. Default: 0.0.
        last_epoch: Index of the last epoch. Default: -1.

    As in torch, :meth:`step` also takes an epoch, fractional for per-batch use:
    ``scheduler.step(epoch + i / iters)``.
    """

    _state_keys = (*LRScheduler._state_keys, "T_0", "T_i", "T_mult", "eta_min", "T_cur")

    def __init__(
        self,
        optimizer: OptimizerLike,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(
                f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}"
            )
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur: float = last_epoch  # a float after a fractional step(epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """``eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``."""
        self._warn_if_outside_step()
        cos_term = 1 + math.cos(math.pi * self.T_cur / self.T_i)
        return [self.eta_min + (base_lr - self.eta_min) * cos_term / 2
                for base_lr in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """Advance one epoch, or jump to ``epoch`` (fractional epochs allowed), then write
        :meth:`get_lr` into the param groups.

        Without ``epoch``: ``T_cur <- T_cur + 1``; at ``T_cur >= T_i`` restart
        (``T_cur <- T_cur % T_i``, ``T_i <- T_i * T_mult``). The first step (``last_epoch < 0``)
        starts the first period: ``T_cur = 0, T_i = T_0``. When resuming (``last_epoch >= 0``)
        torch, and this class, start from ``T_cur = last_epoch`` and wrap it at most once
        (``T_cur % T_0``): right for any ``last_epoch`` when ``T_mult == 1``, but for
        ``T_mult > 1`` only while ``last_epoch + 1 < 2 * T_0``.

        With ``epoch`` (an int or float >= 0; torch's per-batch use is
        ``scheduler.step(epoch + i / iters)`` after each batch ``i`` of ``iters``), torch's closed
        form, with its arithmetic::

            if epoch < T_0:        T_i = T_0;  T_cur = epoch
            elif T_mult == 1:      T_cur = epoch % T_0
            else:                  n = int(math.log(epoch / T_0 * (T_mult - 1) + 1, T_mult))
                                   T_cur = epoch - T_0 * (T_mult**n - 1) / (T_mult - 1)
                                   T_i = T_0 * T_mult**n
            last_epoch = floor(epoch)

        so a later ``step()`` continues from ``last_epoch + 1`` and ``T_cur + 1``. As in torch, the
        log can round just below an integer at an exact restart epoch (e.g. ``T_0=10, T_mult=3,
        epoch=1210``: ``n = 4`` and the lr is ``eta_min`` instead of ``base_lr``). A negative
        ``epoch`` raises ``ValueError`` (torch's message), as does a non-finite one.
        """
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            self.last_epoch += 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if isinstance(epoch, bool) or not isinstance(epoch, numbers.Real):
                raise TypeError(f"epoch must be an int or a float, got {epoch!r}")
            # A NumPy scalar (``for epoch in np.arange(n)``) as the Python number it holds.
            epoch = (operator.index(epoch) if isinstance(epoch, numbers.Integral)
                     else float(epoch))
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            if not math.isfinite(epoch):
                raise ValueError(f"Expected a finite epoch, but got {epoch}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult ** (n)
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
            self.last_epoch = math.floor(epoch)
        self._step_count += 1
        self._set_lrs(self._compute_lrs())


# --------------------------------------------------------------------------------------------
# Per-batch cyclical schedules
# --------------------------------------------------------------------------------------------


class CyclicLR(LRScheduler):
    """Cyclical learning rate (Smith 2017): the lr goes between ``base_lr`` and ``max_lr``.

    With ``t = last_epoch`` (batches), ``S = step_size_up + step_size_down``,
    ``r = step_size_up / S``::

        cycle = floor(1 + t / S)
        x     = 1 + t / S - cycle                        (position in the cycle, in [0, 1))
        f     = x / r  if x <= r  else  (x - 1) / (r - 1)  (0 -> 1 -> 0 over the cycle)
        lr_t  = base_lr + (max_lr - base_lr) * f * scale
        m_t   = max_momentum - (max_momentum - base_momentum) * f * scale   (cycle_momentum)

    where ``scale = scale_fn(cycle)`` (``scale_mode="cycle"``) or ``scale_fn(t)``
    (``"iterations"``); the modes are ``triangular`` (``scale = 1``), ``triangular2``
    (``1 / 2 ** (cycle - 1)``, cycle mode) and ``exp_range`` (``gamma ** t``, iterations mode).
    The constructor sets ``group["lr"] = base_lr`` and, with ``cycle_momentum``,
    ``group["momentum"] = max_momentum`` (when ``last_epoch == -1``).

    As in torch, the constructor's step uses ``group["initial_lr"]`` as the base lr (so if a
    group already had an ``initial_lr`` different from ``base_lr``, epoch 0 gets that value);
    ``base_lrs`` is set to the ``base_lr`` argument after it.

    Args:
        optimizer: Wrapped optimizer.
        base_lr: Lower lr boundary, one float or one per group.
        max_lr: Upper lr boundary, one float or one per group.
        step_size_up: Number of batches of the increasing half. Default: 2000.
        step_size_down: Number of batches of the decreasing half; ``None`` means
            ``step_size_up``. Default: None.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``; ignored when
            ``scale_fn`` is given. Default: ``"triangular"``.
        gamma: Base of ``exp_range``'s scale. Default: 1.0.
        scale_fn: Custom scale policy (a function of one argument), overriding ``mode``.
            Not stored by ``state_dict()``: pass it again to the loading scheduler.
        scale_mode: ``"cycle"`` or ``"iterations"``, the argument of a custom ``scale_fn``.
        cycle_momentum: Also cycle ``group["momentum"]``, inversely to the lr. Default: True.
        base_momentum: Lower momentum boundary (one or one per group). Default: 0.8.
        max_momentum: Upper momentum boundary (one or one per group). Default: 0.9.
        last_epoch: Index of the last batch. Default: -1.
    """

    _state_keys = (
        *LRScheduler._state_keys, "max_lrs", "total_size", "step_ratio", "mode", "gamma",
        "scale_mode", "cycle_momentum", "base_momentums", "max_momentums",
    )

    def __init__(
        self,
        optimizer: OptimizerLike,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: Literal["cycle", "iterations"] = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.8,
        max_momentum: float | list[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                group["lr"] = lr
        self.max_lrs: list[float] = _per_group("max_lr", optimizer, max_lr)

        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size

        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_mode()

        self.cycle_momentum = cycle_momentum
        self.base_momentums: list[float] = []
        self.max_momentums: list[float] = []
        if cycle_momentum:
            _require_momentum(optimizer)
            self.base_momentums = _per_group("base_momentum", optimizer, base_momentum)
            self.max_momentums = _per_group("max_momentum", optimizer, max_momentum)
            if last_epoch == -1:
                for m_max, m_base, group in zip(
                    self.max_momentums, self.base_momentums, optimizer.param_groups, strict=True
                ):
                    group["momentum"] = m_max
                    group["max_momentum"] = m_max
                    group["base_momentum"] = m_base

        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_mode(self) -> None:
        """The built-in modes fix ``scale_mode`` (cycle, cycle, iterations)."""
        if self._scale_fn_custom is None:
            self.scale_mode = "iterations" if self.mode == "exp_range" else "cycle"

    def scale_fn(self, x: float) -> float:
        """The amplitude scale: the custom ``scale_fn(x)`` if given, else ``1.0``
        (triangular), ``1 / 2.0 ** (x - 1)`` (triangular2) or ``gamma ** x`` (exp_range)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        if self.mode == "triangular":
            return 1.0
        # float(): typeshed types a float power as Any (a negative base can give a complex)
        if self.mode == "triangular2":
            return 1 / float(2.0 ** (x - 1))
        return float(self.gamma**x)

    def get_lr(self) -> list[float]:
        """``base_lr + (max_lr - base_lr) * f * scale`` (see the class docstring); with
        ``cycle_momentum`` it also writes ``max_momentum - (max_momentum - base_momentum) * f *
        scale`` into ``group["momentum"]``."""
        self._warn_if_outside_step()
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle
        if x <= self.step_ratio:
            fraction = x / self.step_ratio
        else:
            fraction = (x - 1) / (self.step_ratio - 1)
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else self.last_epoch)

        lrs = []
        for base_lr, max_lr in zip(self.base_lrs, self.max_lrs, strict=True):
            height = (max_lr - base_lr) * fraction
            lrs.append(base_lr + height * scale)

        if self.cycle_momentum:
            for m_base, m_max, group in zip(
                self.base_momentums, self.max_momentums, self.optimizer.param_groups, strict=True
            ):
                height = (m_max - m_base) * fraction
                group["momentum"] = m_max - height * scale
        return lrs

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        # The constructor's scale_fn is kept.
        super()._load_state(state_dict)
        self._init_scale_mode()


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin 2018, fastai's variant by default), per batch.

    With ``N = total_steps``, ``p = pct_start``, ``initial = max_lr / div_factor`` and
    ``min_lr = initial / final_div_factor`` (stored in each group as ``initial_lr``, ``max_lr``,
    ``min_lr``), the lr is annealed phase by phase; phase ``k`` runs from step ``s_{k-1}``
    (``s_{-1} = 0``) to ``s_k`` and, at step ``t``, uses ``pct = (t - s_{k-1}) / (s_k - s_{k-1})``:

    - two phases: ``initial -> max_lr`` until ``s_0 = p*N - 1``, then ``max_lr -> min_lr`` until
      ``s_1 = N - 1``;
    - ``three_phase``: ``initial -> max_lr`` until ``p*N - 1``, ``max_lr -> initial`` until
      ``2*p*N - 2``, ``initial -> min_lr`` until ``N - 1``.

    With ``start`` and ``end`` the lrs at the ends of the phase, ``anneal_strategy="cos"`` gives
    ``lr_t = end + (start - end) / 2 * (cos(pi * pct) + 1)`` and ``"linear"`` gives
    ``lr_t = (end - start) * pct + start``. With ``cycle_momentum`` the momentum goes
    ``max_momentum -> base_momentum -> max_momentum`` (three phases: then stays at
    ``max_momentum``), written into ``group["momentum"]``.

    The constructor takes step 0; ``step()`` may then be called ``total_steps`` times; one more
    raises ``ValueError``. As in torch, the last allowed call extrapolates the last phase to
    ``t = N`` (``pct > 1``: with ``"cos"`` the lr rises again above ``min_lr``). Also as in
    torch, the cosine form does not return ``start`` exactly at ``pct = 0`` (e.g. max_lr 0.3
    gives ``lr_0 = 0.01200000000000001``, not ``initial_lr = 0.012``).

    Args:
        optimizer: Wrapped optimizer.
        max_lr: Peak lr, one float or one per group.
        total_steps: Number of steps of the cycle; if None, ``epochs * steps_per_epoch``.
        epochs: Number of epochs (with ``steps_per_epoch``).
        steps_per_epoch: Number of steps per epoch (with ``epochs``).
        pct_start: Fraction of the cycle spent increasing the lr (a float in [0, 1]).
            Default: 0.3.
        anneal_strategy: ``"cos"`` or ``"linear"``. Default: ``"cos"``.
        cycle_momentum: Also cycle ``group["momentum"]``. Default: True.
        base_momentum: Lowest momentum (at the peak lr), one or one per group. Default: 0.85.
        max_momentum: Highest momentum, one or one per group. Default: 0.95.
        div_factor: ``initial_lr = max_lr / div_factor``. Default: 25.0.
        final_div_factor: ``min_lr = initial_lr / final_div_factor``. Default: 1e4.
        three_phase: Use the three-phase schedule. Default: False.
        last_epoch: Index of the last batch. Default: -1.
    """

    _state_keys = (
        *LRScheduler._state_keys, "total_steps", "_schedule_phases", "_anneal_func_type",
        "cycle_momentum",
    )

    def __init__(
        self,
        optimizer: OptimizerLike,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer

        if total_steps is not None:
            if not isinstance(total_steps, int) or total_steps <= 0:
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(
                    f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}"
                )
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")

        if not isinstance(pct_start, float) or pct_start < 0 or pct_start > 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self._anneal_func_type: str = anneal_strategy
        self._schedule_phases = self._phases(pct_start, three_phase)

        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for peak, group in zip(max_lrs, optimizer.param_groups, strict=True):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            _require_momentum(optimizer)
            max_momentums = _per_group("max_momentum", optimizer, max_momentum)
            base_momentums = _per_group("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                for m_max, m_base, group in zip(
                    max_momentums, base_momentums, optimizer.param_groups, strict=True
                ):
                    group["momentum"] = m_max
                    group["max_momentum"] = m_max
                    group["base_momentum"] = m_base

        super().__init__(optimizer, last_epoch)

    def _phases(self, pct_start: float, three_phase: bool) -> list[dict[str, Any]]:
        """The phases: end step and the group keys of their start/end lr and momentum."""

        def phase(end_step: float, lrs: str, momenta: str) -> dict[str, Any]:
            start_lr, end_lr = lrs.split()
            start_momentum, end_momentum = momenta.split()
            return {"end_step": end_step, "start_lr": start_lr, "end_lr": end_lr,
                    "start_momentum": start_momentum, "end_momentum": end_momentum}

        rise_end = float(pct_start * self.total_steps) - 1
        if three_phase:
            return [
                phase(rise_end, "initial_lr max_lr", "max_momentum base_momentum"),
                phase(float(2 * pct_start * self.total_steps) - 2, "max_lr initial_lr",
                      "base_momentum max_momentum"),
                phase(self.total_steps - 1, "initial_lr min_lr", "max_momentum max_momentum"),
            ]
        return [
            phase(rise_end, "initial_lr max_lr", "max_momentum base_momentum"),
            phase(self.total_steps - 1, "max_lr min_lr", "base_momentum max_momentum"),
        ]

    def _anneal(self, start: float, end: float, pct: float) -> float:
        """Cosine ``end + (start - end) / 2.0 * (cos(pi * pct) + 1)`` or linear
        ``(end - start) * pct + start`` interpolation, ``pct`` from 0 (start) to 1 (end)."""
        if self._anneal_func_type == "cos":
            return cosine_interpolate(start, end, pct)
        return linear_interpolate(start, end, pct)

    def get_lr(self) -> list[float]:
        """The annealed lr of step ``last_epoch`` in its phase (see the class docstring); with
        ``cycle_momentum`` it also writes the annealed momentum into ``group["momentum"]``.

        Raises ``ValueError`` when ``last_epoch > total_steps``.
        """
        self._warn_if_outside_step()
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(
                f"Tried to step {step_num} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        phases = self._schedule_phases
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(phases):
                end_step = phase["end_step"]
                if step_num <= end_step or i == len(phases) - 1:
                    pct = (step_num - start_step) / (end_step - start_step)
                    lrs.append(self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct))
                    if self.cycle_momentum:
                        group["momentum"] = self._anneal(
                            group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                        )
                    break
                start_step = end_step
        return lrs


# --------------------------------------------------------------------------------------------
# Combinations
# --------------------------------------------------------------------------------------------


def _check_children(
    owner: str, optimizer: OptimizerLike, schedulers: Sequence[LRScheduler]
) -> None:
    """torch's checks on the schedulers given to SequentialLR / ChainedScheduler."""
    for idx, scheduler in enumerate(schedulers):
        if not hasattr(scheduler, "optimizer"):
            raise TypeError(f"{owner} at index {idx} should have `optimizer` as its attribute.")
        if isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(
                f"{owner} does not support `ReduceLROnPlateau` scheduler as it requires "
                "additional kwargs to be specified when calling `step`, but got one at index "
                f"{idx} in the given schedulers sequence."
            )
        if optimizer is not scheduler.optimizer:
            raise ValueError(
                f"{owner} expects all schedulers to belong to the same optimizer, but got "
                f"scheduler {type(scheduler).__name__} at index {idx} with another optimizer."
            )


class SequentialLR(LRScheduler):
    """Run ``schedulers[i]`` between ``milestones[i-1]`` and ``milestones[i]``.

    ``lr_t = L_i(t - m_{i-1})`` with ``m = milestones`` (``m_{-1} = 0``), ``i = number of
    milestones <= t``, and ``L_i(e)`` the lr ``schedulers[i]`` gives at its epoch ``e``.
    On construction (as in torch) the lrs are reset to ``group["initial_lr"]``, the constructor
    steps of all children are undone (``last_epoch -= 1``) and only the first child takes its
    first step again.
    At ``t == milestones[i-1]`` child ``i`` restarts at its epoch 0 (with its closed form where
    it has one, else its :meth:`get_lr`), starting from the lr the previous child left; then it
    is stepped normally.

    Args:
        optimizer: Wrapped optimizer (the one of every child).
        schedulers: The schedulers, in order (not :class:`ReduceLROnPlateau`).
        milestones: ``len(schedulers) - 1`` epoch indices.
        last_epoch: Index of the last epoch. Default: -1.

    ``state_dict()["_schedulers"]`` holds the children's state dicts.
    """

    _state_keys = ("_milestones", "last_epoch", "_last_lr")

    def __init__(
        self,
        optimizer: OptimizerLike,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
    ) -> None:
        name = type(self).__name__
        if len(schedulers) < 1:
            raise ValueError(f"{name} expects at least one scheduler, but got no scheduler.")
        _check_children(name, optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more than "
                f"the number of milestone points, but got number of schedulers {len(schedulers)} "
                f"and the number of milestones to be equal to {len(milestones)}"
            )
        self._schedulers = list(schedulers)
        self._milestones = list(milestones)
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer

        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.recursive_undo()
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def recursive_undo(self, sched: LRScheduler | None = None) -> None:
        """Undo the constructor step of every (nested) child: ``last_epoch -= 1``."""
        node: Any = self if sched is None else sched
        if hasattr(node, "_schedulers"):
            for child in node._schedulers:
                self.recursive_undo(child)
        elif hasattr(node, "last_epoch"):
            node.last_epoch -= 1

    def step(self) -> None:
        """``last_epoch += 1``; restart the child whose milestone this is, else step the
        current child (``schedulers[number of milestones <= last_epoch]``)."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._restart()
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`LRScheduler.state_dict`, plus ``"_schedulers"``: the children's states."""
        state = super().state_dict()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def _family(self) -> list[LRScheduler]:
        return [self, *(s for child in self._schedulers for s in child._family())]

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        _load_children(self._schedulers, state_dict)
        super()._load_state(state_dict)


class ChainedScheduler(LRScheduler):
    """Step several chainable schedulers together: each :meth:`step` calls every child's
    ``step()`` in order, so their recursive updates compose: ``lr_t = u_n(...u_1(lr_{t-1}))``,
    ``u_k`` being child ``k``'s update (e.g. ConstantLR then ExponentialLR gives
    ``lr_t = base_lr * factor(t) * gamma ** t``, up to rounding).

    Args:
        schedulers: The schedulers (not :class:`ReduceLROnPlateau`), all on one optimizer.
        optimizer: Wrapped optimizer; default: the first child's.

    Nothing is stepped on construction. ``state_dict()["_schedulers"]`` holds the children's
    state dicts.
    """

    _state_keys = ("_last_lr",)

    def __init__(
        self, schedulers: Sequence[LRScheduler], optimizer: OptimizerLike | None = None
    ) -> None:
        name = type(self).__name__
        if len(schedulers) < 1:
            raise ValueError(
                f"{name} expects at least one scheduler to be chained, but got no scheduler."
            )
        optimizer = optimizer if optimizer is not None else schedulers[0].optimizer
        _check_children(name, optimizer, schedulers)
        self._schedulers = list(schedulers)
        self.optimizer = optimizer
        self._last_lr = _group_values(optimizer, "lr")

    def step(self) -> None:
        """Call ``step()`` of every child, in order."""
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _group_values(self.optimizer, "lr")

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`LRScheduler.state_dict`, plus ``"_schedulers"``: the children's states."""
        state = super().state_dict()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def _family(self) -> list[LRScheduler]:
        return [self, *(s for child in self._schedulers for s in child._family())]

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        _load_children(self._schedulers, state_dict)
        super()._load_state(state_dict)


def _load_children(schedulers: list[LRScheduler], state_dict: dict[str, Any]) -> None:
    states = state_dict["_schedulers"]
    if len(states) != len(schedulers):
        raise ValueError(f"state_dict has {len(states)} child states for {len(schedulers)} "
                         "schedulers")
    for scheduler, state in zip(schedulers, states, strict=True):
        scheduler._load_state(state)


# --------------------------------------------------------------------------------------------
# Metric-driven
# --------------------------------------------------------------------------------------------


class ReduceLROnPlateau(LRScheduler):
    """Reduce the lr when a metric has stopped improving.

    Each ``step(metric)``: the metric improves on ``best`` if (``thr`` = threshold)

    - ``mode="min"``: ``metric < best * (1 - thr)`` (``rel``) or ``metric < best - thr`` (``abs``),
    - ``mode="max"``: ``metric > best * (1 + thr)`` (``rel``) or ``metric > best + thr`` (``abs``);

    an improvement sets ``best`` and clears the bad-epoch count, anything else increments it
    (bad epochs are not counted during the ``cooldown`` epochs after a reduction). When the count
    exceeds ``patience``: for every group ``lr_t = max(lr_{t-1} * factor, min_lr)``, written only
    if ``lr_{t-1} - lr_t > eps`` (else ``lr_t = lr_{t-1}``); then the cooldown starts and the count
    is cleared. ``t`` counts the calls of :meth:`step`.

    Args:
        optimizer: Wrapped optimizer.
        mode: ``"min"`` or ``"max"``. Default: ``"min"``.
        factor: Reduction factor, < 1. Default: 0.1.
        patience: Number of bad epochs tolerated. Default: 10.
        threshold: Improvement threshold. Default: 1e-4.
        threshold_mode: ``"rel"`` or ``"abs"``. Default: ``"rel"``.
        cooldown: Epochs after a reduction during which bad epochs are ignored. Default: 0.
        min_lr: Lower bound of the lr, one or one per group. Default: 0.
        eps: Smallest reduction actually applied. Default: 1e-8.

    The constructor does not touch the optimizer (no ``initial_lr``, no first step).
    """

    _state_keys = (
        "factor", "min_lrs", "default_min_lr", "patience", "cooldown", "eps", "last_epoch",
        "_last_lr", "mode", "threshold", "threshold_mode", "best", "cooldown_counter",
        "num_bad_epochs",
    )

    def __init__(
        self,
        optimizer: OptimizerLike,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.factor = factor
        _check_optimizer(optimizer)
        self.optimizer = optimizer

        n_groups = len(optimizer.param_groups)
        self.default_min_lr: float | None
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n_groups:
                raise ValueError(f"expected {n_groups} min_lrs, got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * n_groups

        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _group_values(optimizer, "lr")
        self._init_is_better(mode, threshold, threshold_mode)
        self._reset()

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode} is unknown!")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode} is unknown!")
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.mode_worse = math.inf if mode == "min" else -math.inf

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        """Whether a reduction happened less than ``cooldown`` epochs ago."""
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        """Whether metric ``a`` improves on ``best`` (the rule in the class docstring)."""
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    # torch's signature: a plateau scheduler steps on a metric, not on the epoch count
    def step(self, metrics: SupportsFloat) -> None:  # type: ignore[override]
        """Record one epoch's metric and reduce the lrs if it is the ``patience + 1``-th bad
        epoch in a row (see the class docstring). torch's deprecated ``epoch`` is not supported."""
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1

        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0

        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _group_values(self.optimizer, "lr")

    def _reduce_lr(self) -> None:
        """``lr <- max(lr * factor, min_lr)`` per group, unless that lowers it by ``<= eps``."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the `optimizer` ({len(groups)}) differs from "
                    f"when `ReduceLROnPlateau` was initialized ({len(self.min_lrs)}), usually due "
                    "to a new param group being added to the optimizer. Please modify the "
                    "`min_lrs` field to match the length of the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs, strict=True):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def _load_state(self, state_dict: dict[str, Any]) -> None:
        # Re-validates mode and threshold mode.
        super()._load_state(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)
