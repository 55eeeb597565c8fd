"""The MPI program of tests/test_distributed.py, run as ``mpirun -n N python -m mpi4py worker.py
MODE OUT [...]``. Every rank writes what it ends with to ``OUT`` (``.npz`` / ``.txt``); the test
compares the files with a single-process fm.SGD and with each other. Modes:

- ``cases OUT``: every case of cases.py with DistributedSGD and ShardedSGD, rank-order and MPI
  sums; per rank, the final parameters, the gathered state dict's buffers, the state bytes held,
  the counters and each step's gradient norm; and ``torch-heavyball`` with the gradients written
  into ``opt.grad_buffers``.
- ``save OUT``: the ``groups-onecycle`` case with ShardedSGD (rank-order sums) for STEPS steps,
  then rank 0 saves the parameters, the optimizer's and the scheduler's state to ``OUT/ckpt.npz``.
- ``resume OUT CKPT KIND``: loads that checkpoint into KIND (``DistributedSGD`` / ``ShardedSGD``)
  at this world size and takes STEPS more steps.
- ``messages OUT``: the caller's own point-to-point messages, pending while two optimizers step.
- ``mismatch OUT``: the constructor's errors: replicas that differ, a communicator that is not one,
  a parameter the kernels cannot update in place; the step's and load_state_dict's; and a
  ShardedSGD whose schedule reads ``state_dict()`` mid-step, against one whose schedule does not.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
from cases import CASES, STEPS, grad_order, make_grads, make_params, make_scheduler, param_groups
from mpi4py import MPI

import fastmomentum as fm
from fastmomentum.distributed import DistributedSGD, ShardedSGD

COMM = MPI.COMM_WORLD
RANK, WORLD = COMM.rank, COMM.size
KINDS = {"DistributedSGD": DistributedSGD, "ShardedSGD": ShardedSGD}
SEED = 7


def build(kind: str, case_name: str, params: list[np.ndarray], deterministic: bool) -> Any:
    case = CASES[case_name]
    extra = {"bucket_bytes": 64} if kind == "DistributedSGD" else {}  # several buckets
    return KINDS[kind](COMM, param_groups(case, params), deterministic=deterministic,
                       **case.options, **extra)


def run(opt: Any, case_name: str, steps: range, scheduler: Any, in_place: str = ""
        ) -> list[float]:
    """Steps ``steps`` (the gradients of this rank at those steps), each followed by a step of
    ``scheduler`` (if not None); returns each step's grad norm. ``in_place``: the gradients are
    written into ``opt.grad_buffers`` and those are passed (``"passed"``) or not (``"default"``:
    ``opt.step()``), or so on rank 0 only (``"rank 0"``). Otherwise the arrays passed are the
    caller's, Fortran-ordered at odd steps, and must come back unchanged."""
    case = CASES[case_name]
    norms = []
    order = grad_order(case)
    if in_place == "rank 0":  # rank 0 in its buffers, the others with arrays of their own
        in_place = "default" if RANK == 0 else ""
    for t in steps:
        grads = make_grads(case, SEED, t, RANK, WORLD)
        grads = [grads[i] for i in order]
        if in_place:
            for buffer, g in zip(opt.grad_buffers, grads, strict=True):
                buffer[...] = g
            grads = opt.grad_buffers if in_place == "passed" else None
        elif t % 2:
            grads = [np.array(g, order="F") for g in grads]  # sent from a copy in C order
        before = None if in_place else [g.copy(order="K") for g in grads]
        try:
            result = opt.step(grads, loss_scale=case.loss_scale)
        except FloatingPointError:  # nonfinite="raise": on every rank, nothing changed
            norms.append(-1.0)
            continue
        finally:
            if before is not None:  # the step reads the caller's gradients, never writes them
                assert all(a.tobytes("A") == b.tobytes("A") and a.strides == b.strides
                           for a, b in zip(grads, before, strict=True)), "gradients changed"
        norms.append(np.nan if result.grad_norm is None else result.grad_norm)
        if scheduler is not None:
            scheduler.step()
    return norms


def save_result(path: Path, opt: Any, params: list[np.ndarray], norms: list[float]) -> None:
    state = opt.state_dict()  # collective
    arrays = {f"p{i}": p for i, p in enumerate(params)}
    for index, entry in state["state"].items():
        arrays[f"b{index}"] = next(iter(entry.values()))
    np.savez(path, **arrays, norms=np.array(norms), state_nbytes=opt.state_nbytes,
             iterations=opt.iterations, skipped_steps=opt.skipped_steps)


def cases(out: Path) -> None:
    for name in CASES:
        for kind in KINDS:
            for deterministic in (True, False):
                params = make_params(CASES[name], SEED)
                opt = build(kind, name, params, deterministic)
                norms = run(opt, name, range(STEPS), make_scheduler(CASES[name], opt))
                save_result(out / f"{name}.{kind}.{deterministic}.rank{RANK}.npz", opt, params,
                            norms)
    for kind in KINDS:  # gradients computed into the optimizer's buffers
        for deterministic, passed in ((True, "passed"), (False, "default"), (False, "rank 0")):
            params = make_params(CASES["torch-heavyball"], SEED)
            opt = build(kind, "torch-heavyball", params, deterministic)
            norms = run(opt, "torch-heavyball", range(STEPS), None, in_place=passed)
            save_result(out / f"torch-heavyball.{kind}.{passed}.{deterministic}.rank{RANK}.npz",
                        opt, params, norms)


def save(out: Path) -> None:
    name = "groups-onecycle"
    params = make_params(CASES[name], SEED)
    opt = build("ShardedSGD", name, params, True)
    scheduler = make_scheduler(CASES[name], opt)
    run(opt, name, range(STEPS), scheduler)
    state = opt.state_dict()  # collective: every rank gathers
    if RANK == 0:
        fm.checkpoint.save(out / "ckpt.npz", {"optimizer": state, "params": params,
                                              "scheduler": scheduler.state_dict()})


def resume(ckpt: Path, out: Path, kind: str) -> None:
    name = "groups-onecycle"
    saved = fm.checkpoint.load(ckpt)  # every rank reads the same file
    params = [np.array(p) for p in saved["params"]]
    opt = build(kind, name, params, True)
    scheduler = make_scheduler(CASES[name], opt)
    opt.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    norms = run(opt, name, range(STEPS, 2 * STEPS), scheduler)
    save_result(out / f"resume.{kind}.rank{RANK}.npz", opt, params, norms)


def mismatch(out: Path) -> None:
    messages = []
    case = CASES["torch-heavyball"]
    params = make_params(case, SEED)
    if RANK == WORLD - 1:
        params[3][0, 0] += 1e-7  # one element, one ulp or so: the digest sees it
    try:
        DistributedSGD(COMM, params, lr=0.1)
    except ValueError as error:
        messages.append(f"values: {error}")
    shapes = [*case.shapes[:-1], (12,) if RANK == WORLD - 1 else case.shapes[-1]]
    try:
        ShardedSGD(COMM, [np.zeros(s, np.float32) for s in shapes], lr=0.1)
    except ValueError as error:
        messages.append(f"shapes: {error}")
    try:
        ShardedSGD(COMM, make_params(case, SEED), lr=0.1, momentum=0.9 if RANK else 0.8)
    except ValueError as error:
        messages.append(f"hyper: {error}")
    strided = [np.ones(2, np.float32) for _ in range(4)] + [np.ones(8, np.float32)[::2]]
    try:  # every rank checks every parameter, whichever rank's shard holds it
        ShardedSGD(COMM, strided, lr=0.5)
    except ValueError as error:
        messages.append(f"strided: {error}")
    try:
        DistributedSGD(None, make_params(case, SEED))  # type: ignore[arg-type]
    except TypeError as error:
        messages.append(f"comm: {error}")
    opt = DistributedSGD(COMM, make_params(case, SEED))
    try:
        opt.step([None] * len(case.shapes))
    except ValueError as error:
        messages.append(f"none: {error}")
    try:
        opt.step(make_grads(case, SEED, 0, RANK, WORLD), loss_scale=0.0)
    except ValueError as error:
        messages.append(f"scale: {error}")
    sharded = ShardedSGD(COMM, make_params(case, SEED), lr=0.1, momentum=0.9)
    saved = fm.SGD(make_params(case, SEED), lr=0.1, momentum=0.9).state_dict()
    saved["state"] = {0: {"momentum_buffer": np.zeros(case.shapes[0], np.float32), "ema": 1.0}}
    try:
        sharded.load_state_dict(saved)
    except ValueError as error:
        messages.append(f"extras: {error}")
    mixed = [np.ones(8), np.ones(1, np.float32)]  # one rank's shard holds no float32 element
    try:  # checked for the model's dtypes on every rank, not for the shard's
        ShardedSGD(COMM, [p.copy() for p in mixed], lr=1e39)
    except ValueError as error:
        messages.append(f"dtype-init: {error}")
    late = [p.copy() for p in mixed]
    opt_late = ShardedSGD(COMM, late, lr=lambda t: 0.1 if t == 0 else 1e39)
    opt_late.step([np.ones(8), np.ones(1, np.float32)])
    before = [p.copy() for p in late]
    try:
        opt_late.step([np.ones(8), np.ones(1, np.float32)])
    except ValueError as error:
        unchanged = all(np.array_equal(a, b) for a, b in zip(late, before, strict=True))
        messages.append(f"dtype-step: {unchanged} {error}")
    try:
        ShardedSGD(COMM, [p.copy() for p in mixed], lr=0.1).step(
            [np.ones(8), np.ones(1, np.float32)], loss_scale=1e-39)
    except ValueError as error:
        messages.append(f"dtype-scale: {error}")
    for kind in KINDS:
        local = [np.ones(4, np.float32), np.ones(4, np.float32)]
        if RANK == WORLD - 1:
            local[1].flags.writeable = False
        try:  # refused by one rank: raised on every rank, none left waiting
            KINDS[kind](COMM, local, lr=0.1)
        except ValueError as error:
            messages.append(f"local-{kind}: {error}")
    class Failing:
        def __float__(self) -> float:
            raise RuntimeError("out of luck")

    added = DistributedSGD(COMM, [np.ones(4, np.float32)], lr=0.1)
    try:  # refused by one rank's fm.SGD checks: added on none, and every rank still steps
        added.add_param_group({"params": [np.ones(2, np.float32)],
                               "lr": -1.0 if RANK == WORLD - 1 else 0.1})
    except ValueError as error:
        result = added.step([np.ones(4, np.float32)])
        messages.append(f"group: {len(added.param_groups)} {result.skipped} {error}")
    try:  # settings that would make the ranks' messages differ
        DistributedSGD(COMM, make_params(case, SEED), deterministic=RANK == 0)
    except ValueError as error:
        messages.append(f"settings: {error}")
    for kind in KINDS:
        try:  # an error of any kind, on one rank
            KINDS[kind](COMM, [np.ones(4, np.float32)], lr=Failing() if RANK == WORLD - 1 else 0.1)
        except (RuntimeError, ValueError) as error:
            messages.append(f"other-{kind}: {type(error).__name__}: {error}")
    for kind, bad in (("DistributedSGD", {"bucket_bytes": 0}),
                      ("ShardedSGD", {"deterministic": "yes"})):
        try:  # one rank's arguments refused: after the collective setup, not half-way through it
            KINDS[kind](COMM, [np.ones(4, np.float32)], lr=0.1,
                        **(bad if RANK == WORLD - 1 else {}))
        except (TypeError, ValueError) as error:
            messages.append(f"args-{kind}: {type(error).__name__}: {error}")
    try:
        ShardedSGD(COMM, [np.ones(4, np.float32), [1.0, 2.0]], lr=0.1)  # type: ignore[list-item]
    except TypeError as error:
        messages.append(f"not-array: {error}")
    messages.append(f"peek: {peeking_schedule(False)} {peeking_schedule(True)}")
    (out / f"mismatch.rank{RANK}.txt").write_text("\n".join(messages))


def lowp(out: Path) -> None:
    """DistributedSGD with each state_dtype against fm.SGD stepped with the gradients it reduced
    (its grad_buffers after a step): "<state_dtype>: <same bits>"; then the refusals of 16-bit
    parameters and of ShardedSGD's state_dtype, "<what>: <message>"."""
    import ml_dtypes

    lines = []
    case = CASES["torch-heavyball"]
    for state_dtype in ("bfloat16", "float16", "int8"):
        hyper = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3,
                     state_dtype=state_dtype)
        dist = DistributedSGD(COMM, make_params(case, SEED), deterministic=True, **hyper)
        alone = fm.SGD(make_params(case, SEED), **hyper)
        for step in range(3):
            dist.step(make_grads(case, SEED, step, RANK, WORLD))
            # the buffers hold the ranks' sum, which the step scales by 1/world as a loss scale
            alone.step([g.copy() for g in dist.grad_buffers], loss_scale=WORLD)
        def stored(opt: Any) -> list[bytes]:  # each buffer's bytes (an 8-bit one's two arrays)
            return [np.asarray(a).tobytes() for entry in opt.state_dict()["state"].values()
                    for buf in entry.values() for a in (buf if isinstance(buf, tuple) else [buf])]

        same = [p.tobytes() for p in dist._params()] == [p.tobytes() for p in alone._params()] \
            and stored(dist) == stored(alone)
        lines.append(f"{state_dtype}: {same and dist.state_nbytes == alone.state_nbytes}")
    try:
        DistributedSGD(COMM, [np.ones(4, np.float32), np.ones(4, ml_dtypes.bfloat16)], lr=0.1)
    except TypeError as error:
        lines.append(f"bf16-params: {error}")
    try:
        ShardedSGD(COMM, make_params(case, SEED), lr=0.1, momentum=0.9, state_dtype="int8")
    except ValueError as error:
        lines.append(f"sharded-state: {error}")
    # an 8-bit state dict (fm.SGD's, DistributedSGD's) loads into ShardedSGD as its values
    single = fm.SGD(make_params(case, SEED), lr=0.05, momentum=0.9, state_dtype="int8")
    single.step(make_grads(case, SEED, 0, 0, 1))
    saved = single.state_dict()
    sharded = ShardedSGD(COMM, make_params(case, SEED), lr=0.05, momentum=0.9)
    sharded.load_state_dict(saved)
    got = sharded.state_dict()["state"]
    want = {i: entry["momentum_buffer"].to_array() for i, entry in saved["state"].items()}
    same = got.keys() == want.keys() and all(np.array_equal(got[i]["momentum_buffer"], want[i])
                                             for i in want)
    lines.append(f"sharded-int8-load: {same}")
    (out / f"lowp.rank{RANK}.txt").write_text("\n".join(lines))


def load_one_rank_refuses(out: Path) -> None:
    """A state dict that rank 1's checks refuse (a buffer of a wrong shape there only): every
    rank raises, and no rank's state changes. "<kind>: <message> | <state unchanged>"."""
    lines = []
    for kind in (DistributedSGD, ShardedSGD):
        opt = kind(COMM, [np.zeros(8, np.float32)], lr=1.0, momentum=0.9)
        opt.step([np.ones(8, np.float32)])
        before = opt.state_dict()["state"][0]["momentum_buffer"].copy()

        def load(changed: dict[str, Any], what: str, opt: Any = opt,
                 before: np.ndarray = before, kind: Any = kind) -> None:
            """Loads ``changed`` (collectively) and records the message and whether the state
            is still ``before``."""
            try:
                opt.load_state_dict(changed)
                message = "loaded"
            except ValueError as error:
                message = str(error)
            after = opt.state_dict()["state"][0]["momentum_buffer"]
            lines.append(f"{kind.__name__}{what}: {message} | {np.array_equal(after, before)}")

        saved = copy.deepcopy(opt.state_dict())  # (its buffers are the optimizer's own)
        saved["state"][0]["momentum_buffer"] = before[:7] if RANK == 1 else before * 10
        load(saved, "")
        for what in ("buffer", "lr", "iterations"):  # valid everywhere, different on rank 1
            other = copy.deepcopy(opt.state_dict())
            if RANK == 1:
                if what == "buffer":
                    other["state"][0]["momentum_buffer"][3] += 1
                elif what == "lr":
                    other["param_groups"][0]["lr"] = 0.5
                else:
                    other["iterations"] += 1
            load(other, f" {what}")
        load(copy.deepcopy(opt.state_dict()), " same")  # the same dict everywhere: loaded
    (out / f"load.rank{RANK}.txt").write_text("\n".join(lines))


def messages(out: Path) -> None:
    """The caller's own point-to-point messages on COMM, with the tags the optimizers use (0, 1,
    2) and from any source, posted before two optimizers step in turn and delivered after: each
    must land where the caller posted it. "<kind>: <message received>" lines, and each
    optimizer's result file (rank-order sums: exact)."""
    case = CASES["torch-heavyball"]
    params = {kind: make_params(case, SEED) for kind in KINDS}
    opts = {kind: build(kind, "torch-heavyball", params[kind], True) for kind in KINDS}
    box = {tag: np.full(3, -1.0) for tag in (0, 1, 2)}
    pending = [COMM.Irecv(box[tag], source=MPI.ANY_SOURCE, tag=tag) for tag in box]
    norms: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for t in range(STEPS):
        for kind in KINDS:
            norms[kind] += run(opts[kind], "torch-heavyball", range(t, t + 1), None)
    for tag in box:
        COMM.Send(np.full(3, 100.0 * RANK + tag), dest=(RANK + 1) % WORLD, tag=tag)
    MPI.Request.Waitall(pending)
    source = (RANK - 1) % WORLD
    same = all(np.array_equal(box[tag], np.full(3, 100.0 * source + tag)) for tag in box)
    for kind in KINDS:
        save_result(out / f"messages.{kind}.rank{RANK}.npz", opts[kind], params[kind],
                    norms[kind])
    (out / f"messages.rank{RANK}.txt").write_text(f"received: {same}")


def peeking_schedule(peek: bool) -> str:
    """A ShardedSGD's parameters after 3 steps whose schedule (``peek``) gathers the state
    between the step's reduce-scatter and its kernels, as a schedule that logs it would."""
    p, held = np.ones(8, np.float32), {}

    def lr(t: int) -> float:
        if peek and t >= 1:
            held["opt"].state_dict()
        return 0.1

    held["opt"] = ShardedSGD(COMM, [p], lr=lr, momentum=0.9, deterministic=True)
    for t in range(3):
        held["opt"].step([np.full(8, 1.0 + t, np.float32)])
    return p.tobytes().hex()


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "cases":
        cases(out)
    elif mode == "save":
        save(out)
    elif mode == "resume":
        resume(Path(sys.argv[3]), out, sys.argv[4])
    elif mode == "mismatch":
        mismatch(out)
    elif mode == "lowp":
        lowp(out)
    elif mode == "load":
        load_one_rank_refuses(out)
    elif mode == "messages":
        messages(out)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
