"""Type stubs for fastmomentum's CUDA module (cpp/cuda), present when it was built.

Arrays are CUDA arrays: objects with ``__cuda_array_interface__`` or ``__dlpack__`` on a CUDA
device (CuPy arrays, PyTorch CUDA tensors), typed ``Any`` since no library's type is required.
"""

from collections.abc import Sequence
from typing import Any, TypedDict

from ._core import StepOutcome
from ._protocol import Call, Guard

class _Device(TypedDict):
    index: int
    name: str
    compute_capability: str
    memory_bytes: int

class _Devices(TypedDict):
    devices: list[_Device]
    error: str | None

class _Build(TypedDict):
    runtime_version: int
    driver_version: int
    architectures: str

def sgd_steps(calls: Sequence[Call], grads: Sequence[Any], guard: Guard, outcome: StepOutcome,
              stream: int) -> None: ...
def check_params(params: Sequence[Any], first_index: int) -> int: ...
def devices() -> _Devices: ...
def build() -> _Build: ...
