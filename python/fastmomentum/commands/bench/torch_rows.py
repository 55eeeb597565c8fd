"""The rows of ``--torch``: ``fastmomentum.torch.SGD`` and ``torch.optim.SGD``'s three CPU paths
stepping a model's parameter set, and the same with clipping by the global gradient norm.

Every row is one ``opt.step()`` on parameters whose ``.grad`` was set beforehand (never
re-created), after a first step made the momentum buffers. Two groups, each timed on its own
tensors: ``"step"`` (the four optimizers step the SAME parameters and gradients in turn, each
with its own buffers: a step reads the gradients and writes only parameters and buffers) and
``"clip"`` (``clip_grad_norm_`` scales the gradients in place, so that row has its own tensors).

Each row is checked before it is timed: two steps on copies of the set, against
``torch.optim.SGD(foreach=False)`` (with ``clip_grad_norm_(foreach=False)`` before each step in
the clip group), within the float tables' tolerance (:func:`.verify.compare`'s rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .problems import RTOL
from .timing import Step
from .torch_sets import ParamSet
from .verify import summarize

#: issue 20's settings of the timed step.
LR, MOMENTUM, WEIGHT_DECAY, NESTEROV = 0.1, 0.9, 1e-4, False
#: The clipping threshold, and the gradients' global norm (above it: every clip scales).
MAX_GRAD_NORM, GRAD_NORM = 1.0, 4.0
#: issue 20's target for fastmomentum's fused guard against clip_grad_norm_ + the fused step.
CLIP_TARGET = 1.25
#: Steps of the check.
CHECK_STEPS = 2
GROUPS = ("step", "clip")
#: The row every speed-up of a group is fastmomentum's over.
FM_ROW = {"step": "fastmomentum", "clip": "fastmomentum-clip"}


@dataclass(frozen=True)
class Row:
    """One row: its group, the target of fastmomentum's speed-up over it (``None``: none, or
    per set), and what it runs."""

    name: str
    group: str
    description: str
    target: float | None = None


ROWS: dict[str, Row] = {r.name: r for r in (
    Row("fastmomentum", "step", "fastmomentum.torch.SGD(params, lr, momentum, weight_decay)"),
    Row("torch-default", "step", "torch.optim.SGD(...) (foreach=None: on CPU the per-tensor "
        "loop)"),
    Row("torch-foreach", "step", "torch.optim.SGD(..., foreach=True)"),
    Row("torch-fused", "step", "torch.optim.SGD(..., fused=True)"),  # target: the set's
    Row("fastmomentum-clip", "clip", "fastmomentum.torch.SGD(..., max_grad_norm=1.0): clipping "
        "fused into the step"),
    Row("clip+torch-fused", "clip", "torch.nn.utils.clip_grad_norm_(params, 1.0); then "
        "torch.optim.SGD(..., fused=True).step()", CLIP_TARGET),
)}


def target(row: str, pset: ParamSet) -> float | None:
    """issue 20's target for fastmomentum's speed-up over ``row`` on ``pset`` (None: none)."""
    return pset.fused_target if row == "torch-fused" else ROWS[row].target


def make_params(pset: ParamSet, seed: int = 0) -> list[Any]:
    """``pset``'s parameters, uniform in [-1, 1), with uniform gradients of global norm
    :data:`GRAD_NORM` (so that clipping by 1.0 scales every step).

    The updates stay bounded over any number of steps: with the gradient fixed, a step is
    heavy-ball descent on ``wd/2 * p**2 + g*p``, whose minimum ``-g/wd`` is finite."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = pset.parameters
    half_width = GRAD_NORM * (3.0 / n) ** 0.5  # E[g**2] = w**2 / 3 on [-w, w)
    params = []
    for shape in pset.shapes:
        p = torch.nn.Parameter(torch.rand(shape, generator=gen) * 2 - 1)
        p.grad = (torch.rand(shape, generator=gen) * 2 - 1) * half_width
        params.append(p)
    return params


def clone_params(params: Sequence[Any]) -> list[Any]:
    """Copies of ``params`` and of their gradients (never their memory)."""
    import torch

    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.detach().clone()
        out.append(q)
    return out


def optimizer(name: str, params: Sequence[Any]) -> Any:
    """Row ``name``'s optimizer on ``params``."""
    import torch

    import fastmomentum.torch as fmt

    kw: dict[str, Any] = {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
                          "nesterov": NESTEROV}
    if name == "fastmomentum":
        return fmt.SGD(params, **kw)
    if name == "fastmomentum-clip":
        return fmt.SGD(params, max_grad_norm=MAX_GRAD_NORM, **kw)
    if name == "torch-default":
        return torch.optim.SGD(params, **kw)
    if name == "torch-foreach":
        return torch.optim.SGD(params, foreach=True, **kw)
    if name in ("torch-fused", "clip+torch-fused"):
        return torch.optim.SGD(params, fused=True, **kw)
    raise ValueError(f"unknown row {name!r}; known: {list(ROWS)}")


def step_of(name: str, params: Sequence[Any], opt: Any) -> Step:
    """One timed call of row ``name``: ``opt.step()``, after ``clip_grad_norm_`` for the torch
    clip row (as a training loop calls them)."""
    if name != "clip+torch-fused":
        return opt.step  # type: ignore[no-any-return]
    import torch

    clip = torch.nn.utils.clip_grad_norm_
    tensors = list(params)

    def clip_then_step() -> None:
        clip(tensors, MAX_GRAD_NORM)
        opt.step()

    return clip_then_step


def build(name: str, params: Sequence[Any]) -> Step:
    """Row ``name``'s timed step on ``params`` (their gradients set), its buffers made by a
    first step."""
    step = step_of(name, params, optimizer(name, params))
    step()
    return step


def _reference_steps(group: str, params: Sequence[Any]) -> Step:
    import torch

    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                          nesterov=NESTEROV, foreach=False)
    if group == "step":
        return opt.step

    def clip_then_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=False)
        opt.step()

    return clip_then_step


def _arrays(params: Sequence[Any]) -> list[np.ndarray[Any, Any]]:
    return [p.detach().numpy() for p in params]


def reference(group: str, start: Sequence[Any]) -> list[np.ndarray[Any, Any]]:
    """The parameters after :data:`CHECK_STEPS` steps of torch's per-tensor SGD on copies of
    ``start`` (clipped first in the clip group)."""
    params = clone_params(start)
    step = _reference_steps(group, params)
    for _ in range(CHECK_STEPS):
        step()
    return _arrays(params)


def check(name: str, start: Sequence[Any], want: Sequence[np.ndarray[Any, Any]],
          build_step: Callable[[str, Sequence[Any]], Step] = build) -> str | None:
    """None if row ``name`` takes :data:`CHECK_STEPS` steps from copies of ``start`` to ``want``
    (per tensor: ``assert_allclose(rtol=1e-6, atol=1e-6 * max|want|)``), else why not."""
    params = clone_params(start)
    try:
        step = build_step(name, params)  # the first step
        for _ in range(CHECK_STEPS - 1):
            step()
        rtol = RTOL[np.dtype(np.float32)]
        for i, (got, ref) in enumerate(zip(_arrays(params), want, strict=True)):
            atol = rtol * float(np.max(np.abs(ref))) if ref.size else 0.0
            np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol,
                                       err_msg=f"params[{i}] {tuple(ref.shape)} vs "
                                       "torch.optim.SGD(foreach=False)")
    except Exception as exc:  # a wrong or raising row is a FAILED row, not a crash
        return summarize(exc)
    return None
