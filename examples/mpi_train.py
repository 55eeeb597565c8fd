"""Data-parallel training of the demo's NumPy MLP over MPI: each rank computes the gradients of its
slice of every mini-batch, fastmomentum.distributed averages them and applies the update.

    mpirun -n 4 python -m mpi4py examples/mpi_train.py              # DistributedSGD on 4 ranks
    mpirun -n 4 python -m mpi4py examples/mpi_train.py --sharded     # ShardedSGD (ZeRO-1)
    python examples/mpi_train.py --single                            # fm.SGD in one process

The network and data are the demo's (``fastmomentum.commands.demo.mlp``, ``.data``): a 2 → 64 → 3
tanh MLP on three spirals, float64. Every rank draws the same initialisation and batch order (same
seed); a global batch of 48 points is split into ``n`` equal slices, so the mean of the ranks' slice
gradients IS the gradient of the batch's mean loss, and ``n`` ranks train the same model as one
process, up to the rounding of the sums (about 1e-15 relative here). The optimizer: Nesterov
momentum (PyTorch's form), L2 weight decay on the weights, cosine lr decay::

    g <- mean over ranks of g_r + wd*p;   b <- 0.9*b + g;   p <- p - lr_t*(g + 0.9*b)

The distributed optimizers' gradients are computed straight into ``opt.grad_buffers`` and stepped
by ``opt.step()``: nothing is copied on the way to MPI. ``python -m mpi4py`` makes an exception on
one rank abort the whole job instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

import fastmomentum as fm
from fastmomentum.commands.demo.data import CLASSES, spirals
from fastmomentum.commands.demo.mlp import init, loss_and_grads

HIDDEN, EPOCHS, BATCH, LR, POINTS = 64, 20, 48, 0.3, 1920


def train(comm: Any = None, sharded: bool = False) -> dict[str, Any]:
    """Train on the ranks of ``comm`` (an mpi4py communicator), or in one process with fm.SGD
    when it is None. Returns the mean training loss per epoch (over the whole data) and the final
    test accuracy, the same on every rank."""
    world, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    if BATCH % world:
        raise ValueError(f"the batch of {BATCH} does not split into {world} equal slices")
    per_rank = BATCH // world
    (X, y), (X_test, y_test) = spirals(POINTS, seed=1), spirals(600, seed=2)
    rng = np.random.default_rng(0)  # the same on every rank: same init, same batch order
    W1, b1, W2, b2 = params = init(2, HIDDEN, CLASSES, rng)
    groups = [{"params": [W1, W2], "weight_decay": 5e-4}, {"params": [b1, b2], "weight_decay": 0.0}]
    options = dict(lr=fm.schedules.cosine_decay(LR, EPOCHS * POINTS // BATCH), momentum=0.9,
                   nesterov=True)
    if comm is None:
        opt: fm.SGD = fm.SGD(groups, **options)
    else:
        from fastmomentum.distributed import DistributedSGD, ShardedSGD

        kind = ShardedSGD if sharded else DistributedSGD
        opt = kind(comm, groups, deterministic=True, **options)
    history = []
    for _ in range(EPOCHS):
        order, loss_sum = rng.permutation(POINTS), 0.0
        for start in range(0, POINTS, BATCH):
            mine = order[start + rank * per_rank:start + (rank + 1) * per_rank]
            if comm is None:
                loss, (gW1, gb1, gW2, gb2), _ = loss_and_grads(params, X[mine], y[mine])
                opt.step([gW1, gW2, gb1, gb2])
            else:  # computed into the optimizer's buffers (its order: W1, W2, b1, b2)
                gW1, gW2, gb1, gb2 = opt.grad_buffers
                loss, _, _ = loss_and_grads(params, X[mine], y[mine], out=[gW1, gb1, gW2, gb2])
                opt.step()  # averaged over the ranks inside
            loss_sum += loss
        if comm is not None:
            loss_sum = comm.allreduce(loss_sum) / world  # the mean over the ranks' slices
        history.append(loss_sum / (POINTS // BATCH))
    return {"loss": history, "test_accuracy": loss_and_grads(params, X_test, y_test)[2],
            "world": world, "optimizer": type(opt).__name__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--single", action="store_true", help="one process, fm.SGD, no MPI")
    choice.add_argument("--distributed", action="store_true", help="DistributedSGD (default)")
    choice.add_argument("--sharded", action="store_true", help="ShardedSGD (ZeRO-1)")
    parser.add_argument("--json", help="write the result to this file (rank 0)")
    args = parser.parse_args()
    comm = None
    if not args.single:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    result = train(comm, args.sharded)
    if comm is None or comm.rank == 0:
        for epoch, loss in enumerate(result["loss"], start=1):
            print(f"epoch {epoch:3d}  training loss {loss:.6f}")
        print(f"{result['optimizer']} on {result['world']} rank(s): final training loss "
              f"{result['loss'][-1]:.6f}, test accuracy {result['test_accuracy']:.3f}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as file:
                json.dump(result, file)


if __name__ == "__main__":
    main()
