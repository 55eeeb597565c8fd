"""Train the demo MLP with one optimizer: plain SGD, heavy-ball momentum or Nesterov, all under
the same learning-rate schedule, from the same initialisation and mini-batch order."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ... import schedules
from ...optim import SGD
from . import mlp
from .data import CLASSES, spirals


class Method(NamedTuple):
    """One optimizer of the comparison: its label, and ``fm.SGD``'s momentum and nesterov."""

    label: str
    momentum: float
    nesterov: bool


METHODS = {
    "sgd": Method("plain SGD", 0.0, False),
    "momentum": Method("momentum 0.9", 0.9, False),
    "nesterov": Method("Nesterov 0.9", 0.9, True),
}
"""The three optimizers compared, by name."""


@dataclass(frozen=True)
class Config:
    """What the demo trains. The defaults take well under a second per optimizer on 2 cores."""

    epochs: int = 40
    hidden: int = 128
    batch: int = 50
    train_points: int = 2000
    test_points: int = 1000
    peak_lr: float = 0.5
    warmup_fraction: float = 0.05
    weight_decay: float = 5e-4
    dtype: str = "float32"
    seed: int = 0

    @property
    def steps_per_epoch(self) -> int:
        """Mini-batches per epoch, the last one possibly smaller."""
        return -(-self.train_points // self.batch)


@dataclass
class History:
    """Per epoch: mean training loss, test loss, test accuracy, and the learning rate of the
    epoch's last step; per step, the seconds ``opt.step`` took."""

    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    def median_step_us(self) -> float:
        """The median time of one ``opt.step``, in microseconds (the first steps' warm-up and
        the machine's noise do not move a median)."""
        return statistics.median(self.step_seconds) * 1e6


def lr_schedule(config: Config) -> schedules.WarmupCosineDecay:
    """Linear warmup from 0 to ``peak_lr`` over the first ``warmup_fraction`` of the ``T`` steps,
    then cosine decay to 0 at the last step (optax's ``warmup_cosine_decay_schedule``):
    ``η(t) = peak·t/W`` for ``t < W``, else ``peak·½(1 + cos(π·(t-W)/(T-W)))``."""
    total = config.epochs * config.steps_per_epoch
    warmup = round(config.warmup_fraction * total)  # < total: the cosine has at least one step
    return schedules.warmup_cosine_decay(0.0, config.peak_lr, warmup, total,
                                         decay_steps_include_warmup=True)


def train(method: str, config: Config,
          on_epoch: Callable[[int, History], None] | None = None) -> History:
    """Train from the seed's initialisation with ``METHODS[method]``; L2 weight decay on the
    weights only (a second param group holds the biases with ``weight_decay=0``).

    ``on_epoch(epoch, history)`` is called after each epoch (the progress bar).
    """
    dtype = np.dtype(config.dtype)
    X, y = spirals(config.train_points, seed=config.seed + 1, dtype=dtype)
    X_test, y_test = spirals(config.test_points, seed=config.seed + 2, dtype=dtype)
    rng = np.random.default_rng(config.seed)
    W1, b1, W2, b2 = params = mlp.init(X.shape[1], config.hidden, CLASSES, rng, dtype)
    lr = lr_schedule(config)
    opt = SGD([{"params": [W1, W2], "weight_decay": config.weight_decay},
               {"params": [b1, b2], "weight_decay": 0.0}],
              lr=lr, momentum=METHODS[method].momentum, nesterov=METHODS[method].nesterov)
    history = History()
    for epoch in range(config.epochs):
        order, losses = rng.permutation(len(y)), []
        for start in range(0, len(y), config.batch):
            batch = order[start:start + config.batch]
            loss, (gW1, gb1, gW2, gb2), _ = mlp.loss_and_grads(params, X[batch], y[batch])
            begin = time.perf_counter()
            opt.step([gW1, gW2, gb1, gb2])  # one gradient per parameter, in group order
            history.step_seconds.append(time.perf_counter() - begin)
            losses.append(loss)
        test_loss, _, test_accuracy = mlp.loss_and_grads(params, X_test, y_test)
        history.train_loss.append(float(np.mean(losses)))
        history.test_loss.append(test_loss)
        history.test_accuracy.append(test_accuracy)
        history.lr.append(float(lr(opt.iterations - 1)))  # the lr of the step just taken
        if on_epoch is not None:
            on_epoch(epoch, history)
    return history
