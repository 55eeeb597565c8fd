"""The training problems of the MPI tests, shared by the MPI program (``worker.py``, run under
``mpirun``) and the single-process reference (``tests/test_distributed.py``): parameters, each
rank's gradients at each step, the optimizer's arguments and its scheduler. Plain NumPy and
``fastmomentum``; no MPI here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fastmomentum as fm

STEPS = 6

# Sizes not divisible by 2, 3 or 4, arrays smaller than the world (0-d, 1 and 2 elements, and an
# empty one), so that shard boundaries fall inside arrays and some ranks own no element of some.
UNEVEN = [(3, 5), (2,), (), (7, 3), (1,), (0,), (11,)]
# Many small arrays: 61 of 1 to 7 elements.
MANY = [(1 + i % 7,) for i in range(61)]


@dataclass(frozen=True)
class Case:
    """One problem. ``groups``: per param group, the parameter positions and the group's
    overrides (``None``: one group of all). ``nan_step``: the step at which the last rank's
    gradients hold ``bad_value`` (a NaN, or an infinity)."""

    options: dict[str, Any]
    shapes: list[tuple[int, ...]] = field(default_factory=lambda: list(UNEVEN))
    dtypes: tuple[str, ...] = ("float32",)
    groups: list[tuple[list[int], dict[str, Any]]] | None = None
    scheduler: str | None = None
    loss_scale: float = 1.0
    nan_step: int | None = None
    bad_value: float = float("nan")

    @property
    def exact_when_sharded(self) -> bool:
        """Whether ShardedSGD's result is bitwise fm.SGD's with rank-order sums: not when the
        global norm is used (summed per shard, not in the kernel's blocks)."""
        return self.options.get("max_grad_norm") is None


CASES: dict[str, Case] = {
    "torch-heavyball": Case(dict(lr=0.05, momentum=0.9)),
    "torch-nesterov-coupled-f64": Case(dict(lr=0.05, momentum=0.9, nesterov=True,
                                            weight_decay=1e-2), dtypes=("float64",)),
    "torch-dampening-maximize-decoupled": Case(dict(lr=0.05, momentum=0.8, dampening=0.3,
                                                    maximize=True, weight_decay=1e-2,
                                                    weight_decay_mode="decoupled")),
    "keras-nesterov": Case(dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2,
                                style="keras")),
    "ema-sgdw-f64": Case(dict(lr=0.05, momentum=0.9, weight_decay=1e-2, weight_decay_mode="sgdw",
                              schedule_multiplier=0.5, style="ema"), dtypes=("float64",)),
    "plain-sgd-many-arrays": Case(dict(lr=0.1), shapes=list(MANY)),
    "many-arrays-mixed-dtypes": Case(dict(lr=0.05, momentum=0.9), shapes=list(MANY),
                                     dtypes=("float32", "float64")),
    "groups-onecycle": Case(dict(lr=0.05, momentum=0.9, nesterov=True),
                            groups=[([0, 3, 6], {"weight_decay": 1e-2}),
                                    ([1, 2, 4, 5], {"lr": 0.02, "momentum": 0.5})],
                            scheduler="onecycle"),
    "cosine-schedule-callable": Case(dict(lr=fm.schedules.cosine_decay(0.1, STEPS),
                                          momentum=0.9)),
    "guards": Case(dict(lr=0.05, momentum=0.9, max_grad_norm=1.0, nonfinite="skip"),
                   loss_scale=4.0, nan_step=2),
    # Non-finite gradients under clipping, as torch's clip_grad_norm_ + step: an infinity makes
    # the norm inf and the factor 0 (the step is applied; inf*0 is NaN where the infinity was), a
    # NaN makes every parameter NaN; skipped, or raised, on every rank alike.
    "clip-inf-applied": Case(dict(lr=0.05, momentum=0.9, max_grad_norm=1.0), nan_step=2,
                             bad_value=float("inf")),
    "clip-nan-applied": Case(dict(lr=0.05, momentum=0.9, max_grad_norm=1.0), nan_step=2),
    "clip-inf-skipped": Case(dict(lr=0.05, momentum=0.9, max_grad_norm=1.0, nonfinite="skip"),
                             nan_step=3, bad_value=float("-inf")),
    "inf-raised": Case(dict(lr=0.05, momentum=0.9, nonfinite="raise"), nan_step=1,
                       bad_value=float("inf")),
}


def make_params(case: Case, seed: int) -> list[np.ndarray]:
    """The initial parameters (the same on every rank)."""
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(shape), case.dtypes[i % len(case.dtypes)])
            for i, shape in enumerate(case.shapes)]


def make_grads(case: Case, seed: int, step: int, rank: int, world: int) -> list[np.ndarray]:
    """Rank ``rank``'s gradients at ``step``: a function of the rank, not of the world size."""
    rng = np.random.default_rng([seed, step, rank])
    grads = [np.asarray(3 * rng.standard_normal(shape), case.dtypes[i % len(case.dtypes)])
             for i, shape in enumerate(case.shapes)]
    if step == case.nan_step and rank == world - 1:
        next(g for g in grads if g.size).reshape(-1)[0] = case.bad_value
    return grads


def param_groups(case: Case, params: list[np.ndarray]) -> list[Any]:
    """The optimizer's ``params`` argument."""
    if case.groups is None:
        return list(params)
    return [{"params": [params[i] for i in indices], **overrides}
            for indices, overrides in case.groups]


def grad_order(case: Case) -> list[int]:
    """Parameter positions in the optimizer's order (over its groups)."""
    if case.groups is None:
        return list(range(len(case.shapes)))
    return [i for indices, _ in case.groups for i in indices]


def make_scheduler(case: Case, opt: Any) -> Any:
    """The case's scheduler on ``opt``, or ``None``."""
    if case.scheduler == "onecycle":
        return fm.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=2 * STEPS)
    return None
