"""Flat parameter storage: a model's many arrays as views into one contiguous block each.

A network of many small arrays costs per-array work on every step (checks, and a short loop each
in the kernel). :class:`FlatGroup` allocates all parameters as views into ONE 1-D array, all
gradients into another and all momentum buffers into a third, in the same order and without gaps.
The views are ordinary arrays (write gradients into them, read parameters from them); the whole
group is then updated by one call on three arrays::

    group = FlatGroup.from_arrays([w1, b1, w2, b2])   # copies the values in
    w1, b1, w2, b2 = group.params                     # use these from now on
    ... write the gradients into group.grads[i] (e.g. np.matmul(..., out=group.grads[0])) ...
    fm.functional.sgd_([group.flat_params], [group.flat_grads], [group.flat_buffers],
                       lr=0.01, momentum=0.9)

The update is element-wise, so this gives the same bits as updating the arrays one by one. The
optimizer benefits too: ``fm.SGD(group.params, ...)`` with ``step(group.grads)`` finds the views
adjacent in memory and runs them as one span.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

__all__ = ["FlatGroup"]


class FlatGroup:
    """Parameters, gradients and momentum buffers of several arrays, each kind in one contiguous
    1-D array (``flat_params``, ``flat_grads``, ``flat_buffers``, all zero-filled at first), with
    shaped views into them (``params``, ``grads``, ``buffers``: one per shape, in order).

    Args:
        shapes: the arrays' shapes (a shape is a tuple of ints, or an int for 1-D).
        dtype: ``float32`` (default) or ``float64``.
    """

    def __init__(self, shapes: Sequence[int | Sequence[int]], dtype: DTypeLike = np.float32
                 ) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.shapes: list[tuple[int, ...]] = []
        for i, shape in enumerate(shapes):
            dims: Any = (shape,) if _is_int(shape) else shape
            if not isinstance(dims, Sequence) or not all(_is_int(d) and d >= 0 for d in dims):
                raise ValueError(f"shapes[{i}] must be non-negative integers (an int or a sequence "
                                 f"of ints), got {shape!r}")
            self.shapes.append(tuple(int(d) for d in dims))
        sizes = [math.prod(s) for s in self.shapes]
        self.size: int = sum(sizes)
        #: Offsets of the arrays in the flat storage (``len(shapes) + 1`` entries).
        self.offsets: list[int] = [0]
        for n in sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.flat_params: NDArray[Any] = np.zeros(self.size, self.dtype)
        self.flat_grads: NDArray[Any] = np.zeros(self.size, self.dtype)
        self.flat_buffers: NDArray[Any] = np.zeros(self.size, self.dtype)
        self.params = self._views(self.flat_params)
        self.grads = self._views(self.flat_grads)
        self.buffers = self._views(self.flat_buffers)

    @classmethod
    def from_arrays(cls, arrays: Sequence[NDArray[Any]], dtype: DTypeLike | None = None
                    ) -> FlatGroup:
        """A group shaped like ``arrays`` with their values copied into its params (``dtype``
        defaults to the arrays' common dtype)."""
        arrays = [np.asarray(a) for a in arrays]
        if dtype is None:
            dtype = np.result_type(*arrays) if arrays else np.float32
        group = cls([a.shape for a in arrays], dtype)
        for view, a in zip(group.params, arrays, strict=True):
            view[...] = a
        return group

    def _views(self, flat: NDArray[Any]) -> list[NDArray[Any]]:
        return [flat[a:b].reshape(shape)
                for (a, b), shape in zip(pairwise(self.offsets), self.shapes, strict=True)]

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        return f"FlatGroup({len(self)} arrays, {self.size} elements, {self.dtype})"


def _is_int(x: object) -> bool:
    """An int or a NumPy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
