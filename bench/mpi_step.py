"""Step time, bytes communicated and state memory per rank of the distributed optimizers, against
the plain data-parallel loop, at world sizes 1, 2, 4.

    python bench/mpi_step.py                  # mpirun -n 1, 2, 4 of itself; prints a table
    python bench/mpi_step.py --size 1e6 --worlds 2 --steps 5

The model: ``--size`` float32 parameters (default 1e7) in ``--arrays`` equal arrays (default 50),
momentum 0.9, fixed random gradients. Per world size ``n``, one after the other on the same
arrays:

- ``baseline``: ``comm.Allreduce(IN_PLACE, g)`` for each gradient (one message per array), then
  ``fm.SGD.step(grads, loss_scale=n)``;
- ``DistributedSGD`` and ``ShardedSGD``, with ``deterministic=False`` and ``True`` (``det``),
  given the same gradient arrays as the baseline, which they must not modify: both sum in rank
  order, from those arrays (DistributedSGD then all-gathers the sums; ShardedSGD gathers the
  parameters).

``--grad-buffers``: the optimizers' gradients are written into ``opt.grad_buffers`` before each
step, outside its time, as by a backward pass that computes them there; ``DistributedSGD`` with
``deterministic=False`` then all-reduces them in place with MPI (25 MiB buckets, or
``--bucket-mb``).

``step ms``: the median over ``--steps`` steps (after two warm-up steps) of the slowest rank's time
of one whole step (a barrier before each). ``MB sent/rank``: the bytes each rank sends per step,
as ``mpi_model.py``'s ``traffic`` counts them for the collectives the code issues (the algorithm
MPI picks may move more): an all-reduce of ``B`` bytes sends ``2(n-1)/n·B`` (reduce-scatter then
all-gather), a reduce-scatter or an all-gather ``(n-1)/n·B``, the rank-order reduce-scatter
(point to point) exactly the ``(n-1)/n·B`` bound for the other ranks. ``msgs``: the collective
calls and point-to-point sends a rank starts per step (none on one rank, except the baseline's).
``state MB/rank``: the momentum buffers this rank holds (``state_nbytes``).

The second table splits each step into its phases, in ms per step (the median over the steps of
the ranks' mean; ``_mpi_phases.py`` wraps the library's calls from outside it): each MPI
collective by name, the rank-order reduce-scatter's messages (``RS sends``) and its local work
(``RS sums``, the additions), the update kernel call, ShardedSGD's point-to-point all-gather of
the parameters (``gather``) — the times of messages include waiting for the other ranks — and
``other``: the rest of the rank's step (Python, checks); and ``faults``, the minor page faults
of a rank's step (the median): memory the step maps afresh, such as a collective's scratch buffer,
costs a fault per 4 KiB page on first touch. ``--json PATH`` writes every row, phases included.

Several ranks on fewer cores (``--oversubscribe``) share the cores and the memory bandwidth: there,
compare the rows of one world size with each other, not across world sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import fastmomentum as fm

VARIANTS = ["baseline", "DistributedSGD", "DistributedSGD det", "ShardedSGD", "ShardedSGD det"]


def measure(size: int, arrays: int, steps: int, bucket_bytes: int | None, in_buffers: bool
            ) -> list[dict[str, Any]]:
    """Run under MPI: every variant on this world; rank 0 gets the rows."""
    from _mpi_phases import CLOCK, PHASES, TimedComm, install
    from mpi4py import MPI
    from mpi_model import traffic

    from fastmomentum.distributed import DistributedSGD, ShardedSGD

    install()
    comm = TimedComm(MPI.COMM_WORLD)
    n = comm.size
    rng = np.random.default_rng(0)
    params = [np.asarray(rng.standard_normal(size // arrays), np.float32) for _ in range(arrays)]
    grads = [np.asarray(np.random.default_rng([1, comm.rank, i]).standard_normal(p.size) * 1e-3,
                        np.float32) for i, p in enumerate(params)]
    rows = []
    for variant in VARIANTS:
        work = [g.copy() for g in grads]  # the baseline reduces in place
        if variant == "baseline":
            opt: Any = fm.SGD(params, lr=1e-3, momentum=0.9)

            def step(opt: Any = opt, work: list[np.ndarray] = work) -> None:
                for g in work:
                    comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
                opt.step(work, loss_scale=n)

            messages = arrays
        else:
            kind = DistributedSGD if variant.startswith("Distributed") else ShardedSGD
            buckets: dict[str, Any] = {"bucket_bytes": bucket_bytes} \
                if bucket_bytes and kind is DistributedSGD else {}
            opt = kind(comm, params, lr=1e-3, momentum=0.9, deterministic=variant.endswith("det"),
                       **buckets)
            if in_buffers:  # as a backward pass that writes there: no copy in the step
                work = opt.grad_buffers

            def step(opt: Any = opt, work: list[np.ndarray] = work) -> None:
                opt.step(work)

            if n == 1:
                messages = 0
            elif kind is ShardedSGD:  # point-to-point sends, both ways
                messages = opt._reduce_scatter.sends + opt._gather.sends
            elif in_buffers and not opt.deterministic:  # MPI_Allreduce per bucket
                messages = len(opt.bucket_sizes)
            else:  # the rank-order path: sends, then one Allgatherv (one dtype here)
                messages = opt._reduce_scatter.sends + 1
        sent = traffic(variant, n, sum(p.size for p in params), arrays).bytes_sent  # the model's
        times, phases, faults = [], [], []
        for i in range(steps + 2):
            if in_buffers and variant != "baseline":  # (a step leaves sums there)
                for g, buffer in zip(grads, work, strict=True):
                    np.copyto(buffer, g)
            comm.Barrier()
            CLOCK.take()
            begin = time.perf_counter()
            step()
            mine = time.perf_counter() - begin
            spent, step_faults = CLOCK.take()
            spent["other"] = mine - sum(spent.values())
            elapsed = comm.allreduce(mine, op=MPI.MAX)
            everyone = comm.allgather(spent)
            if i >= 2:
                times.append(elapsed)
                phases.append({phase: sum(r.get(phase, 0.0) for r in everyone) / n
                               for phase in PHASES})
                faults.append(comm.allreduce(step_faults) / n)
        state = opt.state_nbytes if hasattr(opt, "state_nbytes") else sum(
            e["momentum_buffer"].nbytes for e in opt.state.values())
        rows.append({"world": n, "variant": variant, "step_ms": statistics.median(times) * 1e3,
                     "mb_sent": sent / 1e6, "messages": messages,
                     "state_mb": comm.allreduce(state, op=MPI.MAX) / 1e6,
                     "phases_ms": {heading: statistics.median(p[phase] for p in phases) * 1e3
                                   for phase, heading in PHASES.items()},
                     "page_faults": statistics.median(faults)})
        del opt, step
    return rows


def launch(world: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``mpirun -n world`` of this script in worker mode; its rows."""
    command = [shutil.which("mpirun") or "mpirun", "-n", str(world)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    version = subprocess.run([command[0], "--version"], capture_output=True, text=True,
                             check=False)
    if "Open MPI" in version.stdout:
        command.append("--oversubscribe")
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command += [sys.executable, "-m", "mpi4py", __file__, "--worker", "--size", str(args.size),
                "--arrays", str(args.arrays), "--steps", str(args.steps),
                *(["--bucket-mb", str(args.bucket_mb)] if args.bucket_mb else []),
                *(["--grad-buffers"] if args.grad_buffers else [])]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=lambda s: int(float(s)), default=10**7)
    parser.add_argument("--arrays", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--bucket-mb", type=float,
                        help="DistributedSGD's bucket_bytes, in MiB (default: its default, 25)")
    parser.add_argument("--grad-buffers", action="store_true",
                        help="the optimizers' gradients written into opt.grad_buffers before each "
                        "step (outside its time), as a backward pass computing them there")
    parser.add_argument("--json", type=Path, help="write every row (phases included) here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        rows = measure(args.size, args.arrays, args.steps,
                       int(args.bucket_mb * 2**20) if args.bucket_mb else None, args.grad_buffers)
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 0:
            for row in rows:
                print(json.dumps(row))
        return
    print(f"{args.size:.0e} float32 parameters in {args.arrays} arrays, momentum 0.9, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, {os.cpu_count()} CPUs; "
          f"median of {args.steps} steps")
    print(f"{'n':>2}  {'variant':<20} {'step ms':>9} {'vs baseline':>11} {'MB sent/rank':>12} "
          f"{'msgs':>5} {'state MB/rank':>13}")
    everything = []
    for world in args.worlds:
        rows = launch(world, args)
        base = rows[0]["step_ms"]
        for row in rows:
            print(f"{world:>2}  {row['variant']:<20} {row['step_ms']:>9.2f} "
                  f"{row['step_ms'] / base:>11.2f} {row['mb_sent']:>12.1f} {row['messages']:>5} "
                  f"{row['state_mb']:>13.1f}")
        everything += rows
    headings = list(everything[0]["phases_ms"])
    print("\nms per phase (the ranks' mean; '-': a phase the variant does not have), and the minor "
          "page faults of a rank's step")
    print(f"{'n':>2}  {'variant':<20}" + "".join(f" {h:>10}" for h in headings) + "     faults")
    for row in everything:
        cells = [f"{ms:>10.2f}" if ms else f"{'-':>10}" for ms in row["phases_ms"].values()]
        print(f"{row['world']:>2}  {row['variant']:<20} " + " ".join(cells)
              + f" {row['page_faults']:>10.0f}")
    if args.json is not None:
        args.json.write_text(json.dumps(everything, indent=1) + "\n")


if __name__ == "__main__":
    main()
