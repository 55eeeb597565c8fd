"""Type stubs for fastmomentum's CUDA module (cpp/cuda), present when it was built.

Arrays are CUDA arrays: objects with ``__cuda_array_interface__`` or ``__dlpack__`` on a CUDA
device (CuPy arrays, PyTorch CUDA tensors), typed ``Any`` since no library's type is required.
"""

from typing import Any, TypedDict

# (applied, the gradients' norm when clipping else None, 0: no host threads)
_Outcome = tuple[bool, float | None, int]

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

def sgd_steps(
    calls: list[tuple[Any, ...]] | tuple[tuple[Any, ...], ...],
    check_finite: bool,
    max_norm: float | None,
    loss_scale: float,
    stream: int,
) -> _Outcome: ...
def check_params(params: list[Any] | tuple[Any, ...], first_index: int) -> int: ...
def devices() -> _Devices: ...
def build() -> _Build: ...
