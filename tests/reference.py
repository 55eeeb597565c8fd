"""Independent plain-NumPy references, transcribed from the reference frameworks' own code.

Each returns the new (p, buffer) without touching its inputs. As in those frameworks, Python-float
hyper-parameters are combined in double and cast to the arrays' dtype (torch's `alpha=` and
scalar arguments, Keras' `ops.cast`), and each tensor operation is one NumPy ufunc in that dtype,
in the framework's order of operations. fastmomentum promises to reproduce these bit for bit.
"""

from __future__ import annotations


def _torch_decay(p, g, t, *, weight_decay, mode, lr, schedule_multiplier):
    """PyTorch: coupled `grad.add(param, alpha=wd)` (torch/optim/sgd.py); decoupled as AdamW,
    `param.mul_(1 - lr * wd)` (torch/optim/adamw.py), with s for lr in the SGDW form."""
    if weight_decay == 0:
        return p, g
    if mode == "coupled":
        return p, g + t(weight_decay) * p
    scale = lr if mode == "decoupled" else schedule_multiplier
    return p * t(1 - scale * weight_decay), g


def torch_sgd(p, g, b, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
              weight_decay_mode="coupled", schedule_multiplier=1.0, maximize=False,
              first_step=False):
    """torch/optim/sgd.py, _single_tensor_sgd."""
    t = p.dtype.type
    g = -g if maximize else g
    p, g = _torch_decay(p, g, t, weight_decay=weight_decay, mode=weight_decay_mode, lr=lr,
                        schedule_multiplier=schedule_multiplier)
    if momentum != 0:
        if first_step:
            b = g.copy()  # torch.clone(grad).detach()
        else:
            # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            b = b * t(momentum) + t(1 - dampening) * g
        g = g + t(momentum) * b if nesterov else b  # grad.add(buf, alpha=momentum)
    return p + t(-lr) * g, b  # param.add_(grad, alpha=-lr)


def keras_sgd(p, g, v, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
              weight_decay_mode="decoupled", schedule_multiplier=1.0, maximize=False):
    """keras/src/optimizers/sgd.py update_step, after base_optimizer._apply_weight_decay."""
    t = p.dtype.type
    g = -g if maximize else g
    if weight_decay and weight_decay_mode == "coupled":
        g = g + t(weight_decay) * p
    elif weight_decay:
        # variable.assign(variable - variable * wd * lr)
        scale = lr if weight_decay_mode == "decoupled" else schedule_multiplier
        if scale:
            p = p - p * t(weight_decay) * t(scale)
    if momentum == 0:
        return p - g * t(lr), v  # assign_sub(variable, gradient * learning_rate)
    v = v * t(momentum) - g * t(lr)  # m.assign(m * momentum - gradient * learning_rate)
    if nesterov:
        return p + (v * t(momentum) - g * t(lr)), v
    return p + v, v


def ema_sgd(p, g, b, *, lr, beta, weight_decay=0.0, weight_decay_mode="coupled",
            schedule_multiplier=1.0, maximize=False):
    """EMA momentum from b0 = 0: b <- beta*b + (1-beta)*g, p <- p - lr*b, with PyTorch's
    weight-decay forms."""
    t = p.dtype.type
    g = -g if maximize else g
    p, g = _torch_decay(p, g, t, weight_decay=weight_decay, mode=weight_decay_mode, lr=lr,
                        schedule_multiplier=schedule_multiplier)
    if beta == 0:
        return p - t(lr) * g, b
    b = t(beta) * b + t(1 - beta) * g
    return p - t(lr) * b, b
