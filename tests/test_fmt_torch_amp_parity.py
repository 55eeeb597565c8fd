"""fastmomentum.torch.SGD under ``torch.amp.GradScaler("cpu")``, against torch.optim.SGD driven by
the same scaler (skipped without torch).

GradScaler hands fmt.SGD, as it hands torch's fused SGD, the scale and its inf verdict instead of
unscaling the gradients itself (``_step_supports_amp_scaling``); torch.optim.SGD(foreach=False) is
unscaled by the scaler. Every scale here is a power of two (init 2**16, growth 2, backoff 0.5), so
scaling a loss, back-propagating it and unscaling are exact: each optimizer under the scaler is
compared bit for bit with itself trained without one (the infinite step left out). The three
optimizers are not bitwise-equal to each other, scaler or not: torch's fused and loop kernels and
fastmomentum's round ``a + alpha*b`` differently (with or without a fused multiply-add), as the
parity tests state; they are compared within a measured bound.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import fastmomentum.torch as fmt  # noqa: E402  (after torch: a broken module must fail, not skip)

STEPS = 30
INF_STEP = 12  # a step whose scaled gradient holds an infinity: every optimizer must skip it
HYPER = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
KINDS = ("fmt", "fused", "loop")
# Between two optimizers, relative to the largest |p| of each parameter after STEPS (the parity
# tests' float32 bound over a trajectory). Measured (scale / unscale-clip): fmt-loop 2.7e-7 /
# 2.1e-7, fmt-fused 3.3e-7 / 2.1e-7, fused-loop 2.7e-7 / 2.7e-7.
BOUND = 1e-6


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3))


def _optimizer(kind: str, params) -> torch.optim.Optimizer:
    if kind == "fmt":
        return fmt.SGD(params, **HYPER)
    if kind == "fused":
        return torch.optim.SGD(params, fused=True, **HYPER)
    return torch.optim.SGD(params, foreach=False, **HYPER)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 2, 8, 8, generator=gen), torch.randn(8, 3, generator=gen)


def _snapshot(model, opt) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [opt.state[p].get("momentum_buffer") for p in model.parameters()]
    return params, [None if b is None else b.clone() for b in buffers]


def _train(kind: str, max_norm: float | None, scaled: bool) -> dict:
    """STEPS steps, under a GradScaler (``scaled``) or not (the infinite step then left out);
    ``max_norm``: clip_grad_norm_ after scaler.unscale_. The record of what each step did."""
    model = _model()
    opt = _optimizer(kind, model.parameters())
    scaler = torch.amp.GradScaler("cpu", growth_interval=5, enabled=scaled)
    scales, skipped, norms = [], [], []
    before = after = None
    for step in range(STEPS):
        x, y = _batch(step)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step == INF_STEP:
            if not scaled:
                continue
            next(model.parameters()).grad.view(-1)[5] = math.inf
            before = _snapshot(model, opt)
        if max_norm is not None:
            scaler.unscale_(opt)
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        scales.append((scale, scaler.get_scale()))
        if step == INF_STEP:
            after = _snapshot(model, opt)
        if kind == "fmt":
            skipped.append(opt.last_result.skipped)
    return {"params": [p.detach() for p in model.parameters()], "opt": opt, "scales": scales,
            "skipped": skipped, "norms": norms, "before": before, "after": after}


@pytest.fixture(scope="module", params=[None, 0.5], ids=["scale", "unscale-clip"])
def runs(request) -> dict:
    runs = {(kind, scaled): _train(kind, request.param, scaled)
            for kind in KINDS for scaled in (True, False)}
    runs["max_norm"] = request.param
    return runs


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _buffers(opt) -> list[torch.Tensor]:
    return [opt.state[p]["momentum_buffer"] for p in opt.param_groups[0]["params"]]


@pytest.mark.parametrize("kind", KINDS)
def test_scaling_is_exact(runs, kind):
    """Power-of-two scales: under the scaler, each optimizer takes the steps it takes without one,
    to the bit (fmt.SGD divides by the scale in its kernel, the loop's gradients are unscaled by
    the scaler)."""
    scaled, plain = runs[(kind, True)], runs[(kind, False)]
    for mine, want in zip(scaled["params"], plain["params"], strict=True):
        assert torch.equal(mine, want), _relative(mine, want)
    for mine, want in zip(_buffers(scaled["opt"]), _buffers(plain["opt"]), strict=True):
        assert torch.equal(mine, want), _relative(mine, want)


@pytest.mark.parametrize("other", ["loop", "fused"])
def test_fmt_matches_torch_under_the_scaler(runs, other):
    mine, want = runs[("fmt", True)], runs[(other, True)]
    for p, q in zip(mine["params"], want["params"], strict=True):
        assert _relative(p, q) <= BOUND
    for b, c in zip(_buffers(mine["opt"]), _buffers(want["opt"]), strict=True):
        assert _relative(b, c) <= BOUND


def test_the_infinite_step_changes_nothing_and_halves_the_scale(runs):
    for kind in KINDS:
        run = runs[(kind, True)]
        (params0, bufs0), (params1, bufs1) = run["before"], run["after"]
        for p0, p1 in zip(params0, params1, strict=True):
            assert torch.equal(p0, p1), kind
        assert all(b is not None for b in bufs0), kind  # the buffers exist: their check is real
        for b0, b1 in zip(bufs0, bufs1, strict=True):
            assert torch.equal(b0, b1), kind
        old, new = run["scales"][INF_STEP]
        assert new == old / 2, kind
    # The three scalers took the same decisions at every step (growth every 5 good steps too).
    scales = [runs[(kind, True)]["scales"] for kind in KINDS]
    assert scales[0] == scales[1] == scales[2]
    assert any(new > old for old, new in scales[0])  # the scale grew: a real test


def test_fmt_records_the_skipped_step(runs):
    run = runs[("fmt", True)]
    assert run["skipped"] == [step == INF_STEP for step in range(STEPS)]
    assert run["opt"].iterations == STEPS - 1


def test_fmt_counts_the_skipped_step(runs):
    assert runs[("fmt", True)]["opt"].skipped_steps == 1


def test_clipping_took_effect(runs):
    norms = runs[("fmt", True)]["norms"]
    if runs["max_norm"] is None:
        assert norms == []
        return
    assert not math.isfinite(norms[INF_STEP])
    assert any(n > 0.5 for n in norms if math.isfinite(n))  # some steps were clipped
