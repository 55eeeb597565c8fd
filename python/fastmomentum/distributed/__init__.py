"""Momentum SGD across processes and machines over MPI (mpi4py; ``pip install
"fastmomentum[mpi]"``), one process per rank:

- :class:`DistributedSGD`: data parallelism. Every rank keeps all parameters and state; a step
  averages the ranks' gradients (bucketed in-place ``MPI_Allreduce`` of gradients computed into
  its ``grad_buffers``; a rank-order reduce-scatter and all-gather otherwise) and applies
  ``fm.SGD``'s fused update: ``g <- Σ_r g_r / n``, then ``p <- p - lr*b`` etc., identically on
  every rank.
- :class:`ShardedSGD`: ZeRO stage 1. Rank ``r`` keeps the momentum state of its shard of the
  flattened parameters only (``1/n`` of it): a reduce-scatter of the gradients (point-to-point
  messages straight from them, and rank-order sums), the fused update of the shard, an all-gather
  of the parameters (point-to-point messages straight into their memory).
- :func:`broadcast_parameters`: copy one rank's parameter values to all.

Both take ``fm.SGD``'s arguments and options, its schedulers and its ``state_dict`` layout (a
checkpoint moves between them, ``fm.SGD``, and any world size); ``deterministic=True`` sums the
gradients in rank order, which makes the result bitwise reproducible and equal to one process's
(ShardedSGD's sums, and DistributedSGD's of gradients not in its ``grad_buffers``, are in rank
order either way). A step leaves the caller's gradient arrays as they were and copies none of
them (one not in C order excepted); ``step()`` with no argument steps the ``grad_buffers``.
"""

from __future__ import annotations

try:
    from mpi4py import MPI  # noqa: F401  (initialises MPI, as any mpi4py program does)
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("fastmomentum.distributed needs mpi4py (and an MPI library): "
                      'pip install "fastmomentum[mpi]"') from error

from ._collectives import broadcast_parameters
from .data_parallel import DistributedSGD
from .sharded import ShardedSGD

__all__ = ["DistributedSGD", "ShardedSGD", "broadcast_parameters"]
