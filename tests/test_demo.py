"""The demo's model and training: backprop against finite differences, dtypes kept, runs
reproducible, and momentum doing what the demo shows it doing."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest

from fastmomentum.commands.demo import mlp
from fastmomentum.commands.demo.data import CLASSES, spirals
from fastmomentum.commands.demo.train import METHODS, Config, lr_schedule, train


@pytest.mark.parametrize("seed", [0, 1])
def test_backprop_matches_central_differences(seed):
    X, y = spirals(20, seed)
    params = mlp.init(2, 16, CLASSES, np.random.default_rng(seed))
    assert mlp.grad_check(X, y, params) < 1e-6


def test_grad_check_catches_a_wrong_gradient(monkeypatch):
    X, y = spirals(20, 0)
    params = mlp.init(2, 8, CLASSES, np.random.default_rng(0))
    right = mlp.loss_and_grads

    def wrong(params, X, y):
        loss, grads, accuracy = right(params, X, y)
        grads[0] = grads[0] * 1.01  # a 1% error in dW1
        return loss, grads, accuracy

    monkeypatch.setattr(mlp, "loss_and_grads", wrong)
    assert mlp.grad_check(X, y, params) > 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_keep_the_parameters_dtype(dtype):
    X, y = spirals(10, 0, dtype)
    params = mlp.init(2, 4, CLASSES, np.random.default_rng(0), dtype)
    _, grads, _ = mlp.loss_and_grads(params, X, y)
    assert [g.dtype for g in grads] == [np.dtype(dtype)] * 4  # fm.SGD never casts
    assert [g.shape for g in grads] == [p.shape for p in params]


def test_schedule_warms_up_then_decays_to_zero():
    config = Config(epochs=4, train_points=500, batch=50)
    total = 4 * config.steps_per_epoch
    lr = lr_schedule(config)
    values = [lr(t) for t in range(total + 1)]
    peak = values.index(max(values))
    assert values[0] == 0.0 and max(values) == pytest.approx(config.peak_lr)
    assert peak == round(config.warmup_fraction * total)
    assert all(a <= b for a, b in pairwise(values[:peak + 1]))
    assert all(a >= b for a, b in pairwise(values[peak:]))
    assert values[total] == 0.0


def test_runs_are_reproducible_bit_for_bit():
    config = Config(epochs=3, hidden=16)
    first, second = train("nesterov", config), train("nesterov", config)
    assert first.train_loss == second.train_loss
    assert first.test_accuracy == second.test_accuracy


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_momentum_beats_plain_sgd_as_the_demo_shows(dtype):
    config = replace(Config(), dtype=dtype)
    final = {name: train(name, config) for name in METHODS}
    for name in ("momentum", "nesterov"):
        assert final[name].test_accuracy[-1] >= 0.95, name
        assert final[name].train_loss[-1] < 0.5 * final["sgd"].train_loss[-1], name
    assert final["sgd"].test_accuracy[-1] > 0.6  # it learns, slower (chance is 1/3)
    # The lr of each epoch's last step: the last one is the cosine's final step, just above 0.
    assert all(0.0 < h.lr[-1] < 1e-5 * config.peak_lr for h in final.values())
