"""``python -m fastmomentum bench --device cuda``: one fused Nesterov step on a GPU, in GB/s,
against the device-to-device copy bandwidth measured in the same run, ``torch.optim.SGD(
fused=True)`` and a CuPy elementwise kernel of the same update (those installed).

Bytes per step: the update reads p, g, b and writes p, b (5 arrays' bytes); the copy reads one
array and writes one (2 arrays' bytes). "vs copy" is the update's GB/s over the copy's: 100% means
the step moves its bytes as fast as the GPU copies memory. Every implementation is verified
against fastmomentum's CPU kernels on the same inputs before it is timed (fastmomentum's device
kernels bit for bit; the others, which contract to FMA, within a few ulps).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import numpy as np

from ... import functional
from ..._backend import ADAPTERS, cuda_status, no_device_reason
from .timing import Step, sample_seconds_per_call

#: The sizes without --sizes; the issue's target is at 1e8 float32 elements.
DEFAULT_SIZES = [10**6, 10**7, 10**8]
LR, MOMENTUM = 0.01, 0.9
#: Arrays' bytes moved per call: the update (read p, g, b; write p, b) and the copy.
UPDATE_ARRAYS, COPY_ARRAYS = 5, 2


class GpuUnavailable(RuntimeError):
    """No GPU library, no CUDA module or no usable device: the reason is the message."""


class Library:
    """The GPU array library that allocates the arrays and waits for the device: its adapter in
    fastmomentum's CUDA backend, plus the copy and the wait that the timings need."""

    def __init__(self, name: str) -> None:
        self.name = name
        try:
            self.module: Any = __import__(name)
        except ImportError as exc:
            raise GpuUnavailable(f"{name} is not installed") from exc
        if name == "torch" and not self.module.cuda.is_available():
            raise GpuUnavailable("torch has no usable CUDA device")
        self._adapter = ADAPTERS[name]

    def to_device(self, a: np.ndarray) -> Any:
        return self._adapter.to_device(a)

    def to_host(self, x: Any) -> np.ndarray:
        return self._adapter.to_host(x)

    def empty_like(self, x: Any) -> Any:
        return self._adapter.new_array(x, zero=False)

    def copy(self, dst: Any, src: Any) -> None:
        if self.name == "cupy":
            self.module.copyto(dst, src)
        else:
            dst.copy_(src)

    def synchronize(self) -> None:
        if self.name == "cupy":
            self.module.cuda.Device().synchronize()
        else:
            self.module.cuda.synchronize()


def load_library(name: str | None) -> Library:
    """``name``, or the first of CuPy and PyTorch that imports and sees a device."""
    reason = no_device_reason()
    if reason is not None:
        raise GpuUnavailable(reason)
    reasons = []
    for candidate in [name] if name else ["cupy", "torch"]:
        try:
            return Library(candidate)
        except GpuUnavailable as exc:
            reasons.append(str(exc))
    raise GpuUnavailable("; ".join(reasons) + " (bench --device cuda allocates with CuPy or "
                         "PyTorch)")


@dataclass
class Row:
    size: int
    dtype: str
    impl: str
    seconds: float | None  # median per call; None when not run
    gbps: float | None
    vs_copy: float | None
    note: str = ""


# An implementation: (library, p, g, b) on the device -> a step, or None when unavailable.
Maker = Callable[[Library, Any, Any, Any], Step | None]


def _fastmomentum(lib: Library, p: Any, g: Any, b: Any) -> Step:
    def step() -> None:
        functional.sgd_([p], [g], [b], lr=LR, momentum=MOMENTUM, nesterov=True)
    return step


def _torch_fused(lib: Library, p: Any, g: Any, b: Any) -> Step | None:
    if lib.name != "torch":
        return None
    torch = lib.module
    param = torch.nn.Parameter(p)  # shares p's memory: the step updates p in place
    param.grad = g
    opt = torch.optim.SGD([param], lr=LR, momentum=MOMENTUM, nesterov=True, fused=True)
    opt.state[param]["momentum_buffer"] = b  # the same starting buffer as the others
    return opt.step  # type: ignore[no-any-return]


def _cupy_elementwise(lib: Library, p: Any, g: Any, b: Any) -> Step | None:
    if lib.name != "cupy":
        return None
    kernel = lib.module.ElementwiseKernel(
        "T g, T lr, T mu", "T p, T b",
        "b = mu * b + g; p = p - lr * (g + mu * b);", "fastmomentum_bench_nesterov")
    lr, mu = p.dtype.type(LR), p.dtype.type(MOMENTUM)

    def step() -> None:
        kernel(g, lr, mu, p, b)
    return step


IMPLEMENTATIONS: dict[str, Maker] = {
    "fastmomentum": _fastmomentum,
    "torch-fused": _torch_fused,
    "cupy-elementwise": _cupy_elementwise,
}


def _expected(p: np.ndarray, g: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of fastmomentum's CPU kernels: the result every implementation must give."""
    p, b = p.copy(), b.copy()
    functional.sgd_([p], [g], [b], lr=LR, momentum=MOMENTUM, nesterov=True)
    return p, b


def _verify(lib: Library, name: str, got: tuple[Any, Any],
            expected: tuple[np.ndarray, np.ndarray]) -> str:
    """'' when right, else what is wrong."""
    for what, x, want in zip(("p", "b"), got, expected, strict=True):
        have = lib.to_host(x)
        if name == "fastmomentum":
            if have.tobytes() != want.tobytes():
                return f"{what} differs from the CPU kernels' bits"
        elif not np.allclose(have, want, rtol=8 * np.finfo(want.dtype).eps, atol=0):
            return f"{what} differs from the CPU kernels' result by more than 8 ulps"
    return ""


def _copy_seconds(lib: Library, host: np.ndarray, samples: int, min_sample_s: float) -> float:
    """The median time of one device-to-device copy of ``host``'s size."""
    src = lib.to_device(host)
    dst = lib.empty_like(src)
    return statistics.median(sample_seconds_per_call(
        lambda: lib.copy(dst, src), samples=samples, min_sample_s=min_sample_s,
        finish=lib.synchronize))


def run(lib: Library, sizes: Sequence[int], dtypes: Sequence[str], impls: Sequence[str], *,
        samples: int, min_sample_s: float, out: TextIO | None = None) -> list[Row]:
    """Verify then time the copy and each implementation on every (size, dtype)."""
    rows = []
    rng = np.random.default_rng(0)
    if out is not None:
        print(f"# {lib.name} {lib.module.__version__}; fastmomentum CUDA: {cuda_status()}",
              file=out)
        print(f"{'size':>11} {'dtype':>7} {'implementation':>16} {'us/step':>10} {'GB/s':>8} "
              f"{'vs copy':>8}", file=out)
    for dtype in dtypes:
        for size in sizes:
            host = [np.asarray(rng.standard_normal(size), dtype) for _ in range(3)]
            expected = _expected(*host)
            itemsize = np.dtype(dtype).itemsize
            copy_s = _copy_seconds(lib, host[0], samples, min_sample_s)
            copy_gbps = COPY_ARRAYS * size * itemsize / copy_s / 1e9
            rows.append(Row(size, dtype, "copy", copy_s, copy_gbps, 1.0))
            for name in impls:
                p, g, b = (lib.to_device(a) for a in host)
                step = IMPLEMENTATIONS[name](lib, p, g, b)
                if step is None:
                    continue
                step()
                lib.synchronize()
                problem = _verify(lib, name, (p, b), expected)
                if problem:
                    rows.append(Row(size, dtype, name, None, None, None, f"FAILED: {problem}"))
                else:
                    seconds = statistics.median(sample_seconds_per_call(
                        step, samples=samples, min_sample_s=min_sample_s,
                        finish=lib.synchronize))
                    gbps = UPDATE_ARRAYS * size * itemsize / seconds / 1e9
                    rows.append(Row(size, dtype, name, seconds, gbps, gbps / copy_gbps))
                del p, g, b, step
            if out is not None:
                for row in rows[-(1 + len(impls)):]:
                    if row.size == size and row.dtype == dtype:
                        print(_line(row), file=out, flush=True)
    if out is not None:
        for line in _ratios(rows):
            print(line, file=out)
    return rows


def _line(row: Row) -> str:
    if row.seconds is None:
        return f"{row.size:>11} {row.dtype:>7} {row.impl:>16}  {row.note}"
    assert row.gbps is not None and row.vs_copy is not None
    return (f"{row.size:>11} {row.dtype:>7} {row.impl:>16} {row.seconds * 1e6:>10.1f} "
            f"{row.gbps:>8.1f} {row.vs_copy:>7.0%}")


def _ratios(rows: list[Row]) -> list[str]:
    """fastmomentum's time over each peer's, per case (below 1: fastmomentum is faster)."""
    lines = []
    ours = {(r.size, r.dtype): r.seconds for r in rows if r.impl == "fastmomentum" and r.seconds}
    for r in rows:
        if r.impl in ("copy", "fastmomentum") or not r.seconds:
            continue
        mine = ours.get((r.size, r.dtype))
        if mine:
            lines.append(f"# {r.size} {r.dtype}: fastmomentum takes {mine / r.seconds:.2f}x "
                         f"the time of {r.impl}")
    return lines


def main(*, library: str | None, sizes: Sequence[int] | None, dtypes: Sequence[str],
         samples: int, min_sample_s: float, json_path: str, command: str,
         out: TextIO | None = None) -> int:
    """The ``--device cuda`` command: 0, 1 when an implementation failed its verification, 2
    when there is no GPU to run on (the reason printed on stderr)."""
    try:
        lib = load_library(library)
    except GpuUnavailable as exc:
        print(f"bench --device cuda: {exc}", file=sys.stderr)
        return 2
    rows = run(lib, sizes or DEFAULT_SIZES, dtypes, list(IMPLEMENTATIONS), samples=samples,
               min_sample_s=min_sample_s, out=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"command": command, "library": lib.name, "cuda": cuda_status(),
                       "rows": [asdict(r) for r in rows]}, f, indent=1)
        if out is not None:
            print(f"# wrote {json_path}", file=out)
    return 1 if any(r.note.startswith("FAILED") for r in rows) else 0
