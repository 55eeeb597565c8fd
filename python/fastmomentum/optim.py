"""``SGD``: a ``torch.optim.SGD``-compatible optimizer for NumPy arrays.

A user who knows ``torch.optim`` knows this API: parameter groups, ``step``, ``state``,
``state_dict`` / ``load_state_dict``, and the schedulers of :mod:`fastmomentum.lr_scheduler`. The
one difference NumPy imposes: arrays have no ``.grad``, so gradients are passed to
``step(grads)``.
"""

from __future__ import annotations

import contextlib
import numbers
import threading
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from typing import Any, Callable, Literal, Union

import numpy as np

from . import _core
from ._devices import check_params as check_device_params
from ._devices import is_device_array, new_buffer, on_device, to_device_like, to_host
from ._devices import steps as device_steps
from .functional import Array, WeightDecayMode
from .guards import NonFinite, StepResult, checks_finite, nonfinite_error, result

__all__ = ["SGD", "ArrayState"]

Style = Literal["torch", "keras", "ema"]
#: A hyper-parameter: a number, or a schedule (a callable of the step count, e.g. from
#: :mod:`fastmomentum.schedules`).
Hyper = Union[float, Callable[[int], float]]

#: The state key of each style's buffer (PyTorch's name for the torch and ema styles).
BUFFER_KEY = {"torch": "momentum_buffer", "ema": "momentum_buffer", "keras": "velocity"}
# How a state dict marks a callable hyper-parameter that is not a saveable schedule.
_CALLABLE = "callable"


class ArrayState(MutableMapping[Array, dict[str, Any]]):
    """Per-parameter state keyed by the array itself (by identity: arrays are not hashable), as
    ``torch.optim`` keys its state by tensor: ``opt.state[w]["momentum_buffer"]``."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[Array, dict[str, Any]]] = {}
        #: Bumped by every assignment or deletion (the optimizer's step plan depends on the
        #: entries; edits inside an entry's dict are checked by the plan itself).
        self.version = 0

    def __getitem__(self, param: Array) -> dict[str, Any]:
        return self._items[id(param)][1]

    def __setitem__(self, param: Array, value: dict[str, Any]) -> None:
        self._items[id(param)] = (param, value)
        self.version += 1

    def __delitem__(self, param: Array) -> None:
        del self._items[id(param)]
        self.version += 1

    def entry(self, param: Array) -> dict[str, Any] | None:
        """``param``'s state dict, or ``None`` when it has none."""
        item = self._items.get(id(param))
        return None if item is None else item[1]

    def __iter__(self) -> Iterator[Array]:
        return (param for param, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ArrayState({len(self)} parameters)"


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
    :func:`fastmomentum.functional.sgd_`, ``keras_sgd_`` and ``ema_sgd_``. While the momentum is 0
    a step is plain SGD and leaves the buffers as they are (as PyTorch does).

    Args:
        params: the arrays to optimise (C-contiguous, writeable float32/float64) and/or
            parameter-group dicts ``{"params": [...], **overrides}`` as in PyTorch. Unlike
            PyTorch, the two may be mixed: each run of bare arrays forms a group with the
            defaults.
        lr, momentum, dampening, weight_decay, nesterov, maximize: PyTorch's meaning and defaults.
            Validation is PyTorch's, stricter where PyTorch accepts nonsense (momentum and
            dampening in [0, 1], finite values). ``lr``, ``momentum`` and ``schedule_multiplier``
            may be schedules: callables of the step count (:attr:`iterations`, 0 on the first
            step), e.g. from :mod:`fastmomentum.schedules`.
        style: ``"torch"``, ``"keras"`` or ``"ema"``, for the whole optimizer.
        weight_decay_mode: ``"coupled"``, ``"decoupled"`` or ``"sgdw"``; default ``"coupled"``
            (``"decoupled"`` for the keras style).
        schedule_multiplier: the ``s`` of SGDW (Loshchilov & Hutter); default ``None`` means
            ``lr / initial_lr``, the lr schedule's multiplier (``initial_lr`` is set by the
            schedulers of :mod:`fastmomentum.lr_scheduler`; for a callable lr it is ``lr(0)``;
            without either, ``s = 1``). With a warm-up (OneCycleLR, CyclicLR) ``initial_lr`` is the
            low lr, so pass ``schedule_multiplier`` explicitly there; a schedule that starts at 0
            raises ``ValueError`` without it.
        nonfinite: what a NaN or an infinity in a step's gradients does: ``"ignore"`` (default,
            PyTorch's behaviour: no check), ``"skip"`` (the step changes nothing at all: no
            parameter, buffer, first-step state, :attr:`iterations`; it returns
            ``StepResult(skipped=True, ...)`` and counts in :attr:`skipped_steps`) or ``"raise"``
            (``FloatingPointError`` naming the gradient, nothing changed). Checked inside the
            step's kernel call, in a read pass over the gradients.
        max_grad_norm: clip the gradients by their global norm over all groups, as
            ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm)`` before the step:
            ``g <- g * min(1, max_grad_norm / (‖g‖₂ + 1e-6))``, fused into the step (one extra
            read of the gradients). The norm is returned in the step's result. ``inf`` measures
            it without clipping.
        max_consecutive_skips: with ``nonfinite="skip"``, a step that would be the
            ``max_consecutive_skips + 1``-th skipped in a row raises ``FloatingPointError``
            instead (nothing changed); ``None`` never raises. Default 10.

    Attributes:
        param_groups: the groups (dicts), editable between steps as in PyTorch.
        state: per-parameter state, keyed by the array (:class:`ArrayState`).
        iterations: steps taken (the argument of schedule callables; saved in the state dict).
            A skipped step does not count.
        skipped_steps, consecutive_skips: steps skipped in all, and since the last applied one
            (saved in the state dict).

    CUDA arrays (CuPy arrays, PyTorch CUDA tensors without grad: pass ``p.detach()``) work as
    NumPy arrays do, all on one GPU: the buffers are created on that device by the arrays' own
    library, each step runs the CUDA kernels on that library's current stream, and
    :meth:`state_dict` returns NumPy copies of them (:meth:`load_state_dict` copies them back to
    the device). Host and device arrays cannot be mixed in one optimizer.

    One thread at a time: a call of :meth:`step`, :meth:`load_state_dict` or
    :meth:`add_param_group` while another thread is inside one of them raises ``RuntimeError``
    and changes nothing. Different optimizers step in parallel (the kernels release the GIL).
    """

    def __init__(
        self,
        params: Iterable[Array | dict[str, Any]],
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
        nonfinite: NonFinite = "ignore",
        max_grad_norm: float | None = None,
        max_consecutive_skips: int | None = 10,
    ) -> None:
        if isinstance(params, np.ndarray) or is_device_array(params):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"arrays or dicts, but got {type(params).__name__} (wrap it: [w])")
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
        self.state = ArrayState()
        self.iterations: int = 0
        # The kernel's own parser checks the guard (a step of no calls).
        _core.sgd_steps([], checks_finite(nonfinite), max_grad_norm, 1.0)
        if max_consecutive_skips is not None and (
                not isinstance(max_consecutive_skips, numbers.Integral)
                or isinstance(max_consecutive_skips, bool) or max_consecutive_skips < 0):
            raise ValueError("max_consecutive_skips must be None or an integer >= 0, got "
                             f"{max_consecutive_skips!r}")
        self.nonfinite: NonFinite = nonfinite
        self.max_grad_norm = max_grad_norm
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self._busy = threading.Lock()  # held by the method that is running; never waited for
        # The fast path of step(): a _core.StepPlan and the state (object, version) it was made
        # from; see _step_with_plan.
        self._plan: Any = None
        self._plan_made_from: tuple[ArrayState, int] | None = None
        #: Whether the parameters are CUDA arrays (the first one decides; the kernels' checks
        #: reject the others unless they are on the same GPU).
        self.on_device = False

        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        # Each run of bare arrays forms a group with the defaults, each dict a group of its own.
        groups: list[dict[str, Any]] = []
        run: list[Any] | None = None  # the params of the group of bare arrays being collected
        for item in items:
            if isinstance(item, dict):
                groups.append(item)
                run = None
            elif run is None:
                run = [item]
                groups.append({"params": run})
            else:
                run.append(item)
        seen: set[int] = set()
        for group in groups:
            self._add(group, seen)
        self._check_params(self._params(), 0)  # once for all: no two share memory

    # -- parameter groups -------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: ``{"params": [...], **hyper-parameter overrides}`` (PyTorch's rules)."""
        with self._exclusive("add_param_group"):
            self._add(param_group, {id(p) for p in self._params()})
            try:
                self._check_params(self._params(), 0)
            except ValueError:
                self.param_groups.pop()
                raise

    @contextlib.contextmanager
    def _exclusive(self, method: str) -> Iterator[None]:
        """Runs the body unless another thread is inside step(), load_state_dict() or
        add_param_group(): two steps at once would race on the same buffers."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(f"{method}() called while this optimizer is already running in "
                               "another thread; step one optimizer from one thread at a time")
        try:
            yield
        finally:
            self._busy.release()

    def _add(self, param_group: dict[str, Any], seen: set[int]) -> None:
        """Append a group after checking it; ``seen`` holds the ids of the parameters so far."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, np.ndarray) or is_device_array(params):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of sets is not deterministic; use a list")
        group = {**self.defaults, **param_group, "params": list(params)}
        if not self.param_groups:
            self.on_device = on_device(group["params"])
        self._check_params(group["params"], len(seen))
        ids = {id(p) for p in group["params"]}
        if len(ids) != len(group["params"]) or not ids.isdisjoint(seen):
            raise ValueError("some parameters appear in more than one parameter group")
        # PyTorch's constructor rule for Nesterov, for a constant momentum (a schedule may pass
        # through 0: while it is 0 a step is plain SGD, as in PyTorch).
        values = self._values(group, self.iterations)
        if group["nesterov"] and not callable(group["momentum"]):
            values = (*values[:4], True, *values[5:])
        _core.check_hyper(*values)
        self.param_groups.append(group)
        seen |= ids

    def _params(self) -> list[np.ndarray]:
        return [p for g in self.param_groups for p in g["params"]]

    def _check_params(self, params: list[Any], first_index: int) -> None:
        """The kernels' checks of parameters (types, layout, no shared memory; one GPU)."""
        (check_device_params if self.on_device else _core.check_params)(params, first_index)

    # -- stepping ---------------------------------------------------------------------------

    def _values(self, group: dict[str, Any], step: int) -> tuple[Any, ...]:
        """The group's hyper-parameters at ``step``, schedules evaluated, in sgd_step's order."""
        lr = _evaluate(group["lr"], step)
        momentum = _evaluate(group["momentum"], step)
        s = self._schedule_multiplier(group, lr, step) if group["weight_decay_mode"] == "sgdw" \
            else 1.0
        return (self.style, lr, momentum, group["dampening"],
                group["nesterov"] and momentum != 0, group["weight_decay"],
                group["weight_decay_mode"], s, group["maximize"])

    @staticmethod
    def _schedule_multiplier(group: dict[str, Any], lr: Any, step: int) -> Any:
        s = group["schedule_multiplier"]
        if s is not None:
            return _evaluate(s, step)
        scheduled = callable(group["lr"]) or "initial_lr" in group
        base = _evaluate(group["lr"], 0) if callable(group["lr"]) else group.get("initial_lr", lr)
        if not isinstance(lr, numbers.Real) or not isinstance(base, numbers.Real):
            return lr  # not numbers: let the kernel's check report the lr
        if base:
            return lr / base
        if scheduled and group["weight_decay"]:
            # lr / 0: a schedule that starts at 0 (a warm-up) has no multiplier to scale by.
            raise ValueError("weight_decay_mode='sgdw' scales the decay by lr / initial_lr, but "
                             "the lr schedule starts at 0; pass schedule_multiplier (a number or "
                             "a callable of the step)")
        return 1.0

    def step(self, grads: Sequence[Array | None], *, loss_scale: float = 1.0) -> StepResult:
        """One update of every parameter that has a gradient, in ONE fused kernel call.

        ``grads`` lists one gradient per parameter, in parameter order over all groups (the
        order of ``state_dict()["param_groups"][...]["params"]``); ``None`` leaves that parameter
        untouched, and it keeps its first-step state. A step counts in :attr:`iterations` (the
        step that schedules see) even when every gradient is ``None``, as an lr scheduler's
        ``step()`` counts a training step whether or not any gradient came. Any invalid gradient
        or hyper-parameter raises before anything is modified; errors name parameters by that
        position. ``grads`` must be a list or tuple (an array's rows are refused).

        ``loss_scale``: the gradients are divided by it first (``g <- g / loss_scale``, fused),
        for a loss that was multiplied by it; finite and > 0. Clipping (``max_grad_norm``) and
        the returned norm apply to the divided gradients, as with ``GradScaler.unscale_`` then
        ``clip_grad_norm_`` in PyTorch.

        Returns a :class:`~fastmomentum.guards.StepResult`: whether the step was skipped
        (``nonfinite="skip"``), and the gradients' global norm when ``max_grad_norm`` is set.

        After the first step, the parameters and buffers are not checked again in full: a plan
        made by the previous step holds them, and a step re-checks only what can have changed
        (the arrays' fields, the groups' lists, the state's entries) before the gradients.
        """
        with self._exclusive("step"):
            return self._step(grads, loss_scale)

    def _step(self, grads: Sequence[Array | None], loss_scale: float) -> StepResult:
        """:meth:`step`'s body, for a caller that holds the lock (the distributed optimizers
        reduce the gradients first, under the same lock)."""
        if not isinstance(grads, (list, tuple)):  # as fm.functional: an array's rows are not grads
            raise TypeError(f"grads must be a list or tuple, got {type(grads).__module__}."
                            f"{type(grads).__name__} (one gradient per parameter; wrap a single "
                            "gradient as [g])")
        total = sum(len(g["params"]) for g in self.param_groups)
        if len(grads) != total:
            raise ValueError(f"step() got {len(grads)} gradients for {total} parameters")
        hypers = [self._values(group, self.iterations) for group in self.param_groups]
        guard = (checks_finite(self.nonfinite), self.max_grad_norm, loss_scale)
        outcome = self._step_with_plan(grads, hypers, guard)
        if outcome is None:
            outcome = self._step_in_full(grads, hypers, guard)
            self._make_plan()
        if not outcome[0]:
            return self._skipped(outcome, grads)
        self.iterations += 1
        self.consecutive_skips = 0
        return result(outcome, self.nonfinite, grads)

    def _skipped(self, outcome: tuple[bool, float | None, int], grads: Sequence[Any]
                 ) -> StepResult:
        """A step that a non-finite gradient stopped (nothing was modified): counted, or an
        error when ``nonfinite="raise"`` or after too many in a row."""
        limit = self.max_consecutive_skips
        if self.nonfinite == "skip" and limit is not None and self.consecutive_skips >= limit:
            raise FloatingPointError(
                f"{limit + 1} consecutive steps have non-finite gradients (max_consecutive_skips="
                f"{limit}); this one was not applied either") from nonfinite_error(grads)
        skipped = result(outcome, self.nonfinite, grads)  # raises for nonfinite="raise"
        self.skipped_steps += 1
        self.consecutive_skips += 1
        return skipped

    def _make_plan(self) -> None:
        """A plan for the next steps, or none when the optimizer's state cannot be planned (e.g.
        a group's ``params`` is not a list, or a buffer no step uses now is invalid): the steps
        then take the full path, which reports such problems when they matter."""
        self._plan, self._plan_made_from = None, None
        if self.on_device:  # plans hold NumPy arrays; a device step checks everything anyway
            return
        try:
            self._plan = _core.StepPlan(
                self.param_groups,
                [[self.state.entry(p) for p in g["params"]] for g in self.param_groups],
                self.style, BUFFER_KEY[self.style])
        except (TypeError, ValueError):
            return
        self._plan_made_from = (self.state, self.state.version)

    def _step_with_plan(self, grads: Sequence[Array | None], hypers: list[tuple[Any, ...]],
                        guard: tuple[bool, float | None, float]) -> Any:
        """The fast path: the kernel's outcome, or None (nothing done) when there is no plan, or
        it is out of date."""
        made_from = self._plan_made_from
        if made_from is None or made_from[0] is not self.state \
                or made_from[1] != self.state.version:
            return None
        return self._plan.step(self.param_groups, grads, hypers, *guard)

    def _step_in_full(self, grads: Sequence[Array | None], hypers: list[tuple[Any, ...]],
                      guard: tuple[bool, float | None, float]) -> Any:
        """The general path: checks everything and creates the buffers that are missing (kept
        only when the step was applied); returns the kernel's outcome."""
        key = BUFFER_KEY[self.style]
        calls, created = [], []
        index = 0
        for group, values in zip(self.param_groups, hypers):
            has_momentum = values[2] != 0
            params: list[Any] = []  # NumPy or CUDA arrays, as ``self.on_device`` says
            group_grads: list[Array] = []
            buffers: list[np.ndarray | None] = []
            first: list[bool] = []
            indices: list[int] = []
            new: list[int] = []  # positions in params that need a new buffer
            for p in group["params"]:
                g = grads[index]
                if g is not None:
                    buf = None
                    if has_momentum:
                        entry = self.state.entry(p)
                        buf = None if entry is None else entry.get(key)
                        if buf is None:
                            new.append(len(params))
                    params.append(p)
                    group_grads.append(g)
                    buffers.append(buf)
                    first.append(buf is None and has_momentum and self.style == "torch")
                    indices.append(index)
                index += 1
            new_buffers = _new_device_buffers if self.on_device else _new_buffers
            for i, buf in zip(new, new_buffers([params[i] for i in new], self.style)):
                buffers[i] = buf
                created.append((params[i], buf))
            if params:
                calls.append((params, group_grads, buffers if has_momentum else None, first,
                              *values, indices))
        outcome = (device_steps if self.on_device and calls else _core.sgd_steps)(calls, *guard)
        if outcome[0]:  # only after a successful update
            for p, buf in created:
                self.state.setdefault(p, {})[key] = buf
        return outcome

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout, with only NumPy arrays and plain data::

            {"state": {index: {"momentum_buffer": array}},    # "velocity" for style="keras"
             "param_groups": [{"lr": ..., ..., "params": [index, ...]}],
             "style": "torch", "iterations": n,
             "skipped_steps": k, "consecutive_skips": c}

        ``index`` is the parameter's position over all groups. Buffers are the live arrays (as in
        PyTorch): save or copy them before stepping on. A schedule from
        :mod:`fastmomentum.schedules` is saved as ``{"schedule": its to_dict()}``; any other
        callable as ``{"callable": its name}``, to be passed to the constructor again before
        loading.
        """
        groups, state, index = [], {}, 0
        for group in self.param_groups:
            saved = {k: _describe(v) for k, v in group.items() if k != "params"}
            saved["params"] = []
            for p in group["params"]:
                if p in self.state:
                    state[index] = {k: to_host(v) if self.on_device and is_device_array(v) else v
                                    for k, v in self.state[p].items()}
                saved["params"].append(index)
                index += 1
            groups.append(saved)
        return {"state": state, "param_groups": groups, "style": self.style,
                "iterations": self.iterations, "skipped_steps": self.skipped_steps,
                "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s content, or a ``torch.optim.SGD`` one (with NumPy arrays
        for its tensors; missing group keys take this optimizer's defaults). Buffers are copied
        into new arrays of the parameters' dtype. Everything is checked first: on an error,
        nothing changes."""
        with self._exclusive("load_state_dict"):
            self._load(state_dict)

    def _load(self, state_dict: dict[str, Any]) -> None:
        style = state_dict.get("style", "torch")
        if style != self.style:
            raise ValueError(f"the state dict is of style {style!r} but this optimizer's is "
                             f"{self.style!r}; convert it with fastmomentum.checkpoint.convert")
        counters = {name: state_dict.get(name, 0)
                    for name in ("iterations", "skipped_steps", "consecutive_skips")}
        for name, value in counters.items():
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        iterations = counters["iterations"]
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        new_groups, saved_order = [], []
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match "
                                 "the size of optimizer's group")
            restored = {k: _restore(v, group.get(k), f"param_groups[{i}][{k!r}]")
                        for k, v in saved.items() if k != "params"}
            new_group = {**self.defaults, **restored, "params": group["params"]}
            _core.check_hyper(*self._values(new_group, int(iterations)))
            new_groups.append(new_group)
            saved_order += [int(s) for s in saved["params"]]
        if sorted(saved_order) != list(range(len(saved_order))):
            raise ValueError("the state dict's parameter indices are not 0..n-1, each once")
        param_at = dict(zip(saved_order, self._params()))
        key = BUFFER_KEY[self.style]
        new_state = ArrayState()
        for saved_index, entry in state_dict["state"].items():
            p = param_at.get(int(saved_index))
            if p is None or not isinstance(entry, dict):
                raise ValueError(f"state entry {saved_index!r} is not a dict for a parameter "
                                 "of the groups")
            buf = entry.get(key)
            if buf is not None:
                buf = np.asarray(to_host(buf) if is_device_array(buf) else buf)
                if buf.shape != tuple(p.shape):
                    raise ValueError(f"state[{saved_index}][{key!r}] has shape {buf.shape} but "
                                     f"its parameter has shape {tuple(p.shape)}")
                buf = to_device_like(buf, p) if self.on_device else \
                    np.array(buf, dtype=p.dtype, order="C", copy=True)
            new_state[p] = {**entry, key: buf}
        self.param_groups[:] = new_groups
        self.state = new_state
        self.iterations = int(iterations)
        self.skipped_steps = int(counters["skipped_steps"])
        self.consecutive_skips = int(counters["consecutive_skips"])

    def __repr__(self) -> str:
        lines = [f"SGD (style={self.style!r}, iterations={self.iterations})"]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]!r}" for k in sorted(group) if k != "params"]
            lines.append(f"    params: {len(group['params'])} arrays")
        return "\n".join(lines)


def _new_buffers(params: list[np.ndarray], style: Style) -> list[np.ndarray]:
    """Buffers for ``params``: views into ONE block per dtype, in order, so that parameters that
    are adjacent in memory (e.g. a :class:`fastmomentum.flat.FlatGroup`) get adjacent buffers and
    the kernel updates them as one span. The torch style's first step writes them (``b <- g``);
    the others start from zero."""
    out: list[np.ndarray] = [np.empty(0)] * len(params)
    for dtype in {p.dtype for p in params}:
        chosen = [i for i, p in enumerate(params) if p.dtype == dtype]
        total = sum(params[i].size for i in chosen)
        block = np.empty(total, dtype) if style == "torch" else np.zeros(total, dtype)
        offset = 0
        for i in chosen:
            size = params[i].size
            out[i] = block[offset:offset + size].reshape(params[i].shape)
            offset += size
    return out


def _new_device_buffers(params: list[Any], style: Style) -> list[Any]:
    """Buffers for CUDA ``params``, on their device, made by their library (the torch style's
    first step writes them whole; the others start from zero)."""
    return [new_buffer(p, zero=style != "torch") for p in params]


def _evaluate(value: Hyper, step: int) -> Any:
    return float(value(step)) if callable(value) else value


def _describe(value: Any) -> Any:
    """A hyper-parameter as plain data: a schedule as its description, another callable as a
    marker with its name."""
    if callable(value):
        to_dict = getattr(value, "to_dict", None)
        if to_dict is not None:
            return {"schedule": to_dict()}
        return {_CALLABLE: getattr(value, "__qualname__", type(value).__name__)}
    return value


def _restore(saved: Any, current: Any, where: str) -> Any:
    """The inverse of :func:`_describe`, keeping the live callable for a marked one."""
    if isinstance(saved, dict) and set(saved) == {"schedule"}:
        from .schedules import from_dict

        return from_dict(saved["schedule"])
    if isinstance(saved, dict) and set(saved) == {_CALLABLE}:
        if callable(current):
            return current
        raise ValueError(f"{where} was the callable {saved[_CALLABLE]!r}, which cannot be saved; "
                         "pass it to the optimizer's constructor again before loading")
    return saved
