"""A 2 → 64 → 3 tanh MLP on three interleaved spirals, trained with fm.SGD under three lr schedules.

Forward: h = tanh(X W₁ + b₁), z = h W₂ + b₂, loss = mean cross-entropy of softmax(z). Backprop
(by hand): dz = (softmax(z) - onehot(y)) / n, dW₂ = hᵀdz, dh = dz W₂ᵀ ⊙ (1 - h²), dW₁ = Xᵀdh.

The optimizer is Nesterov momentum in PyTorch's convention with L2 weight decay on the weights
only (a second param group with weight_decay = 0 holds the biases):

    g ← g + λ·p;   b ← μ·b + g;   p ← p - η·(g + μ·b)       (μ = 0.9, λ = 5e-4 or 0)

The lr (0.5 at first) follows, in turn: StepLR (fm.lr_scheduler: x0.1 every third of the epochs,
stepped once per epoch), exponential decay to 5% and cosine decay to 0 over the run (fm.schedules:
callables of the update count passed as lr=, evaluated by the optimizer at every mini-batch).
grad_check() compares the backprop gradients with central finite differences (used by the tests;
not run by default).
"""

from __future__ import annotations

import numpy as np

import fastmomentum as fm

CLASSES, HIDDEN, EPOCHS, BATCH, LR = 3, 64, 30, 50, 0.5
Params = list[np.ndarray]  # [W1, b1, W2, b2], updated in place by the optimizer


def spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points on CLASSES interleaved noisy spiral arms, one full turn each (radius 0.05..1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    r = rng.uniform(0.05, 1.0, n)
    angle = 2 * np.pi * (r + y / CLASSES) + rng.normal(0.0, 0.15, n)
    return np.column_stack([r * np.cos(angle), r * np.sin(angle)]), y


def init(rng: np.random.Generator) -> Params:
    """float64 weights drawn with std 1/sqrt(fan_in) (LeCun normal) and zero biases."""
    return [rng.normal(0.0, 1 / np.sqrt(2), (2, HIDDEN)), np.zeros(HIDDEN),
            rng.normal(0.0, 1 / np.sqrt(HIDDEN), (HIDDEN, CLASSES)), np.zeros(CLASSES)]


def loss_and_grads(params: Params, X: np.ndarray, y: np.ndarray) -> tuple[float, Params, float]:
    """Mean cross-entropy, its gradients (same order as params) and the accuracy."""
    W1, b1, W2, b2 = params
    h = np.tanh(X @ W1 + b1)
    z = h @ W2 + b2
    z = z - z.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -float(np.mean(np.log(prob[np.arange(len(y)), y])))
    accuracy = float(np.mean(prob.argmax(axis=1) == y))
    dz = prob  # softmax - onehot, in place
    dz[np.arange(len(y)), y] -= 1.0
    dz /= len(y)
    dh = dz @ W2.T * (1.0 - h**2)
    grads = [X.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]
    return loss, grads, accuracy


def grad_check(seed: int = 0, eps: float = 1e-5) -> float:
    """Backprop against central differences on 20 points, in float64: the largest relative
    error ‖numeric - backprop‖ / ‖backprop‖ over the four parameter arrays."""
    X, y = spirals(20, seed)
    params = init(np.random.default_rng(seed))
    _, grads, _ = loss_and_grads(params, X, y)
    worst = 0.0
    for p, g in zip(params, grads):
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            plus = loss_and_grads(params, X, y)[0]
            p[i] = old - eps
            numeric[i] = (plus - loss_and_grads(params, X, y)[0]) / (2 * eps)
            p[i] = old
        worst = max(worst, float(np.linalg.norm(numeric - g) / np.linalg.norm(g)))
    return worst


def train(schedule: str) -> list[tuple[float, float]]:
    """Train from a fixed initialisation with one lr schedule; returns per epoch
    (mean training loss, test accuracy)."""
    (X, y), (X_test, y_test) = spirals(1500, seed=1), spirals(600, seed=2)
    rng = np.random.default_rng(0)
    params = init(rng)
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
        for epoch, rows in enumerate(zip(*histories.values()), start=1):
            print(f"{epoch:5d}" + "".join(f" | {loss:16.4f} {acc:5.3f}" for loss, acc in rows))
    return {name: history[-1][1] for name, history in histories.items()}


if __name__ == "__main__":
    main()
