"""Resuming in a new process is exact: N steps in one process give the same bits as k steps,
``fm.checkpoint.save``, and the remaining N - k steps in a NEW Python process that builds fresh
parameters, optimizer and scheduler and loads the checkpoint.

Every convention is covered by one configuration or more (CONFIGS): the torch style (plain SGD,
momentum, dampening, Nesterov, maximize), keras (with and without Nesterov) and ema; the coupled,
decoupled and sgdw weight decays; float32, float64 and both in one optimizer; several parameter
groups with their own hyper-parameters; every scheduler of fastmomentum.lr_scheduler (OneCycleLR and
CyclicLR cycle the momentum too); schedules of fastmomentum.schedules as lr, momentum and
schedule_multiplier; flat storage (adjacent views); parameters whose first gradient comes before
or after the checkpoint, gradients that are None on some steps, and the checkpoint taken at step
0, 1, or later. Gradients are deterministic functions of (configuration, step, parameters).

One subprocess resumes every configuration (this file run as a script), and the final
parameters and WHOLE state dicts (optimizer and scheduler, whatever keys they hold) are compared
bit for bit with an uninterrupted run in this process. A second subprocess does the same with the
portable kernels and one thread, as another machine would.
"""

from __future__ import annotations

import inspect
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import lr_scheduler as L
from fastmomentum import schedules as S
from fastmomentum.flat import FlatGroup

from conftest import same_bits

N_STEPS = 24
F32, F64 = np.float32, np.float64
# Whether SGD has the gradient guards (nonfinite="skip", max_grad_norm); their configuration is
# left out where it has not.
HAS_GUARDS = "nonfinite" in inspect.signature(fm.SGD).parameters

# name -> configuration: "groups" lists (shapes, dtype, overrides) per parameter group;
# "sched" is (scheduler class name, keyword arguments) or None; "k" is the checkpoint's step;
# "late" the step of parameter 1's first gradient; "nan_steps" steps whose gradient 0 is NaN.
CONFIGS: dict[str, dict[str, Any]] = {
    "torch-plain-f32": dict(
        kwargs=dict(lr=0.1, weight_decay=1e-2),
        groups=[([(5,), (3, 4)], F32, {}), ([(1031,)], F32, {"lr": 0.05, "weight_decay": 0.0})],
        sched=("StepLR", dict(step_size=5, gamma=0.5)), k=10, late=3),
    "torch-momentum-f64": dict(
        kwargs=dict(lr=0.1, momentum=0.9, weight_decay=1e-3),
        groups=[([(7,), (4, 3)], F64, {}), ([(2, 3, 2)], F64, {"momentum": 0.5}),
                ([(5003,)], F64, {"momentum": 0.0, "lr": 0.02})],
        sched=("CosineAnnealingLR", dict(T_max=20, eta_min=1e-3)), k=1, late=5),
    "torch-dampening-f32": dict(
        kwargs=dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-3),
        groups=[([(9,), (6,)], F32, {}),
                ([(4, 4)], F32, {"dampening": 0.0, "nesterov": True, "weight_decay": 0.0})],
        sched=("OneCycleLR", dict(max_lr=[0.5, 0.2], total_steps=N_STEPS + 1)), k=13, late=20),
    "torch-nesterov-maximize-f64": dict(
        kwargs=dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2,
                    weight_decay_mode="decoupled"),
        groups=[([(8,), (3,)], F64, {"maximize": True}), ([(130,)], F64, {"lr": 0.01})],
        sched=("StepLR", dict(step_size=4, gamma=0.7, closed_form=True)), k=7, late=2),
    "torch-sgdw-f32": dict(
        kwargs=dict(lr=0.1, momentum=0.9, weight_decay=0.05, weight_decay_mode="sgdw"),
        groups=[([(10,), (2, 5)], F32, {}), ([(33,)], F32, {"schedule_multiplier": 0.5})],
        sched=("StepLR", dict(step_size=6, gamma=0.5)), k=12, late=14),
    "keras-f32": dict(
        kwargs=dict(lr=0.05, momentum=0.9, weight_decay=1e-2, style="keras"),
        groups=[([(6,), (5,)], F32, {}), ([(1025,)], F32, {"momentum": 0.7, "lr": 0.1})],
        sched=("CosineAnnealingLR", dict(T_max=10)), k=5, late=8),
    "keras-nesterov-f64": dict(
        kwargs=dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2, style="keras",
                    weight_decay_mode="coupled"),
        groups=[([(4,), (4, 2)], F64, {}), ([(17,)], F64, {"weight_decay_mode": "sgdw",
                                                           "schedule_multiplier": 0.5})],
        sched=("OneCycleLR", dict(max_lr=0.3, total_steps=N_STEPS + 1)), k=11, late=0),
    "ema-f64": dict(
        kwargs=dict(lr=0.1, momentum=0.9, weight_decay=1e-2, style="ema",
                    weight_decay_mode="sgdw"),
        groups=[([(5,), (7,)], F64, {}), ([(3, 3)], F64, {"momentum": 0.99, "lr": 0.3})],
        sched=("StepLR", dict(step_size=3, gamma=0.8)), k=9, late=4),
    "ema-schedules-f32": dict(
        kwargs=dict(lr=S.cosine_decay(0.2, N_STEPS, alpha=0.1),
                    momentum=S.piecewise_constant([8], [0.8, 0.95]), weight_decay=1e-3,
                    style="ema"),
        groups=[([(6,), (11,)], F32, {}), ([(65,)], F32, {"lr": S.exponential_decay(0.1, 5, 0.5)})],
        sched=None, k=10, late=12),
    "torch-schedules-sgdw-f64": dict(
        # Group 0's s is lr / lr(0): a warm-up from 0.05, not 0 (s would be undefined).
        kwargs=dict(lr=S.warmup_cosine_decay(0.05, 0.2, 5, 20, decay_steps_include_warmup=True),
                    momentum=0.9, nesterov=True, weight_decay=0.02, weight_decay_mode="sgdw"),
        groups=[([(6,), (2, 2)], F64, {}),
                ([(40,)], F64, {"schedule_multiplier": S.cosine_decay(1.0, N_STEPS),
                                "lr": S.linear_onecycle(N_STEPS, 0.3)})],
        sched=None, k=6, late=9),
    "keras-schedules-f64": dict(
        kwargs=dict(lr=S.exponential_decay(0.1, 4, 0.7, staircase=True),
                    momentum=S.cosine_decay(0.9, N_STEPS, alpha=0.5), style="keras"),
        groups=[([(5,), (9,)], F64, {}), ([(12,)], F64, {"nesterov": True, "momentum": 0.6})],
        sched=None, k=17, late=1),
    "torch-flat-f32": dict(  # views of one block: the straight run updates them as one span
        kwargs=dict(lr=0.1, momentum=0.9, weight_decay=1e-3), flat=True,
        groups=[([(7,), (33,), (1,), (130,), (3, 5)], F32, {})],
        sched=("StepLR", dict(step_size=5, gamma=0.5)), k=8, late=3),
    "mixed-dtypes-at-step-0": dict(
        kwargs=dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        groups=[([(5,), (300,)], F32, {}), ([(7,), (4, 4)], F64, {"lr": 0.03})],
        sched=("CosineAnnealingLR", dict(T_max=12)), k=0, late=6),
}
if HAS_GUARDS:
    CONFIGS["torch-guards-skip-clip-f32"] = dict(
        kwargs=dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nonfinite="skip",
                    max_grad_norm=2.0),
        groups=[([(6,), (3, 3)], F32, {}), ([(70,)], F32, {"lr": 0.05})],
        sched=("StepLR", dict(step_size=5, gamma=0.5)), k=10, late=4, nan_steps={3, 9, 10, 16})



def _decay(epoch: int) -> float:
    """LambdaLR's lr_lambda (a module function: the new process has it too)."""
    return 0.95 ** epoch


def _factor(epoch: int) -> float:
    """MultiplicativeLR's lr_lambda."""
    return 0.97


# The other schedulers of fastmomentum.lr_scheduler, each over the same optimizer: name ->
# (class name, a function of the optimizer that makes it).
OTHER_SCHEDULERS: dict[str, Any] = {
    "LambdaLR": lambda o: L.LambdaLR(o, _decay),
    "MultiplicativeLR": lambda o: L.MultiplicativeLR(o, _factor),
    "MultiStepLR": lambda o: L.MultiStepLR(o, [5, 13, 20]),
    "ConstantLR": lambda o: L.ConstantLR(o, factor=0.5, total_iters=15),
    "LinearLR": lambda o: L.LinearLR(o, total_iters=15),
    "ExponentialLR": lambda o: L.ExponentialLR(o, 0.9),
    "PolynomialLR": lambda o: L.PolynomialLR(o, total_iters=20, power=2.0),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, 5, T_mult=2),
    "CyclicLR": lambda o: L.CyclicLR(o, 0.01, [0.1, 0.2], step_size_up=4, mode="exp_range",
                                     gamma=0.9),
    "SequentialLR": lambda o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.1, total_iters=5), L.ExponentialLR(o, 0.9)],
        milestones=[5]),
    "ChainedScheduler": lambda o: L.ChainedScheduler([L.StepLR(o, 4, 0.5),
                                                      L.ExponentialLR(o, 0.95)]),
    "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=2, factor=0.5),
}
for _name, _make in OTHER_SCHEDULERS.items():
    CONFIGS[f"scheduler-{_name}"] = dict(
        kwargs=dict(lr=0.1, momentum=0.9, weight_decay=1e-2, weight_decay_mode="sgdw"),
        groups=[([(7,), (5,)], F64, {}), ([(9,)], F64, {"lr": 0.05, "momentum": 0.8})],
        sched=(_name, _make), k=12, late=3)


def build(name: str, fresh: bool = False) -> tuple[list[np.ndarray], fm.SGD, Any, Any]:
    """Parameters (values from the name, or other ones when ``fresh``: a resumed run must take
    them from the checkpoint), the optimizer, its scheduler (or None) and the FlatGroups."""
    config = CONFIGS[name]
    rng = np.random.default_rng([sum(name.encode()), int(fresh)])
    groups, params, flats = [], [], []
    for shapes, dtype, overrides in config["groups"]:
        arrays = [np.asarray(rng.standard_normal(shape), dtype) for shape in shapes]
        if config.get("flat"):
            flats.append(FlatGroup.from_arrays(arrays, dtype))
            arrays = flats[-1].params
        params += arrays
        groups.append({"params": arrays, **overrides})
    opt = fm.SGD(groups, **config["kwargs"])
    sched = None
    if config["sched"] is not None:
        cls, how = config["sched"]
        sched = how(opt) if callable(how) else getattr(L, cls)(opt, **how)
    return params, opt, sched, flats


def gradients(name: str, step: int, params: list[np.ndarray], flats: list[Any]
              ) -> list[np.ndarray | None]:
    """Step ``step``'s gradients: a quadratic loss's (0.5 * p) plus noise seeded by the step;
    parameter 1 has none before step ``late``, parameter 2 none on every 4th step."""
    config = CONFIGS[name]
    views = [g for flat in flats for g in flat.grads] or [np.empty_like(p) for p in params]
    out: list[np.ndarray | None] = []
    for i, (p, g) in enumerate(zip(params, views, strict=True)):
        if (i == 1 and step < config["late"]) or (i == 2 and step % 4 == 3):
            out.append(None)
            continue
        noise = np.random.default_rng([sum(name.encode()), step, i]).standard_normal(p.shape)
        g[...] = noise + 0.5 * p.astype(np.float64)
        if i == 0 and step in config.get("nan_steps", ()):
            g.flat[0] = np.nan
        out.append(g)
    return out


def train(name: str, params: list[np.ndarray], opt: fm.SGD, sched: Any, flats: list[Any],
          start: int, stop: int) -> None:
    """Steps ``start`` to ``stop - 1``: the optimizer's, then the scheduler's (with a metric for
    ReduceLROnPlateau)."""
    for step in range(start, stop):
        opt.step(gradients(name, step, params, flats))
        if isinstance(sched, L.ReduceLROnPlateau):  # a loss that stalls on steps 4-7, 12-15, ...
            loss = sum(float(np.sum(np.square(p, dtype=np.float64))) for p in params)
            sched.step(loss if step % 8 < 4 else 1e9 + step)
        elif sched is not None:
            sched.step()


def snapshot(params: list[np.ndarray], opt: fm.SGD, sched: Any) -> dict[str, Any]:
    """What is saved and compared: the parameters and the whole state dicts."""
    return {"params": params, "optimizer": opt.state_dict(),
            "scheduler": None if sched is None else sched.state_dict()}


def resume(name: str, checkpoint: Path, out: Path) -> None:
    """What a user does in the new process: build fresh objects, load, train on, save."""
    params, opt, sched, flats = build(name, fresh=True)
    ckpt = fm.checkpoint.load(checkpoint)
    for p, saved in zip(params, ckpt["params"], strict=True):
        p[...] = saved
    opt.load_state_dict(ckpt["optimizer"])
    if sched is not None:
        sched.load_state_dict(ckpt["scheduler"])
    train(name, params, opt, sched, flats, CONFIGS[name]["k"], N_STEPS)
    fm.checkpoint.save(out, snapshot(params, opt, sched))


def assert_same_tree(actual: Any, expected: Any, where: str = "") -> None:
    """Same structure and types; arrays, floats and everything else equal bit for bit."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        if actual.tobytes() != expected.tobytes():
            a, e = actual.reshape(-1), expected.reshape(-1)
            i = next(i for i in range(a.size) if a[i:i + 1].tobytes() != e[i:i + 1].tobytes())
            raise AssertionError(f"{where}: element {i} differs: {a[i]!r} != {e[i]!r}")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_same_tree(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_tree(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert struct.pack("<d", actual) == struct.pack("<d", expected), \
            f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _normalized(tree: Any) -> Any:
    """``tree`` as a checkpoint gives it back (NumPy scalars as Python scalars, copies)."""
    return fm.checkpoint.from_arrays(fm.checkpoint.to_arrays(tree))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """The checkpoints at step k, in a folder, and the uninterrupted runs' final snapshots."""
    folder = tmp_path_factory.mktemp("resume")
    straight = {}
    for name, config in CONFIGS.items():
        params, opt, sched, flats = build(name)
        train(name, params, opt, sched, flats, 0, config["k"])
        fm.checkpoint.save(folder / f"{name}.k.npz", snapshot(params, opt, sched))
        params, opt, sched, flats = build(name)
        train(name, params, opt, sched, flats, 0, N_STEPS)
        straight[name] = _normalized(snapshot(params, opt, sched))
    return folder, straight


# The new process's environment: as this one, or another machine's kernels (the portable ISA,
# one thread), which must not change a bit either.
PROCESSES = {"same-kernels": {}, "baseline-isa-1-thread": {"FASTMOMENTUM_ISA": "baseline",
                                                            "OMP_NUM_THREADS": "1"}}


@pytest.fixture(scope="module", params=list(PROCESSES))
def resumed(request, checkpoints) -> dict[str, Any]:
    """name -> the resumed run's final snapshot, every configuration resumed by ONE new
    process."""
    folder, _ = checkpoints
    out = folder / request.param
    out.mkdir()
    for name in CONFIGS:
        (out / f"{name}.k.npz").write_bytes((folder / f"{name}.k.npz").read_bytes())
    env = {**os.environ, **PROCESSES[request.param]}
    proc = subprocess.run([sys.executable, __file__, str(out), *CONFIGS], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {name: fm.checkpoint.load(out / f"{name}.final.npz") for name in CONFIGS}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resuming_in_a_new_process_gives_the_same_bits(checkpoints, resumed, name):
    straight = checkpoints[1][name]
    assert_same_tree(resumed[name], straight, name)
    for a, b in zip(resumed[name]["params"], straight["params"], strict=True):
        same_bits(a, b)
    assert resumed[name]["optimizer"]["iterations"] == straight["optimizer"]["iterations"] > 0


def _conventions(config: dict[str, Any]) -> set[str]:
    """The conventions that a configuration exercises."""
    out = set()
    for _, dtype, overrides in config["groups"]:
        hyper = {**config["kwargs"], **overrides}
        style = hyper.get("style", "torch")
        mode = hyper.get("weight_decay_mode") or ("decoupled" if style == "keras" else "coupled")
        out |= {style, np.dtype(dtype).name, mode}
        out |= {f"{style}-{key}" for key in ("dampening", "nesterov", "maximize") if hyper.get(key)}
        out |= {f"schedule-{key}" for key, value in hyper.items() if callable(value)}
        if not hyper.get("momentum"):
            out.add(f"{style}-plain")
    if config["sched"] is not None:
        out.add(config["sched"][0])
    if len(config["groups"]) > 1:
        out.add("several-groups")
    if len({np.dtype(dtype) for _, dtype, _ in config["groups"]}) > 1:
        out.add("mixed-dtypes")
    out.add(f"k={config['k']}")
    if config["late"] > config["k"]:
        out.add("first-gradient-after-k")
    return out


def test_the_configurations_cover_every_convention():
    seen = set().union(*map(_conventions, CONFIGS.values()))
    assert seen >= {
        "torch", "torch-plain", "torch-dampening", "torch-nesterov", "torch-maximize", "keras",
        "keras-nesterov", "ema", "coupled", "decoupled", "sgdw", "float32", "float64",
        "mixed-dtypes", "several-groups", "StepLR", "CosineAnnealingLR", "OneCycleLR",
        "schedule-lr", "schedule-momentum", "schedule-schedule_multiplier", "k=0", "k=1",
        "first-gradient-after-k"}
    assert any(not {"keras-nesterov"} <= _conventions(c) and "keras" in _conventions(c)
               for c in CONFIGS.values())
    schedulers = set(L.__all__) - {"LRScheduler", "OptimizerLike"}
    assert schedulers <= seen, f"no configuration with {schedulers - seen}"


def test_the_comparison_sees_one_ulp_a_changed_counter_and_a_new_key():
    """assert_same_tree is strict enough to catch what an inexact resume would change."""
    params, opt, sched, flats = build("torch-momentum-f64")
    train("torch-momentum-f64", params, opt, sched, flats, 0, 3)
    tree = _normalized(snapshot(params, opt, sched))
    assert_same_tree(_normalized(tree), tree)

    def one_ulp_more(t):
        buffer = t["optimizer"]["state"][0]["momentum_buffer"]
        buffer.flat[0] = np.nextafter(buffer.flat[0], np.inf)

    def negative_zero(t):
        t["params"][0].flat[0] = -0.0 if t["params"][0].flat[0] == 0 else t["params"][0].flat[0]
        t["optimizer"]["param_groups"][0]["dampening"] = -0.0

    for edit in (one_ulp_more, negative_zero,
                 lambda t: t["optimizer"].update(iterations=t["optimizer"]["iterations"] + 1),
                 lambda t: t["optimizer"].update(some_new_counter=0),
                 lambda t: t["scheduler"]["_last_lr"].__setitem__(
                     0, np.nextafter(t["scheduler"]["_last_lr"][0], 1.0).item()),
                 lambda t: t["params"].append(t["params"][0])):
        changed = _normalized(tree)
        edit(changed)
        with pytest.raises(AssertionError):
            assert_same_tree(changed, tree)


if __name__ == "__main__":  # the new process of the fixture `runs`: folder, then names
    for config_name in sys.argv[2:]:
        resume(config_name, Path(sys.argv[1]) / f"{config_name}.k.npz",
               Path(sys.argv[1]) / f"{config_name}.final.npz")
