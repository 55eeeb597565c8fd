"""The velocity form of momentum (Keras, Sutskever et al. 2013) against PyTorch's buffer form.

    torch (fm.SGD style="torch"):   b ← μ·b + g;     p ← p - η·b      (b holds no lr)
    keras (fm.SGD style="keras"):   v ← μ·v - η·g;   p ← p + v        (v holds the lr)

At a constant learning rate the two are the same trajectory with v = -η·b (multiply the torch
recursion by -η). Part 1 checks that on a random least-squares problem: parameters agree to
rounding, and fm.convert_state_dict turns the torch state (b) into the keras one (v = -η·b).

They split as soon as η changes, because b stores gradients while v stores lr-scaled steps.
Part 2, with g = 1, μ = 0.9 and η = 0.1 then 0.01 (p₀ = 0):

    torch: b₁ = 1,   p₁ = -0.1;  b₂ = 1.9,   p₂ = -0.1 - 0.01·1.9 = -0.119
    keras: v₁ = -0.1, p₁ = -0.1;  v₂ = -0.09 - 0.01 = -0.1,  p₂ = -0.200
"""

from __future__ import annotations

import numpy as np

import fastmomentum as fm

LR, MOMENTUM, STEPS = 0.02, 0.9, 100


def constant_lr(seed: int = 0) -> tuple[float, float]:
    """Both styles on ½·‖A p - y‖²; returns (max |p_torch - p_keras|, max |v - (-η·b)|)."""
    rng = np.random.default_rng(seed)
    A, y = rng.normal(size=(200, 50)), rng.normal(size=200)
    p_torch, p_keras = np.zeros(50), np.zeros(50)
    opt_torch = fm.SGD([p_torch], lr=LR, momentum=MOMENTUM, style="torch")
    opt_keras = fm.SGD([p_keras], lr=LR, momentum=MOMENTUM, style="keras")
    for _ in range(STEPS):
        opt_torch.step([A.T @ (A @ p_torch - y) / len(y)])
        opt_keras.step([A.T @ (A @ p_keras - y) / len(y)])
    as_keras = fm.convert_state_dict(opt_torch.state_dict(), "keras")  # v = -η·b
    velocity = opt_keras.state_dict()["state"][0]["velocity"]
    return (float(np.max(np.abs(p_torch - p_keras))),
            float(np.max(np.abs(as_keras["state"][0]["velocity"] - velocity))))


def changing_lr(style: str) -> list[float]:
    """p after each of two steps with g = 1, μ = 0.9 and η = 0.1 then 0.01."""
    p = np.zeros(1)
    opt = fm.SGD([p], lr=0.1, momentum=MOMENTUM, style=style)
    trajectory = []
    for lr in (0.1, 0.01):
        opt.param_groups[0]["lr"] = lr  # what a scheduler does between steps
        opt.step([np.ones(1)])
        trajectory.append(float(p[0]))
    return trajectory


def main(quiet: bool = False) -> dict[str, float]:
    """Returns the constant-lr differences and p₂ of each style after the lr change."""
    p_diff, v_diff = constant_lr()
    torch_p, keras_p = changing_lr("torch"), changing_lr("keras")
    if not quiet:
        print(f"1. constant lr = {LR}, momentum = {MOMENTUM}, {STEPS} steps:")
        print(f"   max |p_torch - p_keras|           = {p_diff:.2e}")
        print(f"   max |convert(torch state) - v|    = {v_diff:.2e}")
        print("2. g = 1, momentum = 0.9, lr = 0.1 then 0.01:")
        print(f"   {'style':<6} {'p1':>8} {'p2':>8}")
        for style, (p1, p2) in (("torch", torch_p), ("keras", keras_p)):
            print(f"   {style:<6} {p1:8.3f} {p2:8.3f}")
    return {"constant_lr_param_diff": p_diff, "constant_lr_velocity_diff": v_diff,
            "torch_p2": torch_p[1], "keras_p2": keras_p[1]}


if __name__ == "__main__":
    main()
