"""The distributed optimizers' communication model: per step, the messages and bytes each rank
sends for each variant of ``bench/mpi_step.py``, and the step time under the latency-bandwidth
(alpha-beta) model of ring collectives, projected to clusters.

    python bench/mpi_model.py                 # the README's projection (25 M and 350 M float32
                                              # parameters, 8/64/256 ranks, 25 and 100 Gb/s)
    python bench/mpi_model.py --params 1e9 --ranks 512 --link-gbps 400 --latency-us 2

The model, for ``P`` float32 parameters (``B = 4P`` bytes) in ``k`` arrays and ``m`` buckets, on
``n`` ranks. A collective is a sequence of rounds; each round costs the link's latency ``alpha``,
and each byte a rank sends costs ``1/beta``. MPI's own collectives are taken as the bandwidth-
optimal ones MPI libraries use for large messages (recursive halving, then doubling: Rabenseifner's
all-reduce), with ``L = ceil(log2 n)``:

- all-reduce of ``b`` bytes: ``2L`` rounds, ``2(n-1)/n * b`` bytes sent per rank;
- reduce-scatter and all-gather: ``L`` rounds, ``(n-1)/n * b`` bytes;
- the rank-order reduce-scatter (point-to-point messages straight from the gradients:
  ``DistributedSGD``'s with ``deterministic=True`` or gradients of the caller's own, and
  ``ShardedSGD``'s whatever ``deterministic``) and ``ShardedSGD``'s all-gather (point-to-point
  messages straight into the parameters): the same bytes, sent to each other rank (one message
  per segment where its shard meets an array, all posted at once): counted as ``n-1`` rounds,
  a latency that grows with ``n``, not ``log n``.

The sums themselves cost the local memory: ``(n-1)/n * b`` bytes of additions per rank in a
reduce-scatter or an all-reduce, at ``add_ns`` per float32 element (NumPy's in-place add here).
The update costs ``update_ns`` per element of the parameters a rank updates (all of them, or its
shard). No variant copies the gradients: the messages leave from where they are. The variants:

- ``baseline``: ``k`` all-reduces of ``B/k``, then the update of ``P``;
- ``DistributedSGD`` (gradients computed into ``grad_buffers``): ``m`` all-reduces of ``B/m``,
  the update of ``P``; ``det`` (and gradients of the caller's own, either setting): one rank-order
  reduce-scatter of ``B`` and one all-gather of ``B``, the update of ``P``;
- ``ShardedSGD`` (ZeRO-1, either setting): one rank-order reduce-scatter of ``B``, the update of
  ``P/n``, one all-gather of ``B``: the all-reduce's bytes, the update of ``1/n``;
- ``DistributedSGD overlap``: not implemented; what bucket-by-bucket overlap of the reductions
  with the update would give: the larger of the communication and the update, plus one bucket's
  share of the smaller.

Every variant sends the same ``2(n-1)/n * B`` bytes per rank; they differ in rounds (latency) and
in the local work. The local constants default to what was measured on this project's 2-core CI
machine (one thread per rank); the link's are the figures of the link, not measured here.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

#: DistributedSGD's default bucket size (PyTorch DDP's 25 MiB).
BUCKET_BYTES = 25 * 2**20
FLOAT32 = 4

VARIANTS = ["baseline", "DistributedSGD", "DistributedSGD det", "ShardedSGD", "ShardedSGD det",
            "DistributedSGD overlap"]
#: The projection's column headers.
SHORT = {"baseline": "baseline", "DistributedSGD": "Dist", "DistributedSGD det": "Dist det",
         "ShardedSGD": "Sharded", "ShardedSGD det": "Sharded det",
         "DistributedSGD overlap": "Dist overlap"}


@dataclass(frozen=True)
class Link:
    """A network (or shared memory): ``alpha`` seconds per round, ``beta`` bytes per second."""

    alpha: float
    beta: float

    @classmethod
    def of(cls, gbps: float, latency_us: float) -> Link:
        return cls(alpha=latency_us * 1e-6, beta=gbps * 1e9 / 8)


@dataclass(frozen=True)
class Local:
    """One rank's memory-bound work, in nanoseconds per float32 element."""

    update_ns: float  # the fused momentum step (reads p, g, b; writes p, b)
    add_ns: float  # one in-place addition of a received piece (the collectives' sums)


@dataclass(frozen=True)
class Traffic:
    """What one rank does in one step: collective rounds, bytes sent, elements summed."""

    rounds: int
    bytes_sent: float
    summed: float  # float32 elements added into a buffer


def log_rounds(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def allreduce(n: int, nbytes: float) -> Traffic:
    """MPI's all-reduce: recursive halving (a reduce-scatter), then doubling (an all-gather)."""
    return Traffic(2 * log_rounds(n), 2 * (n - 1) / n * nbytes, (n - 1) / n * nbytes / FLOAT32)


def reduce_scatter(n: int, nbytes: float, rank_order: bool) -> Traffic:
    """MPI's reduce-scatter, or the rank-order one (point to point, to every other rank)."""
    rounds = n - 1 if rank_order else log_rounds(n)
    return Traffic(rounds, (n - 1) / n * nbytes, (n - 1) / n * nbytes / FLOAT32)


def allgather(n: int, nbytes: float, one_message_per_rank: bool = False) -> Traffic:
    """MPI's all-gather, or ShardedSGD's, point to point straight into the parameters."""
    return Traffic(n - 1 if one_message_per_rank else log_rounds(n), (n - 1) / n * nbytes, 0.0)


def buckets(params: int, arrays: int, bucket_bytes: int = BUCKET_BYTES) -> int:
    """How many messages DistributedSGD's bucketing makes of ``arrays`` equal arrays: runs of whole
    arrays of at most ``bucket_bytes`` (an array larger than that is a bucket of its own)."""
    per_array = params / arrays * FLOAT32
    per_bucket = max(1, int(bucket_bytes // per_array))
    return math.ceil(arrays / per_bucket)


def traffic(variant: str, n: int, params: int, arrays: int) -> Traffic:
    """The step's communication for one rank (nothing on one rank)."""
    if n == 1:
        return Traffic(0, 0.0, 0.0)
    total = params * FLOAT32
    det = variant.endswith("det")
    if variant == "baseline":
        parts = [allreduce(n, total / arrays)] * arrays
    elif variant.startswith("DistributedSGD"):
        m = buckets(params, arrays)
        parts = ([reduce_scatter(n, total, True), allgather(n, total)] if det
                 else [allreduce(n, total / m)] * m)
    else:  # ShardedSGD sums in rank order whatever deterministic (faster than MPI's here)
        parts = [reduce_scatter(n, total, True), allgather(n, total, True)]
    return Traffic(sum(p.rounds for p in parts), sum(p.bytes_sent for p in parts),
                   sum(p.summed for p in parts))


def step_seconds(variant: str, n: int, params: int, arrays: int, link: Link, local: Local) -> float:
    """The model's step time of ``variant`` (no overlap except in ``DistributedSGD overlap``)."""
    t = traffic(variant, n, params, arrays)
    comm = t.rounds * link.alpha + t.bytes_sent / link.beta + t.summed * local.add_ns * 1e-9
    updated = params / n if variant.startswith("ShardedSGD") else params
    update = updated * local.update_ns * 1e-9
    if variant == "DistributedSGD overlap":
        m = buckets(params, arrays)
        return max(comm, update) + min(comm, update) / m
    return comm + update


#: ``python bench/mpi_model.py --measure`` on the CI machine (2 cores of an Intel Xeon VM, one
#: thread): medians, 1e7 float32 elements in 50 arrays.
MEASURED_HERE = Local(update_ns=0.44, add_ns=0.27)


def measure_local(threads: int = 1, elements: int = 10**7, arrays: int = 50,
                  repeats: int = 15) -> Local:
    """This machine's local constants: ``fm.SGD``'s step (momentum 0.9) of ``elements`` float32
    parameters in ``arrays`` arrays on ``threads`` threads, and NumPy's in-place add of two
    ``elements`` arrays (on one thread, as in the optimizers); the median of ``repeats`` runs
    each."""
    import fastmomentum as fm

    before = fm.get_num_threads()
    fm.set_num_threads(threads)
    try:
        return _measure(elements, arrays, repeats)
    finally:
        fm.set_num_threads(before)


def _measure(elements: int, arrays: int, repeats: int) -> Local:
    import statistics
    import time

    import numpy as np

    import fastmomentum as fm

    rng = np.random.default_rng(0)
    params = [rng.standard_normal(elements // arrays, dtype=np.float32) for _ in range(arrays)]
    grads = [rng.standard_normal(elements // arrays, dtype=np.float32) for _ in range(arrays)]
    flat = np.zeros(elements // arrays * arrays, np.float32)
    opt = fm.SGD(params, lr=1e-3, momentum=0.9)
    other = np.ones_like(flat)

    def add() -> None:
        np.add(flat, other, out=flat)

    def ns(work: object) -> float:
        assert callable(work)
        work()
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            work()
            times.append(time.perf_counter() - begin)
        return statistics.median(times) * 1e9 / flat.size

    return Local(update_ns=ns(lambda: opt.step(grads)), add_ns=ns(add))


def projection(params: int, arrays: int, ranks: list[int], links: list[tuple[str, Link]],
               local: Local) -> list[str]:
    lines = [f"{params:.3g} float32 parameters in {arrays} arrays (DistributedSGD's 25 MiB "
             f"buckets: {buckets(params, arrays)}); ms per step; update "
             f"{local.update_ns:.2f} ns/element, add {local.add_ns:.2f}"]
    lines.append(f"{'link':<16} {'n':>4} " + " ".join(f"{SHORT[v]:>12}" for v in VARIANTS))
    for name, link in links:
        for n in ranks:
            cells = [step_seconds(v, n, params, arrays, link, local) * 1e3 for v in VARIANTS]
            lines.append(f"{name:<16} {n:>4} " + " ".join(f"{c:>12.1f}" for c in cells))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=lambda s: int(float(s)), nargs="+",
                        default=[25_000_000, 350_000_000])
    parser.add_argument("--arrays", type=int, nargs="+", default=[161, 390],
                        help="arrays per --params entry (default: 161, ResNet-50's count; "
                             "390 for 350 M)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--link-gbps", type=float, nargs="+", default=[25.0, 100.0])
    parser.add_argument("--latency-us", type=float, nargs="+", default=[10.0, 2.0],
                        help="per-round latency of each link (default: 10 us for 25 Gb/s "
                             "Ethernet with TCP, 2 us for 100 Gb/s InfiniBand)")
    parser.add_argument("--measure", action="store_true",
                        help="measure the local constants on this machine first")
    parser.add_argument("--threads", type=int, default=1,
                        help="with --measure: the update's threads (a rank's OMP_NUM_THREADS)")
    parser.add_argument("--update-ns", type=float, default=MEASURED_HERE.update_ns)
    parser.add_argument("--add-ns", type=float, default=MEASURED_HERE.add_ns)
    args = parser.parse_args()
    if len(args.arrays) != len(args.params) or len(args.latency_us) != len(args.link_gbps):
        parser.error("give one --arrays per --params and one --latency-us per --link-gbps")
    for name in ("params", "arrays", "ranks", "link_gbps"):
        if min(getattr(args, name)) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if min(args.latency_us) < 0 or min(args.update_ns, args.add_ns) < 0:
        parser.error("latencies and local costs must be >= 0")
    local = (measure_local(args.threads) if args.measure
             else Local(args.update_ns, args.add_ns))
    links = [(f"{g:g} Gb/s {a:g} us", Link.of(g, a))
             for g, a in zip(args.link_gbps, args.latency_us, strict=True)]
    for params, arrays in zip(args.params, args.arrays, strict=True):
        print("\n".join(projection(params, arrays, args.ranks, links, local)))
        print()


if __name__ == "__main__":
    main()
