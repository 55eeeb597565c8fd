"""``SGD``: a ``torch.optim.SGD``-compatible optimizer for NumPy arrays (and CUDA arrays).

A user who knows ``torch.optim`` knows this API: parameter groups, ``step``, ``state``,
``state_dict`` / ``load_state_dict``, and the schedulers of :mod:`fastmomentum.lr_scheduler`. The
one difference NumPy imposes: arrays have no ``.grad``, so gradients are passed to
``step(grads)``.

How a step travels: the optimizer evaluates each group's schedules into a
:class:`~fastmomentum._protocol.Hyper`, pairs the group's parameters with their buffers (lists it
keeps between steps, rebuilt when a group, its ``params`` or the state changes), and hands every
group at once to its backend (:mod:`fastmomentum._backend`), which checks every array and runs
ONE fused kernel call. The backend records what it did in a ``_core.StepOutcome``; the
optimizer's bookkeeping follows from that record in a ``finally`` block, so that a step is all or
nothing even when a ``KeyboardInterrupt`` arrives while the kernels run.
"""

from __future__ import annotations

import contextlib
import copy
import numbers
import operator
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from . import _core, storage
from ._backend import _DTYPE, _SHAPE, Backend, backend_for, is_device_array
from ._protocol import Call, Guard, Hyper
from .functional import Array, WeightDecayMode
from .guards import NonFinite, StepResult, nonfinite_error
from .storage import ParamRounding, StateDtype

__all__ = ["SGD", "ArrayState", "convert_state_dict", "group_arrays"]

Style = Literal["torch", "keras", "ema"]
#: A hyper-parameter that may follow a schedule: a number, or a callable of the step count (e.g.
#: from :mod:`fastmomentum.schedules`).
Schedulable = float | Callable[[int], float]

#: The state key of each style's buffer (PyTorch's name for the torch and ema styles).
BUFFER_KEY = {"torch": "momentum_buffer", "ema": "momentum_buffer", "keras": "velocity"}
#: A bfloat16 or float16 parameter's Kahan compensation, in its state entry.
COMPENSATION_KEY = "compensation"
# How a state dict marks a callable hyper-parameter that is not a saveable schedule.
_CALLABLE = "callable"


class _Entry(dict):  # type: ignore[type-arg]
    """A parameter's state dict that counts its own changes (into its :class:`ArrayState`'s
    counter), so that the optimizer sees a buffer replaced or removed without looking.

    Each change counts before and after the dict operation: the operation may run Python (a
    key's ``__eq__``), and a step taken there must not keep lists made from the half-changed
    entry."""

    def __init__(self, changes: list[int], items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self._changes = changes

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        self._changes[0] += 1
        try:
            yield
        finally:
            self._changes[0] += 1

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._changing():
            super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        with self._changing():
            super().__delitem__(key)

    def __ior__(self, other: Any) -> _Entry:  # type: ignore[misc]  # dict's |= returns its type
        with self._changing():
            super().__ior__(other)
        return self

    def pop(self, *args: Any) -> Any:
        with self._changing():
            return super().pop(*args)

    def popitem(self) -> Any:
        with self._changing():
            return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        with self._changing():
            return super().setdefault(*args)

    def update(self, *args: Any, **kwargs: Any) -> None:
        with self._changing():
            super().update(*args, **kwargs)

    def clear(self) -> None:
        with self._changing():
            super().clear()

    def __reduce__(self) -> tuple[Any, ...]:  # copies and pickles are plain dicts
        return (dict, (dict(self),))


class ArrayState(MutableMapping[Array, dict[str, Any]]):
    """Per-parameter state keyed by the array itself (by identity: arrays are not hashable), as
    ``torch.optim`` keys its state by tensor: ``opt.state[w]["momentum_buffer"]``.

    The entries the optimizer creates count their own changes; a dict you assign
    (``state[w] = {...}``) is used as it is, and the optimizer then looks it up on every step."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[Array, dict[str, Any]]] = {}
        self._changes = [0]  # bumped by every change of the mapping or of a counted entry

    @property
    def version(self) -> int:
        """A number that changes whenever an entry is assigned, deleted, or (for the entries the
        optimizer made) edited."""
        return self._changes[0]

    def __getitem__(self, param: Array) -> dict[str, Any]:
        item = self._items.get(id(param))
        if item is None:
            raise self._missing(param)
        return item[1]

    def __setitem__(self, param: Array, value: dict[str, Any]) -> None:
        self._items[id(param)] = (param, value)
        self._changes[0] += 1

    def __delitem__(self, param: Array) -> None:
        if self._items.pop(id(param), None) is None:
            raise self._missing(param)
        self._changes[0] += 1

    def __contains__(self, param: object) -> bool:
        # Mapping's would build _missing's message for every miss.
        return id(param) in self._items

    def _missing(self, param: Any) -> KeyError:
        """The error for a key with no entry: most often a view or copy of a parameter, which
        looks like the parameter but is another object (a bare ``KeyError`` would show an id)."""
        owner = next((p for p in self if isinstance(p, np.ndarray) and isinstance(param, np.ndarray)
                      and np.may_share_memory(p, param)), None)
        hint = "" if owner is None else (
            f" This {type(param).__name__} shares memory with a parameter of shape "
            f"{owner.shape} that has state: it is a view of it, so use that parameter instead.")
        return KeyError(
            f"no state for this {type(param).__name__}: the state is keyed by the very array "
            "objects given to the optimizer (by identity, as torch.optim keys by tensor); a view "
            "or a copy of a parameter (p.view(), p[...], p.copy(), p.reshape(...)) is a different "
            "object. Look a parameter up as the optimizer holds it: "
            "opt.state[opt.param_groups[i]['params'][j]] (or iterate over opt.state). A parameter "
            f"has no state before its first step with momentum.{hint}")

    def counted(self, param: Array, items: Mapping[str, Any]) -> dict[str, Any]:
        """Assign ``param`` a new entry with ``items`` that counts its own changes."""
        entry = _Entry(self._changes, items)
        self[param] = entry
        return entry

    def entry(self, param: Array) -> dict[str, Any] | None:
        """``param``'s state dict, or ``None`` when it has none."""
        item = self._items.get(id(param))
        return None if item is None else item[1]

    def is_counted(self, entry: Any) -> bool:
        """Whether ``entry`` is one of this state's self-counting entries."""
        return isinstance(entry, _Entry) and entry._changes is self._changes

    def __iter__(self) -> Iterator[Array]:
        return (param for param, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ArrayState({len(self)} parameters)"

    def __reduce__(self) -> tuple[Any, ...]:
        # By parameter, not by id: a copy (or an unpickled one) has new parameters, and pickle's
        # memo makes them the same objects as in the copied optimizer's groups.
        return (_rebuild_state, ([(p, dict(e)) for p, e in self._items.values()],))


def _rebuild_state(items: list[tuple[Array, dict[str, Any]]]) -> ArrayState:
    state = ArrayState()
    for param, entry in items:
        state.counted(param, entry)
    return state


class _GroupLists(NamedTuple):
    """What a step hands the kernels for one group, kept between steps."""

    params: list[Any] | tuple[Any, ...]  # the group's "params" object
    snapshot: tuple[Any, ...]  # that list's items when these lists were made
    buffers: list[Any]  # each parameter's buffer, or None
    missing: list[int]  # positions without a buffer
    first_index: int
    compensations: list[Any] | None  # each parameter's Kahan compensation (or None), if any


class _Lists(NamedTuple):
    """Every group's lists, valid while the state and the groups are as they were."""

    state: ArrayState
    version: int
    groups: list[_GroupLists]
    total: int
    counted: bool  # every entry in use counts its changes (else rebuilt at every step)


class _Pending(NamedTuple):
    """A step's record until it is complete: what the counters become and the buffers the state
    takes if its kernels ran (SGD._settle)."""

    outcome: Any  # the step's _core.StepOutcome
    nonfinite: str
    over_limit: bool  # the step would exceed max_consecutive_skips if skipped
    lists: _Lists
    created: list[tuple[_GroupLists, list[int], list[Any]]]  # new buffers, by group and position
    iterations: int  # the counters before the step
    skipped_steps: int
    consecutive_skips: int


# Live optimizers, for the fork handler below (a set of weak references: it keeps none alive):
# this module's and fastmomentum.torch's, each with a ``_busy`` lock.
_OPTIMIZERS: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A child forked while a thread of the parent was inside a step inherits that step's lock
    # held, and no thread to release it; the child has one thread, so every lock is free now.
    # A call that forked from inside itself (a schedule calling os.fork) releases the lock it
    # took, the old one, which it holds in a local: the new one stays free.
    for opt in list(_OPTIMIZERS):
        opt._busy = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
        params: the arrays to optimise (dense in any layout, writeable float32/float64) and/or
            parameter-group dicts ``{"params": [...], **overrides}`` as in PyTorch. Unlike
            PyTorch, the two may be mixed: each run of bare arrays forms a group with the
            defaults.
        lr, momentum, dampening, weight_decay, nesterov, maximize: PyTorch's meaning and defaults.
            Validation is PyTorch's, stricter where PyTorch accepts nonsense (momentum and
            dampening in [0, 1], finite values, real bools): the same parser as the functional
            steps, at construction, in :meth:`add_param_group` and :meth:`load_state_dict`, and at
            every step (so a group edited between steps is checked too). ``lr``, ``momentum``,
            ``weight_decay`` (as optax's ``add_decayed_weights`` takes one) and
            ``schedule_multiplier`` may be schedules: callables of the step count
            (:attr:`iterations`, 0 on the first step), e.g. from :mod:`fastmomentum.schedules`,
            whose values must be real numbers.
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
        global_clipnorm, clipvalue: Keras' gradient clipping, for ``style="keras"`` only and in
            Keras' formulas (:func:`fastmomentum.functional.keras_sgd_`), fused into the step:
            ``g <- g * c*min(1/‖g‖₂, 1/c)`` over all groups for ``global_clipnorm=c``;
            ``g <- clip(g, -v, v)`` for ``clipvalue=v``. Each a finite number > 0, and at most
            one of them and ``max_grad_norm``, as Keras allows one clipping.
        max_consecutive_skips: with ``nonfinite="skip"``, a step that would be the
            ``max_consecutive_skips + 1``-th skipped in a row raises ``FloatingPointError``
            instead (nothing changed); ``None`` never raises. Default 10.
        state_dtype: how the momentum buffers are stored (:mod:`fastmomentum.storage`): ``None``
            (default) in each parameter's dtype; ``"float32"``; ``"bfloat16"`` or ``"float16"``
            (2 bytes per element); ``"int8"`` (8-bit block-quantized, 1.016 bytes per element:
            :class:`~fastmomentum.storage.QuantizedBuffer`). Not for float64 parameters. The
            update is computed in float32; the buffer is rounded to nearest after it.
        param_rounding: how bfloat16 and float16 parameters (float32 and float64 ones are exact)
            take their updated float32 value back: ``"kahan"`` (default: a compensation array
            of the parameter's dtype in the state, key ``"compensation"``, holds what rounding
            dropped: ``p + c`` is the parameter, optimi's method), ``"stochastic"`` (up or down
            with the probabilities that make it exact on average; random numbers keyed by
            ``seed``, the step count and the parameter's index, so a resumed run continues bit
            for bit) or ``"nearest"`` (lossy: an update below half a unit in the last place is
            lost).
        seed: the key of stochastic rounding's random numbers (an int >= 0 and < 2**63).

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
    and changes nothing. Different optimizers step in parallel (the kernels release the GIL). A
    child process made by ``fork()`` can step its copy whatever the parent's threads were doing.
    ``copy.deepcopy`` and ``pickle`` copy an optimizer with its parameters and state (its
    schedules must be picklable for ``pickle``).
    """

    def __init__(
        self,
        params: Iterable[Array | dict[str, Any]],
        lr: Schedulable = 1e-3,
        momentum: Schedulable = 0.0,
        dampening: float = 0.0,
        weight_decay: Schedulable = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        style: Style = "torch",
        weight_decay_mode: WeightDecayMode | None = None,
        schedule_multiplier: Schedulable | None = None,
        nonfinite: NonFinite = "ignore",
        max_grad_norm: float | None = None,
        global_clipnorm: float | None = None,
        clipvalue: float | None = None,
        max_consecutive_skips: int | None = 10,
        state_dtype: StateDtype | None = None,
        param_rounding: ParamRounding = "kahan",
        seed: int = 0,
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
        # The record of the last step, until it is complete (see _settle).
        self._pending: _Pending | None = None
        self._state = ArrayState()
        self._iterations = self._skipped_steps = self._consecutive_skips = 0
        self.global_clipnorm = global_clipnorm
        self.clipvalue = clipvalue
        self._max_consecutive_skips = None if max_consecutive_skips is None else _count(
            max_consecutive_skips, "max_consecutive_skips")
        if state_dtype not in (None, "float32", "float64", "bfloat16", "float16", "int8"):
            raise ValueError("state_dtype must be None, 'float32', 'float64', 'bfloat16', "
                             f"'float16' or 'int8', got {state_dtype!r}")
        if state_dtype == "bfloat16":
            storage.bfloat16()  # names ml_dtypes when it is missing
        if param_rounding not in ("kahan", "stochastic", "nearest"):
            raise ValueError("param_rounding must be 'kahan', 'stochastic' or 'nearest', got "
                             f"{param_rounding!r}")
        self._state_dtype: StateDtype | None = state_dtype
        self._param_rounding: ParamRounding = param_rounding
        self._seed = _count(seed, "seed")
        self.nonfinite: NonFinite = nonfinite
        self.max_grad_norm = max_grad_norm
        _core.check_guard(self._guard(1.0))
        self._busy = threading.Lock()  # held by the method that is running; never waited for
        self._lists: _Lists | None = None

        groups = group_arrays(params)
        first = next((g["params"][0] for g in groups if g["params"]), None)
        #: Where the arrays live: the host, or a CUDA device (the first array decides; the
        #: kernels' checks reject any other array not on the same device).
        self._backend: Backend = backend_for(first)
        seen: set[int] = set()
        for group in groups:
            self.param_groups.append(self._checked_group(group, seen))
            seen |= {id(p) for p in self.param_groups[-1]["params"]}
        self._backend.check_params(self._params(), 0)  # once for all: no two share memory
        self._check_storage(self._params())
        self._add_compensations(self._params(), self._state)
        _OPTIMIZERS.add(self)

    @property
    def on_device(self) -> bool:
        """Whether the parameters are CUDA arrays."""
        return self._backend.on_device

    # The record of the steps: read through these, which first complete the record of a step
    # that an interrupt cut short (_settle_if_idle).

    @property
    def state(self) -> ArrayState:
        """Per-parameter state, keyed by the array (:class:`ArrayState`)."""
        self._settle_if_idle()
        return self._state

    @state.setter
    def state(self, value: ArrayState) -> None:
        if not isinstance(value, ArrayState):
            raise TypeError(f"state must be a fastmomentum.optim.ArrayState, got "
                            f"{type(value).__name__}")
        self._set_record("_state", value, "state")

    @property
    def iterations(self) -> int:
        """Steps taken (the argument of schedule callables; saved in the state dict)."""
        self._settle_if_idle()
        return self._iterations

    @iterations.setter
    def iterations(self, value: int) -> None:
        self._set_record("_iterations", _count(value, "iterations"), "iterations")

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite gradient, in all."""
        self._settle_if_idle()
        return self._skipped_steps

    @property
    def consecutive_skips(self) -> int:
        """Steps skipped since the last applied one."""
        self._settle_if_idle()
        return self._consecutive_skips

    @property
    def max_consecutive_skips(self) -> int | None:
        """With ``nonfinite="skip"``, the most steps skipped in a row (None: no limit)."""
        return self._max_consecutive_skips

    @max_consecutive_skips.setter
    def max_consecutive_skips(self, value: int | None) -> None:
        self._set_record("_max_consecutive_skips",
                         None if value is None else _count(value, "max_consecutive_skips"),
                         "max_consecutive_skips")

    def _set_record(self, attribute: str, value: Any, name: str) -> None:
        """A setter's assignment, refused while a step runs (in another thread, or in code the
        step runs: its record would overwrite the value), after a pending record is complete."""
        busy = self._busy  # (taken by hand: see _busy_error)
        if not busy.acquire(False):
            raise _busy_error(f"setting {name}")
        try:
            self._settle()
            setattr(self, attribute, value)
        finally:
            busy.release()

    # -- parameter groups -------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: ``{"params": [...], **hyper-parameter overrides}`` (PyTorch's rules)."""
        busy = self._busy  # the lock released is the one taken (see _after_fork_in_child)
        if not busy.acquire(False):  # see _busy_error (not blocking)
            raise _busy_error("add_param_group()")
        try:
            self._settle()
            group = self._checked_group(param_group, {id(p) for p in self._params()})
            self._backend.check_params([*self._params(), *group["params"]], 0)
            self._check_storage(group["params"])
            self._add_compensations(group["params"], self._state)
            self.param_groups.append(group)  # only once every check passed
        finally:
            busy.release()

    def _checked_group(self, param_group: dict[str, Any], seen: set[int]) -> dict[str, Any]:
        """A group with the defaults filled in, checked; ``seen`` holds the ids of the
        parameters of the groups so far."""
        group = {**self.defaults, **param_group, "params": _params_list(param_group)}
        self._backend.check_params(group["params"], len(seen))
        ids = {id(p) for p in group["params"]}
        if len(ids) != len(group["params"]) or not ids.isdisjoint(seen):
            raise ValueError("some parameters appear in more than one parameter group")
        # PyTorch's constructor rule: Nesterov needs a momentum (a schedule may pass through 0,
        # and while it is 0 a step is plain SGD, as in PyTorch).
        _check_group(group)
        _core.check_hyper(self._hyper(group, self._iterations, constructing=True)[0],
                          self._backend.dtypes(group["params"]))
        return group

    def _params(self) -> list[Any]:
        return [p for g in self.param_groups for p in g["params"]]

    def _check_storage(self, params: Sequence[Any]) -> None:
        """The state storage suits every parameter (the arrays are checked already)."""
        if self._state_dtype is not None and self.on_device:
            raise ValueError(f"state_dtype={self.state_dtype!r}: low-precision state is for NumPy "
                             "arrays (the CUDA kernels take float32 and float64 state only)")
        for p in params:
            wide = p.dtype.name == "float64"
            if wide and self.state_dtype not in (None, "float64"):
                raise ValueError(f"state_dtype={self.state_dtype!r} is for float32, bfloat16 and "
                                 "float16 parameters; a float64 parameter keeps float64 state")
            if not wide and self.state_dtype == "float64":
                raise ValueError("state_dtype='float64' is for float64 parameters")

    def _add_compensations(self, params: Sequence[Any], state: ArrayState) -> None:
        """Zero Kahan compensations, in ``state``, for the 16-bit parameters that have none."""
        if self._param_rounding != "kahan":
            return
        for p in params:
            if isinstance(p, np.ndarray) and p.dtype.itemsize == 2 and p.dtype.kind in "fV":
                entry = state.entry(p)
                if entry is None:
                    state.counted(p, {COMPENSATION_KEY: storage.new_like(p, p.dtype, zero=True)})
                elif entry.get(COMPENSATION_KEY) is None:
                    entry[COMPENSATION_KEY] = storage.new_like(p, p.dtype, zero=True)

    @property
    def state_nbytes(self) -> int:
        """The bytes of the optimizer's state arrays: momentum buffers (an 8-bit buffer's codes
        and scales) and Kahan compensations (a distributed optimizer's: this rank's)."""
        self._settle_if_idle()
        keys = (BUFFER_KEY[self.style], COMPENSATION_KEY)
        return sum(storage.nbytes((self._state.entry(p) or {}).get(k)) for p in self._params()
                   for k in keys)

    # -- stepping ---------------------------------------------------------------------------

    def _hyper(self, group: dict[str, Any], step: int, constructing: bool = False
               ) -> tuple[Hyper, bool]:
        """The group's hyper-parameters at ``step``, schedules evaluated, and whether it has
        momentum. Values are passed as they are, for the kernels' parser to check, except what
        the step must compute with here (lr and momentum, and the SGDW multiplier)."""
        lr, momentum = group["lr"], group["momentum"]
        if type(lr) is not float:  # (the usual value needs neither call)
            lr = _real(_evaluate(lr, step, "lr"), "lr")
        if lr < 0.0 and "initial_lr" in group:
            # torch's recursive schedulers can drift below 0 when several drive one lr (torch
            # then ascends); the kernels' parser would refuse it without saying why.
            raise ValueError(
                f"Invalid learning rate: {lr!r} (expected a finite lr >= 0); this group's lr was "
                "written by an lr scheduler: torch's recursive schedulers can drift below 0 "
                "when several drive one lr; pass closed_form=True to them or use a "
                "fastmomentum.schedules schedule")
        if type(momentum) is not float:
            momentum = _real(_evaluate(momentum, step, "momentum"), "momentum")
        nesterov = group["nesterov"]
        # While the momentum is 0 a step is plain SGD (PyTorch's step ignores nesterov then);
        # a constant momentum of 0 with nesterov is still refused where PyTorch refuses it (the
        # torch style; Keras takes it as plain SGD).
        if momentum == 0.0 and (nesterov is True or nesterov is np.True_) and not (
                constructing and not callable(group["momentum"])):
            nesterov = False
        if group["weight_decay_mode"] == "sgdw":
            s = schedule_multiplier(group, lr, step)
        else:  # unused; a number is still checked, as the functional steps check it
            s = group["schedule_multiplier"]
            if s is None or callable(s):
                s = 1.0
        weight_decay = group["weight_decay"]
        if callable(weight_decay):  # a schedule, as optax.add_decayed_weights takes one
            weight_decay = _evaluate(weight_decay, step, "weight_decay")
        hyper = _new_hyper((self.style, lr, momentum, group["dampening"], nesterov,
                            weight_decay, group["weight_decay_mode"], s, group["maximize"],
                            "stochastic" if self._param_rounding == "stochastic" else "nearest",
                            self._seed, step))
        return hyper, momentum != 0.0

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

        A step is all or nothing: once the kernels have run, the optimizer's record of it (new
        buffers, :attr:`iterations`, the skip counters) is complete before any exception,
        a ``KeyboardInterrupt`` included, leaves this method.
        """
        busy = self._busy  # the lock released is the one taken (see _after_fork_in_child)
        if not busy.acquire(False):  # see _busy_error (not blocking)
            raise _busy_error("step()")
        try:
            return self._apply(grads, self._guard(loss_scale))
        finally:
            busy.release()

    def _guard(self, loss_scale: float, stats: tuple[bool, float] | None = None) -> Guard:
        """The guard of a step with this ``loss_scale`` (and the caller's gradient statistics, if
        it measured them), from the optimizer's guard settings, checked here (at construction and
        at every step: they are attributes a user may set between steps)."""
        keras_options = self.global_clipnorm is not None or self.clipvalue is not None
        if keras_options and self.style != "keras":
            raise ValueError("global_clipnorm and clipvalue are Keras' options, for "
                             f"style='keras' (style is {self.style!r}); max_grad_norm clips by "
                             "the global norm in PyTorch's formula")
        if self.global_clipnorm is not None and self.max_grad_norm is not None:
            raise ValueError("max_grad_norm cannot be combined with global_clipnorm: only one "
                             "gradient clipping can be set, as in Keras")
        if self.global_clipnorm is not None:
            return _new_guard((self.nonfinite, self.global_clipnorm, loss_scale, stats, "keras",
                               self.clipvalue))
        return _new_guard((self.nonfinite, self.max_grad_norm, loss_scale, stats, "torch",
                           self.clipvalue))

    @property
    def _needs_stats(self) -> bool:
        """Whether a step measures its gradients (a check for non-finite ones, or a norm)."""
        return (self.nonfinite != "ignore" or self.max_grad_norm is not None
                or self.global_clipnorm is not None)

    def _apply(self, grads: Sequence[Array | None], guard: Guard,
               reported: Sequence[Any] | None = None,
               dtypes: Sequence[tuple[str, ...]] | None = None) -> StepResult:
        """:meth:`step`'s body under ``guard``, for a caller that holds the lock (the
        distributed optimizers reduce the gradients first, and may bring their statistics).
        ``reported``: the gradients that an error about a non-finite one names (default
        ``grads``; the distributed optimizers name their caller's). ``dtypes``: per group, the
        dtypes its hyper-parameters must hold for beyond its arrays' (a shard's group stands for
        the model's: every rank must refuse alike)."""
        if self._pending is not None:
            self._settle()
        if isinstance(grads, list):  # a snapshot: code run by the step (a schedule) may edit
            grads = tuple(grads)     # the caller's list, but not the gradients of this step
        lists = self._current_lists()
        if type(grads) is not tuple or len(grads) != lists.total:
            _check_grads(grads, lists.total)
        step = self._iterations
        calls: list[Call] = []
        created: list[tuple[_GroupLists, list[int], list[Any]]] = []
        for gl, group in zip(lists.groups, self.param_groups, strict=True):
            hyper, has_momentum = self._hyper(group, step)
            if not has_momentum:
                calls.append(_new_call((gl.snapshot, None, False, hyper, gl.first_index,
                                        gl.compensations)))
                continue
            buffers: list[Any] = gl.buffers
            first: bool | list[bool] = False
            need = [i for i in gl.missing if grads[gl.first_index + i] is not None] \
                if gl.missing else None
            if need:  # first steps: new buffers, kept only if the step is applied
                new = self._backend.new_buffers([gl.snapshot[i] for i in need],
                                                zero=self.style != "torch",
                                                state_dtype=self.state_dtype)
                buffers = list(buffers)
                for i, buf in zip(need, new, strict=True):
                    buffers[i] = buf
                created.append((gl, need, new))
                if self.style == "torch":  # PyTorch's first step: b <- g
                    first = [False] * len(buffers)
                    for i in need:
                        first[i] = True
            calls.append(_new_call((gl.snapshot, buffers, first, hyper, gl.first_index,
                                    gl.compensations)))
        if dtypes is not None:
            for call, group_dtypes in zip(calls, dtypes, strict=True):
                _core.check_hyper(call.hyper, group_dtypes, guard)
        limit = self._max_consecutive_skips
        over_limit = guard.nonfinite == "skip" and limit is not None \
            and self._consecutive_skips >= limit
        outcome = _core.StepOutcome()  # new: one left by an earlier step would read as "ran"
        self._pending = tuple.__new__(_Pending, (
            outcome, guard.nonfinite, over_limit, lists, created, step, self._skipped_steps,
            self._consecutive_skips))
        try:
            self._backend.steps(calls, grads, guard, outcome)
        finally:
            self._settle()  # the kernels' decision recorded, whatever is being raised
        named = grads if reported is None else reported
        if not outcome.applied and over_limit and limit is not None:  # (limit: set if over)
            raise FloatingPointError(
                f"{limit + 1} consecutive steps have non-finite gradients (max_consecutive_skips="
                f"{limit}); this one was not applied either") from nonfinite_error(named)
        result: StepResult = outcome.result(named)  # raises for nonfinite="raise"
        return result

    def _settle(self) -> None:
        """Completes the record of the last step if its kernels ran, or drops it if they did not;
        for the holder of the lock (a running step's record is only ever its own). A step records
        itself in a ``finally`` block; should an interrupt cut that record short, the next access
        to the optimizer (its record's properties, every method) completes it: the record is
        idempotent, made of the values the counters take and the buffers the state holds after
        the step."""
        pending = self._pending
        if pending is None:
            return
        if pending.outcome.ran:
            self._record(pending)
        self._pending = None

    def _settle_if_idle(self) -> None:
        """:meth:`_settle` for the readers that do not hold the lock (the record's properties,
        state_dict, copies), unless a step is running, in another thread or in this one (code a
        step runs, reading the record): the record then reads as it was before that step."""
        busy = self._busy
        if self._pending is not None and busy.acquire(False):
            try:
                self._settle()
            finally:
                busy.release()

    def _record(self, p: _Pending) -> None:
        if not p.outcome.applied:
            if p.nonfinite == "skip" and not p.over_limit:
                self._skipped_steps = p.skipped_steps + 1
                self._consecutive_skips = p.consecutive_skips + 1
            return
        if p.created:
            self._keep_buffers(p)
        self._iterations = p.iterations + 1
        self._consecutive_skips = 0

    def _keep_buffers(self, p: _Pending) -> None:
        """The buffers an applied step made, into the state (and the kept lists)."""
        state = self._state
        # The kept lists take the new buffers only if nothing else changed the state during the
        # step (code run by the step may have: a schedule, a conversion).
        keep = self._lists is p.lists and p.lists.state is state \
            and state.version == p.lists.version
        key = BUFFER_KEY[self.style]
        for gl, need, new in p.created:
            for i, buf in zip(need, new, strict=True):
                entry = state.entry(gl.snapshot[i])
                if entry is None:
                    state.counted(gl.snapshot[i], {key: buf})
                elif entry.get(key) is not buf:
                    entry[key] = buf
        if keep:
            for gl, need, new in p.created:
                for i, buf in zip(need, new, strict=True):
                    gl.buffers[i] = buf
                gl.missing[:] = [i for i in gl.missing if gl.buffers[i] is None]
            self._lists = p.lists._replace(version=state.version)
        else:
            self._lists = None  # made again at the next step

    def _current_lists(self) -> _Lists:
        """The kept lists if the state and the groups are as when they were made, else new."""
        lists, state = self._lists, self._state
        if lists is not None and lists.counted and lists.state is state \
                and lists.version == state._changes[0] \
                and len(lists.groups) == len(self.param_groups):
            for gl, group in zip(lists.groups, self.param_groups, strict=True):
                # The same params object holding the same arrays (a new group dict may hold it:
                # its hyper-parameters are read at every step).
                if group.get("params") is not gl.params \
                        or not _core.same_items(gl.params, gl.snapshot):
                    break
            else:
                return lists
        self._lists = lists = self._make_lists()
        return lists

    def _make_lists(self) -> _Lists:
        key = BUFFER_KEY[self.style]
        groups: list[_GroupLists] = []
        counted, index = True, 0
        for group in self.param_groups:
            params = group["params"]
            if not isinstance(params, (list, tuple)):
                raise TypeError(f"param_groups[{len(groups)}]['params'] must be a list, got "
                                f"{type(params).__name__}")
            snapshot = tuple(params)
            buffers = []
            for p in snapshot:
                entry = self._state.entry(p)
                if entry is not None and not self._state.is_counted(entry):
                    counted = False
                buffers.append(None if entry is None else entry.get(key))
            missing = [i for i, b in enumerate(buffers) if b is None]
            compensations = None
            if self.param_rounding == "kahan":
                self._add_compensations(snapshot, self._state)  # params put in a group by hand
                found = [(self._state.entry(p) or {}).get(COMPENSATION_KEY)
                         if isinstance(p, np.ndarray) and p.dtype.itemsize == 2 else None
                         for p in snapshot]
                compensations = found if any(c is not None for c in found) else None
            groups.append(_GroupLists(params, snapshot, buffers, missing, index, compensations))
            index += len(snapshot)
        return _Lists(self._state, self._state.version, groups, index, counted)

    # -- checkpoints ------------------------------------------------------------------------

    @property
    def state_dtype(self) -> StateDtype | None:
        """How the momentum buffers are stored (the constructor's ``state_dtype``; fixed: the
        state's arrays are made for it)."""
        return self._state_dtype

    @state_dtype.setter
    def state_dtype(self, value: Any) -> None:
        raise _fixed_at_construction("state_dtype", value)

    @property
    def param_rounding(self) -> ParamRounding:
        """How 16-bit parameters take their updates (the constructor's ``param_rounding``;
        fixed: with ``"kahan"`` the state holds compensations that the others would drop)."""
        return self._param_rounding

    @param_rounding.setter
    def param_rounding(self, value: Any) -> None:
        raise _fixed_at_construction("param_rounding", value)

    @property
    def seed(self) -> int:
        """The stochastic rounding's seed (the constructor's, or a loaded state dict's)."""
        return self._seed

    @seed.setter
    def seed(self, value: Any) -> None:
        raise _fixed_at_construction("seed", value)

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout, with only NumPy arrays and plain data::

            {"state": {index: {"momentum_buffer": array}},    # "velocity" for style="keras"
             "param_groups": [{"lr": ..., ..., "params": [index, ...]}],
             "style": "torch", "iterations": n,
             "skipped_steps": k, "consecutive_skips": c,
             "seed": s, "param_rounding": r}     # the stochastic rounding's seed, and how
                                                 # 16-bit parameters round

        ``index`` is the parameter's position over all groups. Buffers are the live arrays (as in
        PyTorch): save or copy them before stepping on. A schedule from
        :mod:`fastmomentum.schedules` is saved as ``{"schedule": its to_dict()}``; any other
        callable as ``{"callable": its name}``, to be passed to the constructor again before
        loading.
        """
        self._settle_if_idle()
        groups, state, index = [], {}, 0
        for group in self.param_groups:
            saved = {k: _describe(v) for k, v in group.items() if k != "params"}
            saved["params"] = []
            for p in group["params"]:
                entry = self._state.entry(p)
                if entry is not None:
                    state[index] = {k: self._backend.to_host(v) if is_device_array(v) else v
                                    for k, v in entry.items()}
                saved["params"].append(index)
                index += 1
            groups.append(saved)
        return {"state": state, "param_groups": groups, "style": self.style,
                "iterations": self._iterations, "skipped_steps": self._skipped_steps,
                "consecutive_skips": self._consecutive_skips, "seed": self._seed,
                "param_rounding": self._param_rounding}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s content, or a ``torch.optim.SGD`` one (with NumPy arrays
        for its tensors; missing group keys take this optimizer's defaults). Buffers are copied
        into new arrays of the parameters' dtype; a state entry's other items are kept (deep
        copies), and another style's buffer is refused. The stochastic rounding's seed is the
        saved one (so that a resumed run continues bit for bit); Kahan compensations are refused
        by an optimizer whose ``param_rounding`` is not ``"kahan"`` (they hold the parameters'
        low bits). Everything is checked first, with the rules of the constructor and a step: on
        an error, nothing changes."""
        busy = self._busy  # the lock released is the one taken (see _after_fork_in_child)
        if not busy.acquire(False):  # see _busy_error (not blocking)
            raise _busy_error("load_state_dict()")
        try:
            self._load(state_dict)
        finally:
            busy.release()

    def _load(self, state_dict: dict[str, Any]) -> None:
        self._install(*self._checked_state(state_dict))

    def _checked_state(self, state_dict: dict[str, Any]) -> tuple[_LoadedState, ArrayState]:
        """What loading ``state_dict`` installs, every check made (nothing changed yet)."""
        loaded = self._read_state_dict(state_dict, [g["params"] for g in self.param_groups])
        new_state = ArrayState()
        for param, buffer, extras in loaded.buffers:
            new_state.counted(param, extras if buffer is _NO_BUFFER else
                              {**extras, BUFFER_KEY[self.style]: self._loaded_buffer(buffer,
                                                                                     param)})
        self._add_compensations(self._params(), new_state)
        return loaded, new_state

    def _loaded_buffer(self, buffer: Any, param: Any) -> Any:
        """A saved buffer (a host array of any float dtype, or an 8-bit one) as a new buffer of
        this optimizer's storage for ``param``, converted by the kernels' roundings."""
        if self.on_device:
            if isinstance(buffer, tuple):
                buffer = storage.QuantizedBuffer(*buffer).to_array()
            return self._backend.from_host(np.asarray(buffer, np.float64)
                                           if buffer.dtype.kind != "f" else buffer, param)
        return storage.converted(buffer, storage.new_buffer(param, self.state_dtype, zero=False))

    def _read_state_dict(self, state_dict: Any, params: list[list[Any]]) -> _LoadedState:
        """Everything ``state_dict`` holds, checked against this optimizer's rules as
        ``params`` (per group) would be stepped: the restored groups, each parameter's buffer as
        a host array of its shape (or :data:`_NO_BUFFER` for an entry without one), the
        counters. Changes nothing."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        style = state_dict.get("style", "torch")
        if style != self.style:
            raise ValueError(f"the state dict is of style {style!r} but this optimizer's is "
                             f"{self.style!r}; convert it with fastmomentum.convert_state_dict")
        counters = {name: _count(state_dict.get(name, 0), name)
                    for name in ("iterations", "skipped_steps", "consecutive_skips")}
        seed = _count(state_dict.get("seed", self._seed), "seed")
        rounding = state_dict.get("param_rounding", self._param_rounding)
        if rounding not in ("kahan", "stochastic", "nearest"):
            raise ValueError("the state dict's param_rounding must be 'kahan', 'stochastic' or "
                             f"'nearest', got {rounding!r}")
        iterations = counters["iterations"]
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(params):
            raise ValueError("loaded state dict has a different number of parameter groups")
        new_groups, saved_order = [], []
        for i, (group, group_params, saved) in enumerate(zip(self.param_groups, params,
                                                             saved_groups, strict=True)):
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"param_groups[{i}] must be a dict with a list 'params'")
            if len(saved["params"]) != len(group_params):
                raise ValueError("loaded state dict contains a parameter group that doesn't match "
                                 "the size of optimizer's group")
            indices: list[int] = []
            for value in saved["params"]:
                index = _index(value)
                if index is None:
                    raise ValueError(f"param_groups[{i}]['params'] holds {value!r}: parameter "
                                     "indices must be integers >= 0")
                indices.append(index)
            restored = {k: _restore(v, group.get(k), f"param_groups[{i}][{k!r}]")
                        for k, v in saved.items() if k != "params"}
            new_group = {**self.defaults, **restored, "params": group["params"]}
            _check_group(new_group)
            # (with the loaded seed: the kernels' parser refuses one that no step could take)
            _core.check_hyper(self._hyper(new_group, iterations)[0]._replace(seed=seed),
                              self._backend.dtypes(group_params))
            new_groups.append(new_group)
            saved_order += indices
        if sorted(saved_order) != list(range(len(saved_order))):
            raise ValueError("the state dict's parameter indices are not 0..n-1, each once")
        param_at = dict(zip(saved_order, (p for group_params in params for p in group_params),
                            strict=True))
        key = BUFFER_KEY[self.style]
        saved_state = state_dict["state"]
        if not isinstance(saved_state, dict):
            raise ValueError(f"the state dict's 'state' must be a dict, got "
                             f"{type(saved_state).__name__}")
        buffers: list[tuple[Any, Any, dict[Any, Any]]] = []
        for saved_index, entry in saved_state.items():
            index = _index(saved_index)
            p = None if index is None else param_at.get(index)
            if p is None:
                raise ValueError(f"state[{saved_index!r}]: the key must be the index of a "
                                 f"parameter of the groups (an int from 0 to {len(param_at) - 1})")
            if not isinstance(entry, dict):
                raise ValueError(f"state[{saved_index}] must be a dict, got "
                                 f"{type(entry).__name__}")
            foreign = sorted({k for k in entry if k in BUFFER_KEY.values()} - {key})
            if foreign:
                raise ValueError(f"state[{saved_index}] holds {foreign}, the buffer of another "
                                 f"style than this {self.style!r}-style SGD's ({key!r}); convert "
                                 "it with fastmomentum.convert_state_dict")
            buf = entry.get(key)
            extras = copy.deepcopy({k: v for k, v in entry.items() if k != key})
            if extras.get(COMPENSATION_KEY) is not None:
                if self._param_rounding != "kahan":
                    raise ValueError(
                        f"state[{saved_index}] holds a Kahan compensation, the low bits of its "
                        f"parameter, but this optimizer's param_rounding is "
                        f"{self._param_rounding!r}; build it with param_rounding='kahan' to keep "
                        f"them, or, to leave Kahan, fold each into its parameter (p[...] = "
                        f"p.astype(np.float32) + c.astype(np.float32), rounded) and delete the "
                        f"{COMPENSATION_KEY!r} entries")
                extras[COMPENSATION_KEY] = _compensation(
                    extras[COMPENSATION_KEY], p, f"state[{saved_index}][{COMPENSATION_KEY!r}]")
            buffers.append((p, _NO_BUFFER if buf is None else
                            _host_buffer(buf, p, f"state[{saved_index}][{key!r}]"), extras))
        return _LoadedState(new_groups, buffers, iterations, counters["skipped_steps"],
                            counters["consecutive_skips"], seed)

    def _install(self, loaded: _LoadedState, state: ArrayState) -> None:
        """Make a checked state dict's content this optimizer's (assignments only)."""
        self._settle()  # a step's record left pending must not overwrite the loaded counters
        # One C call stores them all (no Python line between two stores: an interrupt cannot
        # leave half of them); a new groups list, as torch.optim's load_state_dict makes.
        self.__dict__.update(param_groups=loaded.groups, _state=state,
                             _iterations=loaded.iterations, _skipped_steps=loaded.skipped_steps,
                             _consecutive_skips=loaded.consecutive_skips, _seed=loaded.seed)

    # -- copies -----------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        self._settle_if_idle()
        state = dict(self.__dict__)
        for name in ("_busy", "_lists", "_backend", "_pending"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickles from before these settings were read-only properties (or existed) hold them
        # under their public names (or not at all).
        for name, default in (("state_dtype", None), ("param_rounding", "kahan"), ("seed", 0)):
            state.setdefault(f"_{name}", state.pop(name, default))
        self.__dict__.update(state)
        self._busy = threading.Lock()
        self._lists = None
        self._pending = None
        params = self._params()
        self._backend = backend_for(params[0] if params else None)
        _OPTIMIZERS.add(self)

    def __repr__(self) -> str:
        lines = [f"SGD (style={self.style!r}, iterations={self.iterations})"]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]!r}" for k in sorted(group) if k != "params"]
            lines.append(f"    params: {len(group['params'])} arrays")
        return "\n".join(lines)


def group_arrays(params: Iterable[Any]) -> list[dict[str, Any]]:
    """An optimizer's ``params`` argument as parameter groups (PyTorch's rules, and: each run of
    bare arrays forms a group with the defaults, each dict a group of its own), each group a new
    dict whose ``"params"`` is a new list."""
    if isinstance(params, np.ndarray) or is_device_array(params):
        raise TypeError("params argument given to the optimizer should be an iterable of "
                        f"arrays or dicts, but got {type(params).__name__} (wrap it: [w])")
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    groups: list[dict[str, Any]] = []
    run: list[Any] | None = None  # the params of the group of bare arrays being collected
    for item in items:
        if isinstance(item, dict):
            groups.append({**item, "params": _params_list(item)})
            run = None
        elif run is None:
            run = [item]
            groups.append({"params": run})
        else:
            run.append(item)
    return groups


def _params_list(param_group: Any) -> list[Any]:
    """A group dict's ``"params"`` as a new list (one array alone is a list of one)."""
    if not isinstance(param_group, dict):
        raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
    params = param_group["params"]
    if isinstance(params, np.ndarray) or is_device_array(params):
        return [params]
    if isinstance(params, set):
        raise TypeError("optimizer parameters need to be organized in ordered collections, "
                        "but the ordering of sets is not deterministic; use a list")
    return list(params)


# The optimizer's lock: step(), load_state_dict() and add_param_group() run in one thread at a
# time (two steps at once would race on the same buffers), and a call that finds it held raises
# this error rather than wait. Each takes it by hand, `if not acquire(False): raise`
# then try/finally, not through a context manager: a Ctrl-C is delivered at the start of any
# Python function, a context manager's __exit__ too, which would leave the lock held for good.
def _busy_error(method: str) -> RuntimeError:
    return RuntimeError(f"{method} called while this optimizer is already running (inside "
                        "step(), load_state_dict() or add_param_group(), in another thread or in "
                        "code that call runs, such as a schedule); use one optimizer from one "
                        "thread at a time")


# The protocol's tuples, made without their NamedTuple constructors' Python frames (a step makes
# a few per group): tuple.__new__(Type, values), values in field order.
def _new_hyper(values: tuple[Any, ...]) -> Hyper:
    return tuple.__new__(Hyper, values)


def _new_call(values: tuple[Any, ...]) -> Call:
    return tuple.__new__(Call, values)


def _new_guard(values: tuple[Any, ...]) -> Guard:
    return tuple.__new__(Guard, values)


# A state entry without a buffer (kept as an empty entry on load).
_NO_BUFFER: Any = object()


def _fixed_at_construction(name: str, value: Any) -> AttributeError:
    how = {"seed": f"load_state_dict restores the saved seed: set state_dict['seed'] = "
                   f"{value!r} in the dict you load",
           "param_rounding": f"build a new optimizer with param_rounding={value!r} and "
                             "load_state_dict(old.state_dict()) into it (from 'kahan', fold the "
                             "compensations into the parameters first: the load says how)",
           "state_dtype": f"build a new optimizer with state_dtype={value!r} and "
                          "load_state_dict(old.state_dict()) into it (the buffers are converted)"}
    return AttributeError(f"{name} is fixed at construction (the optimizer's state is made for "
                          f"it), so {name}={value!r} cannot be set now: {how[name]}")


class _LoadedState(NamedTuple):
    """A state dict's content, checked (SGD._read_state_dict)."""

    groups: list[dict[str, Any]]
    # (parameter, its buffer as a host array or _NO_BUFFER, the entry's other items as they are)
    buffers: list[tuple[Any, Any, dict[Any, Any]]]
    iterations: int
    skipped_steps: int
    consecutive_skips: int
    seed: int


def _host_buffer(buf: Any, param: Any, where: str) -> Any:
    """A saved buffer as a host array: it must be an array of real floating-point numbers (NumPy,
    or a device array; bfloat16 too) of its parameter's shape, or an 8-bit buffer (a (codes,
    scales) tuple of NumPy arrays, checked by the kernels' conversion)."""
    if isinstance(buf, tuple):
        if len(buf) != 2 or not all(isinstance(x, np.ndarray) for x in buf):
            raise TypeError(f"{where} is a tuple: an 8-bit buffer is a (codes, scales) pair of "
                            "NumPy arrays (fastmomentum.storage.QuantizedBuffer)")
        # (contiguous copies where needed: the load makes the optimizer's own buffer anyway;
        # np.ascontiguousarray would make a 0-d array 1-d)
        quantized = storage.QuantizedBuffer(*(
            x if x.flags.c_contiguous else x.copy(order="C")
            for x in (np.ndarray.view(x, np.ndarray) for x in buf)))
        param_shape = _SHAPE(param) if isinstance(param, np.ndarray) else tuple(param.shape)
        if _SHAPE(quantized.codes) != param_shape:
            raise ValueError(f"{where}'s codes have shape {_SHAPE(quantized.codes)} but its "
                             f"parameter has shape {param_shape}")
        # the kernels' checks of the pair (dtypes, the scales' length, layouts), named as the
        # state dict holds it
        _core.convert(quantized, np.empty(_SHAPE(quantized.codes), np.float32), src_name=where)
        return quantized
    if isinstance(buf, list) and len(buf) == 2:  # (a list of values: not an array, below)
        raise TypeError(f"{where} is a list: a buffer is a NumPy array, an 8-bit one a (codes, "
                        "scales) tuple: fastmomentum.QuantizedBuffer")
    if is_device_array(buf):
        buf = backend_for(buf).to_host(buf)
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{where} must be a NumPy array, got {type(buf).__name__}")
    # As a step reads arrays: from their C structs (a subclass's properties never run).
    dtype, shape = _DTYPE(buf), _SHAPE(buf)
    if dtype.kind != "f" and dtype.name != "bfloat16":
        raise TypeError(f"{where} has dtype {dtype}; a buffer must hold real floating-point "
                        "numbers")
    param_shape = _SHAPE(param) if isinstance(param, np.ndarray) else tuple(param.shape)
    if shape != param_shape:
        raise ValueError(f"{where} has shape {shape} but its parameter has shape {param_shape}")
    return np.ndarray.view(buf, np.ndarray)


def _check_grads(grads: Any, total: int) -> None:
    """A step's gradients: a list or tuple with one entry per parameter."""
    if not isinstance(grads, (list, tuple)):  # as fm.functional: an array's rows are not grads
        raise TypeError(f"grads must be a list or tuple, got {type(grads).__module__}."
                        f"{type(grads).__name__} (one gradient per parameter; wrap a single "
                        "gradient as [g])")
    if len(grads) != total:
        raise ValueError(f"step() got {len(grads)} gradients for {total} parameters")


def _index(value: Any) -> int | None:
    """``value`` as an int >= 0 (a NumPy integer too), converted once; None for anything else,
    a bool or a float included."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        return None
    n = operator.index(value)  # an int subclass's value, never its __int__
    return n if n >= 0 else None


def _count(value: Any, name: str) -> int:
    """A counter's new value: an integer >= 0 (a NumPy integer too), never a bool."""
    n = _index(value)
    if n is None:
        raise ValueError(f"{name} must be None or an integer >= 0, got {value!r}"
                         if name == "max_consecutive_skips" else
                         f"{name} must be an integer >= 0, got {value!r}")
    return n


def _check_group(group: dict[str, Any]) -> None:
    """A group's entries that the step's parser does not see: ``initial_lr`` (set by the
    schedulers, read by SGDW's default multiplier) must be a real number."""
    if "initial_lr" in group:
        _real(group["initial_lr"], "initial_lr")


def schedule_multiplier(group: dict[str, Any], lr: float, step: int) -> Any:
    """SGDW's multiplier ``s`` of a group at ``step``: its ``schedule_multiplier``, else
    ``lr / initial_lr`` (the lr schedule's multiplier), else 1."""
    s = group["schedule_multiplier"]
    if s is not None:
        return _evaluate(s, step, "schedule_multiplier")
    scheduled = callable(group["lr"]) or "initial_lr" in group
    base = _real(_evaluate(group["lr"], 0, "lr") if callable(group["lr"])
                 else group.get("initial_lr", lr), "initial_lr")
    if base:
        return lr / base
    if scheduled and _real(_evaluate(group["weight_decay"], step, "weight_decay"),
                           "weight_decay"):
        # lr / 0: a schedule that starts at 0 (a warm-up) has no multiplier to scale by.
        raise ValueError("weight_decay_mode='sgdw' scales the decay by lr / initial_lr, but "
                         "the lr schedule starts at 0; pass schedule_multiplier (a number or "
                         "a callable of the step)")
    return 1.0


def _real(value: Any, name: str) -> float:
    """``value`` as a float by the kernels' own rules (``_core``'s parser: a real number, never a
    bool, a complex, a str or an array)."""
    return value if type(value) is float else float(_core.real(value, name))


def _evaluate(value: Any, step: int, name: str) -> Any:
    """A hyper-parameter at ``step``: a schedule's value there (which must be a real number), or
    the value itself."""
    if not callable(value):
        return value
    out = value(step)
    try:
        return _real(out, name)
    except (TypeError, ValueError) as e:
        raise type(e)(f"the {name} schedule returned {out!r} at step {step}: {e}") from None


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


def convert_state_dict(state_dict: dict[str, Any], style: str) -> dict[str, Any]:
    """An optimizer state dict moved between the torch and keras buffer layouts, at each group's
    lr: torch -> keras ``v = -lr*b``; keras -> torch ``b = -v/lr`` (needs lr > 0).

    At a constant lr, and without dampening, the two conventions give the same trajectory, so
    training continues as before (up to rounding) in the other style. The groups' other settings
    are kept as they are, ``weight_decay_mode`` included (a torch state converted to keras keeps
    its coupled decay). The ema style has no exact counterpart in the others (its buffer carries
    the ``1 - beta`` factor), so it is not converted. Arrays are new; ``state_dict`` is not
    modified.
    """
    source = state_dict.get("style", "torch")
    for name, value in (("the state dict's style", source), ("style", style)):
        if value not in ("torch", "keras"):
            raise ValueError(f"{name} must be 'torch' or 'keras' to convert, got {value!r}")
    lr_of = {}
    for i, group in enumerate(state_dict["param_groups"]):
        lr = group["lr"]
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise ValueError(f"param_groups[{i}] has the lr {lr!r}: convert needs a number")
        if group.get("dampening", 0) != 0:
            raise ValueError(f"param_groups[{i}] has dampening: the keras convention has none")
        lr_of.update(dict.fromkeys(group["params"], float(lr)))
    old_key, new_key = BUFFER_KEY[source], BUFFER_KEY[style]
    state = {}
    for index, entry in state_dict["state"].items():
        entry = dict(entry)
        buf = entry.pop(old_key, None)
        if buf is not None and source != style:
            lr = lr_of[index]
            if source == "keras" and lr == 0:
                raise ValueError(f"cannot recover state[{index}] from a velocity at lr == 0")
            if isinstance(buf, tuple):  # an 8-bit buffer: its float32 values (a load re-encodes)
                buf = storage.QuantizedBuffer(*buf).to_array()
            t = buf.dtype.type
            buf = buf * t(-lr) if style == "keras" else buf / t(-lr)
        entry[new_key] = None if buf is None else \
            storage.QuantizedBuffer(*(np.array(x) for x in buf)) if isinstance(buf, tuple) \
            else np.array(buf)
        state[index] = entry
    groups = [dict(group) for group in state_dict["param_groups"]]
    return {**state_dict, "state": state, "param_groups": groups, "style": style}


def _compensation(comp: Any, param: Any, where: str) -> Any:
    """A saved Kahan compensation: a NumPy array of its parameter's dtype and shape, for a
    16-bit parameter (float32 and float64 ones are exact)."""
    if isinstance(param, np.ndarray) and _DTYPE(param).itemsize > 2:
        raise ValueError(f"{where} is given but its parameter is {_DTYPE(param)}: only bfloat16 "
                         "and float16 parameters have compensations")
    if not isinstance(comp, np.ndarray) or not isinstance(param, np.ndarray) \
            or _DTYPE(comp) != _DTYPE(param) or _SHAPE(comp) != _SHAPE(param):
        raise ValueError(f"{where} must be a NumPy array of its parameter's dtype and shape "
                         f"({_DTYPE(param) if isinstance(param, np.ndarray) else '?'}, "
                         f"{_SHAPE(param) if isinstance(param, np.ndarray) else '?'})")
    if not (comp.flags.c_contiguous and param.flags.c_contiguous) \
            and np.ndarray.strides.__get__(comp) != np.ndarray.strides.__get__(param):
        # a step pairs a compensation with its parameter in memory order: give it the
        # parameter's layout (a copy, as a loaded buffer is)
        laid_out = storage.new_like(param, _DTYPE(param), zero=False)
        laid_out[...] = comp
        return laid_out
    return np.ndarray.view(comp, np.ndarray)
