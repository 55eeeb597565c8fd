"""A NumPy MLP with one tanh hidden layer and a softmax cross-entropy loss, backpropagated by hand.

Forward: ``h = tanh(X·W₁ + b₁)``, ``z = h·W₂ + b₂``, ``loss = mean(-log softmax(z)[y])``.
Backward: ``dz = (softmax(z) - onehot(y)) / n``, ``dW₂ = hᵀ·dz``, ``db₂ = Σ dz``,
``dh = dz·W₂ᵀ ⊙ (1 - h²)``, ``dW₁ = Xᵀ·dh``, ``db₁ = Σ dh``.
"""

from __future__ import annotations

import numpy as np

Params = list[np.ndarray]
"""``[W₁, b₁, W₂, b₂]``: the arrays the optimizer updates in place."""


def init(inputs: int, hidden: int, classes: int, rng: np.random.Generator,
         dtype: np.dtype | type = np.float64) -> Params:
    """Weights drawn with std ``1/√fan_in`` (LeCun normal), zero biases."""
    return [rng.normal(0.0, 1 / np.sqrt(inputs), (inputs, hidden)).astype(dtype),
            np.zeros(hidden, dtype),
            rng.normal(0.0, 1 / np.sqrt(hidden), (hidden, classes)).astype(dtype),
            np.zeros(classes, dtype)]


def loss_and_grads(params: Params, X: np.ndarray, y: np.ndarray, out: Params | None = None
                   ) -> tuple[float, Params, float]:
    """Mean cross-entropy, its gradients (in the order of ``params``, same dtypes) and the
    accuracy of ``argmax z``. ``out``: arrays shaped like ``params`` to compute the gradients
    into (e.g. a distributed optimizer's ``grad_buffers``), returned; default: new arrays."""
    W1, b1, W2, b2 = params
    h = np.tanh(X @ W1 + b1)
    z = h @ W2 + b2
    z -= z.max(axis=1, keepdims=True)  # softmax is shift-invariant; this keeps exp finite
    prob = np.exp(z)
    prob /= prob.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = -float(np.mean(np.log(prob[rows, y])))
    accuracy = float(np.mean(prob.argmax(axis=1) == y))
    dz = prob  # becomes (softmax - onehot) / n in place
    dz[rows, y] -= 1
    dz /= len(y)
    dh = dz @ W2.T * (1 - h * h)
    if out is None:
        return loss, [X.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)], accuracy
    dW1, db1, dW2, db2 = out
    np.matmul(X.T, dh, out=dW1)
    dh.sum(axis=0, out=db1)
    np.matmul(h.T, dz, out=dW2)
    dz.sum(axis=0, out=db2)
    return loss, out, accuracy


def grad_check(X: np.ndarray, y: np.ndarray, params: Params, eps: float = 1e-5) -> float:
    """Backprop against central differences ``(L(p+ε) - L(p-ε)) / 2ε``, element by element, in
    float64: the largest relative error ``‖numeric - backprop‖ / ‖backprop‖`` over the arrays."""
    params = [p.astype(np.float64) for p in params]
    X = X.astype(np.float64)
    _, grads, _ = loss_and_grads(params, X, y)
    worst = 0.0
    for p, g in zip(params, grads, strict=True):
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
