"""Type stubs for fastmomentum's compiled module (cpp/bindings).

Every list argument is a ``list`` or a ``tuple`` (any other sequence is rejected, since it might be
an array's rows; a subclass is read from its storage), and every array a float32/float64
``ndarray`` (or, for the functional entry points, a CUDA array handed to the CUDA backend).
"""

from collections.abc import Callable, Sequence
from typing import Any

from ._protocol import Call, Guard, Hyper
from .functional import Arrays, Buffers, Compensations, FirstStep, Rounding, WeightDecayMode
from .guards import NonFinite, StepResult

_Seq = Sequence[Any]  # a list or tuple at run time

__version__: str
cuda_not_built: str
HYPER_FIELDS: tuple[str, ...]
CALL_FIELDS: tuple[str, ...]
GUARD_FIELDS: tuple[str, ...]
QUANT_BLOCK: int

def config() -> dict[str, Any]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def select_isa(name: str) -> None: ...
def set_grain_bytes(bytes: int) -> None: ...

class StepOutcome:
    def __init__(self) -> None: ...
    @property
    def ran(self) -> bool: ...
    @property
    def applied(self) -> bool: ...
    @property
    def norm(self) -> float | None: ...
    @property
    def threads(self) -> int: ...
    def result(self, grads: Sequence[Any]) -> StepResult: ...

def sgd_steps(calls: Sequence[Call], grads: Sequence[Any], guard: Guard,
              outcome: StepOutcome) -> None: ...
def real(value: object, name: str) -> float: ...
def check_hyper(hyper: Hyper, dtypes: Sequence[str] = (), guard: Guard | None = None) -> None: ...
def check_guard(guard: Guard) -> None: ...
def check_params(params: _Seq, first_index: int) -> None: ...
def grad_stats(grads: _Seq) -> tuple[bool, float]: ...
def same_items(a: _Seq, b: _Seq) -> bool: ...
def convert(src: Any, dst: Any, src_name: str = "src") -> None: ...
def bandwidth_probe(params: _Seq, grads: _Seq, buffers: _Seq, scale: float) -> int: ...
def _bind(step_result: type[StepResult], nonfinite_error: Callable[[Sequence[Any]], BaseException],
          device_step: Callable[..., Any]) -> None: ...
def _set_doc(name: str, doc: str) -> None: ...
def sgd_(
    params: Arrays,
    grads: Arrays,
    buffers: Buffers | None = None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    weight_decay_mode: WeightDecayMode = "coupled",
    schedule_multiplier: float = 1.0,
    maximize: bool = False,
    first_step: FirstStep = False,
    nonfinite: NonFinite = "ignore",
    max_grad_norm: float | None = None,
    loss_scale: float = 1.0,
    compensations: Compensations | None = None,
    rounding: Rounding = "nearest",
    seed: int = 0,
    step: int = 0,
) -> StepResult: ...
def keras_sgd_(
    params: Arrays,
    grads: Arrays,
    velocities: Buffers | None = None,
    *,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    weight_decay_mode: WeightDecayMode = "decoupled",
    schedule_multiplier: float = 1.0,
    maximize: bool = False,
    nonfinite: NonFinite = "ignore",
    max_grad_norm: float | None = None,
    loss_scale: float = 1.0,
    global_clipnorm: float | None = None,
    clipvalue: float | None = None,
    compensations: Compensations | None = None,
    rounding: Rounding = "nearest",
    seed: int = 0,
    step: int = 0,
) -> StepResult: ...
def ema_sgd_(
    params: Arrays,
    grads: Arrays,
    buffers: Buffers | None = None,
    *,
    lr: float,
    beta: float,
    weight_decay: float = 0.0,
    weight_decay_mode: WeightDecayMode = "coupled",
    schedule_multiplier: float = 1.0,
    maximize: bool = False,
    nonfinite: NonFinite = "ignore",
    max_grad_norm: float | None = None,
    loss_scale: float = 1.0,
    compensations: Compensations | None = None,
    rounding: Rounding = "nearest",
    seed: int = 0,
    step: int = 0,
) -> StepResult: ...
