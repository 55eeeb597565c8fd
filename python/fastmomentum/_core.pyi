"""Type stubs for fastmomentum's compiled module (cpp/bindings).

Every list argument is a ``list`` or a ``tuple`` (the bindings' ``Items``: any other sequence is
rejected, since it might be an array's rows), and every array a float32/float64 ``ndarray``.
"""

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

_Array = NDArray[np.floating[Any]]
_Arrays = list[_Array] | tuple[_Array, ...]
# One bool for every array, or one per array (step_call.cpp's FirstStep).
_FirstStep = bool | list[bool] | tuple[bool, ...]
_Style = Literal["torch", "keras", "ema"]
_WeightDecayMode = Literal["coupled", "decoupled", "sgdw"]
# (applied, the gradients' norm when clipping else None, threads that ran)
_Outcome = tuple[bool, float | None, int]

__version__: str

def config() -> dict[str, Any]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def select_isa(name: str) -> None: ...
def set_grain_bytes(bytes: int) -> None: ...
def sgd_step(
    params: _Arrays,
    grads: _Arrays,
    buffers: _Arrays | None,
    first_step: _FirstStep,
    style: _Style,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    weight_decay_mode: _WeightDecayMode,
    schedule_multiplier: float,
    maximize: bool,
    /,
) -> int: ...
def sgd_step_guarded(
    params: _Arrays,
    grads: _Arrays,
    buffers: _Arrays | None,
    first_step: _FirstStep,
    style: _Style,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    weight_decay_mode: _WeightDecayMode,
    schedule_multiplier: float,
    maximize: bool,
    check_finite: bool,
    max_norm: float | None,
    loss_scale: float,
    /,
) -> _Outcome: ...
def sgd_steps(
    calls: list[tuple[Any, ...]] | tuple[tuple[Any, ...], ...],
    check_finite: bool = False,
    max_norm: float | None = None,
    loss_scale: float = 1.0,
) -> _Outcome: ...
def check_params(params: _Arrays, first_index: int) -> None: ...
def check_hyper(
    style: _Style,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    weight_decay_mode: _WeightDecayMode,
    schedule_multiplier: float,
    maximize: bool,
) -> None: ...
def rmw_reference(params: _Arrays, grads: _Arrays, buffers: _Arrays, scale: float) -> int: ...

class StepPlan:
    def __init__(
        self,
        param_groups: list[dict[str, Any]] | tuple[dict[str, Any], ...],
        states: list[list[dict[str, Any] | None]] | tuple[list[dict[str, Any] | None], ...],
        style: _Style,
        key: str,
    ) -> None: ...
    def step(
        self,
        param_groups: list[dict[str, Any]],
        grads: list[_Array | None] | tuple[_Array | None, ...],
        hypers: list[tuple[Any, ...]] | tuple[tuple[Any, ...], ...],
        check_finite: bool,
        max_norm: float | None,
        loss_scale: float,
    ) -> _Outcome | None: ...
