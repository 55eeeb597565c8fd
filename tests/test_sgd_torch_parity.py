"""fm.SGD against torch.optim.SGD: 120-step trajectories over the whole option matrix, with two
parameter groups, an array that joins late, and every scheduler (skipped without torch).

Deviation = max |fm - torch| / max |torch| over all parameters. PyTorch evaluates some
`a + alpha*b` with fused multiply-adds, fastmomentum never does, so the two may differ by an
ulp per step; the bounds are ~5x the largest deviation measured (`python tests/
test_sgd_torch_parity.py` prints the largest per dtype).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fastmomentum as fm

from torch_options import TORCH_OPTIONS, options_id

torch = pytest.importorskip("torch")

STEPS = 120
LATE = 10  # the last array's first gradient arrives at this step
BOUND = {np.float64: 2e-15, np.float32: 1e-6}  # measured: 4.2e-16, 2.2e-7



def _schedulers(lib):
    """name -> factory(optimizer) for every scheduler, built the same way in torch and fm."""
    s = lib.lr_scheduler if lib is fm else torch.optim.lr_scheduler
    return {
        "StepLR": lambda o: s.StepLR(o, step_size=17, gamma=0.5),
        "MultiStepLR": lambda o: s.MultiStepLR(o, milestones=[20, 20, 70], gamma=0.3),
        "ExponentialLR": lambda o: s.ExponentialLR(o, gamma=0.98),
        "ConstantLR": lambda o: s.ConstantLR(o, factor=0.25, total_iters=30),
        "LinearLR": lambda o: s.LinearLR(o, start_factor=0.1, total_iters=40),
        "PolynomialLR": lambda o: s.PolynomialLR(o, total_iters=100, power=2.0),
        "CosineAnnealingLR": lambda o: s.CosineAnnealingLR(o, T_max=50, eta_min=1e-3),
        "CosineAnnealingWarmRestarts": lambda o: s.CosineAnnealingWarmRestarts(o, T_0=15, T_mult=2),
        "CyclicLR": lambda o: s.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=13,
                                         mode="triangular2"),
        "OneCycleLR": lambda o: s.OneCycleLR(o, max_lr=0.2, total_steps=STEPS),
        "LambdaLR": lambda o: s.LambdaLR(o, lambda t: 1 / (1 + 0.05 * t)),
        "MultiplicativeLR": lambda o: s.MultiplicativeLR(o, lambda t: 0.99),
        "SequentialLR": lambda o: s.SequentialLR(
            o, [s.LinearLR(o, start_factor=0.1, total_iters=10), s.ExponentialLR(o, gamma=0.97)],
            milestones=[10]),
        "ChainedScheduler": lambda o: s.ChainedScheduler(
            [s.ConstantLR(o, factor=0.5, total_iters=25), s.ExponentialLR(o, gamma=0.99)]),
        "ReduceLROnPlateau": lambda o: s.ReduceLROnPlateau(o, factor=0.5, patience=3),
    }


def _metric(step: int) -> float:
    """A loss with plateaus, for ReduceLROnPlateau."""
    return 1.0 / (1 + step // 9)


def run_pair(options: dict[str, Any], dtype: type, scheduler: str | None = None) -> float:
    """The same training in fm and torch; returns the deviation of the final parameters."""
    rng = np.random.default_rng(0)
    sizes = [33, 1, 200]
    start = [rng.standard_normal(n).astype(dtype) for n in sizes]
    ours = [a.copy() for a in start]
    theirs = [torch.tensor(a.copy()) for a in start]

    def groups(params: list[Any]) -> list[dict[str, Any]]:
        return [{"params": params[:2]}, {"params": params[2:], "lr": 0.03, "weight_decay": 0.0}]

    opt = fm.SGD(groups(ours), lr=0.05, **options)
    topt = torch.optim.SGD(groups(theirs), lr=0.05, foreach=False, **options)
    sched = _schedulers(fm)[scheduler](opt) if scheduler else None
    tsched = _schedulers(torch)[scheduler](topt) if scheduler else None
    for step in range(STEPS):
        grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
        if step < LATE:
            grads[2] = None
        opt.step(grads)
        for t, g in zip(theirs, grads, strict=True):
            t.grad = None if g is None else torch.from_numpy(g.copy())
        topt.step()
        if sched is not None:
            if scheduler == "ReduceLROnPlateau":
                sched.step(_metric(step))
                tsched.step(_metric(step))
            elif not (scheduler == "OneCycleLR" and step == STEPS - 1):
                sched.step()
                tsched.step()
            assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
    want = np.concatenate([t.numpy() for t in theirs])
    return float(np.max(np.abs(np.concatenate(ours) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("options", TORCH_OPTIONS, ids=[options_id(o) for o in TORCH_OPTIONS])
def test_every_option_combination_matches_torch(options, dtype):
    assert run_pair(options, dtype) <= BOUND[dtype]


SCHEDULED = dict(momentum=0.9, nesterov=True, weight_decay=5e-4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scheduler", list(_schedulers(fm)))
def test_every_scheduler_matches_torch(scheduler, dtype):
    assert run_pair(SCHEDULED, dtype, scheduler) <= BOUND[dtype]


def _continue_both(opt, ours, topt, theirs, rng, steps):
    """Step fm and torch on the same gradients; their parameters must stay equal."""
    for _ in range(steps):
        grads = [rng.standard_normal(a.shape) for a in ours]
        opt.step(grads)
        for t, g in zip(theirs, grads, strict=True):
            t.grad = torch.from_numpy(g)
        topt.step()
    for a, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, t.numpy(), rtol=1e-14, atol=1e-15)


def test_a_state_dict_loads_into_torch_and_continues_the_trajectory():
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(n) for n in (5, 8)]
    opt = fm.SGD([params[0], {"params": [params[1]], "lr": 0.01}], lr=0.1, momentum=0.9,
                 dampening=0.1, weight_decay=1e-3)
    for _ in range(10):
        opt.step([rng.standard_normal(5), rng.standard_normal(8)])
    sd = opt.state_dict()
    theirs = [torch.tensor(p.copy()) for p in params]
    topt = torch.optim.SGD([{"params": [theirs[0]]}, {"params": [theirs[1]]}], lr=0.5,
                           momentum=0.9, dampening=0.1, weight_decay=1e-3, foreach=False)
    topt.load_state_dict({
        "state": {i: {"momentum_buffer": torch.from_numpy(s["momentum_buffer"].copy())}
                  for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"]})
    _continue_both(opt, params, topt, theirs, rng, steps=10)


def test_a_torch_state_dict_loads_into_fm_and_continues_the_trajectory():
    rng = np.random.default_rng(4)
    start = [rng.standard_normal(n) for n in (6, 3)]
    theirs = [torch.tensor(a.copy()) for a in start]
    topt = torch.optim.SGD([{"params": [theirs[0]]}, {"params": [theirs[1]], "lr": 0.02}],
                           lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for _ in range(5):
        for t in theirs:
            t.grad = torch.from_numpy(rng.standard_normal(t.shape))
        topt.step()
    sd = topt.state_dict()
    ours = [t.numpy().copy() for t in theirs]
    opt = fm.SGD([{"params": [ours[0]]}, {"params": [ours[1]]}], lr=0.5, momentum=0.9,
                 nesterov=True)
    opt.load_state_dict({
        "state": {i: {"momentum_buffer": s["momentum_buffer"].numpy()}
                  for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"]})  # torch's groups: no fastmomentum-only keys
    assert opt.param_groups[1]["lr"] == 0.02 and opt.param_groups[0]["weight_decay"] == 1e-3
    _continue_both(opt, ours, topt, theirs, rng, steps=5)


def _largest_deviations(report: Callable[[str], None] = print) -> None:
    for dtype in (np.float64, np.float32):
        cases = [(o, None) for o in TORCH_OPTIONS] + [(SCHEDULED, s) for s in _schedulers(fm)]
        worst = max(run_pair(o, dtype, s) for o, s in cases)
        report(f"{dtype.__name__}: {len(cases)} trajectories of {STEPS} steps, largest "
               f"deviation {worst:.3g} (bound {BOUND[dtype]:g})")


if __name__ == "__main__":
    _largest_deviations()
    sys.exit(0)
