"""Where each parameter's gradient lives in the flat communication buffers, and which part of the
flattened parameters each rank owns.

Parameters are numbered in optimizer order (over all groups). Those of one dtype are laid end to
end, in that order, in ONE contiguous 1-D gradient buffer per dtype (MPI reduces contiguous
memory; one buffer per dtype because a reduction has one datatype). A bucket is a run of whole
parameters of one such buffer; a shard is the ``[bounds[r], bounds[r + 1])`` range of a buffer
that rank ``r`` owns, and its segments are where it meets each parameter: the runs of elements
that the point-to-point messages of a step carry, straight from or into the arrays' own memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


class Segment(NamedTuple):
    """Elements ``[start, stop)`` of parameter number ``param`` (flattened, C order), which are
    elements ``[offset, offset + stop - start)`` of a shard."""

    param: int
    start: int
    stop: int
    offset: int


def shard_bounds(size: int, world: int) -> list[int]:
    """``world + 1`` offsets splitting ``size`` elements into contiguous shards, rank ``r``
    owning ``[r*size//world, (r+1)*size//world)``: sizes differ by at most one element, and a
    rank's shard may be empty when ``size < world``."""
    return [r * size // world for r in range(world + 1)]


def shard_segments(places: Sequence[Place], bounds: Mapping[np.dtype[Any], Sequence[int]],
                   rank: int) -> dict[np.dtype[Any], list[Segment]]:
    """Per dtype, the non-empty segments where ``rank``'s shard meets the parameters, in order:
    they tile the shard. Every rank computes the same lists, so a sender's and a receiver's
    messages match one for one."""
    out: dict[np.dtype[Any], list[Segment]] = {dtype: [] for dtype in bounds}
    for place in places:
        lo, hi = bounds[place.dtype][rank:rank + 2]
        start, stop = max(place.start, lo), min(place.stop, hi)
        if start < stop:
            out[place.dtype].append(Segment(place.param, start - place.start,
                                            stop - place.start, start - lo))
    return out


def check_deterministic(value: Any) -> bool:
    """The optimizers' ``deterministic`` argument: a bool, else ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"deterministic must be a bool, got {value!r}")
    return value


def in_c_order(grads: Sequence[NDArray[Any]]) -> list[NDArray[Any]]:
    """``grads`` in C order, as the parameters and the messages lay them out: each as it is, or
    (one in another layout) a C-ordered copy."""
    return [g if g.flags.c_contiguous else g.copy(order="C") for g in grads]


class FlatGrads:
    """One contiguous gradient buffer per dtype (``flats``) and, per parameter, its place and a
    view shaped like it (``views``): the ranks' sums of a step's gradients end there."""

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
            runs: list[list[Place]] = []
            for place in self.places:
                if place.dtype != dtype:
                    continue
                if not runs or (place.stop - runs[-1][0].start) * dtype.itemsize > max_bytes:
                    runs.append([])
                runs[-1].append(place)
            out += [flat[run[0].start:run[-1].stop] for run in runs
                    if run[-1].stop > run[0].start]
        return out

    def check(self, grads: Sequence[Array | None] | None, loss_scale: float
              ) -> list[NDArray[Any]]:
        """``grads`` (one per parameter, in order; ``None``: the :attr:`views`) checked: every
        parameter needs a gradient on every rank (the messages have a fixed layout), of its dtype
        and shape. Returns them (as ``list[NDArray]``, now that none is ``None``).
        ``loss_scale`` is checked here too (by the kernels' own parser), so that a bad step raises
        before any communication."""
        _core.check_guard(Guard(loss_scale=loss_scale))
        if grads is None:
            return list(self.views)
        if isinstance(grads, (list, tuple)):
            grads = list(grads)  # one snapshot: a subclass's __iter__ runs once, before any check
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
                # The sums are written there while later gradients are still read.
                raise ValueError(f"grads[{i}] is in the optimizer's gradient buffers but is not "
                                 f"grad_buffers[{i}]: pass each parameter's own buffer, or arrays "
                                 "of your own")
        return grads  # type: ignore[return-value]  # checked above: arrays
