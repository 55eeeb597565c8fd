"""torch's schedulers that cycle the momentum (OneCycleLR, CyclicLR with cycle_momentum=True) drive
fastmomentum.torch.SGD as they drive torch.optim.SGD (skipped without torch): the same lr and
momentum in the group at every step, and the parameters of the same trajectory.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import fastmomentum.torch as fmt  # noqa: E402  (after torch: a broken module must fail, not skip)

STEPS = 40
HYPER = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
# fmt.SGD against torch.optim.SGD(foreach=False), relative to the largest |p| of each parameter
# (the parity tests' float32 bound over a trajectory). Measured: OneCycleLR 4.3e-7, CyclicLR 3.5e-7.
BOUND = 1e-6
SCHEDULERS = {
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.2, total_steps=STEPS, base_momentum=0.8, max_momentum=0.95),
    "CyclicLR": lambda opt: torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.01, max_lr=0.1, step_size_up=6, mode="triangular2", cycle_momentum=True,
        base_momentum=0.7, max_momentum=0.9),
}


def _train(make_opt, make_scheduler) -> tuple[list[tuple[float, float]], list[torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3))
    opt = make_opt(model.parameters(), **HYPER)
    scheduler = make_scheduler(opt)
    seen = []
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 2, 8, 8, generator=gen), torch.randn(8, 3, generator=gen)
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        scheduler.step()
    return seen, [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_the_scheduler_drives_fmt_as_torch(name):
    seen, params = _train(fmt.SGD, SCHEDULERS[name])
    want_seen, want = _train(lambda ps, **kw: torch.optim.SGD(ps, foreach=False, **kw),
                             SCHEDULERS[name])
    assert seen == want_seen
    assert len({m for _, m in seen}) > STEPS // 4  # the momentum did cycle: the test is real
    for p, q in zip(params, want, strict=True):
        assert float((p - q).abs().max() / q.abs().max()) <= BOUND
