"""The low-precision momentum-SGD peers of ``--state-dtype`` (issue 19), where installed.

PyTorch-world optimizers that keep SGD state in fewer bytes than float32, on the CPU:
``torch.optim.SGD`` on bfloat16 (its for-loop path: ``fused=True`` on bf16 is wrong in torch
<= 2.13, pytorch/pytorch#191763, and is not offered), optimi's ``SGD`` on bfloat16 with and
without Kahan summation, and bitsandbytes' ``SGD8bit`` (blockwise 8-bit momentum, its CPU
backend) with float32 and bfloat16 parameters; ``torch.optim.SGD(fused=True)`` float32 as their
20-byte baseline. ``bench/lowp_peers.py`` times the same builders with their trajectories.

Each is checked before it is timed: two steps from fresh state against a float64 reference of
torch's convention (``b1 = g; b2 = m*b1 + g; p -= lr*b``), within its storage's rounding.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .problems import Variant
from .timing import Step

F32 = NDArray[np.float32]
#: bfloat16's unit roundoff is 2**-9; one ulp relative is at most 2**-7.
BF16_EPS = 2.0**-8


class Unavailable(Exception):
    """A peer that cannot run here; the message says why."""


@dataclass(frozen=True)
class Peer:
    """One low-precision peer: its distribution, params' dtype, state and bytes per element
    (the least traffic of one step: p and g read, p written, the state read and written)."""

    name: str
    package: str
    dtype: str
    state: str
    bytes_per_element: float
    description: str


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("torch-sgd-f32", "torch", "float32", "f32 momentum", 20,
         "torch.optim.SGD(fused=True), float32"),
    Peer("torch-sgd-bf16", "torch", "bfloat16", "bf16 momentum", 10,
         "torch.optim.SGD() on bf16 (CPU default: for-loop), round-to-nearest"),
    Peer("optimi-sgd-bf16", "torch-optimi", "bfloat16", "bf16 momentum", 10,
         "optimi.SGD(kahan_sum=False, foreach=False) on bf16"),
    Peer("optimi-sgd-kahan-bf16", "torch-optimi", "bfloat16", "bf16 momentum + bf16 Kahan", 14,
         "optimi.SGD(kahan_sum=True, foreach=False) on bf16"),
    Peer("bnb-sgd8bit-f32", "bitsandbytes", "float32", "8-bit blockwise momentum", 14,
         "bitsandbytes.optim.SGD8bit (CPU backend), float32 p and g"),
    Peer("bnb-sgd8bit-bf16", "bitsandbytes", "bfloat16", "8-bit blockwise momentum", 8,
         "bitsandbytes.optim.SGD8bit (CPU backend), bf16 p and g"),
)}


def _import(module: str, dist: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{dist} is not installed ({exc})") from None


@dataclass
class Instance:
    """A peer's optimizer on its own tensors: ``step()``, ``read()`` (p as float64),
    ``set_grad(g)`` (copies a float32 array into the gradient)."""

    step: Step
    read: Callable[[], NDArray[np.float64]]
    set_grad: Callable[[F32], None]
    param: Any
    optimizer: Any


def _optimizer(name: str, torch: Any, params: list[Any], hyper: Variant) -> Any:
    kw = {"lr": hyper.lr, "momentum": hyper.momentum, "weight_decay": hyper.weight_decay}
    if name.startswith("torch-"):
        return torch.optim.SGD(params, nesterov=hyper.nesterov,
                               fused=True if name == "torch-sgd-f32" else None, **kw)
    if name.startswith("optimi-"):
        if hyper.nesterov:
            raise Unavailable("optimi.SGD has no Nesterov momentum")
        optimi = _import("optimi", "torch-optimi")
        return optimi.SGD(params, kahan_sum=name == "optimi-sgd-kahan-bf16", foreach=False,
                          triton=False, **kw)
    bnb = _import("bitsandbytes", "bitsandbytes")
    return bnb.optim.SGD8bit(params, nesterov=hyper.nesterov, **kw)


def instance(name: str, p0: F32, g0: F32, hyper: Variant) -> Instance:
    """``name``'s optimizer on copies of ``p0`` and ``g0`` in its dtype."""
    torch = _import("torch", "torch")
    dtype = getattr(torch, PEERS[name].dtype)
    p = torch.nn.Parameter(torch.from_numpy(p0).to(dtype, copy=True))  # never p0's memory
    p.grad = torch.from_numpy(g0).to(dtype, copy=True)
    opt = _optimizer(name, torch, [p], hyper)

    def set_grad(g: F32) -> None:
        p.grad.copy_(torch.from_numpy(g))  # in place: optimi's Kahan path writes into the grad

    def read() -> NDArray[np.float64]:
        return np.asarray(p.detach().double().numpy())

    return Instance(opt.step, read, set_grad, p, opt)


def _round_bf16(x: F32) -> F32:
    """float32 -> nearest bfloat16 (ties to even), as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) \
        & np.uint32(0xFFFF0000)
    out: F32 = rounded.view(np.float32)
    return out


def check(name: str, n: int = 10_000) -> str | None:
    """None if ``name`` takes two correct steps (within its storage's rounding), else why not."""
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(n).astype(np.float32)
    g0 = rng.standard_normal(n).astype(np.float32)
    lr, momentum = 0.25, 0.9  # large, so that a wrong update is not hidden by bf16 rounding
    bf16 = PEERS[name].dtype == "bfloat16"
    if bf16:
        p0, g0 = _round_bf16(p0), _round_bf16(g0)
    try:
        inst = instance(name, p0, g0, Variant(lr=lr, momentum=momentum, weight_decay=0.0))
        inst.step()
        inst.set_grad(g0)
        inst.step()
        got = inst.read()
    except Unavailable as exc:
        return str(exc)
    except Exception as exc:  # a peer that raises on this machine: say how
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    g = g0.astype(np.float64)
    expect = p0.astype(np.float64) - lr * g - lr * (momentum * g + g)
    tol = (4 * BF16_EPS if bf16 else 1e-6) * float(np.abs(expect).max())
    if name in ("optimi-sgd-bf16", "torch-sgd-bf16"):
        tol += lr * 2 * BF16_EPS * float(np.abs(g).max()) * 2  # momentum rounded to bf16
    if name.startswith("bnb-"):
        tol += lr * momentum * 0.02 * float(np.abs(g).max())  # 8-bit momentum
    err = float(np.abs(got - expect).max())
    if not err <= tol:
        untouched = int(np.count_nonzero(got == p0))
        return (f"wrong result after 2 steps on {n} elements: max |p - reference| = {err:.3g} "
                f"> {tol:.3g}; {untouched} elements never updated")
    return None


def build(name: str, p: F32, g: F32, hyper: Variant) -> Step:
    """The timed step of ``name`` on its own tensors made from ``p`` and ``g``, warmed up (its
    first step creates the momentum state)."""
    inst = instance(name, p, g, hyper)
    inst.step()
    return inst.step
