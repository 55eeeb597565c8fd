"""Low-precision momentum-SGD peers on the CPU, for issue 19 (low-precision optimizer state).

Times, side by side in one process, the PyTorch-world optimizers that keep SGD state in fewer
bytes than float32, and runs them on one deterministic problem so that their trajectories can be
compared with fastmomentum's bf16 (Kahan / stochastic rounding) and 8-bit kernels:

- ``torch-sgd-f32``: ``torch.optim.SGD(fused=True)``, float32 p, g, momentum (the baseline peer).
- ``torch-sgd-bf16``: ``torch.optim.SGD`` (CPU default, for-loop) on bfloat16 p, g, momentum:
  plain round-to-nearest, no compensation. ``torch-sgd-fused-bf16`` is the same with fused=True,
  which torch <= 2.13 gets wrong on the CPU (pytorch/pytorch#191763: the full SIMD blocks of fp16 /
  bf16 parameters are never updated; only the remainder is): its check fails, so it is not timed.
- ``optimi-sgd-kahan-bf16``: ``optimi.SGD(momentum, kahan_sum=True)``, bf16 p, g, momentum and a
  bf16 Kahan compensation buffer (optimi's CPU path: its for-loop of ATen ops; Triton is GPU-only).
- ``optimi-sgd-bf16``: the same with ``kahan_sum=False``.
- ``bnb-sgd8bit-f32`` / ``bnb-sgd8bit-bf16``: ``bitsandbytes.optim.SGD8bit`` (= ``SGD(...,
  optim_bits=8)``), blockwise 8-bit momentum (256-element blocks, dynamic map) with float32 /
  bfloat16 p and g. bitsandbytes >= 0.49 has a CPU backend for it (dequantize to float32, torch ops,
  quantize again); older releases need CUDA.
- ``fastmomentum-f32`` and ``rmw-bound-f32``: ``fastmomentum.functional.sgd_`` on float32 NumPy
  arrays and ``_core.bandwidth_probe`` (the 5-array read-modify-write floor), where fastmomentum is
  installed in the same environment, so that ratios come from the same run.
- ``torchao-anyprecision``: listed to say why it does not run (torchao has no SGD).

Every peer is checked against a float64 reference step before it is timed. Importable without
torch: the torch peers then report 'torch not installed'. Run as a script for the table:

    OMP_NUM_THREADS=2 python bench/lowp_peers.py --sizes 1e7 3e7 --threads 1 2 \
        --trajectory-json traj.json
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.metadata
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LR = 0.01
MOMENTUM = 0.9
WARMUP_STEPS = 3
MIN_SAMPLE_S = 0.02
SAMPLES = 7
RMW_SCALE = 1e-7
BF16_EPS = 2.0**-8  # bfloat16's unit roundoff is 2**-9; one ulp relative is at most 2**-7


@dataclass(frozen=True)
class Peer:
    name: str
    package: str  # the distribution whose version is reported ('' for none)
    dtype: str  # of params and grads
    state: str  # what the optimizer keeps per element
    bytes_per_element: int  # the least memory traffic of one step: p, g read, p written, state r/w
    note: str = ""


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("torch-sgd-f32", "torch", "float32", "f32 momentum", 20,
             "torch.optim.SGD(fused=True)"),
        Peer("torch-sgd-bf16", "torch", "bfloat16", "bf16 momentum", 10,
             "torch.optim.SGD() on bf16 (CPU default: for-loop), round-to-nearest"),
        Peer("torch-sgd-fused-bf16", "torch", "bfloat16", "bf16 momentum", 10,
             "torch.optim.SGD(fused=True) on bf16"),
        Peer("optimi-sgd-kahan-bf16", "torch-optimi", "bfloat16", "bf16 momentum + bf16 Kahan", 14,
             "optimi.SGD(kahan_sum=True, foreach=False), 7 ATen passes"),
        Peer("optimi-sgd-bf16", "torch-optimi", "bfloat16", "bf16 momentum", 10,
             "optimi.SGD(kahan_sum=False, foreach=False)"),
        Peer("bnb-sgd8bit-f32", "bitsandbytes", "float32", "8-bit blockwise momentum", 14,
             "bitsandbytes.optim.SGD8bit (CPU backend)"),
        Peer("bnb-sgd8bit-bf16", "bitsandbytes", "bfloat16", "8-bit blockwise momentum", 8,
             "bitsandbytes.optim.SGD8bit (CPU backend)"),
        Peer("fastmomentum-f32", "fastmomentum", "float32", "f32 momentum", 20,
             "fastmomentum.functional.sgd_ (NumPy)"),
        Peer("rmw-bound-f32", "fastmomentum", "float32", "(floor: p += s*g; b += s*g)", 20,
             "_core.bandwidth_probe"),
        Peer("torchao-anyprecision", "torchao", "bfloat16", "-", 0,
             "torchao.optim: Adam/AdamW only"),
    )
}


KNOWN_BUGS = {
    "torch-sgd-fused-bf16": " (pytorch/pytorch#191763: CPU fused SGD skips the vectorized blocks "
                            "of fp16/bf16 parameters; fixed after 2.13)",
}


class Unavailable(Exception):
    """A peer that cannot run here; the message says why."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import(module: str, dist: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{dist} not installed ({exc})") from None


def _torch() -> Any:
    return _import("torch", "torch")


# ------------------------------------------------------------------------------------ builders
# A builder makes the peer's state for given float32 p and g (NumPy) and returns (step, read):
# step() does one optimizer step with the current gradients; read() returns p as float64 NumPy;
# set_grad(g) (a float32 NumPy array) replaces the gradients.


@dataclass
class Instance:
    step: Callable[[], None]
    read: Callable[[], np.ndarray]
    set_grad: Callable[[np.ndarray], None]
    extra: dict[str, Any] = field(default_factory=dict)


def _torch_instance(p0: np.ndarray, g0: np.ndarray, dtype_name: str,
                    make: Callable[[list[Any]], Any]) -> Instance:
    torch = _torch()
    dtype = getattr(torch, dtype_name)
    p = torch.nn.Parameter(torch.from_numpy(p0).to(dtype, copy=True))  # never p0's memory
    p.grad = torch.from_numpy(g0).to(dtype, copy=True)
    opt = make([p])

    def set_grad(g: np.ndarray) -> None:
        p.grad.copy_(torch.from_numpy(g))  # in place: optimi's Kahan path writes into the grad

    def read_compensated() -> np.ndarray:  # p + Kahan compensation, where the peer keeps one
        comp = opt.state[p].get("kahan_comp") if p in opt.state else None
        value = p.detach().double()
        if comp is not None and comp.numel() == p.numel():
            value = value + comp.double()
        return np.asarray(value.numpy())

    return Instance(opt.step, lambda: p.detach().double().numpy(), set_grad,
                    {"param": p, "optimizer": opt, "read_compensated": read_compensated})


def _build_torch_sgd(dtype_name: str, fused: bool | None
                     ) -> Callable[[np.ndarray, np.ndarray, float], Instance]:
    def build(p0: np.ndarray, g0: np.ndarray, lr: float) -> Instance:
        torch = _torch()
        return _torch_instance(p0, g0, dtype_name, lambda ps: torch.optim.SGD(
            ps, lr=lr, momentum=MOMENTUM, fused=fused))
    return build


def _build_optimi(kahan: bool) -> Callable[[np.ndarray, np.ndarray, float], Instance]:
    def build(p0: np.ndarray, g0: np.ndarray, lr: float) -> Instance:
        _torch()
        optimi = _import("optimi", "torch-optimi")
        return _torch_instance(p0, g0, "bfloat16", lambda ps: optimi.SGD(
            ps, lr=lr, momentum=MOMENTUM, kahan_sum=kahan, foreach=False, triton=False))
    return build


def _build_bnb(dtype_name: str) -> Callable[[np.ndarray, np.ndarray, float], Instance]:
    def build(p0: np.ndarray, g0: np.ndarray, lr: float) -> Instance:
        _torch()
        bnb = _import("bitsandbytes", "bitsandbytes")
        return _torch_instance(p0, g0, dtype_name, lambda ps: bnb.optim.SGD8bit(
            ps, lr=lr, momentum=MOMENTUM))
    return build


def _fastmomentum() -> Any:
    return _import("fastmomentum.functional", "fastmomentum")


def _build_fastmomentum(p0: np.ndarray, g0: np.ndarray, lr: float) -> Instance:
    functional = _fastmomentum()
    p, g, b = p0.copy(), g0.copy(), np.zeros_like(p0)

    def step() -> None:
        functional.sgd_([p], [g], [b], lr=lr, momentum=MOMENTUM)

    def set_grad(new: np.ndarray) -> None:
        g[...] = new

    return Instance(step, lambda: p.astype(np.float64), set_grad)


def _build_rmw(p0: np.ndarray, g0: np.ndarray, lr: float) -> Instance:
    _fastmomentum()
    from fastmomentum import _core

    p, g, b = p0.copy(), g0.copy(), np.zeros_like(p0)

    def step() -> None:
        _core.bandwidth_probe([p], [g], [b], RMW_SCALE)

    def set_grad(new: np.ndarray) -> None:
        g[...] = new

    return Instance(step, lambda: p.astype(np.float64), set_grad)


BUILDERS: dict[str, Callable[[np.ndarray, np.ndarray, float], Instance]] = {
    "torch-sgd-f32": _build_torch_sgd("float32", True),
    "torch-sgd-bf16": _build_torch_sgd("bfloat16", None),
    "torch-sgd-fused-bf16": _build_torch_sgd("bfloat16", True),
    "optimi-sgd-kahan-bf16": _build_optimi(True),
    "optimi-sgd-bf16": _build_optimi(False),
    "bnb-sgd8bit-f32": _build_bnb("float32"),
    "bnb-sgd8bit-bf16": _build_bnb("bfloat16"),
    "fastmomentum-f32": _build_fastmomentum,
    "rmw-bound-f32": _build_rmw,
}


# ------------------------------------------------------------------------------- verification

def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) \
        & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def verify(name: str, n: int = 10_000) -> None:
    """Two steps from fresh state against a float64 reference of torch's convention
    (b1 = g; b2 = mu*b1 + g; p -= lr*b); raises Unavailable (with the error) on a mismatch."""
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(n).astype(np.float32)
    g0 = rng.standard_normal(n).astype(np.float32)
    lr = 0.25  # large, so that a wrong update is not hidden by bf16 rounding
    peer = PEERS[name]
    if peer.dtype == "bfloat16":
        p0, g0 = _round_bf16(p0), _round_bf16(g0)
    inst = BUILDERS[name](p0, g0, lr)
    if name == "rmw-bound-f32":  # not an optimizer: p += s*g twice
        inst.step()
        inst.step()
        expect = p0.astype(np.float64) + 2 * RMW_SCALE * g0.astype(np.float64)
        tol = 1e-6 * float(np.abs(p0).max())
    else:
        inst.step()
        inst.set_grad(g0)
        inst.step()
        g = g0.astype(np.float64)
        expect = p0.astype(np.float64) - lr * g - lr * (MOMENTUM * g + g)
        scale = float(np.abs(expect).max())
        tol = (4 * BF16_EPS if peer.dtype == "bfloat16" else 1e-6) * scale
        if name in ("optimi-sgd-bf16", "torch-sgd-bf16", "torch-sgd-fused-bf16"):
            tol += lr * 2 * BF16_EPS * float(np.abs(g).max()) * 2  # momentum rounded to bf16
        if name.startswith("bnb-"):
            tol += lr * MOMENTUM * 0.02 * float(np.abs(g).max())  # 8-bit momentum
    got = inst.read()
    err = float(np.abs(got - expect).max())
    if not err <= tol:
        untouched = int(np.count_nonzero(got == p0))
        raise Unavailable(f"wrong result after 2 steps on {n} elements: max |p - reference| = "
                          f"{err:.3g} > {tol:.3g}; {untouched} elements never updated"
                          + KNOWN_BUGS.get(name, ""))


def available_peers() -> dict[str, str | None]:
    """Every peer's name -> None where it runs (and passes its check), else the reason."""
    out: dict[str, str | None] = {}
    for name in PEERS:
        if name == "torchao-anyprecision":
            version = _version("torchao")
            out[name] = (
                "torchao not installed; torchdistx (AnyPrecisionAdamW) has no release on PyPI"
                if version is None else
                f"torchao {version}: torchao.optim has no SGD / momentum optimizer (Adam, AdamW "
                "4-bit/8-bit/fp8, _AdamW(bf16_stochastic_round=...) only)")
            continue
        try:
            verify(name)
        except Unavailable as exc:
            out[name] = str(exc)
        except Exception as exc:  # a peer that raises on this machine: say how
            out[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        else:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------ threads

def set_threads(threads: int) -> dict[str, int]:
    """Sets every library's thread count and returns what each reports (checked by callers)."""
    seen: dict[str, int] = {}
    torch: Any = None
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        pass
    if torch is not None:
        torch.set_num_threads(threads)
        seen["torch"] = torch.get_num_threads()
    try:  # the OpenMP runtime that bitsandbytes' C kernels use (torch's own where torch is loaded)
        gomp = ctypes.CDLL("libgomp.so.1")
        gomp.omp_set_num_threads(ctypes.c_int(threads))
        seen["libgomp"] = int(gomp.omp_get_max_threads())
    except OSError:
        pass
    try:
        from fastmomentum import _core
    except ImportError:
        pass
    else:
        _core.set_num_threads(threads)
        seen["fastmomentum"] = _core.get_num_threads()
    bad = {k: v for k, v in seen.items() if v != threads}
    if bad:
        raise RuntimeError(f"thread count {threads} did not take: {bad}")
    return seen


# ------------------------------------------------------------------------------------- timing

def _instance_for_timing(name: str, n: int, seed: int = 0) -> Instance:
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n, dtype=np.float32)
    g0 = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
    return BUILDERS[name](p0, g0, LR)


def time_peers(names: list[str], n: int, threads: int, samples: int = SAMPLES,
               min_sample_s: float = MIN_SAMPLE_S) -> dict[str, list[float]]:
    """ns/element of one step, every sample, for each peer; the peers are sampled in turn
    (one sample of each, then again) so that the machine's drift shifts them alike. Each sample
    is an inner loop of >= min_sample_s, after a warm-up."""
    set_threads(threads)
    insts = {name: _instance_for_timing(name, n) for name in names}
    inner: dict[str, int] = {}
    for name, inst in insts.items():
        for _ in range(WARMUP_STEPS):
            inst.step()
        t0 = time.perf_counter()
        inst.step()
        one = time.perf_counter() - t0
        inner[name] = max(1, math.ceil(min_sample_s / max(one, 1e-9)))
    out: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(samples):
        for name, inst in insts.items():
            step, k = inst.step, inner[name]
            t0 = time.perf_counter()
            for _ in range(k):
                step()
            out[name].append((time.perf_counter() - t0) / k / n * 1e9)
    return out


def time_peer(name: str, n: int, threads: int) -> float:
    """Median ns per element of one step of `name` on n elements with `threads` threads."""
    reason = available_peers_one(name)
    if reason is not None:
        raise Unavailable(reason)
    return statistics.median(time_peers([name], n, threads)[name])


def available_peers_one(name: str) -> str | None:
    if name not in PEERS:
        return f"unknown peer {name!r}"
    if name not in BUILDERS:
        return available_peers()[name]
    try:
        verify(name)
    except Unavailable as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


# -------------------------------------------------------------------------------- trajectories
# A separable quadratic f(w) = 0.5 * mean(h * (w - w*)^2), h log-uniform in [H_MIN, 1], w* ~ N(0,1),
# w0 = 0, in float32: heavy-ball momentum 0.9 with lr 1 converges every mode (spectral radius
# <= sqrt(0.9)) within 300 steps in float32, so the bf16 / 8-bit runs' distance from the float32
# run is their own error. The gradient h*(w - w*) is computed in float32 from the parameters (as a
# bf16 model would upcast) and handed to the optimizer in the parameters' dtype.

H_MIN = 0.01


@dataclass
class Trajectory:
    name: str
    losses: list[float]  # before each step, then after the last: steps + 1 values
    params: np.ndarray  # final parameters, float64
    target: np.ndarray  # w*
    compensated: np.ndarray | None = None  # p + Kahan compensation, where the peer keeps one


def quadratic_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h = np.exp(rng.uniform(math.log(H_MIN), 0.0, n)).astype(np.float32)
    target = rng.standard_normal(n).astype(np.float32)
    return h, target


def _quadratic_loss(w: np.ndarray, n: int, seed: int) -> float:
    h, target = quadratic_problem(n, seed)
    return float(0.5 * np.mean(h.astype(np.float64) * (w - target.astype(np.float64)) ** 2))


def trajectory_run(name: str, n: int = 100_000, steps: int = 300, lr: float = 1.0,
                   seed: int = 0) -> Trajectory:
    reason = available_peers_one(name)
    if reason is not None:
        raise Unavailable(reason)
    if name == "rmw-bound-f32":
        raise Unavailable("rmw-bound-f32 is not an optimizer")
    h, target = quadratic_problem(n, seed)
    h64, t64 = h.astype(np.float64), target.astype(np.float64)
    w0 = np.zeros(n, np.float32)
    inst = BUILDERS[name](w0, np.zeros(n, np.float32), lr)
    losses: list[float] = []
    for _ in range(steps):
        w = inst.read()
        losses.append(float(0.5 * np.mean(h64 * (w - t64) ** 2)))
        inst.set_grad(h * (w.astype(np.float32) - target))
        inst.step()
    w = inst.read()
    losses.append(float(0.5 * np.mean(h64 * (w - t64) ** 2)))
    comp = None
    if "kahan" in name and "read_compensated" in inst.extra:
        comp = inst.extra["read_compensated"]()
    return Trajectory(name, losses, w, t64, comp)


def trajectory(name: str, n: int = 100_000, steps: int = 300, lr: float = 1.0,
               seed: int = 0) -> list[float]:
    """The loss curve (steps + 1 values) of peer `name` on the quadratic."""
    return trajectory_run(name, n, steps, lr, seed).losses


def trajectory_summary(names: list[str], n: int = 100_000, steps: int = 300, lr: float = 1.0,
                       seed: int = 0) -> dict[str, Any]:
    """Each peer's loss curve and its final parameters' error against the float32 torch run;
    'bf16_floor' is the error of the float32 run's result rounded to bfloat16 (the best a bf16
    parameter can hold)."""
    ref = trajectory_run("torch-sgd-f32", n, steps, lr, seed)
    norm = float(np.linalg.norm(ref.params))
    floor = _round_bf16(ref.params.astype(np.float32)).astype(np.float64) - ref.params
    out: dict[str, Any] = {
        "problem": {"kind": "quadratic", "n": n, "steps": steps, "lr": lr, "momentum": MOMENTUM,
                    "h": [H_MIN, 1.0], "seed": seed},
        "bf16_floor": {"rel_l2": float(np.linalg.norm(floor)) / norm,
                       "max_abs": float(np.abs(floor).max()),
                       "loss": _quadratic_loss(ref.params + floor, n, seed)},
        "runs": {},
    }
    for name in names:
        try:
            run = ref if name == "torch-sgd-f32" else trajectory_run(name, n, steps, lr, seed)
        except Unavailable as exc:
            out["runs"][name] = {"unavailable": str(exc)}
            continue
        diff = run.params - ref.params
        if run.compensated is not None:
            cdiff = run.compensated - ref.params
            out["runs"][name + " (p+comp)"] = {
                "final_loss": _quadratic_loss(run.compensated, n, seed),
                "rel_l2_vs_f32": float(np.linalg.norm(cdiff)) / norm,
                "max_abs_vs_f32": float(np.abs(cdiff).max()),
                "rel_l2_vs_optimum": float(np.linalg.norm(run.compensated - run.target))
                / float(np.linalg.norm(run.target)),
                "losses": [],
            }
        out["runs"][name] = {
            "final_loss": run.losses[-1],
            "rel_l2_vs_f32": float(np.linalg.norm(diff)) / norm,
            "max_abs_vs_f32": float(np.abs(diff).max()),
            "rel_l2_vs_optimum": float(np.linalg.norm(run.params - run.target))
            / float(np.linalg.norm(run.target)),
            "losses": run.losses,
        }
    return out


# ---------------------------------------------------------------------------------------- main

def _versions() -> dict[str, str | None]:
    return {d: _version(d) for d in ("torch", "torch-optimi", "bitsandbytes", "torchao",
                                     "fastmomentum", "numpy")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e7, 3e7])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--samples", type=int, default=SAMPLES)
    ap.add_argument("--peers", nargs="+", default=None, help="default: every one that runs")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-trajectory", action="store_true")
    ap.add_argument("--json", help="write every sample, the trajectories and the metadata here")
    args = ap.parse_args(argv)
    # before torch (and its OpenMP runtime) is first imported; set_threads then sets each count
    os.environ.setdefault("OMP_NUM_THREADS", str(max(args.threads)))
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit in bitsandbytes

    report: dict[str, Any] = {"versions": _versions(), "python": sys.version.split()[0],
                              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                              "loadavg_before": open("/proc/loadavg").read().split()[:3]
                              if os.path.exists("/proc/loadavg") else None}
    print("versions:", ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    avail = available_peers()
    report["available"] = avail
    print("\npeers:")
    for name, reason in avail.items():
        print(f"  {name:30s} {'runs (checked)' if reason is None else 'NOT RUN: ' + reason}")
    names = [name for name in (args.peers or list(PEERS)) if avail.get(name) is None]

    if not args.no_timing and names:
        report["timing"] = {}
        print(f"\nns per element of one step (median of {args.samples} samples >= "
              f"{MIN_SAMPLE_S * 1e3:.0f} ms each, peers sampled in turn; lower is better)")
        cols = [(int(s), t) for s in args.sizes for t in args.threads]
        header = "".join(f" | n={s:.0e} t={t}" for s, t in cols)
        print(f"{'peer':30s} {'B/el':>4s}{header}")
        results: dict[tuple[int, int], dict[str, list[float]]] = {}
        report["threads_set"] = {}
        for s, t in cols:
            report["threads_set"][f"{s}/{t}"] = set_threads(t)  # checked: raises if not taken
            results[(s, t)] = time_peers(names, s, t, args.samples)
            report["timing"][f"{s}/{t}"] = results[(s, t)]
        for name in names:
            row = "".join(f" | {statistics.median(results[c][name]):12.3f}" for c in cols)
            print(f"{name:30s} {PEERS[name].bytes_per_element:4d}{row}")
        print("threads set and read back:", report["threads_set"])
        if "torch-sgd-f32" in names:
            print("ratio to torch-sgd-f32 (median / median):")
            for name in names:
                row = "".join(
                    f" | {statistics.median(results[c][name]) / statistics.median(results[c]['torch-sgd-f32']):12.2f}"  # noqa: E501
                    for c in cols)
                print(f"{name:30s} {'':4s}{row}")

    if not args.no_trajectory:
        traj_names = [name for name in names if name != "rmw-bound-f32"]
        if "torch-sgd-f32" in traj_names:
            summary = trajectory_summary(traj_names)
            report["trajectory"] = summary
            pr = summary["problem"]
            print(f"\ntrajectory: quadratic, n={pr['n']}, {pr['steps']} steps, lr={pr['lr']}, "
                  f"momentum {pr['momentum']}, h log-uniform in {pr['h']}; bf16 floor (f32 result "
                  f"rounded to bf16): rel L2 {summary['bf16_floor']['rel_l2']:.2e}, "
                  f"loss {summary['bf16_floor']['loss']:.3e}")
            print(f"{'peer':30s} {'loss[0]':>10s} {'loss[100]':>10s} {'loss[200]':>10s} "
                  f"{'final loss':>10s} {'rel L2 vs f32':>13s} {'max|dw|':>9s} "
                  f"{'rel L2 vs w*':>12s}")
            for name, r in summary["runs"].items():
                if "unavailable" in r:
                    print(f"{name:30s} NOT RUN: {r['unavailable']}")
                    continue
                ls = r["losses"]
                if not ls:  # the compensated value of a Kahan run: final numbers only
                    print(f"{name:30s} {'':10s} {'':10s} {'':10s} {r['final_loss']:10.3e} "
                          f"{r['rel_l2_vs_f32']:13.2e} {r['max_abs_vs_f32']:9.2e} "
                          f"{r['rel_l2_vs_optimum']:12.2e}")
                    continue
                print(f"{name:30s} {ls[0]:10.3e} {ls[100]:10.3e} {ls[200]:10.3e} "
                      f"{r['final_loss']:10.3e} {r['rel_l2_vs_f32']:13.2e} "
                      f"{r['max_abs_vs_f32']:9.2e} {r['rel_l2_vs_optimum']:12.2e}")
        else:
            print("\ntrajectory: needs torch-sgd-f32 (the float32 reference)")
    report["loadavg_after"] = (open("/proc/loadavg").read().split()[:3]
                               if os.path.exists("/proc/loadavg") else None)
    print(f"\nload average before {report['loadavg_before']}, after {report['loadavg_after']} "
          "(a shared 2-core VM: absolute times drift 10-40% between runs; compare ratios)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
