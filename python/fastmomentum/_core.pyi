"""Type stubs for fastmomentum's compiled module (cpp/bindings)."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Arrays = list[NDArray[np.floating[Any]]] | tuple[NDArray[np.floating[Any]], ...]

__version__: str

def config() -> dict[str, Any]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def select_isa(name: str) -> None: ...
def set_grain_bytes(bytes: int) -> None: ...
def sgd_step(
    params: _Arrays,
    grads: _Arrays,
    buffers: Sequence[NDArray[np.floating[Any]] | None] | None,
    first_step: bool | Sequence[bool],
    style: str,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    weight_decay_mode: str,
    schedule_multiplier: float,
    maximize: bool,
    /,
) -> int: ...
def sgd_step_guarded(
    params: _Arrays,
    grads: _Arrays,
    buffers: Sequence[NDArray[np.floating[Any]] | None] | None,
    first_step: bool | Sequence[bool],
    style: str,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    weight_decay_mode: str,
    schedule_multiplier: float,
    maximize: bool,
    check_finite: bool,
    max_norm: float | None,
    loss_scale: float,
    /,
) -> tuple[bool, float | None, int]: ...
def sgd_steps(
    calls: Sequence[tuple[Any, ...]],
    check_finite: bool = False,
    max_norm: float | None = None,
    loss_scale: float = 1.0,
) -> tuple[bool, float | None, int]: ...
def check_params(params: Sequence[NDArray[np.floating[Any]]], first_index: int) -> None: ...
def check_hyper(
    style: str,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    weight_decay_mode: str,
    schedule_multiplier: float,
    maximize: bool,
) -> None: ...
def rmw_reference(params: _Arrays, grads: _Arrays, buffers: _Arrays, scale: float) -> int: ...

class StepPlan:
    def __init__(
        self,
        param_groups: Sequence[dict[str, Any]],
        states: Sequence[Sequence[dict[str, Any] | None]],
        style: str,
        key: str,
    ) -> None: ...
    def step(
        self,
        param_groups: Sequence[dict[str, Any]],
        grads: Sequence[NDArray[np.floating[Any]] | None],
        hypers: Sequence[tuple[Any, ...]],
        check_finite: bool,
        max_norm: float | None,
        loss_scale: float,
    ) -> tuple[bool, float | None, int] | None: ...
