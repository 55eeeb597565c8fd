"""CUDA arrays: whether the CUDA module was built and can run here, which arrays are on a GPU, and
what their own library (CuPy or PyTorch) does for the optimizer: state on the arrays' device,
copies to and from the host, the stream a step runs on.

A step routes here only when its first parameter is a device array; host (NumPy) steps never
import or call anything in this module on their hot path.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

_cuda: ModuleType | None
try:
    from . import _cuda
except ImportError:  # built without a CUDA compiler, or with FASTMOMENTUM_CUDA=OFF
    _cuda = None

__all__ = ["cuda_status", "is_device_array", "on_device"]

# DLPack's device types for memory a CUDA kernel can update: kDLCUDA and kDLCUDAManaged.
_CUDA_DEVICE_TYPES = (2, 13)
# __cuda_array_interface__'s name for the legacy default stream (0 is not allowed there).
_LEGACY_DEFAULT_STREAM = 1
_NOT_BUILT = ("not built (no CUDA compiler was found when this fastmomentum was built, or it "
              "was built with FASTMOMENTUM_CUDA=OFF)")


def cuda_status() -> str:
    """One line for :func:`fastmomentum.show_config`: whether the CUDA module was built, for which
    architectures, and which devices it can use here, or why it can use none."""
    if _cuda is None:
        return _NOT_BUILT
    build = _cuda.build()
    runtime = build["runtime_version"]
    head = (f"built (CUDA {runtime // 1000}.{runtime % 1000 // 10}, architectures "
            f"{build['architectures']})")
    found = _cuda.devices()
    if found["devices"]:
        names = ", ".join(f"{d['index']}: {d['name']} (compute capability "
                          f"{d['compute_capability']})" for d in found["devices"])
        return f"{head}; devices {names}"
    reason = found["error"] or "CUDA reports no device"
    if build["driver_version"] == 0:
        reason += " (no NVIDIA driver is loaded)"
    return f"{head}; no usable device: {reason}"


def no_device_reason() -> str | None:
    """Why fastmomentum cannot run on a GPU here, or ``None`` when it can."""
    if _cuda is None:
        return f"fastmomentum's CUDA module is {_NOT_BUILT}"
    found = _cuda.devices()
    return None if found["devices"] else f"no usable CUDA device: {found['error']}"


def is_device_array(x: Any) -> bool:
    """Whether ``x`` is in CUDA memory: its ``__dlpack_device__`` says CUDA, or (without one) it
    has a ``__cuda_array_interface__``. NumPy arrays and PyTorch CPU tensors are not."""
    if type(x) is np.ndarray:
        return False
    device = getattr(x, "__dlpack_device__", None)
    if device is not None:
        try:
            return int(device()[0]) in _CUDA_DEVICE_TYPES
        except Exception:  # a producer that cannot say is not one we can use
            return False
    return hasattr(x, "__cuda_array_interface__")


def on_device(params: Any) -> bool:
    """Whether a step on ``params`` (a list or tuple of arrays) goes to the CUDA kernels: its
    first array decides, and the kernels reject any other array that is not on the same GPU."""
    return isinstance(params, (list, tuple)) and len(params) > 0 and is_device_array(params[0])


def cuda_module(what: Any) -> ModuleType:
    """The CUDA module, or a ``RuntimeError`` saying why ``what`` (a device array) cannot be
    updated here."""
    if _cuda is None:
        raise RuntimeError(f"{type(what).__module__}.{type(what).__name__} is a CUDA array, but "
                           f"fastmomentum's CUDA module is {_NOT_BUILT}; reinstall with nvcc on "
                           "PATH (FASTMOMENTUM_CUDA=ON makes a missing compiler a build error)")
    return _cuda


def steps(calls: Sequence[tuple[Any, ...]], check_finite: bool, max_norm: float | None,
          loss_scale: float) -> tuple[bool, float | None, int]:
    """``_core.sgd_steps`` for device arrays, on the stream of the first parameter's library."""
    first = calls[0][0][0]
    outcome: tuple[bool, float | None, int] = cuda_module(first).sgd_steps(
        calls, check_finite, max_norm, loss_scale, stream_of(first))
    return outcome


def check_params(params: Sequence[Any], first_index: int) -> None:
    """``_core.check_params`` for device arrays (and that all are on one device)."""
    if params:
        cuda_module(params[0]).check_params(params, first_index)


def _library(x: Any) -> str:
    return type(x).__module__.split(".", 1)[0]


def stream_of(x: Any) -> int:
    """The stream a step on ``x`` runs on, as ``__cuda_array_interface__`` numbers streams: the
    current stream of ``x``'s library on its device (PyTorch, CuPy), else the stream its array
    interface names, else the legacy default stream."""
    library = _library(x)
    if library == "torch":
        torch = sys.modules["torch"]
        return int(torch.cuda.current_stream(x.device).cuda_stream) or _LEGACY_DEFAULT_STREAM
    if library == "cupy":
        cupy = sys.modules["cupy"]
        with x.device:
            return int(cupy.cuda.get_current_stream().ptr) or _LEGACY_DEFAULT_STREAM
    interface = getattr(x, "__cuda_array_interface__", None)
    stream = interface.get("stream") if isinstance(interface, dict) else None
    return int(stream) if stream else _LEGACY_DEFAULT_STREAM


def _unsupported(x: Any, what: str) -> TypeError:
    return TypeError(f"{what} of {type(x).__module__}.{type(x).__name__} arrays is not supported: "
                     "fastmomentum creates and copies device state with CuPy or PyTorch (pass "
                     "the buffers yourself to fastmomentum.functional for other libraries)")


def new_buffer(like: Any, zero: bool) -> Any:
    """A C-contiguous array of ``like``'s shape and dtype on ``like``'s device, made by ``like``'s
    own library; zeros, or uninitialised when the first step writes it whole."""
    library = _library(like)
    if library == "torch":
        torch = sys.modules["torch"]
        make = torch.zeros_like if zero else torch.empty_like
        return make(like, memory_format=torch.contiguous_format)
    if library == "cupy":
        cupy = sys.modules["cupy"]
        with like.device:
            return (cupy.zeros if zero else cupy.empty)(like.shape, like.dtype)
    raise _unsupported(like, "optimizer state")


def to_host(x: Any) -> np.ndarray:
    """A NumPy copy of device array ``x``."""
    library = _library(x)
    if library == "torch":
        return np.asarray(x.detach().cpu().numpy())
    if library == "cupy":
        return np.asarray(x.get())
    raise _unsupported(x, "copying to the host")


def to_device_like(host: np.ndarray, like: Any) -> Any:
    """A C-contiguous copy of ``host`` on ``like``'s device, in ``like``'s dtype and library."""
    host = np.ascontiguousarray(host, dtype=np.dtype(str(like.dtype).rsplit(".", 1)[-1]))
    library = _library(like)
    if library == "torch":
        torch = sys.modules["torch"]
        return torch.from_numpy(host).to(like.device)
    if library == "cupy":
        cupy = sys.modules["cupy"]
        with like.device:
            return cupy.asarray(host)
    raise _unsupported(like, "loading state")
