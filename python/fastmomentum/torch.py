"""``fastmomentum.torch.SGD``: a ``torch.optim.Optimizer`` stepped by fastmomentum's fused kernel.

It is ``torch.optim.SGD`` — the same arguments, defaults, errors, parameter groups (named ones
too), ``step(closure)``, ``zero_grad``, hooks, schedulers, ``state_dict`` — with ONE kernel call
per step for every parameter of every group (torch's CPU default loops over the tensors), and
fastmomentum's options as keywords: the Keras and EMA conventions, the three weight-decay forms,
the fused guards (non-finite gradients, clipping by the global norm), momentum stored in 16 bits
and bfloat16 parameters with Kahan compensation or stochastic rounding.

CPU tensors are updated in place through NumPy views of their memory (no copy; the tensors'
autograd version counters are bumped as an in-place update would), CUDA tensors by the CUDA
module on the current stream. torch is an optional dependency of this module only.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple, overload

import numpy as np
import torch
from torch.autograd.graph import increment_version
from torch.optim import Optimizer
from torch.optim import optimizer as _torch_optimizer

from . import _core, storage
from ._backend import Backend, backend_for
from ._protocol import Call, Guard, Hyper
from .guards import StepResult
from .optim import (
    _OPTIMIZERS,
    BUFFER_KEY,
    COMPENSATION_KEY,
    _busy_error,
    _new_call,
    _new_guard,
    _new_hyper,
    schedule_multiplier,
)

__all__ = ["SGD"]

Style = Literal["torch", "keras", "ema"]
WeightDecayMode = Literal["coupled", "decoupled", "sgdw"]
NonFinite = Literal["ignore", "skip", "raise"]
ParamRounding = Literal["nearest", "stochastic", "kahan"]
StateDtype = Literal["float32", "bfloat16", "float16"]

_STATE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NO_STATE: dict[str, Any] = {}
# The key of fastmomentum's own records in a state dict (torch.optim.SGD ignores it).
_RECORD_KEY = "fastmomentum"


# torch's global step hooks, in private dicts that registration fills in place; where this torch
# has none by these names, a stand-in that is never empty sends every step through its wrapper.
_ALWAYS: dict[Any, Any] = {None: None}
_GLOBAL_PRE_HOOKS = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", _ALWAYS)
_GLOBAL_POST_HOOKS = getattr(_torch_optimizer, "_global_optimizer_post_hooks", _ALWAYS)
_PROFILER = torch.autograd.profiler


# A step's calls, gradients, the parameters it updates (and where they are in the groups), and
# the state tensors it makes.
_Lists = tuple[list[Call], list[Any], list[torch.Tensor], list[tuple[int, int]],
               list[tuple[torch.Tensor, str, torch.Tensor]]]


class _Kept(NamedTuple):
    """What a step's lists were made from, for the next step to reuse them (_kept_lists)."""

    groups: list[tuple[dict[str, Any], Any, tuple[Any, ...]]]  # group, its params, their items
    # per parameter: (p, has a gradient, _param_key, plain, buffer, _state_key, compensation,
    # _state_key)
    items: list[tuple[Any, ...]]
    shapes: list[tuple[Any, ...]]  # per group: params, buffers, first index, compensations,
    # momentum on
    touched: list[torch.Tensor]
    where: list[tuple[int, int]]


class _Pending(NamedTuple):
    """A step whose kernels were called: what it made, and the counts before it."""

    outcome: Any  # _core.StepOutcome
    created: list[tuple[torch.Tensor, str, torch.Tensor]]
    touched: list[torch.Tensor]
    nonfinite: str  # the step's guard's
    iterations: int
    skipped_steps: int


def _param_key(t: torch.Tensor) -> tuple[Any, ...]:
    """What a kept array of parameter ``t`` depends on: its memory, layout, dtype and torch's
    lazy bits (a change of shape alone, at the same address and strides, the kernels refuse:
    the gradient's shape is not the array's)."""
    return (t.data_ptr(), t.stride(), t.dtype, t.is_conj(), t.is_neg())


def _state_key(t: torch.Tensor) -> tuple[Any, ...]:
    """What a kept array of state tensor ``t`` depends on: ``t.data = ...`` moves its memory
    (other changes of a state tensor's layout or dtype the kernels refuse)."""
    return (t.data_ptr(), t.dtype)


def _check_bits(t: torch.Tensor, at: str) -> None:
    """Refuses a tensor whose memory does not hold its values (torch's lazy conjugation and
    negation): the kernels read and write memory."""
    for lazy, bit, resolve in ((t.is_conj(), "conjugate", "resolve_conj"),
                               (t.is_neg(), "negative", "resolve_neg")):
        if lazy:
            raise RuntimeError(f"{at} has torch's {bit} bit set: its memory holds another value "
                               f"than the tensor; use a resolved tensor (t.{resolve}()) and keep "
                               "using that")


def _param_name(opt: Optimizer, group: int, position: int) -> str:
    """How errors name a parameter: by its group and position, and its name if it has one."""
    at = f"param_groups[{group}]['params'][{position}]"
    names = opt.param_groups[group].get("param_names")
    return f"{at} ({names[position]!r})" if names and position < len(names) else at


# The kernels' names of a step's arrays, numbered over the call.
_KERNEL_ARRAY = re.compile(r"\b(params|grads|buffers|velocities|compensations)\[(\d+)\]")


def _renamed(message: str, opt: Optimizer, where: Sequence[tuple[int, int]], key: str) -> str:
    """A kernel error's message with its arrays named as the optimizer's user knows them."""
    def name(m: re.Match[str]) -> str:
        k = int(m.group(2))
        if k >= len(where):
            return m.group(0)
        param = _param_name(opt, *where[k])
        kind = m.group(1)
        if kind == "params":
            return param
        if kind == "grads":
            return f"the .grad of {param}"
        return f"state[{param}][{COMPENSATION_KEY if kind == 'compensations' else key!r}]"

    # The kernels' advice to torch users names this optimizer: it is the one running.
    message = message.replace("; for PyTorch parameters use fastmomentum.torch.SGD", "")
    return _KERNEL_ARRAY.sub(name, message)


def _host_view(t: torch.Tensor) -> np.ndarray:
    """A NumPy array on ``t``'s memory (a CPU tensor): writes through it update ``t``. Complex
    tensors are seen as their real and imaginary parts (SGD's update is the same on both)."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16 of its own: ml_dtypes' is the kernels'
        return t.view(torch.int16).numpy().view(storage.bfloat16())
    return t.numpy()


def _device_view(t: torch.Tensor) -> torch.Tensor:
    """What the CUDA module takes for a CUDA tensor: the tensor without autograd."""
    t = t.detach()
    return torch.view_as_real(t) if t.is_complex() else t


class SGD(Optimizer):
    """``torch.optim.SGD`` on fastmomentum's kernels (its formula below, in the ``"torch"`` style).

    For each parameter ``p`` with gradient ``g`` (``b``: its ``state["momentum_buffer"]``)::

        g <- -g                          if maximize
        g <- g + wd*p                    weight_decay_mode="coupled" (default, torch's)
        p <- p * (1 - lr*wd)             weight_decay_mode="decoupled"
        p <- p * (1 - s*wd)              weight_decay_mode="sgdw" (s = lr / initial_lr)
        b <- g                           on p's first step with momentum
        b <- momentum*b + (1-dampening)*g
        g <- g + momentum*b if nesterov else b
        p <- p - lr*g

    Args:
        params, lr, momentum, dampening, weight_decay, nesterov, maximize: ``torch.optim.SGD``'s,
            with its defaults and its errors (``lr`` may be a one-element tensor).
        foreach, fused: accepted for compatibility (saved in the groups); every step is fused.
        differentiable: must be False: the step runs outside autograd.
        style: ``"torch"`` (default), ``"keras"`` (a velocity with the lr inside, state key
            ``"velocity"``) or ``"ema"`` (``b <- m*b + (1-m)*g``), as
            :class:`fastmomentum.SGD`; only ``"torch"``'s state is ``torch.optim.SGD``'s.
        weight_decay_mode: ``"coupled"``, ``"decoupled"`` or ``"sgdw"`` (default ``"coupled"``,
            ``"decoupled"`` for ``style="keras"``).
        nonfinite: ``"ignore"`` (default, torch's behaviour), ``"skip"`` (a step with a NaN or an
            infinity in any gradient changes nothing and counts in :attr:`skipped_steps`) or
            ``"raise"`` (``FloatingPointError``, nothing changed).
        max_grad_norm: clip by the global norm of all gradients, as
            ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm)`` before the step, fused into
            it (one read pass over the gradients instead of clip_grad_norm_'s two).
        state_dtype: the momentum buffers' storage: None (the parameter's dtype), ``"float32"``,
            ``"bfloat16"`` or ``"float16"`` (half the bytes; the update is float32, the buffer
            rounded to nearest).
        param_rounding: how bfloat16 and float16 parameters take their float32 update back:
            ``"nearest"`` (default: torch's, lossy for small updates), ``"kahan"`` (a
            compensation tensor in the state, key ``"compensation"``) or ``"stochastic"``
            (random numbers keyed by ``seed``, the step count and the element).
        seed: stochastic rounding's key, an int >= 0.

    Attributes:
        last_result: the last step's :class:`fastmomentum.StepResult` (skipped, the norm).
        iterations, skipped_steps: steps applied and skipped (saved in the state dict).

    ``torch.amp.GradScaler`` is supported the way it supports torch's fused optimizers: the step
    divides the gradients by the scale itself and applies nothing when the scaler found an
    infinity. All parameters must be on one device (one optimizer per device otherwise); a
    step's arrays are checked before any is written: a refused step changes nothing.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | torch.Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        style: Style = "torch",
        weight_decay_mode: WeightDecayMode | None = None,
        nonfinite: NonFinite = "ignore",
        max_grad_norm: float | None = None,
        state_dtype: StateDtype | None = None,
        param_rounding: ParamRounding = "nearest",
        seed: int = 0,
    ) -> None:
        # torch.optim.SGD's checks, in its order and words.
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if differentiable:
            raise RuntimeError("fastmomentum.torch.SGD does not support differentiable=True: "
                               "its step runs outside autograd; use torch.optim.SGD")
        if style not in BUFFER_KEY:
            raise ValueError(f"style must be 'torch', 'keras' or 'ema', got {style!r}")
        if state_dtype is not None and state_dtype not in _STATE_DTYPES:
            raise ValueError("state_dtype must be None, 'float32', 'bfloat16' or 'float16', got "
                             f"{state_dtype!r} (8-bit state: fastmomentum.SGD on NumPy arrays)")
        if param_rounding not in ("nearest", "stochastic", "kahan"):
            raise ValueError("param_rounding must be 'nearest', 'stochastic' or 'kahan', got "
                             f"{param_rounding!r}")
        if weight_decay_mode is None:
            weight_decay_mode = "decoupled" if style == "keras" else "coupled"
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize,
                    "foreach": foreach, "differentiable": differentiable, "fused": fused,
                    "weight_decay_mode": weight_decay_mode, "schedule_multiplier": None}
        self.style: Style = style
        self.nonfinite: NonFinite = nonfinite
        self.max_grad_norm = max_grad_norm
        self._state_dtype = state_dtype
        self._param_rounding: ParamRounding = param_rounding
        self._seed = int(_core.real(seed, "seed")) if not isinstance(seed, int) else seed
        if isinstance(seed, bool) or self._seed < 0 or self._seed >= 2**63:
            raise ValueError(f"seed must be an int >= 0 and < 2**63, got {seed!r}")
        _core.check_guard(self._guard(1.0))
        self.iterations = 0
        self.skipped_steps = 0
        self.last_result: StepResult | None = None
        self._pending: _Pending | None = None
        self._backend: Backend | None = None
        self._device: torch.device | None = None
        # The kernels' arrays of the parameters and of their state's tensors, kept between steps
        # (a NumPy view costs a microsecond, a small model's whole step a few), keyed by id:
        # torch hashes tensors in Python. Each holds its tensor, so no id is reused meanwhile.
        self._param_views: dict[int, tuple[torch.Tensor, Any, Any, bool]] = {}
        self._state_views: dict[tuple[int, str], tuple[torch.Tensor, tuple[Any, ...], Any]] = {}
        self._kept: _Kept | None = None  # the last step's lists (_kept_lists)
        self._busy = threading.Lock()  # held by the method that is running; never waited for
        super().__init__(params, defaults)
        _OPTIMIZERS.add(self)  # its lock is made new in a forked child

    # GradScaler hands this optimizer the scale and its verdict instead of unscaling the grads.
    _step_supports_amp_scaling = True

    # -- groups -----------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        busy = self._busy
        if not busy.acquire(False):
            raise _busy_error("add_param_group()")
        try:
            super().add_param_group(param_group)
            group = self.param_groups[-1]
            try:
                for p in group["params"]:
                    self._check_param(p)
                _core.check_hyper(self._hyper(group), self._dtypes(group["params"]))
            except BaseException:
                self.param_groups.pop()
                raise
        finally:
            busy.release()

    def _check_param(self, p: torch.Tensor) -> None:
        """A parameter the kernels can take: on this optimizer's device, dense (the kernels check
        layouts at every step; this is the early, clear error)."""
        if self._device is None:
            self._device = p.device
            self._backend = backend_for(_device_view(p)) if p.device.type == "cuda" else None
        elif p.device != self._device:
            raise ValueError(f"fastmomentum.torch.SGD updates the parameters of one device in one "
                             f"kernel call: this one has parameters on {self._device} and "
                             f"{p.device}; make one optimizer per device")
        if p.device.type not in ("cpu", "cuda"):
            raise ValueError(f"fastmomentum.torch.SGD updates CPU and CUDA tensors, not "
                             f"{p.device.type} ones; use torch.optim.SGD")
        if p.is_sparse or p.layout != torch.strided:
            raise ValueError(f"fastmomentum.torch.SGD updates dense (strided) tensors, not "
                             f"{p.layout} ones; use torch.optim.SGD")
        if p.dtype == torch.bfloat16 and self._backend is None:
            storage.bfloat16()  # NumPy's bfloat16 is ml_dtypes': names it when it is missing

    @staticmethod
    def _dtypes(params: Sequence[torch.Tensor]) -> tuple[str, ...]:
        """The kernels' dtypes among ``params``, for the hyper-parameters' checks."""
        names = {torch.float64: "float64", torch.complex128: "float64"}
        return tuple(sorted({names.get(p.dtype, "float32") for p in params}))

    # The settings a copy or a pickle keeps beside torch's (defaults, state, param_groups); the
    # kernels' arrays, the device and a step's record are made again.
    _SETTINGS = ("style", "nonfinite", "max_grad_norm", "_state_dtype", "_param_rounding",
                 "_seed", "iterations", "skipped_steps", "last_result")

    def __getstate__(self) -> dict[str, Any]:
        self._settle()
        state = dict(super().__getstate__())
        state.update({name: getattr(self, name) for name in self._SETTINGS})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch calls this from load_state_dict too, with the state and the groups only.
        super().__setstate__(state)
        if "_param_views" not in self.__dict__:  # unpickled or copied
            self._busy = threading.Lock()
            _OPTIMIZERS.add(self)
            self._param_views = {}
            self._state_views = {}
            self._kept = None
            self._pending = None
            self._backend = None
            self._device = None
            for group in self.param_groups:
                for p in group["params"]:
                    self._check_param(p)
        for group in self.param_groups:  # groups saved by torch.optim.SGD lack fastmomentum's
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)
            group.setdefault("weight_decay_mode",
                             "decoupled" if self.style == "keras" else "coupled")
            group.setdefault("schedule_multiplier", None)

    # -- stepping ---------------------------------------------------------------------------

    def _hyper(self, group: dict[str, Any]) -> Hyper:
        """The group's hyper-parameters now, as the kernels' parser takes them."""
        lr = group["lr"]
        lr = float(lr.detach()) if isinstance(lr, torch.Tensor) else lr
        momentum = group["momentum"]
        weight_decay = group["weight_decay"]
        if isinstance(weight_decay, torch.Tensor):
            weight_decay = float(weight_decay.detach())
        # While the momentum is 0 a step is plain SGD: torch ignores nesterov then (a scheduler
        # with cycle_momentum may take it there).
        nesterov = group["nesterov"] and momentum != 0
        s = (schedule_multiplier(group, lr, self.iterations)
             if group["weight_decay_mode"] == "sgdw" else 1.0)
        rounding = "stochastic" if self._param_rounding == "stochastic" else "nearest"
        return _new_hyper((self.style, lr, momentum, group["dampening"], nesterov, weight_decay,
                           group["weight_decay_mode"], s, group["maximize"], rounding,
                           self._seed, self.iterations))

    def _guard(self, loss_scale: float) -> Guard:
        return _new_guard((self.nonfinite, self.max_grad_norm, loss_scale, None, "torch", None))

    def _view(self, t: torch.Tensor) -> Any:
        return _host_view(t) if self._backend is None else _device_view(t)

    def _keep_param_view(self, p: torch.Tensor, at: str) -> tuple[Any, ...]:
        """``p``'s array for the kernels (``p`` is ``at``), kept while ``p`` keeps its memory,
        layout and dtype (its ``.data`` may be replaced between steps: ``model.to(...)``, then
        its state is converted to match), and whether NumPy takes ``p`` (so, as a rule, its
        gradient) as it is: a CPU tensor of a dtype NumPy has, not complex."""
        if p.is_inference():
            raise RuntimeError(f"{at} is an inference tensor: an in-place update outside "
                               "InferenceMode is not allowed (as in torch.optim.SGD)")
        _check_bits(p, at)
        view = self._view(p)
        plain = self._backend is None and p.dtype in (torch.float32, torch.float64,
                                                      torch.float16)
        kept = (p, _param_key(p), view, plain)
        self._param_views[id(p)] = kept
        self._match_state(p)
        return kept

    def _match_state(self, p: torch.Tensor) -> None:
        """Converts ``p``'s state tensors to its current dtype and layout, where a change of
        ``p.data`` (``model.to(memory_format=...)``, ``model.double()``) left them behind: the
        kernels update a parameter and its state in one memory order. The state entry takes
        the converted tensor (a reference held elsewhere to the old one is not updated)."""
        entry = self.state.get(p)
        if not entry:
            return
        low = self._state_dtype
        for key, dtype in ((BUFFER_KEY[self.style], p.dtype if low is None
                            else _STATE_DTYPES[low]), (COMPENSATION_KEY, p.dtype)):
            t = entry.get(key)
            if isinstance(t, torch.Tensor) and t.shape == p.shape and (
                    t.dtype != dtype or t.stride() != p.stride() or t.device != p.device):
                new = self._new_state_tensor(p, dtype, zero=False)
                new.copy_(t)
                entry[key] = new

    def _grad_view(self, g: torch.Tensor, at: str) -> Any:
        if g.is_sparse or g.layout != torch.strided:
            raise RuntimeError("fastmomentum.torch.SGD does not support sparse gradients "
                               f"({at}.grad is {g.layout}); use torch.optim.SGD")
        _check_bits(g, f"{at}.grad")
        return self._view(g)

    def _state_view(self, p: torch.Tensor, key: str, t: torch.Tensor) -> Any:
        """The array of state tensor ``t`` (``state[p][key]``), kept while it is the same tensor
        on the same memory (``t.data`` may be replaced, as people move optimizer state)."""
        kept = self._state_views.get((id(p), key))
        if kept is not None and kept[0] is t and kept[1] == _state_key(t):
            return kept[2]
        _check_bits(t, f"state[...][{key!r}]")
        view = self._view(t)
        self._state_views[(id(p), key)] = (t, _state_key(t), view)
        return view

    def _prune_views(self) -> None:
        """Drops the kept arrays of tensors no group holds (they would keep their memory)."""
        live = {id(p) for group in self.param_groups for p in group["params"]}
        self._param_views = {i: v for i, v in self._param_views.items() if i in live}
        self._state_views = {k: v for k, v in self._state_views.items() if k[0] in live}

    def _new_state_tensor(self, p: torch.Tensor, dtype: torch.dtype | None, zero: bool
                          ) -> torch.Tensor:
        """A buffer or compensation for ``p``: its layout (the kernels update a parameter, its
        gradient and its state in one memory order), on its device."""
        make = torch.zeros_like if zero else torch.empty_like
        return make(p, dtype=dtype, memory_format=torch.preserve_format)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a ``.grad``, in one fused kernel call.

        ``closure`` re-evaluates the model and returns the loss (run with grad enabled, as
        torch does). Returns the closure's loss. What the guards did is in :attr:`last_result`.
        Step hooks (the optimizer's and the global ones) and the profiler's record run as in
        torch; without them the step skips their wrapper, which costs more than a small model's
        whole update.
        """
        busy = self._busy  # the lock released is the one taken (a fork may replace it)
        if not busy.acquire(False):
            raise _busy_error("step()")
        try:
            if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                    or _GLOBAL_PRE_HOOKS or _GLOBAL_POST_HOOKS
                    or _PROFILER._is_profiler_enabled):
                return _HOOKED_STEP(self, closure)
            return self._step(closure)
        finally:
            busy.release()

    # torch's Optimizer.__init__ wraps a subclass's step in its hooks' wrapper unless the step
    # says it is hooked: this one calls that wrapper itself, when there is something to run.
    step.hooked = True  # type: ignore[attr-defined]

    def _step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        self._settle()
        if found_inf is not None and float(found_inf) != 0.0:
            # GradScaler saw an infinity or a NaN: torch's fused step applies nothing.
            self.skipped_steps += 1
            self.last_result = StepResult(skipped=True, grad_norm=None)
            return loss
        self._apply(self._guard(1.0 if grad_scale is None else float(grad_scale)))
        return loss

    def _apply(self, guard: Guard) -> None:
        key = BUFFER_KEY[self.style]
        hypers = [self._hyper(group) for group in self.param_groups]
        lists = self._kept_lists(hypers, key)
        if lists is None:
            lists = self._make_lists(hypers, key)
        calls, grads, touched, where, created = lists
        outcome = _core.StepOutcome()
        if not calls:  # no gradient at all: the step counts, as fastmomentum.SGD's does
            self.iterations += 1
            self.last_result = StepResult(skipped=False, grad_norm=None)
            return
        self._pending = _Pending(outcome, created, touched, guard.nonfinite, self.iterations,
                                 self.skipped_steps)
        try:
            try:
                if self._backend is None:
                    _core.sgd_steps(calls, grads, guard, outcome)
                else:
                    self._backend.steps(calls, grads, guard, outcome)
            finally:
                self._settle()  # the kernels' decision recorded, whatever is being raised
            self.last_result = outcome.result(grads)  # raises for nonfinite="raise"
        except (ValueError, TypeError, FloatingPointError) as e:
            # The kernels number the arrays of the call; the user knows the groups.
            raise type(e)(_renamed(str(e), self, where, key)) from None

    def _make_lists(self, hypers: Sequence[Hyper], key: str) -> _Lists:
        """A step's calls and gradients, every array looked up, made or converted as needed; and
        the record that lets the next step reuse them (_kept_lists) when this one made no state."""
        low = self._state_dtype
        state_dtype = None if low is None else _STATE_DTYPES[low]
        calls: list[Call] = []
        grads: list[Any] = []
        touched: list[torch.Tensor] = []
        where: list[tuple[int, int]] = []  # (group, position) of each kernel index
        created: list[tuple[torch.Tensor, str, torch.Tensor]] = []
        items: list[tuple[Any, ...]] = []  # per parameter, what _kept_lists checks
        shapes: list[tuple[Any, ...]] = []  # per group: its call's lists
        param_views = self._param_views
        torch_first = self.style == "torch"  # PyTorch's first step: b <- g
        kahan = self._param_rounding == "kahan"
        for gi, (group, hyper) in enumerate(zip(self.param_groups, hypers, strict=True)):
            has_momentum = hyper.momentum != 0
            params, buffers, first, compensations = [], [], [], []
            first_index = len(grads)
            for j, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    items.append((p, False, None, False, None, None, None, None))
                    continue
                kept = param_views.get(id(p))
                if kept is None or kept[1] != _param_key(p):
                    kept = self._keep_param_view(p, _param_name(self, gi, j))
                params.append(kept[2])
                if kept[3]:  # a CPU tensor NumPy sees as it is: its gradient too, as a rule
                    try:
                        grads.append(g.numpy())
                    except (TypeError, RuntimeError):  # it requires grad, has a neg bit, ...
                        grads.append(self._grad_view(g, _param_name(self, gi, j)))
                else:
                    grads.append(self._grad_view(g, _param_name(self, gi, j)))
                touched.append(p)
                where.append((gi, j))
                entry = self.state.get(p, _NO_STATE)  # (indexing would add an entry)
                buf = None
                if has_momentum:
                    buf = entry.get(key)
                    is_first = buf is None
                    if buf is None:
                        buf = self._new_state_tensor(p, state_dtype, zero=self.style != "torch")
                        created.append((p, key, buf))
                    buffers.append(self._state_view(p, key, buf))
                    first.append(is_first and torch_first)
                comp = None
                if kahan and p.dtype in (torch.bfloat16, torch.float16):
                    comp = entry.get(COMPENSATION_KEY)
                    if comp is None:
                        comp = self._new_state_tensor(p, None, zero=True)
                        created.append((p, COMPENSATION_KEY, comp))
                    compensations.append(self._state_view(p, COMPENSATION_KEY, comp))
                else:
                    compensations.append(None)
                items.append((p, True, kept[1], kept[3], buf,
                              None if buf is None else _state_key(buf), comp,
                              None if comp is None else _state_key(comp)))
            comps = compensations if any(c is not None for c in compensations) else None
            shapes.append((params, buffers if has_momentum else None, first_index, comps,
                           has_momentum))
            if params:
                calls.append(_new_call((params, buffers if has_momentum else None,
                                        first if has_momentum else False, hyper, first_index,
                                        comps)))
        if len(self._param_views) > sum(len(group["params"]) for group in self.param_groups):
            self._prune_views()  # a parameter left the groups: its kept array goes too
        self._kept = None if created else _Kept(
            [(group, group["params"], tuple(group["params"])) for group in self.param_groups],
            items, shapes, touched, where)
        return calls, grads, touched, where, created

    def _kept_lists(self, hypers: Sequence[Hyper], key: str) -> _Lists | None:
        """The last step's lists again, with this step's gradients and hyper-parameters, if
        nothing they depend on changed: the groups and their parameters, which parameters have a
        gradient, each parameter's and state tensor's memory, layout and dtype, the state's
        tensors, the momentum on or off. None otherwise (_make_lists looks everything up)."""
        kept = self._kept
        if kept is None or len(kept.groups) != len(self.param_groups):
            return None
        for (group, params, snapshot), now in zip(kept.groups, self.param_groups, strict=True):
            if now is not group or group["params"] is not params \
                    or not _core.same_items(params, snapshot):
                return None
        state = self.state
        grads: list[Any] = []
        view = self._view
        for p, used, pkey, plain, buf, bkey, comp, ckey in kept.items:
            g = p.grad
            if not used:
                if g is not None:
                    return None
                continue
            if g is None or _param_key(p) != pkey:
                return None
            if buf is not None or comp is not None:
                entry = state.get(p)
                if entry is None or (buf is not None and (
                        entry.get(key) is not buf or _state_key(buf) != bkey)) or (
                        comp is not None and (entry.get(COMPENSATION_KEY) is not comp
                                              or _state_key(comp) != ckey)):
                    return None
            if plain:
                try:
                    grads.append(g.numpy())
                except (TypeError, RuntimeError):
                    return None  # (_make_lists says why, or takes it)
            elif g.is_sparse or g.layout != torch.strided or g.is_conj() or g.is_neg():
                return None
            else:
                grads.append(view(g))
        calls: list[Call] = []
        for hyper, (params, buffers, first_index, comps, has_momentum) in zip(
                hypers, kept.shapes, strict=True):
            if (hyper.momentum != 0) != has_momentum:
                return None
            if params:
                calls.append(_new_call((params, buffers, False, hyper, first_index, comps)))
        return calls, grads, kept.touched, kept.where, []

    def _settle(self) -> None:
        """Records what the last step's kernels did: the state tensors it made, the counts. A step
        records itself in a ``finally`` block; should an interrupt cut that short, the next step
        or state dict completes it (every assignment is of the value it takes after the step,
        and a second bump of the version counters is harmless)."""
        pending = self._pending
        if pending is None:
            return
        outcome = pending.outcome
        if outcome.ran and outcome.applied:
            for p, key, t in pending.created:
                self.state[p][key] = t
            self.iterations = pending.iterations + 1
            increment_version(pending.touched)  # as torch's in-place update: autograd sees it
        elif outcome.ran and pending.nonfinite == "skip":
            self.skipped_steps = pending.skipped_steps + 1
        self._pending = None

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.SGD``'s state dict (``torch.optim.SGD`` loads it, and this loads its),
        with this optimizer's counts under the key ``"fastmomentum"``."""
        busy = self._busy
        if self._pending is not None and busy.acquire(False):  # (not inside a running step)
            try:
                self._settle()
            finally:
                busy.release()
        out = super().state_dict()
        out[_RECORD_KEY] = {"iterations": self.iterations, "skipped_steps": self.skipped_steps}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads this optimizer's or ``torch.optim.SGD``'s state dict. Buffers are stored as this
        optimizer's ``state_dtype`` (torch casts them to the parameters' dtype) and in their
        parameters' memory layout. A state tensor whose shape is not its parameter's is refused
        (naming it) before anything is replaced."""
        busy = self._busy
        if not busy.acquire(False):
            raise _busy_error("load_state_dict()")
        try:
            self._settle()
            self._check_shapes(state_dict)
            record = state_dict.get(_RECORD_KEY, {})
            iterations = int(record.get("iterations", 0))
            skipped = int(record.get("skipped_steps", 0))
            super().load_state_dict({k: v for k, v in state_dict.items() if k != _RECORD_KEY})
            for p in list(self.state):
                self._match_state(p)
            self._state_views.clear()
            self._kept = None
            self.iterations, self.skipped_steps = iterations, skipped
        finally:
            busy.release()

    def _check_shapes(self, state_dict: dict[str, Any]) -> None:
        """Each saved state tensor has its parameter's shape (torch's load would broadcast it
        into the layout conversion, or fail half-way)."""
        saved = state_dict.get("param_groups")
        state = state_dict.get("state")
        if not isinstance(saved, list) or not isinstance(state, dict):
            return  # torch's load says what is wrong
        ids = [i for group in saved if isinstance(group, dict) for i in group.get("params", ())]
        params = [p for group in self.param_groups for p in group["params"]]
        if len(ids) != len(params):
            return
        for i, p in zip(ids, params, strict=True):
            entry = state.get(i)
            if not isinstance(entry, dict):
                continue
            for key, value in entry.items():
                shape = getattr(value, "shape", None)
                if key in (BUFFER_KEY[self.style], COMPENSATION_KEY) and shape is not None \
                        and tuple(shape) != tuple(p.shape):
                    raise ValueError(f"state[{i!r}][{key!r}] has shape {tuple(shape)} but its "
                                     f"parameter has shape {tuple(p.shape)}; this state dict is "
                                     "not for these parameters (nothing was loaded)")


# torch's wrapper of a step in its hooks and the profiler's record.
_HOOKED_STEP = Optimizer.profile_hook_step(SGD._step)
