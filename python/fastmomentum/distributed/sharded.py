"""``ShardedSGD``: ZeRO stage 1, each rank keeping the momentum state of its shard only."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from mpi4py import MPI
from numpy.typing import NDArray

from ..functional import Array, HostArray
from ..guards import StepResult, checks_finite, result
from ..optim import BUFFER_KEY, SGD, ArrayState, Hyper, _new_buffers
from ._collectives import SumReducer, allgather, check_comm, check_same_everywhere
from ._layout import FlatGrads, Place, shard_bounds

__all__ = ["ShardedSGD"]


class ShardedSGD(SGD):
    """:class:`fastmomentum.SGD` over MPI ranks with the optimizer state sharded (ZeRO stage 1):
    the parameters of each dtype, flattened in order into one vector, are cut into ``n =
    comm.size`` contiguous shards (sizes differ by at most one element; a shard may be empty), and
    rank ``r`` keeps the momentum buffers of its shard only: state memory per rank is the total
    divided by ``n``. One step, with ``g_r`` rank ``r``'s gradients::

        s <- the shard r of (g_0 + g_1 + ... + g_{n-1})       MPI_Reduce_scatter
        p <- the fm.SGD update of the shard r of p with g = s * (1 / (n * loss_scale))
        p <- the updated shards of every rank                  MPI_Allgatherv

    The update is ``fm.SGD``'s, on views of the parameters' own memory (no copy of the shard), in
    ONE kernel call; the element-wise update does not depend on how the elements are split, so
    with ``deterministic=True`` (rank-order sums, as :class:`DistributedSGD`'s) the parameters are
    bit for bit those of ``fm.SGD`` and of ``DistributedSGD``. Communication per rank and step:
    ``(n-1)/n`` of the gradients' bytes in the reduce-scatter and of the parameters' in the
    all-gather, as much as one ring all-reduce. Memory per rank: the parameters, one flat gradient
    buffer as large as the parameters (it receives the all-gather too), and ``1/n`` of the state.

    Args:
        comm, params, lr, momentum, dampening, weight_decay, nesterov, deterministic, **options:
            as :class:`DistributedSGD` (every option of ``fm.SGD``; the constructor checks the
            replicas are identical). ``max_grad_norm`` and ``nonfinite`` use the global norm of
            the averaged gradients: ``‖g‖₂ = sqrt(Σ_shards Σ s²) / (n * loss_scale)``, the float64
            sums of squares of the shards added with ``MPI_Allreduce`` (one extra read of the
            shard and one 8-byte message; equal to ``fm.SGD``'s norm up to rounding). A gradient
            sum whose square overflows float64 (beyond ~1e154) reads as non-finite.

    ``state`` is empty: a rank's buffers are views of its shard. ``state_dict()`` (collective)
    gathers them into ``fm.SGD``'s layout, the same full dict on every rank (save it from one);
    ``load_state_dict`` takes such a dict, from any world size or from ``fm.SGD`` /
    ``DistributedSGD``, and keeps this rank's shard of it. Parameter groups are fixed at
    construction (``add_param_group`` raises: the shards would move).
    """

    def __init__(
        self,
        comm: MPI.Intracomm,
        params: Iterable[HostArray | dict[str, Any]],
        lr: Hyper = 1e-3,
        momentum: Hyper = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        deterministic: bool = False,
        **options: Any,
    ) -> None:
        self.comm: MPI.Intracomm = check_comm(comm)
        self._reducer: SumReducer = SumReducer(self.comm, deterministic)
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, **options)
        check_same_everywhere(self.comm, self.param_groups)
        params_list = self._params()
        self._grads = FlatGrads(params_list)
        world, rank = self.comm.size, self.comm.rank
        self._bounds = {dtype: shard_bounds(flat.size, world)
                        for dtype, flat in self._grads.flats.items()}
        # This rank's piece of each parameter that meets its shard: (place, piece of the
        # parameter, piece of its gradient), as views of the parameter's and the flat memory.
        self._pieces: list[tuple[Place, NDArray[Any], NDArray[Any]]] = []
        inner_groups: list[dict[str, Any]] = []
        index = 0
        for group in self.param_groups:
            views = []
            for p in group["params"]:
                place = self._grads.places[index]
                bounds = self._bounds[place.dtype]
                start, stop = max(place.start, bounds[rank]), min(place.stop, bounds[rank + 1])
                # An empty array belongs to the rank whose shard holds its offset, so that it
                # gets state (an empty buffer) as in fm.SGD.
                empty_here = place.start == place.stop and rank == min(
                    bisect.bisect_right(bounds, place.start) - 1, world - 1)
                if empty_here:
                    start = stop = place.start
                if start < stop or empty_here:
                    piece = p.reshape(-1)[start - place.start:stop - place.start]
                    grad = self._grads.flats[place.dtype][start:stop]
                    self._pieces.append((place._replace(start=start, stop=stop), piece, grad))
                    views.append(piece)
                index += 1
            inner_groups.append({**group, "params": views})
        # The optimizer of this rank's shard: fm.SGD itself, on views, its guards off (step()
        # applies them from the global norm).
        self._shard = SGD(inner_groups, style=self.style)

    @property
    def deterministic(self) -> bool:
        """Whether gradients are summed in rank order (see :class:`DistributedSGD`)."""
        return self._reducer.deterministic

    @property
    def grad_buffers(self) -> list[NDArray[Any]]:
        """As :attr:`DistributedSGD.grad_buffers` (gradients computed there are not copied), but
        they are also the all-gathers' receive buffers: after a step, or a :meth:`state_dict`,
        they hold parameters or buffers, not gradients."""
        return list(self._grads.views)

    @property
    def shard_bounds(self) -> dict[np.dtype[Any], list[int]]:
        """Per dtype, the ``n + 1`` offsets of the ranks' shards in the flattened parameters."""
        return {dtype: list(bounds) for dtype, bounds in self._bounds.items()}

    @property
    def state_nbytes(self) -> int:
        """Bytes of this rank's momentum buffers (its shard's)."""
        key = BUFFER_KEY[self.style]
        return sum(entry[key].nbytes for entry in self._shard.state.values()
                   if entry.get(key) is not None)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Not supported: create the optimizer with all its groups (adding one would move every
        rank's shard)."""
        raise NotImplementedError("ShardedSGD's groups are fixed at construction: adding one "
                                  "would move the shards; create it with all its groups")

    def step(self, grads: Sequence[Array | None], *, loss_scale: float = 1.0) -> StepResult:
        """Reduce-scatter ``grads`` (this rank's, one per parameter in order, all present), update
        this rank's shard, all-gather the parameters (collective). Returns the result of
        :meth:`fastmomentum.SGD.step`, the same on every rank."""
        with self._exclusive("step"):
            self._grads.load(grads, loss_scale)
            for dtype, flat in self._grads.flats.items():
                self._reducer.reduce_scatter(flat, self._bounds[dtype])
            scale = loss_scale * self.comm.size
            norm = None
            if self.max_grad_norm is not None or checks_finite(self.nonfinite):
                norm = self._global_norm() / scale
                if not math.isfinite(norm) and checks_finite(self.nonfinite):
                    outcome = (False, norm if self.max_grad_norm is not None else None, 0)
                    return self._skipped(outcome, grads)
                if self.max_grad_norm is not None:
                    # fm.SGD's clip coefficient, min(1, max_norm / (norm + 1e-6)), folded into
                    # the gradients' scale factor.
                    scale /= min(1.0, self.max_grad_norm / (norm + 1e-6))
            for inner, group in zip(self._shard.param_groups, self.param_groups):
                inner.update((k, v) for k, v in group.items() if k != "params")
            self._shard.iterations = self.iterations
            self._shard._step([grad for _, _, grad in self._pieces], scale)
            self._gather_params()
            self.iterations += 1
            self.consecutive_skips = 0
            return result((True, norm if self.max_grad_norm is not None else None, 0),
                          self.nonfinite, grads)

    def _global_norm(self) -> float:
        """``sqrt(Σ s²)`` over every rank's reduced shard, summed in float64."""
        local = sum(float(np.einsum("i,i->", grad, grad, dtype=np.float64))
                    for _, _, grad in self._pieces)
        return math.sqrt(self.comm.allreduce(local, op=MPI.SUM))

    def _gather_params(self) -> None:
        """Every rank's updated shard into every rank's parameters, through the flat buffers."""
        if self.comm.size == 1:
            return  # the one shard is all the parameters, updated in place
        params = self._params()
        for _, piece, grad in self._pieces:
            np.copyto(grad, piece)  # this rank's shard, in place of its gradient sums
        rank = self.comm.rank
        for dtype, flat in self._grads.flats.items():
            allgather(self.comm, flat, self._bounds[dtype])
        for place in self._grads.places:
            lo, hi = self._bounds[place.dtype][rank:rank + 2]
            flat, p = self._grads.flats[place.dtype], params[place.param].reshape(-1)
            # The parts outside this rank's shard (its own part is already in place).
            for start, stop in ((place.start, min(place.stop, lo)),
                                (max(place.start, hi), place.stop)):
                if start < stop:
                    p[start - place.start:stop - place.start] = flat[start:stop]

    def state_dict(self) -> dict[str, Any]:
        """``fm.SGD.state_dict()``'s layout with the full buffers, gathered from the shards
        (collective; the same on every rank; fresh arrays)."""
        key = BUFFER_KEY[self.style]
        mine = {place.param for place, piece, _ in self._pieces
                if (self._shard.state.entry(piece) or {}).get(key) is not None}
        present = set().union(*self.comm.allgather(mine))
        for _, piece, grad in self._pieces:
            entry = self._shard.state.entry(piece)
            buf = None if entry is None else entry.get(key)
            if buf is None:
                grad.fill(0)
            else:
                np.copyto(grad, buf)
        for dtype, flat in self._grads.flats.items():
            allgather(self.comm, flat, self._bounds[dtype])
        saved = SGD.state_dict(self)
        params = self._params()
        for place in self._grads.places:
            if place.param in present:
                buf = self._grads.flats[place.dtype][place.start:place.stop]
                saved["state"][place.param] = {key: buf.reshape(params[place.param].shape).copy()}
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a full state dict (``state_dict()``'s, ``fm.SGD``'s or ``DistributedSGD``'s, from
        any world size), keeping this rank's shard of the buffers. Checked as ``fm.SGD`` checks."""
        with self._exclusive("load_state_dict"):
            self._load(state_dict)  # the full buffers, checked, in self.state
            key = BUFFER_KEY[self.style]
            params = self._params()
            loaded = [(place, piece) for place, piece, _ in self._pieces
                      if (self.state.entry(params[place.param]) or {}).get(key) is not None]
            shard_state = ArrayState()
            for (place, piece), buf in zip(loaded, _new_buffers([p for _, p in loaded],
                                                                self.style)):
                full = self.state[params[place.param]][key].reshape(-1)
                offset = self._grads.places[place.param].start
                np.copyto(buf, full[place.start - offset:place.stop - offset])
                shard_state[piece] = {key: buf}
            self._shard.state = shard_state
            self.state = ArrayState()
