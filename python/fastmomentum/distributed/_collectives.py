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
from numpy.typing import NDArray

from ..optim import _NO_BUFFER, _describe, _LoadedState
from ._layout import Place, in_c_order, shard_segments


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


#: MPI's predefined datatypes of the dtypes the optimizers communicate (``_layout.FlatGrads``
#: refuses others). Predefined: ``mpi4py.util.dtlib.from_numpy_dtype`` makes a new datatype at
#: every call, never freed (544 bytes a call, a step's leak).
_MPI_TYPES = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE}


def _spec(buf: NDArray[Any], bounds: Sequence[int]) -> list[Any]:
    """mpi4py's ``[buffer, counts, displacements, datatype]`` for ``buf`` cut at ``bounds``."""
    counts = [b - a for a, b in pairwise(bounds)]
    return [buf, counts, list(bounds[:-1]), _MPI_TYPES[buf.dtype]]


def private_comm(owner: object, comm: MPI.Intracomm) -> MPI.Intracomm:
    """A duplicate of ``comm`` (collective) for ``owner``'s point-to-point messages: their own
    context, so that they never match the caller's messages on ``comm``, whatever the tags; freed
    with ``owner`` (``MPI_Comm_free`` is local in Open MPI and MPICH, so ranks may free it at
    different times)."""
    dup = comm.Dup()
    weakref.finalize(owner, _free, [dup])
    return dup


def _free(handles: list[Any]) -> None:
    if not MPI.Is_finalized():  # (after MPI_Finalize, at exit, MPI has freed them)
        for handle in handles:
            handle.Free()


# Tags of the optimizers' messages on their private communicator: between two ranks, messages of
# one tag match in the order they were sent, and every rank posts them in the same order.
_REDUCE_SCATTER, _GATHER = 1, 2


class ReduceScatter:
    """Each rank's shard of the ranks' sum of the gradients, summed in rank order, ``((g_0 + g_1)
    + g_2) + ...`` (left to right, each addition rounded to the dtype), whatever the library,
    world size or network.

    The messages go straight from the caller's gradient arrays: each rank sends every other rank
    the segments of its gradients that fall in that rank's shard (one message per segment,
    ``Isend``), and receives the others' segments of its own shard into the rows of a scratch
    buffer (as large as the shard times the world size; persistent receives, set up once). A
    rank's own piece is never copied: the addition of its term reads it where it is. Per rank and
    step, ``(n-1)/n`` of the gradients' bytes are sent, as in a ring reduce-scatter, and nothing
    is copied into a flat buffer first. ``bench/mpi_step.py`` (1e7 float32 in 50 arrays, Open
    MPI 4.1 on shared memory) measured the messages at 1.9 ms on 2 ranks, against 8.1 ms for the
    copy into one flat buffer and an ``MPI_Alltoallv`` of it: a large contiguous message is one
    copy between the processes (``process_vm_readv``), where a copy in first, or a derived
    datatype, adds one. Open MPI 4.1's ``MPI_Reduce_scatter`` was never faster (1.3x to 3.1x
    slower from 1e6 float32 on: it page-faults in a scratch buffer as large as the whole message
    at every call).

    ``places``: the parameters' places in their dtype's flat buffer; ``bounds``: per dtype, the
    ranks' shards of it; ``flats``: per dtype, the buffer whose shard receives the sums, or
    ``None``: the sums are left in a row of the scratch buffer, every addition in place (writing
    them to other memory costs the memory a read for ownership more: 3.6 ms against 1.8 for the
    sums, 2 ranks, the benchmark's layout). :attr:`sums`: per dtype, where they are (on one rank,
    nothing: the caller's gradients are the sum).
    """

    def __init__(self, comm: MPI.Intracomm, places: Sequence[Place],
                 bounds: Mapping[np.dtype[Any], Sequence[int]],
                 flats: Mapping[np.dtype[Any], NDArray[Any]] | None) -> None:
        self.comm = comm
        world, rank = comm.size, comm.rank
        self._segments = [shard_segments(places, bounds, q) for q in range(world)]
        #: Per dtype, the shard of the ranks' sum after a call (see the class docstring).
        self.sums: dict[np.dtype[Any], NDArray[Any]] = {}
        self._parts: dict[np.dtype[Any], NDArray[Any]] = {}
        self._receives: list[Any] = []
        #: The messages this rank sends per step.
        self.sends = sum(len(segments) for q in range(world) if q != rank
                         for segments in self._segments[q].values())
        if world == 1:
            return
        for dtype, mine in self._segments[rank].items():
            lo, hi = bounds[dtype][rank:rank + 2]
            # Row r: rank r's terms of this shard (this rank's own row stays unused).
            parts = self._parts[dtype] = np.empty((world, hi - lo), dtype)
            # The row where the partial sum is when this rank's term is added (see add).
            self.sums[dtype] = parts[1 if rank == 0 else 0] if flats is None \
                else flats[dtype][lo:hi]
            for q in range(world):
                if q != rank:
                    self._receives += [
                        comm.Recv_init(parts[q, s.offset:s.offset + s.stop - s.start], q,
                                       _REDUCE_SCATTER) for s in mine]
        weakref.finalize(self, _free, self._receives)

    def __call__(self, grads: Sequence[NDArray[Any]]) -> None:
        """:attr:`sums` ``<-`` the ranks' sum of this rank's shard (``grads``: this rank's, one
        per parameter, any layout: one not in C order is copied to it for its messages)."""
        if self.comm.size > 1:
            flat = [g.reshape(-1) for g in in_c_order(grads)]  # (views)
            self.exchange(flat)
            self.add(flat)

    def exchange(self, grads: Sequence[NDArray[Any]]) -> None:
        """The messages: every rank's segments of this rank's shard into the scratch rows."""
        world, rank = self.comm.size, self.comm.rank
        MPI.Prequest.Startall(self._receives)
        sends = []
        for step in range(1, world):  # rank + 1 first: each rank starts on a different peer
            q = (rank + step) % world
            for segments in self._segments[q].values():
                sends += [self.comm.Isend(grads[s.param][s.start:s.stop], q, _REDUCE_SCATTER)
                          for s in segments]
        MPI.Request.Waitall(self._receives + sends)

    def add(self, grads: Sequence[NDArray[Any]]) -> None:
        """The rank-order sums of the received rows and this rank's own term (``grads``, read
        where it is) into :attr:`sums`."""
        rank = self.comm.rank
        for dtype, segments in self._segments[rank].items():
            parts, out = self._parts[dtype], self.sums[dtype]
            for r in range(1, rank):  # g_0 + g_1 + ... + g_{rank-1}, in row 0
                np.add(parts[0], parts[r], out=parts[0])
            for s in segments:  # ... + g_rank; rank 0: g_0 + g_1
                own, at = grads[s.param][s.start:s.stop], slice(s.offset,
                                                                s.offset + s.stop - s.start)
                terms = (own, parts[1, at]) if rank == 0 else (parts[0, at], own)
                np.add(*terms, out=out[at])
            for r in range(max(rank + 1, 2), len(parts)):  # ... + g_{n-1}
                np.add(out, parts[r], out=out)


def allgather(comm: MPI.Intracomm, buf: NDArray[Any], bounds: Sequence[int]) -> None:
    """Every rank's piece ``buf[bounds[r]:bounds[r + 1]]`` copied to every rank, in place."""
    comm.Allgatherv(MPI.IN_PLACE, _spec(buf, bounds))


class ParamGather:
    """Every rank's updated shard into every rank's parameters, straight into their memory: one
    message per segment (where a shard meets a parameter) and peer, persistent requests set up
    once over the parameters' memory (the arrays are C-contiguous and must not move). Measured
    in ``bench/mpi_step.py``'s ShardedSGD step (1e7 float32 in 50 arrays, Open MPI 4.1, shared
    memory), two runs: 3.9-4.0 ms on 2 ranks and 10.3-11.8 on 4, against 4.8-4.9 and 13.1-13.4
    for one ``MPI_Alltoallw`` with a derived datatype per rank over the same memory.

    ``places``: the parameters' places in the flattened parameters of their dtype (``_layout``);
    ``bounds``: per dtype, the ranks' shards of those."""

    def __init__(self, comm: MPI.Intracomm, params: Sequence[NDArray[Any]],
                 places: Sequence[Place], bounds: Mapping[np.dtype[Any], Sequence[int]]) -> None:
        self.comm = comm
        world, rank = comm.size, comm.rank
        flat = [p.reshape(-1) for p in params]  # (views: C order, checked before)
        self._requests: list[Any] = []
        mine = shard_segments(places, bounds, rank)
        for step in range(1, world):
            q = (rank + step) % world
            for segments in shard_segments(places, bounds, q).values():
                self._requests += [comm.Recv_init(flat[s.param][s.start:s.stop], q, _GATHER)
                                   for s in segments]
            for segments in mine.values():
                self._requests += [comm.Send_init(flat[s.param][s.start:s.stop], q, _GATHER)
                                   for s in segments]
        weakref.finalize(self, _free, self._requests)
        #: The messages this rank sends per step.
        self.sends = (world - 1) * sum(len(segments) for segments in mine.values())
        # Each parameter's memory as the requests address it: ((address, read-only), bytes).
        self._memory = [(p.__array_interface__["data"], p.nbytes) for p in params]

    def check(self, params: Sequence[NDArray[Any]]) -> None:
        """Raises ``ValueError`` naming the first parameter whose memory moved, changed size or
        became read-only since construction (``ndarray.resize``, ``flags.writeable = False``): the
        requests address its old memory, and the shards are views of it, so a step would write
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
        MPI.Prequest.Startall(self._requests)
        MPI.Request.Waitall(self._requests)


def load_everywhere(comm: MPI.Intracomm, opt: Any, state_dict: dict[str, Any]) -> None:
    """Collective: ``opt`` (an ``fm.SGD`` subclass) loads ``state_dict`` on every rank, or on
    none: if any rank's checks refuse its dict (``raise_everywhere``), or if the ranks' dicts
    differ (a digest of what each would load: a stale checkpoint on one node), every rank raises.
    A state loaded by some ranks only, or different on some, would make the replicas, or the
    shards, of one model disagree."""
    checked, refused, digest = None, None, ""
    try:
        checked = opt._checked_state(state_dict)
        digest = _loaded_digest(checked[0])
    except Exception as error:  # (a KeyboardInterrupt stops this rank, as MPI programs do)
        refused = error
    raise_everywhere(comm, refused, "load the state dict",
                     "nothing was loaded on any rank (every rank loads the same state dict)")
    differ = _ranks_unlike_rank_0(comm, digest)
    if differ:
        raise ValueError(
            f"the state dicts of rank(s) {differ} differ from rank 0's (hyper-parameters, "
            "counters or buffers): nothing was loaded on any rank; every rank loads the same "
            "state dict (read one file, or pass rank 0's with comm.bcast)")
    assert checked is not None  # (no rank refused)
    opt._install(*checked)


def _loaded_digest(loaded: _LoadedState) -> str:
    """A BLAKE2b digest of a checked state dict's content: the groups' hyper-parameters (as
    :func:`_describe` gives them, the same on every rank for the same dict), the counters, and
    each buffer's dtype, shape and bytes (an 8-bit buffer's two arrays)."""
    digest = hashlib.blake2b()
    groups = [sorted((k, repr(_describe(v))) for k, v in g.items() if k != "params")
              for g in loaded.groups]
    digest.update(repr((groups, loaded.iterations, loaded.skipped_steps,
                        loaded.consecutive_skips, loaded.seed)).encode())
    def add(value: Any) -> None:
        if isinstance(value, np.ndarray):
            digest.update(repr((value.dtype.str, value.shape)).encode())
            digest.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)
        else:
            digest.update(repr(value).encode())

    for _, buffer, extras in loaded.buffers:
        parts = () if buffer is _NO_BUFFER else buffer if isinstance(buffer, tuple) else (buffer,)
        add(len(parts))
        for part in parts:
            add(part)
        for key in sorted(extras, key=repr):
            add(key)
            add(extras[key])
    return digest.hexdigest()


def _ranks_unlike_rank_0(comm: MPI.Intracomm, value: Any) -> list[int]:
    """The ranks whose ``value`` differs from rank 0's (collective; the same list on every rank)."""
    values = comm.allgather(value)
    return [r for r, other in enumerate(values) if other != values[0]]


def check_same_everywhere(comm: MPI.Intracomm, groups: Sequence[dict[str, Any]],
                          settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` on EVERY rank unless all ranks have the same parameter groups (shapes,
    dtypes, hyper-parameters), the same optimizer ``settings`` (what decides the messages, such as
    ``deterministic``) and the same parameter values (a BLAKE2b digest of their bytes): data
    parallelism keeps identical replicas, and one that starts different never converges."""
    layout = [([(p.shape, p.dtype.str) for p in g["params"]],
               sorted((k, repr(_describe(v))) for k, v in g.items() if k != "params"))
              for g in groups]
    differ = _ranks_unlike_rank_0(comm, (layout, sorted(settings.items())))
    if differ:
        raise ValueError(
            f"the parameter groups or settings of rank(s) {differ} differ from rank 0's (number, "
            f"shapes or dtypes of the arrays, hyper-parameters, or {', '.join(settings)}): every "
            "rank must build the optimizer from the same model with the same arguments")
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
