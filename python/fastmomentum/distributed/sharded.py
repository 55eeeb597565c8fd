"""``ShardedSGD``: ZeRO stage 1, each rank keeping the momentum state of its shard only."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from mpi4py import MPI
from numpy.typing import NDArray

from .. import _core, storage
from ..functional import Array, HostArray
from ..guards import StepResult
from ..optim import BUFFER_KEY, SGD, ArrayState, Schedulable, _busy_error, group_arrays
from ._collectives import (
    ParamGather,
    ReduceScatter,
    allgather,
    check_comm,
    check_same_everywhere,
    load_everywhere,
    private_comm,
    raise_everywhere,
)
from ._layout import FlatGrads, Place, check_deterministic, in_c_order, shard_bounds

__all__ = ["ShardedSGD"]


class ShardedSGD(SGD):
    """:class:`fastmomentum.SGD` over MPI ranks with the optimizer state sharded (ZeRO stage 1):
    the parameters of each dtype, flattened in order into one vector, are cut into ``n =
    comm.size`` contiguous shards (sizes differ by at most one element; a shard may be empty), and
    rank ``r`` is an ``fm.SGD`` over its shard: views of the parameters' own memory (no copy), with
    the momentum buffers of those views only, so state memory per rank is the total divided by
    ``n``. One step, with ``g_r`` rank ``r``'s gradients::

        s <- the shard r of (g_0 + g_1 + ... + g_{n-1})       point to point, rank-order sums
        p <- the fm.SGD update of the shard r of p with g = s * (1 / (n * loss_scale))
        p <- the updated shards of every rank                  point to point, into p itself

    The update is ``fm.SGD``'s, in ONE kernel call; the element-wise update does not depend on
    how the elements are split, and the sums are formed in rank order whatever ``deterministic``
    (``_collectives.ReduceScatter``, which ``DistributedSGD`` uses too: faster here than
    ``MPI_Reduce_scatter``), so the parameters are bit for bit those of ``fm.SGD`` and of
    ``DistributedSGD(deterministic=True)``. The messages leave from the caller's gradient arrays
    and land in the parameters' memory (``_collectives.ParamGather``): nothing is copied through
    a flat buffer. Communication per rank and step: ``(n-1)/n`` of the gradients' bytes in the
    reduce-scatter and of the parameters' in the all-gather, as much as one ring all-reduce.
    Memory per rank: the parameters, ``1/n`` of the state, the reduce-scatter's scratch buffer
    (``n`` rows as large as a shard, ``(n-1)/n`` of the parameters' bytes touched), and
    :attr:`grad_buffers` (as large as the parameters; its pages are mapped only if written).

    Args:
        comm, params, lr, momentum, dampening, weight_decay, nesterov, deterministic, **options:
            as :class:`DistributedSGD` (every option of ``fm.SGD``; the constructor checks the
            replicas are identical). ``max_grad_norm`` and ``nonfinite`` act on the averaged
            gradients of every shard: each rank measures its shard with the kernels' statistics
            pass (``_core.grad_stats``), one ``MPI_Allreduce`` adds the sums of squares and ANDs
            the finiteness, and the kernel applies fm.SGD's clipping (and non-finite rule) to that
            global norm, ``‖g‖₂ = sqrt(Σ_shards Σ s²) / (n * loss_scale)``: every rank decides
            the same, and the norm equals ``fm.SGD``'s up to the rounding of the sum's order.

    As an ``fm.SGD``, its ``param_groups`` hold this rank's shard of each group (1-D views of the
    parameters; a group may hold none), and ``state`` their buffers; :attr:`params` are the
    model's parameters. ``state_dict()`` (collective) gathers the buffers into ``fm.SGD``'s
    layout over :attr:`params`, the same full dict on every rank (save it from one);
    ``load_state_dict`` takes such a dict, from any world size or from ``fm.SGD`` /
    ``DistributedSGD``, and keeps this rank's shard of it. Parameter groups are fixed at
    construction (``add_param_group`` raises: the shards would move).
    """

    def __init__(
        self,
        comm: MPI.Intracomm,
        params: Iterable[HostArray | dict[str, Any]],
        lr: Schedulable = 1e-3,
        momentum: Schedulable = 0.0,
        dampening: float = 0.0,
        weight_decay: Schedulable = 0.0,
        nesterov: bool = False,
        *,
        deterministic: bool = False,
        **options: Any,
    ) -> None:
        self.comm: MPI.Intracomm = check_comm(comm)
        # Collective: on every rank before anything that one rank alone may refuse.
        self._messages: MPI.Intracomm = private_comm(self, self.comm)
        refused: Exception | None = None
        try:  # a rank whose arrays or arguments are refused raises on every rank, not alone
            if options.get("state_dtype") not in (None, "float32", "float64"):
                raise ValueError(
                    f"state_dtype={options['state_dtype']!r}: ShardedSGD keeps each shard's "
                    "momentum in its parameters' dtype (state_dict() gathers the shards into one "
                    "buffer per parameter); low-precision state is for fm.SGD and DistributedSGD")
            groups = group_arrays(params)
            shard_groups = self._shard(groups, deterministic)
            super().__init__(shard_groups, lr, momentum, dampening, weight_decay, nesterov,
                             **options)
            # The checks that depend on the dtypes, for the model's: a rank's shard of a group
            # may lack a dtype that the group has, and every rank must refuse alike.
            self._model_dtypes = [self._backend.dtypes(g["params"]) for g in groups]
            for group, dtypes in zip(self.param_groups, self._model_dtypes, strict=True):
                _core.check_hyper(self._hyper(group, self._iterations, constructing=True)[0],
                                  dtypes)
        except Exception as error:  # (a KeyboardInterrupt stops this rank, as MPI programs do)
            refused = error
        raise_everywhere(self.comm, refused)
        # Where the ranks' sums of the pieces' gradients are after a reduce-scatter (world > 1).
        sums = self._reduce_scatter.sums
        starts = {dtype: bounds[self.comm.rank] for dtype, bounds in self._bounds.items()}
        self._piece_grads = [] if self.comm.size == 1 else [
            sums[place.dtype][place.start - starts[place.dtype]:place.stop - starts[place.dtype]]
            for place, _ in self._pieces]
        check_same_everywhere(self.comm, self._full_groups(), {"deterministic": deterministic})

    def _shard(self, groups: list[dict[str, Any]], deterministic: bool) -> list[dict[str, Any]]:
        """This rank's shard of ``groups`` (:attr:`params`, the flat buffers, the pieces);
        returns the groups of views that the optimizer steps."""
        self._deterministic: bool = check_deterministic(deterministic)
        #: The model's parameters, in order over the groups (the optimizer steps their shards).
        self.params: list[NDArray[Any]] = [p for g in groups for p in g["params"]]
        # The model's arrays, checked as fm.SGD checks them: each rank's steps check only its
        # shard, numbered within it.
        _core.check_params(self.params, 0)
        self._grads = FlatGrads(self.params)
        world, rank = self.comm.size, self.comm.rank
        self._bounds = {dtype: shard_bounds(flat.size, world)
                        for dtype, flat in self._grads.flats.items()}
        self._gather = ParamGather(self._messages, self.params, self._grads.places, self._bounds)
        self._reduce_scatter = ReduceScatter(self._messages, self._grads.places, self._bounds, None)
        # This rank's piece of each parameter that meets its shard: (its place, the piece of the
        # parameter, a view of the parameter's memory).
        self._pieces: list[tuple[Place, NDArray[Any]]] = []
        shard_groups: list[dict[str, Any]] = []
        self._group_sizes: list[int] = []  # parameters per group (over all ranks)
        index = 0
        for group in groups:
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
                    self._pieces.append((place._replace(start=start, stop=stop), piece))
                    views.append(piece)
                index += 1
            shard_groups.append({**group, "params": views})
            self._group_sizes.append(len(group["params"]))
        return shard_groups

    def _full_groups(self) -> list[dict[str, Any]]:
        """The groups with their hyper-parameters and the model's parameters (not the shards)."""
        out, start = [], 0
        for group, size in zip(self.param_groups, self._group_sizes, strict=True):
            out.append({**group, "params": self.params[start:start + size]})
            start += size
        return out

    @property
    def deterministic(self) -> bool:
        """Whether gradients are summed in rank order (see :class:`DistributedSGD`)."""
        return self._deterministic

    @property
    def grad_buffers(self) -> list[NDArray[Any]]:
        """One array per parameter of :attr:`params` (its shape and dtype), zero-filled at first,
        for a backward pass to compute the gradients into: ``step()`` steps them. A step reads
        them as it reads any gradients and leaves them as they were."""
        return list(self._grads.views)

    @property
    def shard_bounds(self) -> dict[np.dtype[Any], list[int]]:
        """Per dtype, the ``n + 1`` offsets of the ranks' shards in the flattened parameters."""
        return {dtype: list(bounds) for dtype, bounds in self._bounds.items()}


    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Not supported: create the optimizer with all its groups (adding one would move every
        rank's shard)."""
        raise NotImplementedError("ShardedSGD's groups are fixed at construction: adding one "
                                  "would move the shards; create it with all its groups")

    def step(self, grads: Sequence[Array | None] | None = None, *,
             loss_scale: float = 1.0) -> StepResult:
        """Reduce-scatter ``grads`` (this rank's, one per parameter of :attr:`params` in order,
        all present; default: the gradients computed into :attr:`grad_buffers`), update this
        rank's shard, all-gather the parameters (collective). Returns the result of
        :meth:`fastmomentum.SGD.step`, the same on every rank."""
        busy = self._busy  # the lock released is the one taken (see optim._after_fork_in_child)
        if not busy.acquire(False):  # see optim._busy_error (not blocking)
            raise _busy_error("step()")
        try:
            self._gather.check(self.params)
            checked = self._grads.check(grads, loss_scale)
            if self.comm.size == 1:  # the sum of one term: the caller's gradients, as they are
                piece_grads = self._own_pieces(checked)
            else:
                self._reduce_scatter(checked)
                piece_grads = self._piece_grads
            stats = None
            if self._needs_stats:
                finite, sum_squares = _core.grad_stats(piece_grads)
                # One message: the sums of squares, and the number of non-finite shards.
                both = np.array([sum_squares, 0.0 if finite else 1.0])
                self.comm.Allreduce(MPI.IN_PLACE, both, op=MPI.SUM)
                stats = (bool(both[1] == 0.0), float(both[0]))
            result = self._apply(piece_grads, self._guard(loss_scale * self.comm.size, stats),
                                 reported=checked,
                                 dtypes=self._model_dtypes)
            if not result.skipped:
                self._gather_params()
            return result
        finally:
            busy.release()

    def _own_pieces(self, grads: Sequence[NDArray[Any]]) -> list[NDArray[Any]]:
        """This rank's pieces of ``grads`` (views, the pieces' order and sizes)."""
        flat = [g.reshape(-1) for g in in_c_order(grads)]
        places = self._grads.places
        return [flat[p.param][p.start - places[p.param].start:p.stop - places[p.param].start]
                for p, _ in self._pieces]

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a ShardedSGD cannot be copied or pickled: its shards are views of the "
                        "parameters, and its all-gather addresses their memory, on this rank; "
                        "save opt.state_dict() and load it into a new ShardedSGD")

    def _gather_params(self) -> None:
        """Every rank's updated shard into every rank's parameters."""
        if self.comm.size > 1:  # (on one rank, the one shard is all the parameters)
            self._gather()

    def state_dict(self) -> dict[str, Any]:
        """``fm.SGD.state_dict()``'s layout over :attr:`params`, with the full buffers gathered
        from the shards (collective; the same on every rank; fresh arrays)."""
        key = BUFFER_KEY[self.style]
        mine = {place.param for place, piece in self._pieces
                if (self.state.entry(piece) or {}).get(key) is not None}
        present = set().union(*self.comm.allgather(mine))
        # Buffers of their own, not the gradients' (a step may be running: a schedule saving).
        gathered = {dtype: np.zeros_like(flat) for dtype, flat in self._grads.flats.items()}
        for place, piece in self._pieces:
            buf = (self.state.entry(piece) or {}).get(key)
            if buf is not None:
                gathered[place.dtype][place.start:place.stop] = buf.reshape(-1)
        for dtype, flat in gathered.items():
            allgather(self.comm, flat, self._bounds[dtype])
        saved = SGD.state_dict(self)
        start = 0
        for group, size in zip(saved["param_groups"], self._group_sizes, strict=True):
            group["params"] = list(range(start, start + size))
            start += size
        saved["state"] = {}
        for place in self._grads.places:
            if place.param in present:
                buf = gathered[place.dtype][place.start:place.stop]
                saved["state"][place.param] = {
                    key: buf.reshape(self.params[place.param].shape).copy()}
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a full state dict (``state_dict()``'s, ``fm.SGD``'s or ``DistributedSGD``'s, from
        any world size), keeping this rank's shard of the buffers (collective). Checked as
        ``fm.SGD`` checks (against :attr:`params`) on every rank: if any rank's checks refuse its
        dict, or the ranks' dicts differ, every rank raises and nothing changes anywhere."""
        super().load_state_dict(state_dict)

    def _load(self, state_dict: dict[str, Any]) -> None:
        load_everywhere(self.comm, self, state_dict)

    def _checked_state(self, state_dict: dict[str, Any]) -> tuple[Any, ArrayState]:
        full = [group["params"] for group in self._full_groups()]
        loaded = self._read_state_dict(state_dict, full)
        buffer_of = {}
        for p, buf, extras in loaded.buffers:
            if extras:  # state_dict() gathers the buffers alone: refused, not dropped
                raise ValueError(f"the state of a parameter holds {sorted(extras, key=repr)}"
                                 f"; ShardedSGD keeps only the buffer, "
                                 f"{BUFFER_KEY[self.style]!r}")
            buffer_of[id(p)] = buf
        key = BUFFER_KEY[self.style]
        shard_state = ArrayState()
        for place, piece in self._pieces:
            full_buffer = buffer_of.get(id(self.params[place.param]))
            if full_buffer is None:
                continue
            entry: dict[str, Any] = {}
            if isinstance(full_buffer, tuple):  # an 8-bit buffer (fm.SGD's, DistributedSGD's):
                # its values, in the shards' dtype below
                full_buffer = storage.QuantizedBuffer(*full_buffer).to_array()
            if isinstance(full_buffer, np.ndarray):  # not the marker of an empty entry
                offset = self._grads.places[place.param].start
                entry[key] = np.array(full_buffer.reshape(-1)[place.start - offset:
                                                              place.stop - offset],
                                      dtype=piece.dtype, order="C", copy=True)
            shard_state.counted(piece, entry)
        return loaded, shard_state  # its groups hold the shards' views, as now
