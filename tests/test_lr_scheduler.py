"""fastmomentum.lr_scheduler against torch.optim.lr_scheduler (PyTorch 2.13), step by step.

Both compute the lrs (and cycled momenta) in Python floats with the same operation order, so the
parity tests compare with ``==``. Tests that compare with torch take the ``torch`` fixture and skip
without torch; the closed-form and checkpoint tests need only fastmomentum.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from fastmomentum import lr_scheduler as fls

STEPS = 150
ONE = [{"lr": 0.1, "momentum": 0.9}]
TWO = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.037, "momentum": 0.5}]


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


class FakeOptimizer:
    """The whole optimizer interface the schedulers use: ``param_groups``, a list of dicts."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        self.param_groups = [dict(g) for g in groups]

    def step(self) -> None:
        pass


def torch_sgd(torch, groups: list[dict[str, Any]]):
    """A torch.optim.SGD with the same param groups (one tiny parameter each)."""
    return torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)], **g} for g in groups], lr=0.5
    )


def per(opt, *values):
    """One value per param group of ``opt`` (the first ``len(param_groups)`` of ``values``)."""
    return list(values[: len(opt.param_groups)])


def snapshot(opt) -> list[tuple[float, float]]:
    return [(g["lr"], g["momentum"]) for g in opt.param_groups]


def metric(i: int) -> float:
    """A validation loss with plateaus: 12-step plateaus, tiny noise, and a spike every 17."""
    value = 1.0 / (1 + i // 12) + 1e-5 * ((7 * i) % 5)
    return value + 0.5 if i % 17 == 16 else value


def advance(scheduler, i: int) -> None:
    """One epoch: ``step()``, or ``step(metric)`` for ReduceLROnPlateau."""
    if type(scheduler).__name__ == "ReduceLROnPlateau":  # torch's or ours
        scheduler.step(metric(i) if scheduler.mode == "min" else -metric(i))
    else:
        scheduler.step()


# --------------------------------------------------------------------------------------------
# The cases: factories taking the scheduler module (torch's or ours) and an optimizer.
# --------------------------------------------------------------------------------------------

Make = Callable[[Any, Any], Any]


def case(make: Make, steps: int = STEPS, *, id: str) -> Any:
    return pytest.param(make, steps, id=id)


CASES = [
    case(lambda m, o: m.StepLR(o, step_size=7, gamma=0.5), id="StepLR-7-0.5"),
    case(lambda m, o: m.StepLR(o, 1, 0.9), id="StepLR-1-0.9"),
    case(lambda m, o: m.StepLR(o, step_size=30), id="StepLR-30-default"),
    case(lambda m, o: m.MultiStepLR(o, [10, 30, 30, 80], gamma=0.3), id="MultiStepLR-repeats"),
    case(lambda m, o: m.MultiStepLR(o, milestones=[50, 5]), id="MultiStepLR-unsorted"),
    case(lambda m, o: m.ExponentialLR(o, gamma=0.97), id="ExponentialLR-0.97"),
    case(lambda m, o: m.ExponentialLR(o, 0.9), id="ExponentialLR-0.9"),
    case(lambda m, o: m.ConstantLR(o), id="ConstantLR-default"),
    case(lambda m, o: m.ConstantLR(o, factor=0.25, total_iters=40), id="ConstantLR-0.25-40"),
    case(lambda m, o: m.ConstantLR(o, factor=0.5, total_iters=0), id="ConstantLR-total0"),
    case(lambda m, o: m.ConstantLR(o, factor=0.7, total_iters=1), id="ConstantLR-0.7-1"),
    case(lambda m, o: m.LinearLR(o), id="LinearLR-default"),
    case(lambda m, o: m.LinearLR(o, start_factor=0.05, total_iters=40), id="LinearLR-warmup"),
    case(lambda m, o: m.LinearLR(o, 1.0, 0.1, 100), id="LinearLR-decay"),
    case(lambda m, o: m.LinearLR(o, 0.3, 0.0, total_iters=30), id="LinearLR-to-zero"),
    case(lambda m, o: m.LinearLR(o, 0.1, 0.9, total_iters=200), id="LinearLR-long"),
    case(lambda m, o: m.PolynomialLR(o), id="PolynomialLR-default"),
    case(lambda m, o: m.PolynomialLR(o, total_iters=50, power=0.9), id="PolynomialLR-50-0.9"),
    case(lambda m, o: m.PolynomialLR(o, 120, 2.0), id="PolynomialLR-120-2"),
    case(lambda m, o: m.PolynomialLR(o, 200, power=0.5), id="PolynomialLR-200-0.5"),
    case(lambda m, o: m.CosineAnnealingLR(o, T_max=50), id="Cosine-50"),
    case(lambda m, o: m.CosineAnnealingLR(o, 10, eta_min=0.001), id="Cosine-10-min"),
    case(lambda m, o: m.CosineAnnealingLR(o, T_max=150, eta_min=0.01), id="Cosine-150-min"),
    case(lambda m, o: m.CosineAnnealingLR(o, 7, 0.05), id="Cosine-7-min-above-lr"),
    case(lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=10), id="CAWR-10"),
    case(lambda m, o: m.CosineAnnealingWarmRestarts(o, 5, T_mult=2, eta_min=1e-3),
         id="CAWR-5-x2"),
    case(lambda m, o: m.CosineAnnealingWarmRestarts(o, 1), id="CAWR-1"),
    case(lambda m, o: m.CosineAnnealingWarmRestarts(o, 13, 3, 0.002), id="CAWR-13-x3"),
    case(lambda m, o: m.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=10),
         id="CyclicLR-triangular"),
    case(lambda m, o: m.CyclicLR(o, per(o, 0.01, 0.002), per(o, 0.1, 0.05), 7, 13,
                                 mode="triangular2", base_momentum=per(o, 0.8, 0.4),
                                 max_momentum=per(o, 0.9, 0.6)),
         id="CyclicLR-triangular2-per-group"),
    case(lambda m, o: m.CyclicLR(o, 0.001, 0.1, step_size_up=5, mode="exp_range", gamma=0.99),
         id="CyclicLR-exp_range"),
    case(lambda m, o: m.CyclicLR(o, 0.01, 0.2, 6, scale_fn=lambda x: 0.5**x),
         id="CyclicLR-scale_fn-cycle"),
    case(lambda m, o: m.CyclicLR(o, 0.01, 0.2, 9, 3, scale_fn=lambda x: 1 / (1 + 0.01 * x),
                                 scale_mode="iterations"),
         id="CyclicLR-scale_fn-iterations"),
    case(lambda m, o: m.CyclicLR(o, 0.02, 0.3, step_size_up=20, cycle_momentum=False),
         id="CyclicLR-no-momentum"),
    case(lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=100), 100, id="OneCycle-default"),
    case(lambda m, o: m.OneCycleLR(o, per(o, 0.1, 0.3), total_steps=137,
                                   anneal_strategy="linear"),
         137, id="OneCycle-linear-per-group"),
    case(lambda m, o: m.OneCycleLR(o, 0.2, total_steps=120, pct_start=0.25, three_phase=True),
         120, id="OneCycle-three-phase"),
    case(lambda m, o: m.OneCycleLR(o, 0.05, epochs=10, steps_per_epoch=11,
                                   cycle_momentum=False),
         110, id="OneCycle-epochs-no-momentum"),
    case(lambda m, o: m.OneCycleLR(o, per(o, 0.4, 0.1), total_steps=101, pct_start=0.45,
                                   anneal_strategy="linear", base_momentum=per(o, 0.8, 0.7),
                                   max_momentum=per(o, 0.95, 0.9), div_factor=10.0,
                                   final_div_factor=100.0, three_phase=True),
         101, id="OneCycle-three-phase-linear-factors"),
    case(lambda m, o: m.LambdaLR(o, lambda e: 0.95**e), id="LambdaLR-exp"),
    case(lambda m, o: m.LambdaLR(o, per(o, lambda e: 1 + e // 30, lambda e: 1 / (1 + e))),
         id="LambdaLR-per-group"),
    case(lambda m, o: m.MultiplicativeLR(o, lambda e: 0.95), id="MultiplicativeLR-const"),
    case(lambda m, o: m.MultiplicativeLR(o, per(o, lambda e: 1 - 0.001 * e, lambda e: 0.99)),
         id="MultiplicativeLR-per-group"),
    case(lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, 0.1, total_iters=10), m.CosineAnnealingLR(o, T_max=140)], [10]),
        id="Sequential-warmup-cosine"),
    case(lambda m, o: m.SequentialLR(
        o, [m.ConstantLR(o, 0.5, 5), m.ExponentialLR(o, 0.95), m.StepLR(o, 7, 0.5)], [5, 40]),
        id="Sequential-constant-exp-step"),
    case(lambda m, o: m.SequentialLR(
        o, [m.ExponentialLR(o, 0.9), m.CosineAnnealingWarmRestarts(o, T_0=10)], [20]),
        id="Sequential-exp-CAWR"),
    case(lambda m, o: m.SequentialLR(
        o, [m.LambdaLR(o, lambda e: 1 / (1 + e)), m.MultiStepLR(o, [10, 20], 0.5)], [30]),
        id="Sequential-lambda-multistep"),
    case(lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, 0.2, total_iters=5), m.PolynomialLR(o, 100, 2.0)], milestones=[5]),
        id="Sequential-linear-poly"),
    case(lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, 0.5, total_iters=8), m.CyclicLR(o, 0.01, 0.1, 10)], [8]),
        id="Sequential-linear-cyclic"),
    case(lambda m, o: m.SequentialLR(
        o, [m.ChainedScheduler([m.ConstantLR(o, 0.5, 10), m.ExponentialLR(o, 0.95)]),
            m.StepLR(o, 10, 0.5)], [30]),
        id="Sequential-of-chained"),
    case(lambda m, o: m.ChainedScheduler([m.ConstantLR(o, 0.1, 20), m.ExponentialLR(o, 0.9)]),
         id="Chained-constant-exp"),
    case(lambda m, o: m.ChainedScheduler(
        [m.LinearLR(o, 0.2, total_iters=10), m.StepLR(o, 15, 0.5),
         m.MultiplicativeLR(o, lambda e: 0.995)], optimizer=o),
        id="Chained-linear-step-mult"),
    case(lambda m, o: m.ChainedScheduler(
        [m.CosineAnnealingLR(o, 30, 0.001), m.MultiStepLR(o, [40, 80], 0.5)]),
        id="Chained-cosine-multistep"),
    case(lambda m, o: m.ChainedScheduler(
        [m.CosineAnnealingWarmRestarts(o, 10), m.ExponentialLR(o, 0.98)]),
        id="Chained-CAWR-exp"),
    case(lambda m, o: m.ReduceLROnPlateau(o), id="Plateau-default"),
    case(lambda m, o: m.ReduceLROnPlateau(o, mode="max", factor=0.5, patience=3, threshold=0.01),
         id="Plateau-max-rel"),
    case(lambda m, o: m.ReduceLROnPlateau(o, threshold_mode="abs", threshold=0.05, patience=2,
                                          cooldown=3),
         id="Plateau-abs-cooldown"),
    case(lambda m, o: m.ReduceLROnPlateau(o, "max", 0.3, 1, threshold_mode="abs",
                                          min_lr=per(o, 0.01, 0.03)),
         id="Plateau-max-abs-min_lr-per-group"),
    case(lambda m, o: m.ReduceLROnPlateau(o, factor=0.9, patience=0, eps=0.002),
         id="Plateau-eps"),
    case(lambda m, o: m.ReduceLROnPlateau(o, factor=0.5, patience=0, min_lr=1e-4),
         id="Plateau-patience0-min_lr"),
]


# --------------------------------------------------------------------------------------------
# Parity with torch
# --------------------------------------------------------------------------------------------


def assert_parity(torch, make: Make, groups, steps: int):
    """Drive torch's and our scheduler side by side and compare every group at every step."""
    t_opt, f_opt = torch_sgd(torch, groups), FakeOptimizer(groups)
    with warnings.catch_warnings():
        # torch warns when a child's first step runs before any optimizer.step() (nested combos)
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
        t_sched = make(torch.optim.lr_scheduler, t_opt)
    f_sched = make(fls, f_opt)
    for i in range(steps + 1):
        assert snapshot(f_opt) == snapshot(t_opt), f"epoch {i}"
        if i % 3 == 0:  # interleaved get_last_lr() checks
            last = f_sched.get_last_lr()
            assert last == t_sched.get_last_lr(), f"epoch {i}"
            assert last == [g["lr"] for g in f_opt.param_groups], f"epoch {i}"
        if i < steps:
            t_opt.step()
            advance(t_sched, i)
            advance(f_sched, i)
    return t_sched, f_sched


@pytest.mark.parametrize("groups", [ONE, TWO], ids=["1group", "2groups"])
@pytest.mark.parametrize(("make", "steps"), CASES)
def test_parity_with_torch(torch, make, steps, groups):
    t_sched, f_sched = assert_parity(torch, make, groups, steps)
    if isinstance(f_sched, fls.OneCycleLR):  # stepping past total_steps raises in both
        with pytest.raises(ValueError, match="Tried to step"):
            t_sched.step()
        with pytest.raises(ValueError, match="Tried to step"):
            f_sched.step()


RESUMABLE = [
    lambda m, o: m.StepLR(o, 5, 0.5, last_epoch=12),
    lambda m, o: m.MultiStepLR(o, [15, 30], 0.5, last_epoch=12),
    lambda m, o: m.ExponentialLR(o, 0.95, last_epoch=12),
    lambda m, o: m.ConstantLR(o, 0.5, 20, last_epoch=12),
    lambda m, o: m.LinearLR(o, 0.5, total_iters=20, last_epoch=12),
    lambda m, o: m.PolynomialLR(o, 40, 2.0, last_epoch=12),
    lambda m, o: m.CosineAnnealingLR(o, 30, 0.001, last_epoch=12),
    lambda m, o: m.CosineAnnealingWarmRestarts(o, 20, 2, last_epoch=12),
    lambda m, o: m.CosineAnnealingWarmRestarts(o, 5, 2, last_epoch=12),  # torch wraps once only
    lambda m, o: m.LambdaLR(o, lambda e: 0.97**e, last_epoch=12),
    lambda m, o: m.MultiplicativeLR(o, lambda e: 0.97, last_epoch=12),
    lambda m, o: m.CyclicLR(o, 0.01, 0.1, 8, last_epoch=12),
    lambda m, o: m.OneCycleLR(o, 0.1, total_steps=100, last_epoch=12),
]


@pytest.mark.parametrize("make", RESUMABLE, ids=range(len(RESUMABLE)))
def test_parity_when_resuming_with_last_epoch(torch, make):
    # The groups as an optimizer checkpoint would restore them (incl. OneCycleLR's keys).
    extra = {"max_lr": 0.1, "min_lr": 4e-7, "max_momentum": 0.95, "base_momentum": 0.85}
    groups = [{**g, "lr": g["lr"] / 3, "initial_lr": g["lr"], **extra} for g in TWO]
    assert_parity(torch, make, groups, 80)


def test_cosine_get_lr_right_after_resuming_is_the_closed_form_like_torch(torch):
    groups = [{**g, "initial_lr": g["lr"]} for g in TWO]
    values = []
    for module, opt in ((torch.optim.lr_scheduler, torch_sgd(torch, groups)),
                        (fls, FakeOptimizer(groups))):
        sched = module.CosineAnnealingLR(opt, 30, 0.001, last_epoch=12)
        with pytest.warns(UserWarning):
            values.append(sched.get_lr())
    assert values[0] == values[1]
    assert values[1] == [0.001 + (g["lr"] - 0.001) * (1 + math.cos(math.pi * 13 / 30)) / 2
                         for g in TWO]


def test_plateau_with_a_param_group_added_later_like_torch(torch):
    t_opt, f_opt = torch_sgd(torch, ONE), FakeOptimizer(ONE)
    t_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, patience=0, min_lr=0.02)
    f_sched = fls.ReduceLROnPlateau(f_opt, patience=0, min_lr=0.02)
    t_opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": 0.3})
    f_opt.param_groups.append({"lr": 0.3, "momentum": 0.0})
    for i in range(40):
        t_sched.step(metric(i))
        f_sched.step(metric(i))
        assert snapshot(f_opt) == snapshot(t_opt), i
    assert f_sched.min_lrs == [0.02, 0.02]
    for module, opt in ((torch.optim.lr_scheduler, t_opt), (fls, f_opt)):
        sched = module.ReduceLROnPlateau(opt, patience=0, min_lr=[0.01, 0.01])
        opt.param_groups.append({**opt.param_groups[0]})
        sched.step(1.0)
        with pytest.raises(RuntimeError, match="param groups"):
            sched.step(2.0)


def test_get_lr_outside_step_warns_like_torch(torch):
    for module, opt in ((torch.optim.lr_scheduler, torch_sgd(torch, TWO)),
                        (fls, FakeOptimizer(TWO))):
        sched = module.StepLR(opt, 3)
        with pytest.warns(UserWarning, match="get_last_lr"):
            sched.get_lr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fls.StepLR(FakeOptimizer(TWO), 3).step()  # no warning from within step()


# --------------------------------------------------------------------------------------------
# closed_form
# --------------------------------------------------------------------------------------------

# (our scheduler with closed_form=True, the closed form of (b0, t) in its docstring)
CLOSED_FORMS = [
    pytest.param(lambda o: fls.StepLR(o, 7, 0.5, closed_form=True),
                 lambda b, t: b * 0.5 ** (t // 7), id="StepLR"),
    pytest.param(lambda o: fls.MultiStepLR(o, [30, 10, 30, 80], 0.3, closed_form=True),
                 lambda b, t: b * 0.3 ** sum(m <= t for m in (10, 30, 30, 80)), id="MultiStepLR"),
    pytest.param(lambda o: fls.ExponentialLR(o, 0.97, closed_form=True),
                 lambda b, t: b * 0.97**t, id="ExponentialLR"),
    pytest.param(lambda o: fls.ConstantLR(o, 0.25, 40, closed_form=True),
                 lambda b, t: b * (0.25 if t < 40 else 1), id="ConstantLR"),
    pytest.param(lambda o: fls.LinearLR(o, 0.05, 0.9, 40, closed_form=True),
                 lambda b, t: b * (0.05 + (0.9 - 0.05) * min(40, t) / 40), id="LinearLR"),
    pytest.param(lambda o: fls.PolynomialLR(o, 50, 0.9, closed_form=True),
                 lambda b, t: b * (1 - min(50, t) / 50) ** 0.9, id="PolynomialLR"),
    pytest.param(lambda o: fls.CosineAnnealingLR(o, 40, 0.001, closed_form=True),
                 lambda b, t: 0.001 + (b - 0.001) * (1 + math.cos(math.pi * t / 40)) / 2,
                 id="CosineAnnealingLR"),
]


@pytest.mark.parametrize(("make", "formula"), CLOSED_FORMS)
def test_closed_form_equals_formula(make, formula):
    opt = FakeOptimizer(TWO)
    sched = make(opt)
    for t in range(STEPS + 1):
        assert sched.last_epoch == t
        assert [g["lr"] for g in opt.param_groups] == [formula(g["lr"], t) for g in TWO], t
        sched.step()


# The same schedules in torch's (recursive) form, paired with our closed-form factory above.
RECURSIVE_TWINS = {
    "StepLR": lambda m, o: m.StepLR(o, 7, 0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, [30, 10, 30, 80], 0.3),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, 0.97),
    "ConstantLR": lambda m, o: m.ConstantLR(o, 0.25, 40),
    "LinearLR": lambda m, o: m.LinearLR(o, 0.05, 0.9, 40),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o, 50, 0.9),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, 40, 0.001),
}


@pytest.mark.parametrize(("make", "formula"), CLOSED_FORMS)
def test_closed_form_versus_torch_drift_after_external_lr_change(torch, request, make, formula):
    """Halve group 0's lr by hand at epoch 20 (as a user or another tool would).

    torch's recursive form carries the change along (drifts from the formula); ours reproduces
    that by default, while closed_form=True keeps following the formula.
    """
    name = request.node.callspec.id
    twin = RECURSIVE_TWINS[name]
    t_opt, rec_opt, closed_opt = torch_sgd(torch, TWO), FakeOptimizer(TWO), FakeOptimizer(TWO)
    t_sched, rec_sched = twin(torch.optim.lr_scheduler, t_opt), twin(fls, rec_opt)
    closed_sched = make(closed_opt)
    drifted = False
    for t in range(STEPS + 1):
        if t == 20:
            for opt in (t_opt, rec_opt, closed_opt):
                opt.param_groups[0]["lr"] *= 0.5
        if t > 20:
            torch_lrs = [g["lr"] for g in t_opt.param_groups]
            assert [g["lr"] for g in rec_opt.param_groups] == torch_lrs, t
            closed_lrs = [g["lr"] for g in closed_opt.param_groups]
            assert closed_lrs == [formula(g["lr"], t) for g in TWO], t
            drifted |= closed_lrs[0] != torch_lrs[0]
        t_opt.step()
        for sched in (t_sched, rec_sched, closed_sched):
            sched.step()
    assert drifted


@pytest.mark.parametrize(("make", "formula"), CLOSED_FORMS)
def test_closed_form_equals_torch_epoch_argument(torch, request, make, formula):
    """torch's closed form (its deprecated ``step(epoch)`` path) gives the same floats."""
    twin = RECURSIVE_TWINS[request.node.callspec.id]
    t_opt, f_opt = torch_sgd(torch, TWO), FakeOptimizer(TWO)
    t_sched, f_sched = twin(torch.optim.lr_scheduler, t_opt), make(f_opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(1, STEPS + 1):
            t_opt.step()
            t_sched.step(t)
            f_sched.step()
            assert snapshot(f_opt) == snapshot(t_opt), t


def test_recursive_cosine_differs_from_closed_form_only_in_last_bits():
    rec_opt, closed_opt = FakeOptimizer(TWO), FakeOptimizer(TWO)
    rec = fls.CosineAnnealingLR(rec_opt, 40, 0.001)
    closed = fls.CosineAnnealingLR(closed_opt, 40, 0.001, closed_form=True)
    for _ in range(STEPS):
        for a, b in zip(rec.get_last_lr(), closed.get_last_lr(), strict=True):
            assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
        rec.step()
        closed.step()


# --------------------------------------------------------------------------------------------
# state_dict
# --------------------------------------------------------------------------------------------


def _run(make: Make, steps: int) -> list:
    opt = FakeOptimizer(TWO)
    sched = make(fls, opt)
    seq = [(snapshot(opt), sched.get_last_lr())]
    for i in range(steps):
        advance(sched, i)
        seq.append((snapshot(opt), sched.get_last_lr()))
    return seq


@pytest.mark.parametrize(("make", "steps"), CASES)
def test_state_dict_json_round_trip_mid_schedule(make, steps):
    expected = _run(make, steps)
    k = steps // 3 + 1

    opt = FakeOptimizer(TWO)
    sched = make(fls, opt)
    for i in range(k):
        advance(sched, i)
    # Save: the scheduler's state and the optimizer's (its param groups), as plain JSON.
    text = json.dumps({"scheduler": sched.state_dict(), "groups": opt.param_groups},
                      allow_nan=False)
    del opt, sched

    saved = json.loads(text)
    opt = FakeOptimizer(TWO)
    sched = make(fls, opt)  # the scheduler first (it writes the lrs), then the states
    for group, saved_group in zip(opt.param_groups, saved["groups"], strict=True):
        group.clear()
        group.update(saved_group)
    sched.load_state_dict(saved["scheduler"])

    resumed = [(snapshot(opt), sched.get_last_lr())]
    for i in range(k, steps):
        advance(sched, i)
        resumed.append((snapshot(opt), sched.get_last_lr()))
    assert resumed == expected[k:]


def test_state_dict_holds_plain_data_only():
    opt = FakeOptimizer(TWO)
    scheds = [
        fls.LambdaLR(opt, lambda e: 0.9**e),
        fls.CyclicLR(opt, 0.01, 0.1, 5, scale_fn=lambda x: 1.0),
        fls.MultiStepLR(opt, [3, 3, 1]),
        fls.ReduceLROnPlateau(opt),
    ]
    scheds.append(fls.ChainedScheduler(scheds[:3]))

    def check(value):
        if isinstance(value, dict):
            assert all(isinstance(k, str) for k in value)
            for v in value.values():
                check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)
        else:
            assert value is None or type(value) in (bool, int, float, str), value

    for sched in scheds:
        state = sched.state_dict()
        check(state)
        assert json.loads(json.dumps(state)) == state
    assert scheds[2].state_dict()["milestones"] == [1, 3, 3]
    assert scheds[3].state_dict()["best"] == math.inf  # json writes it as Infinity


def test_load_state_dict_missing_key_raises():
    sched = fls.StepLR(FakeOptimizer(ONE), 3)
    state = sched.state_dict()
    del state["gamma"]
    with pytest.raises(KeyError, match="gamma"):
        fls.StepLR(FakeOptimizer(ONE), 3).load_state_dict(state)


# --------------------------------------------------------------------------------------------
# Errors: the same exception types as torch
# --------------------------------------------------------------------------------------------

ERRORS = [
    pytest.param(lambda m, o: m.LinearLR(o, start_factor=0), id="LinearLR-start0"),
    pytest.param(lambda m, o: m.LinearLR(o, end_factor=1.5), id="LinearLR-end>1"),
    pytest.param(lambda m, o: m.ConstantLR(o, factor=1.5), id="ConstantLR-factor>1"),
    pytest.param(lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=0), id="CAWR-T0=0"),
    pytest.param(lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=2.5), id="CAWR-T0-float"),
    pytest.param(lambda m, o: m.CosineAnnealingWarmRestarts(o, 5, T_mult=0), id="CAWR-Tmult0"),
    pytest.param(lambda m, o: m.CosineAnnealingWarmRestarts(o, 5, eta_min="0"), id="CAWR-eta"),
    pytest.param(lambda m, o: m.OneCycleLR(o, 0.1), id="OneCycle-no-steps"),
    pytest.param(lambda m, o: m.OneCycleLR(o, 0.1, total_steps=0), id="OneCycle-steps0"),
    pytest.param(lambda m, o: m.OneCycleLR(o, 0.1, epochs=0, steps_per_epoch=3),
                 id="OneCycle-epochs0"),
    pytest.param(lambda m, o: m.OneCycleLR(o, 0.1, 10, pct_start=1), id="OneCycle-pct-int"),
    pytest.param(lambda m, o: m.OneCycleLR(o, 0.1, 10, pct_start=1.5), id="OneCycle-pct>1"),
    pytest.param(lambda m, o: m.OneCycleLR(o, 0.1, 10, anneal_strategy="exp"),
                 id="OneCycle-anneal"),
    pytest.param(lambda m, o: m.OneCycleLR(o, [0.1, 0.2, 0.3], 10), id="OneCycle-max_lr-len"),
    pytest.param(lambda m, o: m.CyclicLR(o, 0.01, 0.1, mode="sawtooth"), id="CyclicLR-mode"),
    pytest.param(lambda m, o: m.CyclicLR(o, [0.01], 0.1), id="CyclicLR-base_lr-len"),
    pytest.param(lambda m, o: m.CyclicLR(o, 0.01, 0.1, max_momentum=[0.9]),
                 id="CyclicLR-momentum-len"),
    pytest.param(lambda m, o: m.ReduceLROnPlateau(o, factor=1.0), id="Plateau-factor"),
    pytest.param(lambda m, o: m.ReduceLROnPlateau(o, mode="avg"), id="Plateau-mode"),
    pytest.param(lambda m, o: m.ReduceLROnPlateau(o, threshold_mode="x"), id="Plateau-thr"),
    pytest.param(lambda m, o: m.ReduceLROnPlateau(o, min_lr=[0.1]), id="Plateau-min_lr-len"),
    pytest.param(lambda m, o: m.LambdaLR(o, [lambda e: 1.0]), id="LambdaLR-len"),
    pytest.param(lambda m, o: m.MultiplicativeLR(o, 0.9), id="MultiplicativeLR-not-callable"),
    pytest.param(lambda m, o: m.StepLR(o, 3, last_epoch=5), id="resume-without-initial_lr"),
    pytest.param(lambda m, o: m.SequentialLR(o, [], []), id="Sequential-empty"),
    pytest.param(lambda m, o: m.SequentialLR(o, [m.StepLR(o, 3), m.StepLR(o, 4)], [2, 5]),
                 id="Sequential-milestones-len"),
    pytest.param(lambda m, o: m.SequentialLR(o, [m.ReduceLROnPlateau(o)], []),
                 id="Sequential-plateau"),
    pytest.param(lambda m, o: m.SequentialLR(o, [object()], []), id="Sequential-not-scheduler"),
    pytest.param(lambda m, o: m.ChainedScheduler([]), id="Chained-empty"),
    pytest.param(lambda m, o: m.ChainedScheduler([m.StepLR(o, 3), m.ReduceLROnPlateau(o)]),
                 id="Chained-plateau"),
]


@pytest.mark.parametrize("make", ERRORS)
def test_errors_match_torch(torch, make):
    with pytest.raises(Exception) as torch_error:
        make(torch.optim.lr_scheduler, torch_sgd(torch, TWO))
    with pytest.raises(torch_error.type):
        make(fls, FakeOptimizer(TWO))


def test_schedulers_of_another_optimizer_rejected_like_torch(torch):
    for module, opts in ((torch.optim.lr_scheduler, [torch_sgd(torch, ONE) for _ in "ab"]),
                         (fls, [FakeOptimizer(ONE) for _ in "ab"])):
        a, b = opts
        with pytest.raises(ValueError, match="same optimizer"):
            module.SequentialLR(a, [module.StepLR(a, 3), module.StepLR(b, 3)], [5])
        with pytest.raises(ValueError, match="same optimizer"):
            module.ChainedScheduler([module.StepLR(a, 3), module.StepLR(b, 3)])


def test_cycle_momentum_needs_momentum_like_torch(torch):
    adagrad = torch.optim.Adagrad([torch.zeros(1, requires_grad=True)], lr=0.1)
    no_momentum = FakeOptimizer([{"lr": 0.1}])
    for module, opt in ((torch.optim.lr_scheduler, adagrad), (fls, no_momentum)):
        with pytest.raises(ValueError, match="momentum"):
            module.CyclicLR(opt, 0.01, 0.1)
        with pytest.raises(ValueError, match="momentum"):
            module.OneCycleLR(opt, 0.1, total_steps=10)
    fls.CyclicLR(no_momentum, 0.01, 0.1, cycle_momentum=False).step()


def test_not_an_optimizer():
    with pytest.raises(TypeError):
        fls.StepLR(object(), 3)
    with pytest.raises(TypeError):
        fls.ReduceLROnPlateau(object())


def test_one_cycle_raises_past_total_steps():
    opt = FakeOptimizer(TWO)
    sched = fls.OneCycleLR(opt, 0.1, total_steps=10)
    for _ in range(10):
        sched.step()
    with pytest.raises(ValueError, match="Tried to step 11 times"):
        sched.step()


def _attributes(scheduler):
    return {k: repr(v) for k, v in vars(scheduler).items()}


@pytest.mark.parametrize("make, bad", [
    (lambda o: fls.ReduceLROnPlateau(o, patience=2),
     lambda s: {**s, "factor": 0.01, "mode": "sideways"}),
    (lambda o: fls.StepLR(o, 3), lambda s: {**s, "last_epoch": 7, "gamma": object()}),
    (lambda o: fls.MultiStepLR(o, [2, 4]), lambda s: {**s, "last_epoch": 7, "milestones": 5}),
    (lambda o: fls.SequentialLR(o, [fls.ConstantLR(o, factor=0.5), fls.ExponentialLR(o, 0.9)],
                                milestones=[3]),
     lambda s: {**s, "last_epoch": 9,
                "_schedulers": [{**s["_schedulers"][0], "last_epoch": 4}, {"gamma": 0.5}]}),
])
def test_load_state_dict_is_atomic(make, bad):
    # A state dict that fails part-way leaves the scheduler and its children as they were.
    scheduler = make(FakeOptimizer([{"lr": 0.1, "momentum": 0.9}]))
    family = scheduler._family()
    before = [_attributes(s) for s in family]
    with pytest.raises((ValueError, TypeError, KeyError)):
        scheduler.load_state_dict(bad(scheduler.state_dict()))
    assert [_attributes(s) for s in family] == before


# --------------------------------------------------------------------------------------------
# CosineAnnealingWarmRestarts.step(epoch): torch's per-batch form (issue 23)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("T_0", "T_mult", "eta_min"), [(5, 1, 0.0), (3, 2, 0.001), (10, 3, 0.01),
                                                        (4, 2, 0.0)])
def test_warm_restarts_fractional_epochs_match_torch(torch, T_0, T_mult, eta_min):
    # torch's docstring: scheduler.step(epoch + i / iters) after each batch; values to the bit
    t_opt, f_opt = torch_sgd(torch, TWO), FakeOptimizer(TWO)
    t_sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(t_opt, T_0, T_mult, eta_min)
    f_sched = fls.CosineAnnealingWarmRestarts(f_opt, T_0, T_mult, eta_min)
    iters = 7
    for epoch in range(40):
        for i in range(iters):
            t_sched.step(epoch + i / iters)
            f_sched.step(epoch + i / iters)
            assert snapshot(f_opt) == snapshot(t_opt), (epoch, i)
            assert (f_sched.T_cur, f_sched.T_i, f_sched.last_epoch) == (
                t_sched.T_cur, t_sched.T_i, t_sched.last_epoch), (epoch, i)
    # interleaved, as in torch's second docstring example: step(26), then step() continues
    for sched in (t_sched, f_sched):
        sched.step(26)
        sched.step()
    assert snapshot(f_opt) == snapshot(t_opt)
    assert f_sched.last_epoch == t_sched.last_epoch == 27
    # a restart epoch where torch's log rounds low is reproduced too (T_0=10, T_mult=3: 1210)
    for sched in (t_sched, f_sched):
        sched.step(1210)
    assert snapshot(f_opt) == snapshot(t_opt)
    state = f_sched.state_dict()
    assert json.loads(json.dumps(state)) == state


def test_warm_restarts_epoch_errors(torch):
    f_sched = fls.CosineAnnealingWarmRestarts(FakeOptimizer(ONE), 5)
    t_sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(torch_sgd(torch, ONE), 5)
    for sched in (f_sched, t_sched):
        with pytest.raises(ValueError, match=r"Expected non-negative epoch, but got -0\.5"):
            sched.step(-0.5)
    with pytest.raises(ValueError, match="finite"):
        f_sched.step(math.inf)
    with pytest.raises(TypeError, match="epoch must be an int or a float"):
        f_sched.step("1")  # type: ignore[arg-type]


def test_warm_restarts_take_numpy_epochs_as_the_numbers_they_hold():
    np = pytest.importorskip("numpy")
    plain = fls.CosineAnnealingWarmRestarts(FakeOptimizer(ONE), 5, T_mult=2)
    numpy = fls.CosineAnnealingWarmRestarts(FakeOptimizer(ONE), 5, T_mult=2)
    for i, epoch in enumerate(np.arange(0, 40, 0.25)):  # for epoch in np.arange(...)
        as_int = np.int64(i) if i % 2 else np.int32(i)
        for value, same in ((epoch, float(epoch)), (as_int, i)):
            numpy.step(value)
            plain.step(same)
            assert numpy.get_last_lr() == plain.get_last_lr() and numpy.T_cur == plain.T_cur
            assert type(numpy.T_cur) is type(plain.T_cur)
    with pytest.raises(TypeError, match="epoch must be an int or a float"):
        numpy.step(np.True_)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="epoch must be an int or a float"):
        numpy.step(True)


# --------------------------------------------------------------------------------------------
# A negative lr from chained recursive schedulers (issue 23): torch steps on, fm.SGD refuses
# --------------------------------------------------------------------------------------------


def chained_cosine_exponential(module, opt):
    # torch's recursive cosine with eta_min > 0 under a second scheduler drifts below eta_min,
    # then below 0: lr(12) = -0.00748...
    return module.ChainedScheduler([module.CosineAnnealingLR(opt, 10, eta_min=0.01),
                                    module.ExponentialLR(opt, 0.5)])


def test_chained_schedulers_negative_lr_torch_steps_on_fm_sgd_raises(torch):
    np = pytest.importorskip("numpy")
    import fastmomentum as fm

    t_param = torch.zeros(3, requires_grad=True)
    t_opt = torch.optim.SGD([t_param], lr=0.1, momentum=0.9)
    t_sched = chained_cosine_exponential(torch.optim.lr_scheduler, t_opt)
    params = [np.zeros(3)]
    f_opt = fm.SGD(params, lr=0.1, momentum=0.9)
    f_sched = chained_cosine_exponential(fls, f_opt)
    for epoch in range(12):
        t_param.grad = torch.ones(3)
        t_opt.step()
        t_sched.step()
        f_opt.step([np.ones(3)])
        f_sched.step()
        assert f_opt.param_groups[0]["lr"] == t_opt.param_groups[0]["lr"], epoch
    lr = f_opt.param_groups[0]["lr"]
    assert lr < 0  # the scheduler writes torch's negative lr, bit for bit
    t_param.grad = torch.ones(3)
    t_opt.step()  # torch steps with it (ascending)
    before = params[0].copy()
    with pytest.raises(ValueError, match=re.escape(f"Invalid learning rate: {lr}")):
        f_opt.step([np.ones(3)])
    assert (params[0] == before).all()  # nothing was updated
    # the fix the documentation gives: closed forms, which do not go negative
    f_opt = fm.SGD([np.zeros(3)], lr=0.1, momentum=0.9)
    sched = fls.ChainedScheduler([fls.CosineAnnealingLR(f_opt, 10, 0.01, closed_form=True),
                                  fls.ExponentialLR(f_opt, 0.5, closed_form=True)])
    for _ in range(40):
        f_opt.step([np.ones(3)])
        sched.step()
        assert f_opt.param_groups[0]["lr"] >= 0


def test_negative_lr_error_names_the_scheduler_situation():
    np = pytest.importorskip("numpy")
    import fastmomentum as fm

    w = np.zeros(3)
    f_opt = fm.SGD([w], lr=0.1, momentum=0.9)
    f_sched = chained_cosine_exponential(fls, f_opt)
    for _ in range(12):
        f_opt.step([np.ones(3)])
        f_sched.step()
    before = w.copy()
    with pytest.raises(ValueError, match=r"(?s)Invalid learning rate.*scheduler.*closed_form=True"):
        f_opt.step([np.ones(3)])
    assert (w == before).all() and f_opt.iterations == 12  # nothing changed
