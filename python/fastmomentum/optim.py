"""``SGD``: a ``torch.optim.SGD``-compatible optimizer for NumPy arrays.

A user who knows ``torch.optim`` knows this API: parameter groups, ``step``, ``state``,
``state_dict`` / ``load_state_dict``, and the schedulers of :mod:`fastmomentum.lr_scheduler`. The
differences follow from NumPy: gradients are passed to ``step(grads)`` (arrays have no ``.grad``),
and ``state`` is keyed by the parameter's index (arrays are not hashable), as in a state dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable, Literal, Union

import numpy as np

from . import _core
from .functional import Array

Style = Literal["torch", "keras", "ema"]
WeightDecayMode = Literal["coupled", "decoupled", "sgdw"]
#: A hyper-parameter: a number, or a schedule (a callable of the step count, e.g. from
#: :mod:`fastmomentum.schedules`).
Hyper = Union[float, Callable[[int], float]]

#: The state key of each style's buffer (PyTorch's name for the torch and ema styles).
BUFFER_KEY = {"torch": "momentum_buffer", "ema": "momentum_buffer", "keras": "velocity"}


class SGD:
    """Momentum SGD over NumPy arrays, updated in place: one fused kernel call per ``step``.

    Per parameter ``p`` with gradient ``g``, in the ``"torch"`` style (PyTorch's formula; ``b``
    holds no learning rate)::

        g <- -g                          if maximize
        g <- g + wd*p                    weight_decay_mode="coupled" (default)
        p <- p * (1 - lr*wd)             weight_decay_mode="decoupled"
        p <- p * (1 - s*wd)              weight_decay_mode="sgdw"
        b <- g                           on p's first step (momentum != 0)
        b <- momentum*b + (1-dampening)*g
        g <- g + momentum*b if nesterov else b
        p <- p - lr*g

    ``style="keras"`` keeps a velocity with the lr inside (``v <- momentum*v - lr*g``,
    ``p <- p + v``, Nesterov ``p <- p + momentum*v - lr*g``; decoupled decay by default,
    ``p <- p - (p*wd)*lr``). ``style="ema"`` keeps ``b <- m*b + (1-m)*g`` from ``b = 0`` with
    ``m = momentum`` (no dampening, no Nesterov). The formulas are
    :func:`fastmomentum.functional.sgd_`, ``keras_sgd_`` and ``ema_sgd_``.

    Args:
        params: the arrays to optimise (C-contiguous, writeable float32/float64) and/or
            parameter-group dicts ``{"params": [...], **overrides}`` as in PyTorch. Unlike
            PyTorch, the two may be mixed: each run of bare arrays forms a group with the
            defaults.
        lr, momentum, dampening, weight_decay, nesterov, maximize: PyTorch's meaning and defaults.
            ``lr``, ``momentum`` and ``schedule_multiplier`` may be schedules: callables of the
            step count (:attr:`iterations`, 0 on the first step), e.g. from
            :mod:`fastmomentum.schedules`.
        style: ``"torch"``, ``"keras"`` or ``"ema"``, for the whole optimizer.
        weight_decay_mode: ``"coupled"``, ``"decoupled"`` or ``"sgdw"``; default ``"coupled"``
            (``"decoupled"`` for the keras style).
        schedule_multiplier: the ``s`` of SGDW (Loshchilov & Hutter); default ``None`` means
            ``lr / initial_lr``: the lr schedule's multiplier (``initial_lr`` is set by the
            schedulers of :mod:`fastmomentum.lr_scheduler`; for a callable lr it is ``lr(0)``;
            without either, ``s = 1``).

    The step count: :attr:`iterations` (saved in the state dict; PyTorch's SGD has none).
    """

    def __init__(
        self,
        params: Iterable[Array] | Iterable[dict[str, Any]],
        lr: Hyper = 1e-3,
        momentum: Hyper = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        style: Style = "torch",
        weight_decay_mode: WeightDecayMode | None = None,
        schedule_multiplier: Hyper | None = None,
    ) -> None:
        if style not in BUFFER_KEY:
            raise ValueError(f"style must be 'torch', 'keras' or 'ema', got {style!r}")
        self.style: Style = style
        if weight_decay_mode is None:
            weight_decay_mode = "decoupled" if style == "keras" else "coupled"
        self.defaults: dict[str, Any] = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, weight_decay_mode=weight_decay_mode,
            schedule_multiplier=schedule_multiplier)
        self.param_groups: list[dict[str, Any]] = []
        #: Per-parameter state, keyed by the parameter's index (its position over all groups).
        self.state: dict[int, dict[str, Any]] = {}
        #: Steps taken (the argument of schedule callables).
        self.iterations: int = 0

        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        # PyTorch takes arrays or group dicts; here they may also be mixed: each run of bare
        # arrays forms a group with the defaults, each dict a group of its own.
        pending: list[Any] = []
        for item in items:
            if isinstance(item, dict):
                if pending:
                    self.add_param_group({"params": pending})
                    pending = []
                self.add_param_group(item)
            else:
                pending.append(item)
        if pending:
            self.add_param_group({"params": pending})

    # -- parameter groups -------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: ``{"params": [...], **hyper-parameter overrides}`` (PyTorch's rules)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, np.ndarray):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of sets is not deterministic; use a list")
        group = {**self.defaults, **param_group, "params": list(params)}
        _core.check_params(group["params"], self._param_count())
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in existing for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        self._check_hyper(group, self.iterations)
        self.param_groups.append(group)

    def _param_count(self) -> int:
        return sum(len(g["params"]) for g in self.param_groups)

    # -- stepping ---------------------------------------------------------------------------

    def _values(self, group: dict[str, Any], step: int) -> tuple[Any, ...]:
        """The group's hyper-parameters at ``step``, schedules evaluated, in sgd_step's order."""
        lr = _evaluate(group["lr"], step)
        return (self.style, lr, _evaluate(group["momentum"], step), group["dampening"],
                group["nesterov"], group["weight_decay"], group["weight_decay_mode"],
                self._schedule_multiplier(group, lr, step), group["maximize"])

    def _schedule_multiplier(self, group: dict[str, Any], lr: float, step: int) -> float:
        s = group["schedule_multiplier"]
        if s is not None:
            return _evaluate(s, step)
        if callable(group["lr"]):
            base = float(group["lr"](0))
        else:
            base = group.get("initial_lr", lr)
        return lr / base if base else 1.0

    def _check_hyper(self, group: dict[str, Any], step: int) -> None:
        _core.check_hyper(*self._values(group, step))

    def step(self, grads: Sequence[Array | None]) -> None:
        """One update of every parameter that has a gradient, in ONE fused kernel call.

        ``grads`` lists one gradient per parameter, in parameter order over all groups (the
        order of ``state_dict()["param_groups"][...]["params"]``); ``None`` leaves that parameter
        untouched, and it keeps its first-step state. Any invalid gradient or hyper-parameter
        raises before anything is modified.
        """
        grads = list(grads)
        total = self._param_count()
        if len(grads) != total:
            raise ValueError(f"step() got {len(grads)} gradients for {total} parameters")
        key = BUFFER_KEY[self.style]
        calls, created = [], []
        index = 0
        for group in self.param_groups:
            values = self._values(group, self.iterations)
            has_momentum = values[2] != 0
            params, group_grads, buffers, first, indices = [], [], [], [], []
            for p in group["params"]:
                g = grads[index]
                if g is not None:
                    buf = self.state.get(index, {}).get(key)
                    if has_momentum and buf is None:
                        # torch: b <- g on the first step (the kernel writes it); others: from 0
                        buf = np.empty_like(p) if self.style == "torch" else np.zeros_like(p)
                        created.append((index, buf))
                        first.append(self.style == "torch")
                    else:
                        first.append(False)
                    params.append(p)
                    group_grads.append(g)
                    buffers.append(buf)
                    indices.append(index)
                index += 1
            if params:
                calls.append((params, group_grads, buffers if has_momentum else None, first,
                              *values, indices))
        _core.sgd_steps(calls)
        # Only now, after a successful update: new buffers, and PyTorch's None for no momentum.
        for i, buf in created:
            self.state.setdefault(i, {})[key] = buf
        for call in calls:
            if call[2] is None:
                for i in call[-1]:
                    self.state.setdefault(i, {}).setdefault(key, None)
        self.iterations += 1

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout, with only NumPy arrays and plain scalars::

            {"state": {index: {"momentum_buffer": array}},        # "velocity" for style="keras"
             "param_groups": [{"lr": ..., ..., "params": [index, ...]}],
             "style": "torch", "iterations": n}

        Buffers are the live arrays (as in PyTorch): copy or save them before stepping on. A
        schedule from :mod:`fastmomentum.schedules` is saved as ``{"schedule": its to_dict()}``;
        another callable as ``None`` (pass it to the constructor again before loading).
        """
        groups, index = [], 0
        for group in self.param_groups:
            saved = {k: _describe(v) for k, v in group.items() if k != "params"}
            saved["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(saved)
        state = {i: dict(s) for i, s in sorted(self.state.items())}
        return {"state": state, "param_groups": groups, "style": self.style,
                "iterations": self.iterations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s content (buffers are copied into new arrays of the
        parameters' dtype). Everything is checked first: on an error nothing changes."""
        style = state_dict.get("style", "torch")
        if style != self.style:
            raise ValueError(f"the state dict is of style {style!r} but this optimizer's is "
                             f"{self.style!r}; convert it with fastmomentum.checkpoint.convert")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        params = [p for g in self.param_groups for p in g["params"]]
        new_groups = []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match "
                                 "the size of optimizer's group")
            new_group = {k: _restore(v, group.get(k), f"param_groups[{i}][{k!r}]")
                         for k, v in saved.items() if k != "params"}
            new_group["params"] = group["params"]
            self._check_hyper(new_group, int(state_dict.get("iterations", 0)))
            new_groups.append(new_group)
        # The saved indices name parameters by position; ours run over the groups in order.
        position = {int(s): ours for ours, s in
                    enumerate(s for saved in saved_groups for s in saved["params"])}
        key = BUFFER_KEY[self.style]
        new_state: dict[int, dict[str, Any]] = {}
        for saved_index, entry in state_dict["state"].items():
            i = position.get(int(saved_index))
            if i is None:
                raise ValueError(f"state entry {saved_index!r} names no parameter of the groups")
            buf = entry.get(key)
            if buf is not None:
                buf = np.asarray(buf)
                if buf.shape != params[i].shape:
                    raise ValueError(f"state[{saved_index}][{key!r}] has shape {buf.shape} but "
                                     f"params[{i}] has shape {params[i].shape}")
                buf = np.array(buf, dtype=params[i].dtype, order="C", copy=True)
            new_state[i] = {**entry, key: buf}
        self.param_groups[:] = new_groups
        self.state = new_state
        self.iterations = int(state_dict.get("iterations", 0))

    def __repr__(self) -> str:
        lines = [f"SGD (style={self.style!r}, iterations={self.iterations})"]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]!r}" for k in sorted(group) if k != "params"]
            lines.append(f"    params: {len(group['params'])} arrays")
        return "\n".join(lines)


def _evaluate(value: Hyper, step: int) -> float:
    return float(value(step)) if callable(value) else value


def _describe(value: Any) -> Any:
    """A hyper-parameter as plain data: schedules as their description, other callables None."""
    if callable(value):
        to_dict = getattr(value, "to_dict", None)
        return {"schedule": to_dict()} if to_dict is not None else None
    return value


def _restore(saved: Any, current: Any, where: str) -> Any:
    """The inverse of :func:`_describe`, keeping the live callable for an unsaveable one."""
    if isinstance(saved, dict) and set(saved) == {"schedule"}:
        from .schedules import from_dict

        return from_dict(saved["schedule"])
    if saved is None and callable(current):
        return current
    if saved is None and current is not None:
        raise ValueError(f"{where} was a callable that cannot be saved; pass it to the "
                         "optimizer's constructor again before loading")
    return saved
