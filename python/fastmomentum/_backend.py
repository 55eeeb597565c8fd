"""Where a step runs: the host (NumPy arrays, the ``_core`` module) or a CUDA device (CuPy arrays,
PyTorch CUDA tensors, anything with ``__cuda_array_interface__`` or ``__dlpack__``, the ``_cuda``
module). The choice is made once, by :func:`backend_for`, from one array: per call by the
functional steps (the compiled entry points ask :func:`device_steps_for` when their first
parameter is not a NumPy array), per optimizer by :class:`fastmomentum.SGD`. Everything that
depends on the array library — its current stream, how it allocates state, how it copies to and
from the host — is in one :class:`Adapter` per library, here, so that another array family is one
more adapter in this file.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from . import _core, storage
from ._protocol import Call, Guard, Hyper

_cuda: ModuleType | None
try:
    from . import _cuda
except ImportError:  # built without a CUDA compiler, or with FASTMOMENTUM_CUDA=OFF
    _cuda = None

__all__ = ["HOST", "Backend", "backend_for", "cuda_status", "is_device_array"]

# DLPack's device types for memory a CUDA kernel can update: kDLCUDA and kDLCUDAManaged.
_CUDA_DEVICE_TYPES = (2, 13)
# __cuda_array_interface__'s name for the legacy default stream (0 is not allowed there).
_LEGACY_DEFAULT_STREAM = 1


class Backend(Protocol):
    """What a step and an optimizer need from where their arrays live."""

    #: Whether the arrays are in CUDA memory.
    on_device: bool

    def steps(self, calls: Sequence[Call], grads: Sequence[Any], guard: Guard,
              outcome: Any) -> None:
        """Check every array of every call, then update them (``_core.sgd_steps``' contract)."""

    def check_params(self, params: Sequence[Any], first_index: int) -> None:
        """Check arrays as a step checks its params, and that none shares memory."""

    def new_buffers(self, params: Sequence[Any], zero: bool,
                    state_dtype: str | None = None) -> list[Any]:
        """Momentum buffers shaped like ``params`` (zeros, or uninitialised where the first step
        writes them whole), stored as ``state_dtype`` (None: each parameter's dtype;
        :mod:`fastmomentum.storage`)."""

    def dtypes(self, params: Sequence[Any]) -> tuple[str, ...]:
        """The kernels' dtypes among ``params`` (``"float32"``, ``"float64"``), for the checks of
        a hyper-parameter that depend on them (``_core.check_hyper``)."""

    def to_host(self, x: Any) -> np.ndarray:
        """A NumPy copy of ``x`` (the array itself on the host)."""

    def from_host(self, host: np.ndarray, like: Any) -> Any:
        """A new array with ``host``'s values, ``like``'s dtype, device, library and memory layout
        (a dense ``like``'s strides, as a step requires of its buffers)."""


# ndarray's own shape and dtype getters, which a subclass's properties cannot replace.
_SHAPE: Callable[[np.ndarray], tuple[int, ...]] = np.ndarray.shape.__get__
_DTYPE: Callable[[np.ndarray], np.dtype[Any]] = np.ndarray.dtype.__get__


class HostBackend:
    """NumPy arrays, updated by the CPU kernels of ``_core``."""

    on_device = False

    def steps(self, calls: Sequence[Call], grads: Sequence[Any], guard: Guard,
              outcome: Any) -> None:
        _core.sgd_steps(calls, grads, guard, outcome)

    def check_params(self, params: Sequence[Any], first_index: int) -> None:
        _core.check_params(params, first_index)

    def new_buffers(self, params: Sequence[Any], zero: bool,
                    state_dtype: str | None = None) -> list[Any]:
        """Views into ONE block per dtype, in order, so that parameters adjacent in memory (e.g.
        a :class:`fastmomentum.flat.FlatGroup`) get adjacent buffers, which the kernel updates as
        one span. A parameter that is not C-contiguous gets an array of its own with its layout
        (a step requires it: :func:`fastmomentum.storage.new_like`). 8-bit buffers
        (``state_dtype="int8"``) are one per parameter."""
        if state_dtype == "int8":
            return [storage.QuantizedBuffer.zeros(_SHAPE(p)) if isinstance(p, np.ndarray)
                    else None for p in params]
        out: list[Any] = [None] * len(params)  # None where a param is no array: the step's
        # check names it before reaching its buffer. Shapes and dtypes are read from the arrays'
        # C structs, as the step's check reads them (a subclass's properties never run).
        arrays = []
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                continue
            dtype = _DTYPE(p) if state_dtype is None else storage.dtype_of(state_dtype)
            if p.flags.c_contiguous:
                arrays.append((i, _SHAPE(p), dtype))
            else:
                out[i] = storage.new_like(p, dtype, zero)
        for dtype in {dtype for _, _, dtype in arrays}:
            chosen = [(i, shape) for i, shape, d in arrays if d == dtype]
            total = sum(math.prod(shape) for _, shape in chosen)
            block = (np.zeros if zero else np.empty)(total, dtype)
            offset = 0
            for i, shape in chosen:
                size = math.prod(shape)
                out[i] = block[offset:offset + size].reshape(shape)
                offset += size
        return out

    def dtypes(self, params: Sequence[Any]) -> tuple[str, ...]:
        return _kernel_dtypes(_DTYPE(p) for p in params if isinstance(p, np.ndarray))

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_host(self, host: np.ndarray, like: Any) -> Any:
        out = storage.new_like(like, like.dtype, zero=False)  # like's layout, as a step needs
        out[...] = host
        return out


class Adapter(Protocol):
    """What the CUDA backend needs from one array library."""

    def stream(self, x: Any) -> int:
        """The stream a step on ``x`` runs on, as ``__cuda_array_interface__`` numbers streams."""

    def new_array(self, like: Any, zero: bool) -> Any:
        """A new array of ``like``'s shape, dtype and memory layout on its device."""

    def to_host(self, x: Any) -> np.ndarray:
        """A NumPy copy of ``x``."""

    def to_device(self, host: np.ndarray, like: Any = None) -> Any:
        """A C-contiguous copy of ``host`` on ``like``'s device (the library's current device
        without one), in ``host``'s dtype."""


class TorchAdapter:
    """PyTorch CUDA tensors: the current stream of their device, torch's allocator."""

    def stream(self, x: Any) -> int:
        torch = sys.modules["torch"]
        return int(torch.cuda.current_stream(x.device).cuda_stream) or _LEGACY_DEFAULT_STREAM

    def new_array(self, like: Any, zero: bool) -> Any:
        torch = sys.modules["torch"]
        make = torch.zeros_like if zero else torch.empty_like
        # a dense tensor's strides (channels_last too), as a step requires of its buffers
        return make(like, memory_format=torch.preserve_format)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x.detach().cpu().numpy())

    def to_device(self, host: np.ndarray, like: Any = None) -> Any:
        torch = sys.modules["torch"]
        return torch.from_numpy(host).to("cuda" if like is None else like.device)


class CupyAdapter:
    """CuPy arrays: the current stream on their device, CuPy's allocator."""

    def stream(self, x: Any) -> int:
        cupy = sys.modules["cupy"]
        with x.device:
            return int(cupy.cuda.get_current_stream().ptr) or _LEGACY_DEFAULT_STREAM

    def new_array(self, like: Any, zero: bool) -> Any:
        cupy = sys.modules["cupy"]
        with like.device:  # order "K": like's layout, as a step requires of its buffers
            return (cupy.zeros_like if zero else cupy.empty_like)(like, order="K")

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x.get())

    def to_device(self, host: np.ndarray, like: Any = None) -> Any:
        cupy = sys.modules["cupy"]
        if like is None:
            return cupy.asarray(host)
        with like.device:
            return cupy.asarray(host)


class InterfaceAdapter:
    """Any other CUDA array: steps run on the stream its ``__cuda_array_interface__`` names (else
    the legacy default stream); state cannot be made or copied without its library."""

    def stream(self, x: Any) -> int:
        interface = getattr(x, "__cuda_array_interface__", None)
        stream = interface.get("stream") if isinstance(interface, dict) else None
        return int(stream) if stream else _LEGACY_DEFAULT_STREAM

    def _unsupported(self, x: Any, what: str) -> TypeError:
        return TypeError(f"{what} of {type(x).__module__}.{type(x).__name__} arrays is not "
                         "supported: fastmomentum creates and copies device state with CuPy or "
                         "PyTorch (pass the buffers yourself to fastmomentum.functional for other "
                         "libraries)")

    def new_array(self, like: Any, zero: bool) -> Any:
        raise self._unsupported(like, "optimizer state")

    def to_host(self, x: Any) -> np.ndarray:
        raise self._unsupported(x, "copying to the host")

    def to_device(self, host: np.ndarray, like: Any = None) -> Any:
        raise self._unsupported(like, "loading state")


#: The adapter of each library with one, by its top-level module's name.
ADAPTERS: dict[str, Adapter] = {"torch": TorchAdapter(), "cupy": CupyAdapter()}


class CudaBackend:
    """CUDA arrays of one library, updated by the CUDA kernels of ``_cuda`` on that library's
    current stream (of the first parameter's device)."""

    on_device = True

    def __init__(self, module: ModuleType, adapter: Adapter) -> None:
        self._cuda = module
        self._adapter = adapter

    def steps(self, calls: Sequence[Call], grads: Sequence[Any], guard: Guard,
              outcome: Any) -> None:
        first = next((c.params[0] for c in calls if len(c.params)), None)
        stream = _LEGACY_DEFAULT_STREAM if first is None else self._adapter.stream(first)
        self._cuda.sgd_steps(calls, grads, guard, outcome, stream)

    def check_params(self, params: Sequence[Any], first_index: int) -> None:
        self._cuda.check_params(params, first_index)

    def new_buffers(self, params: Sequence[Any], zero: bool,
                    state_dtype: str | None = None) -> list[Any]:
        if state_dtype is not None:  # fm.SGD refuses it at construction
            raise ValueError("low-precision state (state_dtype) is for NumPy arrays")
        return [self._adapter.new_array(p, zero) if is_device_array(p) else None for p in params]

    def dtypes(self, params: Sequence[Any]) -> tuple[str, ...]:
        return _kernel_dtypes(_numpy_dtype(p) for p in params if is_device_array(p))

    def to_host(self, x: Any) -> np.ndarray:
        return x if isinstance(x, np.ndarray) else self._adapter.to_host(x)

    def from_host(self, host: np.ndarray, like: Any) -> Any:
        values = np.ascontiguousarray(host, dtype=_numpy_dtype(like))
        out = self._adapter.new_array(like, zero=False)  # like's layout, as a step requires
        if out.flags.c_contiguous if hasattr(out, "flags") else out.is_contiguous():
            return self._adapter.to_device(values, like)
        out[...] = self._adapter.to_device(values, like)  # the library's own copy, on the device
        return out


def _numpy_dtype(x: Any) -> np.dtype[Any]:
    """A device array's dtype as NumPy's (``torch.float32`` -> ``float32``; anything else that is
    no NumPy dtype name raises, as the step's check would refuse it)."""
    return np.dtype(str(x.dtype).rsplit(".", 1)[-1])


def _kernel_dtypes(dtypes: Iterable[np.dtype[Any]]) -> tuple[str, ...]:
    """The names of the dtypes the kernels take among ``dtypes``, in a fixed order."""
    names = {d.name for d in dtypes}
    return tuple(name for name in ("float32", "float64", "bfloat16", "float16") if name in names)


HOST = HostBackend()


def is_device_array(x: Any) -> bool:
    """Whether ``x`` is in CUDA memory: its ``__dlpack_device__`` says CUDA, or (without one) it
    has a ``__cuda_array_interface__``. NumPy arrays and PyTorch CPU tensors are not."""
    if isinstance(x, np.ndarray):
        return False
    device = getattr(x, "__dlpack_device__", None)
    if device is not None:
        try:
            return int(device()[0]) in _CUDA_DEVICE_TYPES
        except Exception:  # a producer that cannot say is not one we can use
            return False
    return hasattr(x, "__cuda_array_interface__")


def adapter_for(x: Any) -> Adapter:
    """The adapter of ``x``'s library."""
    return ADAPTERS.get(type(x).__module__.split(".", 1)[0], InterfaceAdapter())


def backend_for(x: Any) -> Backend:
    """The backend of a step or optimizer whose first array is ``x``: the CUDA one for a device
    array (``RuntimeError`` when the CUDA module was not built), else the host."""
    if not is_device_array(x):
        return HOST
    if _cuda is None:
        raise RuntimeError(f"{type(x).__module__}.{type(x).__name__} is a CUDA array, but "
                           f"fastmomentum's CUDA module is {_not_built()}")
    return CudaBackend(_cuda, adapter_for(x))


def device_step(x: Any, call: tuple[Any, ...], grads: Sequence[Any],
                guard: tuple[Any, ...]) -> Any:
    """For the functional entry points, whose first parameter ``x`` is not a NumPy array: runs
    the step (a :class:`Call`'s and a :class:`Guard`'s fields) through the CUDA backend and
    returns its ``_core.StepOutcome`` when ``x`` is a device array; else None, and the host
    refuses the arrays."""
    backend = backend_for(x)
    if not backend.on_device:
        return None
    params, buffers, first_step, hyper, first_index, compensations = call
    outcome = _core.StepOutcome()
    backend.steps([Call(params, buffers, first_step, Hyper(*hyper), first_index, compensations)],
                  grads, Guard(*guard), outcome)
    return outcome


def to_host(x: Any) -> np.ndarray:
    """A NumPy copy of a device array, or the NumPy array itself."""
    return backend_for(x).to_host(x)


def _not_built() -> str:
    """Why there is no CUDA module, as the build recorded it, and how to get one."""
    why = _core.cuda_not_built or "it is missing from this installation"
    return (f"not built ({why}); to build it, reinstall with nvcc on PATH and "
            "-Ccmake.define.FASTMOMENTUM_CUDA=ON")


def _version(number: int) -> str:
    """CUDA's version number (13000) as text (13.0)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def _why_no_device(build: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    """Why the CUDA module can use no device, from its ``build()`` and ``devices()``."""
    if build["driver_version"] == 0:
        # The static cudart then reports cudaErrorInsufficientDriver, which reads as a driver
        # too old rather than none at all.
        return "no CUDA driver / no GPU (no NVIDIA driver is installed or loaded here)"
    error: str = found["error"] or "CUDA reports no device"
    if error.startswith("cudaErrorInsufficientDriver"):
        error += (f" (the driver supports CUDA {_version(build['driver_version'])}, this module "
                  f"was built with CUDA {_version(build['runtime_version'])}: update the driver)")
    return error


def cuda_status() -> str:
    """One line for :func:`fastmomentum.show_config`: whether the CUDA module was built (and if not,
    why), for which architectures, and which devices it can use here, or why it can use none."""
    if _cuda is None:
        return _not_built()
    build = _cuda.build()
    head = (f"built (CUDA {_version(build['runtime_version'])}, architectures "
            f"{build['architectures']})")
    found = _cuda.devices()
    if found["devices"]:
        names = ", ".join(f"{d['index']}: {d['name']} (compute capability "
                          f"{d['compute_capability']})" for d in found["devices"])
        return f"{head}; devices {names}"
    return f"{head}; no usable device: {_why_no_device(build, found)}"


def no_device_reason() -> str | None:
    """Why fastmomentum cannot run on a GPU here, or ``None`` when it can."""
    if _cuda is None:
        return f"fastmomentum's CUDA module is {_not_built()}"
    found = _cuda.devices()
    if found["devices"]:
        return None
    return f"no usable CUDA device: {_why_no_device(_cuda.build(), found)}"
