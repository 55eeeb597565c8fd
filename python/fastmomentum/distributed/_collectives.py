"""The MPI operations of the distributed optimizers: gradient sums (in MPI's order, or in a fixed
rank order), the parameters' all-gather, and the construction-time checks across ranks."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
from mpi4py import MPI
from mpi4py.util.dtlib import from_numpy_dtype
from numpy.typing import NDArray

from ..optim import _describe
from ._layout import Place, shard_bounds


def check_comm(comm: Any) -> MPI.Intracomm:
    """``comm`` if it is an mpi4py intracommunicator, else ``TypeError``."""
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError("comm must be an mpi4py intracommunicator (e.g. mpi4py.MPI.COMM_WORLD), "
                        f"got {type(comm).__name__}")
    return comm


def raise_everywhere(comm: MPI.Intracomm, error: Exception | None,
                     doing: str = "build the optimizer",
                     advice: str = "every rank must build it from the same model with the same "
                                   "arguments") -> None:
    """Collective: raises ``error`` on the rank that had it, and on every other rank a
    ``ValueError`` naming the first rank that had one and its message, so that no rank goes on
    into a collective that a rank which raised will never join. Does nothing if no rank had one."""
    found = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [rank for rank, message in enumerate(found) if message is not None]
    if failed:
        raise ValueError(f"rank(s) {failed} could not {doing} (rank {failed[0]}: "
                         f"{found[failed[0]]}); {advice}")


def _spec(buf: NDArray[Any], bounds: Sequence[int]) -> list[Any]:
    """mpi4py's ``[buffer, counts, displacements, datatype]`` for ``buf`` cut at ``bounds``."""
    counts = [b - a for a, b in pairwise(bounds)]
    return [buf, counts, list(bounds[:-1]), from_numpy_dtype(buf.dtype)]


class SumReducer:
    """Element-wise sums of a buffer over the ranks, in place.

    The reduce-scatter is written here from ``MPI_Alltoallv``, so that every element is summed in
    rank order, ``((g_0 + g_1) + g_2) + ...`` (left to right, each addition rounded to the dtype),
    whatever the library, world size or network. It moves the ``(n-1)/n`` of the buffer per rank
    that a ring reduce-scatter moves, and needs a scratch buffer as large as the part summed (kept
    between steps). It serves both settings: Open MPI 4.1's ``MPI_Reduce_scatter`` (and the move
    of its result into place) was never faster on shared memory (``bench/mpi_step.py``, 2 and 4
    ranks: as fast at 1e5 float32, 1.3x to 1.7x slower at 1e6 and 4e6, 3.1x at 1e7, where it
    page-faults in a scratch buffer as large as the whole message at every call).

    The all-reduce, ``deterministic=False``: ``MPI_Allreduce`` with ``MPI_SUM``, whose order of
    additions is the MPI library's (it may depend on the world size, the message size and the
    algorithm chosen; the sum is then exact up to that rounding). ``deterministic=True``: the
    rank-order reduce-scatter followed by ``MPI_Allgatherv``, ``2·(n-1)/n`` of the buffer per rank
    as a ring all-reduce.
    """

    def __init__(self, comm: MPI.Intracomm, deterministic: bool) -> None:
        if not isinstance(deterministic, bool):
            raise TypeError(f"deterministic must be a bool, got {deterministic!r}")
        self.comm = comm
        self.deterministic = deterministic
        self._scratch: dict[np.dtype[Any], NDArray[Any]] = {}

    def allreduce(self, buf: NDArray[Any]) -> None:
        """``buf <- Σ_ranks buf``."""
        if self.comm.size == 1:
            return  # the sum of one term (MPI would copy, and the rank-order path three times)
        if not self.deterministic:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return
        bounds = shard_bounds(buf.size, self.comm.size)
        self.reduce_scatter(buf, bounds)
        allgather(self.comm, buf, bounds)

    def reduce_scatter(self, buf: NDArray[Any], bounds: Sequence[int]) -> None:
        """``buf[lo:hi] <- Σ_ranks buf[lo:hi]`` for this rank's ``lo, hi = bounds[rank:rank + 2]``,
        in rank order whatever ``deterministic`` (see the class docstring; the rest of ``buf`` is
        left undefined)."""
        world, rank = self.comm.size, self.comm.rank
        lo, hi = bounds[rank], bounds[rank + 1]
        if world == 1:
            return
        size = hi - lo
        out = buf[lo:hi]
        scratch = self._scratch.get(buf.dtype)
        if scratch is None or scratch.size < world * size:
            scratch = self._scratch[buf.dtype] = np.empty(world * size, buf.dtype)
        parts = scratch[:world * size].reshape(world, size)  # row r: rank r's piece
        # This rank's own piece stays where it is (out), not copied through the exchange.
        send, receive = _spec(buf, bounds), _spec(parts, [r * size for r in range(world + 1)])
        send[1][rank] = receive[1][rank] = 0
        self.comm.Alltoallv(send, receive)
        # ((g_0 + g_1) + g_2) + ...: the partial sum lives in parts[0] until this rank's term, out,
        # is added, and in out from then on (world >= 2 here, so every term is added once).
        total = parts[0] if rank else out
        for r in range(1, world):
            target = out if r >= rank else total
            np.add(total, out if r == rank else parts[r], out=target)
            total = target


def allgather(comm: MPI.Intracomm, buf: NDArray[Any], bounds: Sequence[int]) -> None:
    """Every rank's piece ``buf[bounds[r]:bounds[r + 1]]`` copied to every rank, in place."""
    comm.Allgatherv(MPI.IN_PLACE, _spec(buf, bounds))


class ParamGather:
    """Every rank's updated shard into every rank's parameters, straight into their memory: one
    ``MPI_Alltoallw`` whose datatype for rank ``q`` lists the bytes of the parameters that ``q``'s
    shards cover (by address; the arrays are C-contiguous and never move). Through a flat buffer
    instead, the shard is copied in, gathered, and ``(n-1)/n`` of it copied out to the parameters:
    ``bench/mpi_step.py`` (1e7 float32 in 50 arrays, Open MPI 4.1, shared memory) measured the
    gather at 4.4 ms against 5.8 on 2 ranks, and the ShardedSGD step at 41.5 ms against 48-51 on 4.

    ``places``: the parameters' places in the flattened parameters of their dtype (``_layout``);
    ``bounds``: per dtype, the ranks' shards of those."""

    def __init__(self, comm: MPI.Intracomm, params: Sequence[NDArray[Any]],
                 places: Sequence[Place], bounds: Mapping[np.dtype[Any], Sequence[int]]) -> None:
        self.comm = comm
        self._types: list[Any] = []
        for q in range(comm.size):
            lengths, addresses = [], []
            for place in places:
                lo, hi = bounds[place.dtype][q:q + 2]
                start, stop = max(place.start, lo), min(place.stop, hi)
                if start < stop:
                    size = place.dtype.itemsize
                    addresses.append(MPI.Get_address(params[place.param])
                                     + (start - place.start) * size)
                    lengths.append((stop - start) * size)
            self._types.append(MPI.BYTE.Create_hindexed(lengths, addresses).Commit())
        weakref.finalize(self, _free_types, self._types)
        # Each parameter's memory as the datatypes address it: ((address, read-only), bytes).
        self._memory = [(p.__array_interface__["data"], p.nbytes) for p in params]

    def check(self, params: Sequence[NDArray[Any]]) -> None:
        """Raises ``ValueError`` naming the first parameter whose memory moved, changed size or
        became read-only since construction (``ndarray.resize``, ``flags.writeable = False``): the
        datatypes address its old memory, and the shards are views of it, so a step would write
        elsewhere. Checked by each rank before its step sends anything."""
        for i, (p, (data, nbytes)) in enumerate(zip(params, self._memory, strict=True)):
            now = p.__array_interface__["data"]
            if now == data and p.nbytes == nbytes:
                continue
            if now[0] == data[0] and now[1]:
                raise ValueError(f"params[{i}] is read-only: ShardedSGD updates the parameters in "
                                 "place (it was writeable when the optimizer was built)")
            raise ValueError(f"params[{i}]'s memory moved or changed size since the ShardedSGD "
                             "was built (its shards and all-gather address that memory): build a "
                             "new ShardedSGD and load_state_dict() the old one's state")

    def __call__(self) -> None:
        world, rank = self.comm.size, self.comm.rank
        counts, at = [int(q != rank) for q in range(world)], [0] * world  # own shard in place
        self.comm.Alltoallw([MPI.BOTTOM, (counts, at), [self._types[rank]] * world],
                            [MPI.BOTTOM, (counts, at), self._types])


def _free_types(types: list[Any]) -> None:
    if not MPI.Is_finalized():  # (after MPI_Finalize, at exit, MPI has freed them)
        for datatype in types:
            datatype.Free()


def load_everywhere(comm: MPI.Intracomm, opt: Any, state_dict: dict[str, Any]) -> None:
    """Collective: ``opt`` (an ``fm.SGD`` subclass) loads ``state_dict`` on every rank, or, if any
    rank's checks refuse its dict, on none (``raise_everywhere``): a state loaded by some ranks
    only would make the replicas, or the shards, of one model disagree."""
    checked, refused = None, None
    try:
        checked = opt._checked_state(state_dict)
    except Exception as error:  # (a KeyboardInterrupt stops this rank, as MPI programs do)
        refused = error
    raise_everywhere(comm, refused, "load the state dict",
                     "nothing was loaded on any rank (every rank loads the same state dict)")
    assert checked is not None  # (no rank refused)
    opt._install(*checked)


def _ranks_unlike_rank_0(comm: MPI.Intracomm, value: Any) -> list[int]:
    """The ranks whose ``value`` differs from rank 0's (collective; the same list on every rank)."""
    values = comm.allgather(value)
    return [r for r, other in enumerate(values) if other != values[0]]


def check_same_everywhere(comm: MPI.Intracomm, groups: Sequence[dict[str, Any]]) -> None:
    """Raise ``ValueError`` on EVERY rank unless all ranks have the same parameter groups (shapes,
    dtypes, hyper-parameters) and the same parameter values (a BLAKE2b digest of their bytes):
    data parallelism keeps identical replicas, and one that starts different never converges."""
    layout = [([(p.shape, p.dtype.str) for p in g["params"]],
               sorted((k, repr(_describe(v))) for k, v in g.items() if k != "params"))
              for g in groups]
    differ = _ranks_unlike_rank_0(comm, layout)
    if differ:
        raise ValueError(
            f"the parameter groups of rank(s) {differ} differ from rank 0's (number, shapes or "
            "dtypes of the arrays, or hyper-parameters): every rank must build the optimizer from "
            "the same model with the same arguments")
    digest = hashlib.blake2b()
    for g in groups:
        for p in g["params"]:
            digest.update(memoryview(p.reshape(-1)).cast("B"))  # (C order: checked before)
    differ = _ranks_unlike_rank_0(comm, digest.hexdigest())
    if differ:
        raise ValueError(
            f"the parameter values of rank(s) {differ} differ from rank 0's: initialise them from "
            "the same seed, or copy rank 0's to all with "
            "fastmomentum.distributed.broadcast_parameters(comm, params)")


def broadcast_parameters(comm: MPI.Intracomm, params: Sequence[NDArray[Any]], root: int = 0
                         ) -> None:
    """Copy ``root``'s values of ``params`` into every rank's arrays, in place (``MPI_Bcast`` of
    each array): the usual way to start identical replicas."""
    check_comm(comm)
    for p in params:
        comm.Bcast(p, root=root)
