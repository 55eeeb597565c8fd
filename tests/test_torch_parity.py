"""fastmomentum.functional.sgd_ against real torch.optim.SGD trajectories (skipped without torch).

PyTorch evaluates `a + alpha*b` with vectorised fused multiply-adds in places, so the two can differ
in the last bit per step; the bounds below are stated per dtype, relative to the largest |p|.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm

from torch_options import TORCH_OPTIONS, options_id

torch = pytest.importorskip("torch")

STEPS = 120
TOLERANCE = {np.float64: 2e-15, np.float32: 5e-7}  # measured: 4.5e-16, 2.4e-7



@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("hyper", TORCH_OPTIONS, ids=[options_id(c) for c in TORCH_OPTIONS])
def test_trajectory_matches_torch_optim_sgd(hyper, dtype):
    rng = np.random.default_rng(42)
    sizes = [1, 33, 1000]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    bufs = [np.zeros_like(p) for p in params]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt = torch.optim.SGD(tparams, lr=0.05, foreach=False, **hyper)
    for step in range(STEPS):
        lr = 0.05 * (0.5 if step >= STEPS // 2 else 1.0)  # an lr change mid-way
        for group in opt.param_groups:
            group["lr"] = lr
        grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
        for tp, g in zip(tparams, grads, strict=True):
            tp.grad = torch.from_numpy(g.copy())
        opt.step()
        fm.functional.sgd_(params, grads, bufs, lr=lr, first_step=step == 0, **hyper)
    for p, tp in zip(params, tparams, strict=True):
        want = tp.detach().numpy()
        deviation = np.max(np.abs(p - want)) / np.max(np.abs(want))
        assert deviation <= TOLERANCE[dtype], deviation


def test_numpy_views_of_torch_tensors_are_updated_in_place():
    weight = torch.ones(1000, dtype=torch.float32)
    grad = torch.full((1000,), 0.5, dtype=torch.float32)
    buf = torch.zeros(1000, dtype=torch.float32)
    fm.functional.sgd_([weight.numpy()], [grad.numpy()], [buf.numpy()], lr=0.1, momentum=0.9,
                       first_step=True)
    assert torch.equal(buf, grad)
    assert torch.allclose(weight, torch.full((1000,), 0.95))
