"""How the optimizer state and the parameters may be stored below float32 (README, "Low-precision
state"): bfloat16 and float16 arrays, and 8-bit block-quantized buffers.

Every update is computed in float32 by the one formula of the kernels; a narrower value is
widened exactly before it and rounded back after it: to nearest (ties to even) for buffers, and
for parameters to nearest, stochastically, or with a Kahan compensation array.

An 8-bit buffer (:class:`QuantizedBuffer`) stores each block of ``BLOCK_SIZE`` = 256 elements as
int8 codes ``k`` and one float32 scale ``s``: the value of ``k`` is ``sign(k) * F(|k|) * s``,
where ``F`` are the 128 magnitudes of an E4M3 float (subnormals, no infinity or NaN; ``F(127) =
480``), and ``s = max|b| / 480`` over the block. The floating-point code map keeps every value
within 1/16 of itself over 2^17 of range below the block's largest (a linear map would round
every value below 1/254 of it to zero). A block holding an infinity or a NaN is stored as NaN.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from . import _core

__all__ = ["BLOCK_SIZE", "ParamRounding", "QuantizedBuffer", "StateDtype", "bfloat16"]

#: The elements of one block of an 8-bit buffer (each block has its own scale).
BLOCK_SIZE: int = _core.QUANT_BLOCK
#: How momentum buffers may be stored.
StateDtype = Literal["float32", "float64", "bfloat16", "float16", "int8"]
#: How a bfloat16 or float16 parameter takes its updated float32 value back.
ParamRounding = Literal["kahan", "stochastic", "nearest"]


def bfloat16() -> np.dtype[Any]:
    """NumPy's bfloat16 dtype, ``ml_dtypes.bfloat16`` (as JAX and ONNX use it); an optional
    dependency: ``pip install "fastmomentum[bfloat16]"``."""
    try:
        import ml_dtypes
    except ImportError as e:
        raise ImportError("bfloat16 arrays need the ml_dtypes package (NumPy's bfloat16 dtype): "
                          "pip install ml_dtypes, or fastmomentum[bfloat16]") from e
    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


# ndarray's own getters, which a subclass's properties cannot replace.
_SHAPE = np.ndarray.shape.__get__
_STRIDES = np.ndarray.strides.__get__


def _dense_layout(like: NDArray[Any]) -> tuple[tuple[int, ...], int] | None:
    """The strides in elements of a dense array that is not C-contiguous, and the elements from
    its first element down to the lowest address of its memory (negative strides); None for a
    C-contiguous or empty array, or one that is not dense (which a step refuses)."""
    if like.flags.c_contiguous or like.size == 0:
        return None
    shape, item = _SHAPE(like), like.itemsize
    if any(s % item for s in _STRIDES(like)):
        return None
    strides = tuple(s // item for s in _STRIDES(like))
    expected = 1  # ranked by magnitude, each stride is the product of the extents below it
    ranked = sorted((abs(s), n) for s, n in zip(strides, shape, strict=True) if n != 1)
    for magnitude, extent in ranked:
        if magnitude != expected:
            return None
        expected *= extent
    return strides, sum(-s * (n - 1) for s, n in zip(strides, shape, strict=True) if s < 0)


def new_like(like: NDArray[Any], dtype: Any, zero: bool) -> NDArray[Any]:
    """A new array of ``like``'s shape and memory layout (its strides in elements, whatever their
    order or signs: what a step requires of a parameter's gradient and buffers), of ``dtype``;
    zeros, or uninitialised. C order for a C-contiguous ``like`` (or one a step would refuse)."""
    make = np.zeros if zero else np.empty
    dtype = np.dtype(dtype)
    layout = _dense_layout(like)
    if layout is None:
        out: NDArray[Any] = make(_SHAPE(like), dtype)
        return out
    strides, offset = layout
    flat = make(like.size, dtype)
    out = np.ndarray(_SHAPE(like), dtype, buffer=flat, offset=offset * dtype.itemsize,
                     strides=tuple(s * dtype.itemsize for s in strides))
    return out


class QuantizedBuffer(NamedTuple):
    """An 8-bit momentum buffer: ``codes`` (int8, the parameter's shape) and ``scales`` (float32,
    one per block of :data:`BLOCK_SIZE` elements); see the module's docstring for the map. Plain
    NumPy arrays, updated in place by the steps: save them as any arrays.

    The blocks are runs of the codes in C (index) order, and a step runs in memory order: an
    8-bit buffer is for a C-contiguous parameter (with C-contiguous codes); a step refuses one
    for a parameter of another layout (give it a 16- or 32-bit buffer)."""

    codes: NDArray[np.int8]
    scales: NDArray[np.float32]

    @classmethod
    def zeros(cls, shape: int | tuple[int, ...]) -> QuantizedBuffer:
        """A buffer of zeros of ``shape``."""
        codes = np.zeros(shape, np.int8)
        return cls(codes, np.zeros(-(-codes.size // BLOCK_SIZE), np.float32))

    @classmethod
    def zeros_like(cls, param: Any) -> QuantizedBuffer:
        """A buffer of zeros for ``param`` (of its shape)."""
        return cls.zeros(tuple(param.shape))

    @classmethod
    def from_array(cls, values: Any) -> QuantizedBuffer:
        """``values`` (a float32, bfloat16 or float16 array) quantized, as a step stores them."""
        out = cls.zeros(np.shape(values))
        if isinstance(values, np.ndarray) and not values.flags.c_contiguous:
            values = values.copy(order="C")  # the blocks are in C order
        _core.convert(values, out)
        return out

    def to_array(self) -> NDArray[np.float32]:
        """The float32 values the codes stand for, as a step reads them."""
        out = np.empty(self.codes.shape, np.float32)
        _core.convert(self, out)
        return out

    @property
    def nbytes(self) -> int:
        """The bytes of the codes and the scales."""
        return int(self.codes.nbytes + self.scales.nbytes)


def dtype_of(state_dtype: str) -> np.dtype[Any]:
    """The NumPy dtype of a 16-bit or wider buffer storage."""
    return bfloat16() if state_dtype == "bfloat16" else np.dtype(state_dtype)


def new_buffer(param: NDArray[Any], state_dtype: str | None, zero: bool) -> Any:
    """A momentum buffer for ``param`` stored as ``state_dtype`` (None: the parameter's dtype);
    zeros, or uninitialised where the first step writes it whole (not for 8-bit: its scales)."""
    if state_dtype == "int8":
        return QuantizedBuffer.zeros(param.shape)
    return new_like(param, param.dtype if state_dtype is None else dtype_of(state_dtype), zero)


def converted(values: Any, like: Any) -> Any:
    """``values`` (an array or a :class:`QuantizedBuffer`) in ``like``'s storage (the same), as
    a new buffer: float64 through NumPy, every other conversion through the kernels' own."""
    if isinstance(like, tuple):
        out: Any = QuantizedBuffer.zeros(np.shape(like[0]))
    else:
        out = new_like(like, like.dtype, zero=False)  # like's layout
    if isinstance(values, tuple):
        values = QuantizedBuffer(*values).to_array()
    if not isinstance(out, tuple) and (out.dtype == np.float64 or values.dtype == np.float64):
        out[...] = np.asarray(values, np.float64).astype(out.dtype)  # one rounding
    else:
        if values.dtype.kind == "f" and values.dtype not in (np.float32, np.float16):
            values = values.astype(np.float32)  # e.g. float128: NumPy's nearest
        values = np.ascontiguousarray(values)
        if not isinstance(out, tuple) and not out.flags.c_contiguous:
            # the kernels convert in memory order: values first in out's layout (a NumPy copy)
            laid_out = new_like(out, values.dtype, zero=False)
            laid_out[...] = values.reshape(np.shape(out))
            values = laid_out
        _core.convert(values, out)
    return out


def nbytes(buffer: Any) -> int:
    """The bytes of a state item: an array's, or an 8-bit buffer's codes and scales."""
    if isinstance(buffer, tuple):
        return sum(int(x.nbytes) for x in buffer)
    return int(getattr(buffer, "nbytes", 0))
