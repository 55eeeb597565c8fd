"""``DistributedSGD``: data-parallel momentum SGD, every rank holding all parameters and state."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from mpi4py import MPI
from numpy.typing import NDArray

from ..functional import Array, HostArray
from ..guards import StepResult
from ..optim import SGD, Schedulable, _busy_error, _params_list
from ._collectives import (
    ReduceScatter,
    allgather,
    check_comm,
    check_same_everywhere,
    load_everywhere,
    private_comm,
    raise_everywhere,
)
from ._layout import FlatGrads, check_deterministic, in_c_order, shard_bounds

__all__ = ["DistributedSGD"]

#: PyTorch DistributedDataParallel's default bucket size (``bucket_cap_mb=25``).
DEFAULT_BUCKET_BYTES = 25 * 2**20


class DistributedSGD(SGD):
    """:class:`fastmomentum.SGD` over MPI ranks (data parallelism): each step averages the ranks'
    gradients, then every rank applies the same fused update to its own replica of the parameters.

    With ``n = comm.size`` and ``g_r`` rank ``r``'s gradient of a parameter ``p``::

        g <- (g_0 + g_1 + ... + g_{n-1}) * (1 / (n * loss_scale))
        p <- the fm.SGD update of p with g          (e.g. b <- momentum*b + g; p <- p - lr*b)

    The sum is formed in MPI's order, or in rank order ``((g_0 + g_1) + g_2) + ...`` with
    ``deterministic=True``; the product by ``1/(n*loss_scale)`` (computed in double, rounded once
    to the dtype) is fused into the update kernel, as ``fm.SGD.step``'s ``loss_scale`` is. So with
    ``deterministic=True`` the parameters are bit for bit those of ``fm.SGD.step(sum, loss_scale=n
    * loss_scale)`` in one process, with ``sum`` added up in rank order; with ``False``, equal up to
    the rounding of the additions, which MPI may associate differently.

    Communication, chosen by measurement (``bench/mpi_step.py``, whose phase table shows it):

    - ``deterministic=False`` with the gradients computed into :attr:`grad_buffers` on every
      rank (passed as they are, or ``step()``'s default; one 4-byte ``MPI_Allreduce`` finds
      out): the flat buffer (one per dtype) is summed in place, in buckets of whole parameters of
      at most ``bucket_bytes`` (few large messages, one in-place ``MPI_Allreduce`` each);
    - otherwise (``deterministic=True``, or gradient arrays of the caller's own on some rank,
      which a step never writes): the rank-order reduce-scatter (``_collectives.ReduceScatter``):
      point-to-point messages straight from the gradients, each rank summing its shard of the
      flat buffer, then ``MPI_Allgatherv`` of the shards. Reducing the caller's arrays in MPI's
      way would need them copied into the buffer first (40 MB: 4-5 ms on 2 ranks here), more
      than this path costs.

    Then the step is ONE kernel call over all groups. Parameters and state are never
    communicated after construction: every rank computes the same update from the same sums, so
    replicas stay identical bit for bit. On one rank, the gradients are stepped where they are.

    Args:
        comm: an mpi4py intracommunicator (``MPI.COMM_WORLD``); every rank calls the constructor,
            :meth:`step`, :meth:`add_param_group` and :meth:`load_state_dict` (collectively),
            with the same model. The constructor checks that the groups (shapes, dtypes,
            hyper-parameters) and the parameter values are identical on every rank (a digest of
            the bytes), else raises ``ValueError`` on every rank.
        params, lr, momentum, dampening, weight_decay, nesterov, **options: as
            :class:`fastmomentum.SGD` (``maximize``, ``style``, ``weight_decay_mode``,
            ``schedule_multiplier``, ``nonfinite``, ``max_grad_norm``, ``max_consecutive_skips``);
            the guards act on the averaged gradients, identically on every rank.
        deterministic: sum in rank order (bitwise reproducible, independent of the MPI library
            and the network); default ``False``: MPI's order where MPI sums (gradients in
            :attr:`grad_buffers`), rank order elsewhere.
        bucket_bytes: the largest message, in bytes (default 25 MiB, as PyTorch's DDP). Keep it
            under 32 MiB with Open MPI 4.1: above, its ``MPI_Allreduce`` page-faults in a scratch
            buffer as large as the message at every call (``bench/mpi_step.py --bucket-mb``, 1e7
            float32 on 2 ranks: the all-reduce 10.3 ms in one 40 MiB bucket, 6.0 ms in 25 MiB
            ones and 6.0 in 31 MiB ones, 4.9 in 8 MiB ones).

    Schedulers (:mod:`fastmomentum.lr_scheduler`) and schedules attach exactly as to ``fm.SGD``;
    ``state_dict()`` is ``fm.SGD``'s (identical on every rank; save it from one), and loads into
    ``fm.SGD``, ``DistributedSGD`` or ``ShardedSGD`` of any world size.

    Every parameter needs a gradient on every rank (no ``None``: pass zeros), and a rank's error
    (a bad gradient) is raised before it communicates, so the other ranks wait: run scripts with
    ``mpirun ... python -m mpi4py script.py`` so that an uncaught exception aborts the whole job.
    A schedule that raises on one rank only does so after the messages, when the update is
    computed: that rank changes nothing and the others complete the step, so a rank that catches
    the error holds a replica one step behind.
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
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        **options: Any,
    ) -> None:
        self.comm: MPI.Intracomm = check_comm(comm)
        # Collective: on every rank before anything that one rank alone may refuse.
        self._messages: MPI.Intracomm = private_comm(self, self.comm)
        self._in_buffers = np.zeros(1, np.int32)  # (see _all_in_buffers)
        refused: Exception | None = None
        try:  # a rank whose arrays or arguments are refused raises on every rank, not alone
            if not isinstance(bucket_bytes, numbers.Integral) or isinstance(bucket_bytes, bool) \
                    or bucket_bytes <= 0:
                raise ValueError(f"bucket_bytes must be an integer > 0, got {bucket_bytes!r}")
            self.bucket_bytes: int = int(bucket_bytes)
            self._deterministic: bool = check_deterministic(deterministic)
            super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, **options)
            self._layout()  # the flat buffers: a rank short of memory fails here
        except Exception as error:  # (a KeyboardInterrupt stops this rank, as MPI programs do)
            refused = error
        raise_everywhere(self.comm, refused)
        check_same_everywhere(self.comm, self.param_groups, self._settings())

    def _settings(self) -> dict[str, Any]:
        """What decides a step's messages, besides the groups: the same on every rank."""
        return {"deterministic": self._deterministic, "bucket_bytes": self.bucket_bytes}

    @property
    def deterministic(self) -> bool:
        """Whether gradients are summed in rank order (see the class docstring)."""
        return self._deterministic

    def _load(self, state_dict: dict[str, Any]) -> None:
        load_everywhere(self.comm, self, state_dict)  # all ranks load, or none

    def _layout(self, grads: FlatGrads | None = None) -> None:
        """The flat buffers (``grads``, else made for the parameters) and what they decide."""
        self._grads = FlatGrads(self._params()) if grads is None else grads
        self._buckets = self._grads.buckets(self.bucket_bytes)
        self._bounds = {dtype: shard_bounds(flat.size, self.comm.size)
                        for dtype, flat in self._grads.flats.items()}
        self._reduce_scatter = ReduceScatter(self._messages, self._grads.places, self._bounds,
                                             self._grads.flats)

    @property
    def grad_buffers(self) -> list[NDArray[Any]]:
        """One array per parameter (its shape and dtype, in parameter order), views into the
        flat buffers that are reduced: gradients written there (e.g. ``np.matmul(..., out=...)``)
        are stepped by ``step()`` (or ``step(opt.grad_buffers)``), and with ``deterministic=False``
        summed by MPI's all-reduce in place. After a step on several ranks they hold the ranks'
        sum of the gradients (the update divides it by the world size, as it would a loss scale),
        whatever gradients were passed; on one rank, what was written there.
        :meth:`add_param_group` makes new buffers: take this list again after it."""
        return list(self._grads.views)

    @property
    def bucket_sizes(self) -> list[int]:
        """Elements per bucket: the sizes of the all-reduce messages of one step, in order."""
        return [bucket.size for bucket in self._buckets]


    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (collectively, the same on every rank; checked as in the constructor): if
        any rank refuses it, every rank raises and none adds it. Take :attr:`grad_buffers` again
        after it (new buffers)."""
        refused: Exception | None = None
        added = False
        try:
            params = _params_list(param_group)  # (read once: the group's params may be a generator)
            self._backend.check_params([*self._params(), *params], 0)  # fm.SGD's messages first
            # The distributed refusals (16-bit, not C order, memory), before any change:
            grads = FlatGrads([*self._params(), *params])
            super().add_param_group({**param_group, "params": params})
            added = True
        except Exception as error:  # (a KeyboardInterrupt stops this rank, as MPI programs do)
            refused = error
        try:
            raise_everywhere(self.comm, refused, "add the parameter group",
                             "no rank added it (every rank adds the same group)")
            check_same_everywhere(self.comm, self.param_groups, self._settings())
        except Exception:
            if added:
                self.param_groups.pop()
            raise
        self._layout(grads)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a DistributedSGD cannot be copied or pickled: its messages go on its own "
                        "duplicate of the communicator, with requests set up over its buffers, "
                        "freed with it; save opt.state_dict() and load it into a new "
                        "DistributedSGD")

    def _all_in_buffers(self, grads: Sequence[NDArray[Any]]) -> bool:
        """Whether every rank's gradients are all its :attr:`grad_buffers` (collective: one
        4-byte ``MPI_Allreduce``), so that every rank takes the same path even when one rank
        passes arrays of its own (zeros for an empty batch) and the others the buffers."""
        mine = all(g is view for g, view in zip(grads, self._grads.views, strict=True))
        self._in_buffers[0] = mine
        self.comm.Allreduce(MPI.IN_PLACE, self._in_buffers, op=MPI.MIN)
        return bool(self._in_buffers[0])

    def step(self, grads: Sequence[Array | None] | None = None, *,
             loss_scale: float = 1.0) -> StepResult:
        """Average ``grads`` (this rank's, one per parameter in order, all present; default: the
        gradients computed into :attr:`grad_buffers`) over the ranks and apply one update
        (collective). See :meth:`fastmomentum.SGD.step` for the result, the guards and
        ``loss_scale``."""
        busy = self._busy  # the lock released is the one taken (see optim._after_fork_in_child)
        if not busy.acquire(False):  # see optim._busy_error (not blocking)
            raise _busy_error("step()")
        try:
            checked = self._grads.check(grads, loss_scale)
            if self.comm.size == 1:  # the sum of one term: the caller's gradients, as they are
                summed = in_c_order(checked)  # (the parameters' layout)
            elif self._deterministic or not self._all_in_buffers(checked):
                # In rank order, from where the gradients are (see the class docstring).
                self._reduce_scatter(checked)
                for dtype, buffer in self._grads.flats.items():
                    allgather(self.comm, buffer, self._bounds[dtype])
                summed = self._grads.views
            else:  # computed into grad_buffers: MPI's all-reduce, in place, bucket by bucket
                for bucket in self._buckets:
                    self.comm.Allreduce(MPI.IN_PLACE, bucket, op=MPI.SUM)
                summed = self._grads.views
            return self._apply(summed, self._guard(loss_scale * self.comm.size),
                               reported=checked)
        finally:
            busy.release()
