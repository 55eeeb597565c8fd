"""A 2 → 64 → 3 tanh MLP on three interleaved spirals, trained with fm.SGD under three lr schedules.

The network, its hand-written backprop and the data are the demo's
(``fastmomentum.commands.demo.mlp`` and ``.data``; ``python -m fastmomentum demo`` compares plain
SGD, momentum and Nesterov under one schedule); this script compares schedules under one
optimizer.

The optimizer is Nesterov momentum in PyTorch's convention with L2 weight decay on the weights
only (a second param group with weight_decay = 0 holds the biases):

    g ← g + λ·p;   b ← μ·b + g;   p ← p - η·(g + μ·b)       (μ = 0.9, λ = 5e-4 or 0)

The lr (0.5 at first) follows, in turn: StepLR (fm.lr_scheduler: x0.1 every third of the epochs,
stepped once per epoch), exponential decay to 5% and cosine decay to 0 over the run (fm.schedules:
callables of the update count passed as lr=, evaluated by the optimizer at every mini-batch).
"""

from __future__ import annotations

import numpy as np

import fastmomentum as fm
from fastmomentum.commands.demo.data import CLASSES, spirals
from fastmomentum.commands.demo.mlp import init, loss_and_grads

HIDDEN, EPOCHS, BATCH, LR = 64, 30, 50, 0.5


def train(schedule: str) -> list[tuple[float, float]]:
    """Train from a fixed initialisation with one lr schedule; returns per epoch
    (mean training loss, test accuracy)."""
    (X, y), (X_test, y_test) = spirals(1500, seed=1), spirals(600, seed=2)
    rng = np.random.default_rng(0)
    params = init(2, HIDDEN, CLASSES, rng)
    steps = EPOCHS * (len(y) // BATCH)
    lr = {"step": LR, "exponential": fm.schedules.exponential_decay(LR, steps, 0.05),
          "cosine": fm.schedules.cosine_decay(LR, steps)}[schedule]
    opt = fm.SGD([{"params": [params[0], params[2]], "weight_decay": 5e-4},   # weights
                  {"params": [params[1], params[3]], "weight_decay": 0.0}],   # biases
                 lr=lr, momentum=0.9, nesterov=True)
    scheduler = fm.lr_scheduler.StepLR(opt, EPOCHS // 3, 0.1) if schedule == "step" else None
    history = []
    for _ in range(EPOCHS):
        order, losses = rng.permutation(len(y)), []
        for start in range(0, len(y), BATCH):
            batch = order[start:start + BATCH]
            loss, (gW1, gb1, gW2, gb2), _ = loss_and_grads(params, X[batch], y[batch])
            opt.step([gW1, gW2, gb1, gb2])  # gradients in parameter order over the groups
            losses.append(loss)
        if scheduler is not None:
            scheduler.step()  # once per epoch, after the optimizer's steps
        history.append((float(np.mean(losses)), loss_and_grads(params, X_test, y_test)[2]))
    return history


def main(quiet: bool = False) -> dict[str, float]:
    """Returns {schedule: final test accuracy} for "step", "exponential" and "cosine"."""
    histories = {name: train(name) for name in ("step", "exponential", "cosine")}
    if not quiet:
        print("epoch" + "".join(f" | {name:>11} loss   acc" for name in histories))
        for epoch, rows in enumerate(zip(*histories.values(), strict=True), start=1):
            print(f"{epoch:5d}" + "".join(f" | {loss:16.4f} {acc:5.3f}" for loss, acc in rows))
    return {name: history[-1][1] for name, history in histories.items()}


if __name__ == "__main__":
    main()
