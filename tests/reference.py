"""Independent plain-NumPy references for every update convention (../shared/design/MATH.md).

Each returns the new (p, buffer) without touching its inputs. Hyper-parameters are combined in
Python floats (double) and rounded once to the arrays' dtype, then every operation runs in that
dtype, one NumPy ufunc per operation: the evaluation fastmomentum promises to reproduce bit for bit.
"""

from __future__ import annotations


def _decay(p, g, t, weight_decay, mode, lr, schedule_multiplier):
    """Weight decay of the three forms: returns (p, g) after it."""
    if weight_decay == 0:
        return p, g
    if mode == "coupled":
        return p, g + t(weight_decay) * p
    if mode == "decoupled":
        return p - t(lr * weight_decay) * p, g
    assert mode == "sgdw"
    return p - t(schedule_multiplier * weight_decay) * p, g


def torch_sgd(p, g, b, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
              weight_decay_mode="coupled", schedule_multiplier=1.0, maximize=False,
              first_step=False):
    """PyTorch's SGD (torch/optim/sgd.py): buffer without lr, b <- g on the first step."""
    t = p.dtype.type
    g = -g if maximize else g
    p, g = _decay(p, g, t, weight_decay, weight_decay_mode, lr, schedule_multiplier)
    if momentum != 0:
        b = g.copy() if first_step else t(momentum) * b + t(1.0 - dampening) * g
        g = g + t(momentum) * b if nesterov else b
    return p - t(lr) * g, b


def keras_sgd(p, g, v, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
              weight_decay_mode="decoupled", schedule_multiplier=1.0, maximize=False):
    """Keras 3's SGD (keras/src/optimizers/sgd.py): velocity with lr inside, v0 = 0."""
    t = p.dtype.type
    g = -g if maximize else g
    p, g = _decay(p, g, t, weight_decay, weight_decay_mode, lr, schedule_multiplier)
    if momentum == 0:
        return p - t(lr) * g, v
    v = t(momentum) * v - t(lr) * g
    if nesterov:
        return p + (t(momentum) * v - t(lr) * g), v
    return p + v, v


def ema_sgd(p, g, b, *, lr, beta, weight_decay=0.0, weight_decay_mode="coupled",
            schedule_multiplier=1.0, maximize=False):
    """EMA momentum: b <- beta*b + (1-beta)*g from b0 = 0, p <- p - lr*b."""
    t = p.dtype.type
    g = -g if maximize else g
    p, g = _decay(p, g, t, weight_decay, weight_decay_mode, lr, schedule_multiplier)
    if beta == 0:
        return p - t(lr) * g, b
    b = t(beta) * b + t(1.0 - beta) * g
    return p - t(lr) * b, b
