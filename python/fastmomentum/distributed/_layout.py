"""Where each parameter's gradient lives in the flat communication buffers, and which part of the
flattened parameters each rank owns.

Parameters are numbered in optimizer order (over all groups). Those of one dtype are laid end to
end, in that order, in ONE contiguous 1-D gradient buffer per dtype (MPI reduces contiguous
memory; one buffer per dtype because a reduction has one datatype). A bucket is a run of whole
parameters of one such buffer; a shard is the ``[bounds[r], bounds[r + 1])`` range of a buffer
that rank ``r`` owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .. import _core
from .._backend import is_device_array
from .._protocol import Guard
from ..functional import Array
from ..optim import _check_grads


class Place(NamedTuple):
    """Parameter number ``param``'s elements ``[start, stop)`` of its dtype's flat buffer."""

    param: int
    dtype: np.dtype[Any]
    start: int
    stop: int


def shard_bounds(size: int, world: int) -> list[int]:
    """``world + 1`` offsets splitting ``size`` elements into contiguous shards, rank ``r``
    owning ``[r*size//world, (r+1)*size//world)``: sizes differ by at most one element, and a
    rank's shard may be empty when ``size < world``."""
    return [r * size // world for r in range(world + 1)]


class FlatGrads:
    """One contiguous gradient buffer per dtype (``flats``) and, per parameter, its place and a
    view shaped like it (``views``), the gradients of a step are copied into."""

    def __init__(self, params: Sequence[NDArray[Any]]) -> None:
        for i, p in enumerate(params):
            if is_device_array(p):  # the buffers, messages and shards here are host memory
                raise TypeError(f"params[{i}] is a CUDA array: fastmomentum.distributed updates "
                                "NumPy arrays only (GPU arrays are not supported)")
            if p.dtype not in (np.float32, np.float64):  # MPI has no 16-bit float type
                raise TypeError(f"params[{i}] is {p.dtype}: fastmomentum.distributed reduces "
                                "gradients with MPI, which has no 16-bit float type; keep "
                                "float32 parameters (DistributedSGD's state_dtype= stores the "
                                "momentum in 16 or 8 bits) or step 16-bit ones with fm.SGD")
            if not p.flags.c_contiguous:  # fm.SGD takes any dense layout; the flat buffers don't
                raise ValueError(f"params[{i}] is not C-contiguous (strides {p.strides}): "
                                 "fastmomentum.distributed lays each parameter out as one run of "
                                 "elements in C order in its flat buffers and shards; pass "
                                 "C-ordered parameters (fm.SGD steps any dense layout)")
        sizes: dict[np.dtype[Any], int] = {}
        self.places: list[Place] = []
        for i, p in enumerate(params):
            start = sizes.get(p.dtype, 0)
            self.places.append(Place(i, p.dtype, start, start + p.size))
            sizes[p.dtype] = start + p.size
        self.flats: dict[np.dtype[Any], NDArray[Any]] = {
            dtype: np.zeros(size, dtype) for dtype, size in sizes.items()}
        self.views: list[NDArray[Any]] = [
            self.flats[place.dtype][place.start:place.stop].reshape(p.shape)
            for place, p in zip(self.places, params, strict=True)]

    def buckets(self, max_bytes: int) -> list[NDArray[Any]]:
        """The flat buffers cut into runs of whole parameters of at most ``max_bytes`` each (a
        larger parameter is a bucket of its own): the messages of a bucketed reduction."""
        out: list[NDArray[Any]] = []
        for dtype, flat in self.flats.items():
            cuts = [0]
            for place in self.places:
                if place.dtype == dtype and (place.stop - cuts[-1]) * dtype.itemsize > max_bytes \
                        and place.start > cuts[-1]:
                    cuts.append(place.start)
            cuts.append(flat.size)
            out += [flat[a:b] for a, b in pairwise(cuts) if b > a]
        return out

    def load(self, grads: Sequence[Array | None], loss_scale: float) -> None:
        """Copy ``grads`` (one per parameter, in order) into the views, after checking each (a
        gradient that IS its view stays): every parameter needs a gradient on every rank (the
        reduction has a fixed layout). ``loss_scale`` is checked here too (by the kernels' own
        parser), so that a bad step raises before any communication."""
        _core.check_guard(Guard(loss_scale=loss_scale))
        _check_grads(grads, len(self.views))
        for i, (g, view) in enumerate(zip(grads, self.views, strict=True)):
            if g is None:
                raise ValueError(
                    f"grads[{i}] is None: a distributed step needs a gradient for every parameter "
                    "on every rank (pass zeros for a parameter that got none here)")
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grads[{i}] must be a numpy.ndarray, got {type(g).__name__}")
            if g.dtype != view.dtype or g.shape != view.shape:
                raise ValueError(f"grads[{i}] is {g.dtype} of shape {g.shape} but its parameter "
                                 f"is {view.dtype} of shape {view.shape}")
            if g is not view and np.may_share_memory(g, self.flats[view.dtype]):
                # Copied in order, it could be overwritten by an earlier gradient's copy.
                raise ValueError(f"grads[{i}] is in the optimizer's gradient buffers but is not "
                                 f"grad_buffers[{i}]: pass each parameter's own buffer, or arrays "
                                 "of your own")
        for g, view in zip(grads, self.views, strict=True):
            if g is not view:  # a gradient computed into the buffer needs no copy
                np.copyto(view, g)  # type: ignore[arg-type]  # checked above: not None
