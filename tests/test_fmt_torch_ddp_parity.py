"""fastmomentum.torch.SGD under DistributedDataParallel and ZeroRedundancyOptimizer, with two real
processes on the gloo backend (skipped without torch or gloo).

This file is also the workers' program: ``python test_fmt_torch_ddp_parity.py RANK WORLD STORE OUT
MODE`` joins a process group through a FileStore, trains the same model with fmt.SGD and with
torch.optim.SGD(foreach=False), plain DDP and DDP + ZeRO, and saves what it has in OUT/rankN.pt; the
tests compare. A worker that fails fails the test with its traceback; one that hangs is killed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
import fastmomentum.torch as fmt  # noqa: E402  (after torch: a broken module must fail, not skip)

WORLD = 2
STEPS = 25
HYPER = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
# fmt.SGD against torch.optim.SGD(foreach=False), relative to the largest |p| of each parameter
# after STEPS (the parity tests' float32 bound over a trajectory: the two round a + alpha*b
# differently in the last bit, and the model feeds that back). Measured: DDP 2.5e-7, ZeRO 2.5e-7.
BOUND = 1e-6
DEADLINE_S = 120  # both workers, start to end (about 13 s here): past it they are killed
OPTIMIZERS = {"fmt": fmt.SGD, "torch": lambda params, **kw: torch.optim.SGD(params, foreach=False,
                                                                            **kw)}


# -- the workers --------------------------------------------------------------------------------

def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same start on every rank (DDP broadcasts rank 0's anyway)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * (rank + 1) + step)  # each rank its own data
    return torch.randn(8, 2, 8, 8, generator=gen), torch.randn(8, 3, generator=gen)


def _train(rank: int, kind: str, zero: bool) -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(_model())
    if zero:
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=OPTIMIZERS[kind],
                                      **HYPER)
    else:
        opt = OPTIMIZERS[kind](model.parameters(), **HYPER)
    for step in range(STEPS):
        x, y = _batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    out = {"params": [p.detach().clone() for p in model.parameters()]}
    if zero:
        # The buffers this rank holds, by the parameter's index in the model.
        index = {id(p): i for i, p in enumerate(model.parameters())}
        out["owned"] = {index[id(p)]: s["momentum_buffer"].clone()
                        for p, s in opt.optim.state.items()}
        out["local_type"] = type(opt.optim).__module__ + "." + type(opt.optim).__name__
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            out["state_dict"] = opt.state_dict()
    return out


def _worker(rank: int, world: int, store: str, out: str, mode: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=DEADLINE_S))
    try:
        if mode == "fail":  # the launcher's own test: rank 1 fails while rank 0 waits on it
            if rank == 1:
                raise RuntimeError("deliberate failure on rank 1")
            dist.barrier()
        results = {f"{'zero' if zero else 'ddp'}-{kind}": _train(rank, kind, zero)
                   for zero in (False, True) for kind in OPTIMIZERS}
        torch.save(results, Path(out) / f"rank{rank}.pt")
        # No rank tears gloo down while another still talks to it: a rank done first (ZeRO's
        # consolidation sends to rank 0) destroyed its process group under rank 0's pending
        # receive, and died in C++ ("terminate called without an active exception"), now and
        # then, in CI's wheel stage.
        dist.barrier()
    finally:
        dist.destroy_process_group()


# -- the launcher -------------------------------------------------------------------------------

def _launch(tmp: Path, mode: str = "train") -> list[dict]:
    """Runs the WORLD workers; their results, or a test failure with every worker's output."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(
        [sys.executable, __file__, str(rank), str(WORLD), str(tmp / "store"), str(tmp), mode],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for rank in range(WORLD)]
    deadline = time.monotonic() + DEADLINE_S
    timed_out = False
    while any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break  # one failed: the others would wait on it until gloo's timeout
        if time.monotonic() > deadline:
            timed_out = True
            break
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
    outputs = [p.communicate()[0].decode(errors="replace") for p in procs]
    if timed_out or any(p.returncode != 0 for p in procs):
        why = f"timed out after {DEADLINE_S} s" if timed_out else "a worker failed"
        report = "\n".join(f"--- rank {rank} (exit {p.returncode}) ---\n{text}"
                          for rank, (p, text) in enumerate(zip(procs, outputs, strict=True)))
        pytest.fail(f"{why}:\n{report}", pytrace=False)
    return [torch.load(tmp / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _need_gloo() -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    _need_gloo()
    return _launch(tmp_path_factory.mktemp("ddp"))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("run", ["ddp-fmt", "ddp-torch", "zero-fmt", "zero-torch"])
def test_ranks_end_with_identical_parameters(ranks, run):
    for mine, other in zip(ranks[0][run]["params"], ranks[1][run]["params"], strict=True):
        assert torch.equal(mine, other)


@pytest.mark.parametrize("parallel", ["ddp", "zero"])
def test_fmt_matches_torch_optim_sgd(ranks, parallel):
    start = list(_model().parameters())
    mine, want = ranks[0][f"{parallel}-fmt"]["params"], ranks[0][f"{parallel}-torch"]["params"]
    for p, q, p0 in zip(mine, want, start, strict=True):
        assert not torch.equal(q, p0.detach())  # every parameter trained: the comparison is real
        assert _relative(p, q) <= BOUND


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_zero_takes_the_steps_of_the_unsharded_optimizer(ranks, kind):
    """Each rank steps its shard with the same element-wise kernels: ZeRO's parameters are
    plain DDP's, to the bit."""
    for p, q in zip(ranks[0][f"zero-{kind}"]["params"], ranks[0][f"ddp-{kind}"]["params"],
                    strict=True):
        assert torch.equal(p, q), _relative(p, q)


def test_zero_shards_fmt_sgd(ranks):
    assert ranks[0]["zero-fmt"]["local_type"] == "fastmomentum.torch.SGD"
    owned = [set(r["zero-fmt"]["owned"]) for r in ranks]
    assert all(owned) and not owned[0] & owned[1]  # each rank holds some, none held twice
    assert owned[0] | owned[1] == set(range(len(ranks[0]["zero-fmt"]["params"])))


def _owned_buffers(ranks: list[dict], run: str) -> dict[int, torch.Tensor]:
    return {i: b for r in ranks for i, b in r[run]["owned"].items()}


@pytest.mark.parametrize("target", ["torch", "fmt"])
def test_consolidated_state_dict_loads_into_a_plain_optimizer(ranks, target):
    """ZeRO(fmt.SGD)'s state dict, consolidated on rank 0, loads into torch.optim.SGD and into
    fmt.SGD over the whole model: each parameter gets the buffer its owner held, and a step from
    it is the step torch.optim.SGD takes from ZeRO(torch.optim.SGD)'s state."""
    buffers = _owned_buffers(ranks, "zero-fmt")
    results = {}
    for run in ("zero-fmt", "zero-torch"):
        params = [p.clone().requires_grad_() for p in ranks[0][run]["params"]]
        opt = (fmt.SGD(params, lr=1.0) if target == "fmt" and run == "zero-fmt"
               else torch.optim.SGD(params, lr=1.0, foreach=False))
        # A copy: a loaded optimizer keeps the dict's tensors as its state and steps them in place
        # (torch.optim.SGD does too), and the fixture's dict serves the other parametrization.
        opt.load_state_dict(copy.deepcopy(ranks[0][run]["state_dict"]))
        assert opt.param_groups[0]["lr"] == HYPER["lr"]  # the saved group, not the constructor's
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
        if run == "zero-fmt":
            for i, p in enumerate(params):
                assert torch.equal(opt.state[p]["momentum_buffer"], buffers[i])
        gen = torch.Generator().manual_seed(7)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        results[run] = [p.detach() for p in params]
    for p, q in zip(results["zero-fmt"], results["zero-torch"], strict=True):
        assert _relative(p, q) <= BOUND


def test_a_failing_worker_fails_the_test_with_its_traceback(tmp_path):
    _need_gloo()
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        _launch(tmp_path, mode="fail")
    assert "RuntimeError: deliberate failure on rank 1" in str(failed.value)
    assert "Traceback" in str(failed.value)
    assert time.monotonic() - start < DEADLINE_S  # the waiting rank was killed, not timed out


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
