"""The low-precision storage kinds that ``--state-dtype`` times (issue 19), and their check.

Each :class:`Kind` stores a float32 problem's parameters, gradients and momentum in its own
dtypes (bfloat16 via ml_dtypes, float16, or the 8-bit block buffer ``(codes int8, scales
float32 of ceil(n/256))``) and steps them with :func:`fastmomentum.functional.sgd_`. Bytes per
element are those one step must read and write (:meth:`Kind.bytes_per_element`); the targets are
issue 19's speed-ups over float32 fastmomentum at ``n >= 1e7``.

Before it is timed, each kind takes :data:`STEPS` steps on a problem of its own and is compared
with the same steps in float32 NumPy (the benchmark's reference) from the same widened start,
within the error its storage's rounding allows (:func:`check`); the bit-for-bit checks of the
kernels against the spec's reference are the test suite's.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .numpy_baseline import sgd_inplace_
from .problems import Variant
from .timing import Step

F32 = NDArray[np.float32]
#: Elements per scale of the 8-bit buffer.
BLOCK = 256
#: Steps of the check before timing.
STEPS = 3
#: Issue 19's bound: each kind within this factor of the RMW bound scaled to its bytes.
BOUND_TARGET = 1.15
#: The float32 kind's bytes per element: read p, g, b; write p, b (the RMW bound's).
FLOAT32_BYTES = 20


class Unavailable(Exception):
    """A kind that cannot run here (ml_dtypes missing for bfloat16); the message says why."""


def bfloat16() -> Any:
    """ml_dtypes' bfloat16 dtype, or :class:`Unavailable`."""
    try:
        return importlib.import_module("ml_dtypes").bfloat16
    except ImportError:
        raise Unavailable("ml_dtypes is not installed (pip install ml_dtypes): no bfloat16"
                          ) from None


def _dtype(name: str) -> np.dtype[Any]:
    return np.dtype(bfloat16()) if name == "bfloat16" else np.dtype(name)


@dataclass(frozen=True)
class Kind:
    """One storage kind: parameter (and gradient) dtype, momentum storage, write-back.

    ``buffer``: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"int8"`` (the 8-bit block
    buffer); ``write``: ``"nearest"``, ``"stochastic"`` or ``"kahan"`` (a compensation array of
    the parameters' dtype); ``target``: issue 19's speed-up over float32 (None for float32).
    """

    name: str
    label: str
    param: str
    buffer: str
    write: str
    target: float | None

    def bytes_per_element(self, n: int) -> float:
        """What one step reads and writes, per element of an ``n``-element parameter: params
        read and written (2 x their itemsize), grads read (their dtype is the params'), the
        buffer read and written (2 x its itemsize; the 8-bit buffer: 2 x 1 byte of codes plus 2
        x 4 bytes of scale per block of 256, read and written once each), and a Kahan
        compensation read and written (2 x the params' itemsize). float32: 8 + 4 + 8 = 20."""
        p = 2 if self.param == "bfloat16" else 4
        if self.buffer == "int8":
            buffer = 2 * 1 + 2 * 4 * math.ceil(n / BLOCK) / n
        else:
            buffer = 2 * (4 if self.buffer == "float32" else 2)
        return 2 * p + p + buffer + (2 * p if self.write == "kahan" else 0)

    def sgd_keywords(self) -> dict[str, Any]:
        """The low-precision keywords of ``sgd_`` beyond the arrays (``compensations`` aside)."""
        return {"rounding": "stochastic"} if self.write == "stochastic" else {}


#: ``--state-dtype`` names -> kinds, in table order.
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("float32", "float32 (fm)", "float32", "float32", "nearest", None),
    Kind("bfloat16", "bf16 momentum", "float32", "bfloat16", "nearest", 1.2),
    Kind("float16", "f16 momentum", "float32", "float16", "nearest", 1.2),
    Kind("int8", "int8 momentum", "float32", "int8", "nearest", 1.3),
    Kind("bf16-int8-sr", "bf16 p+g, int8 m, SR", "bfloat16", "int8", "stochastic", 2.0),
    Kind("bf16-int8-kahan", "bf16 p+g, int8 m, Kahan", "bfloat16", "int8", "kahan", 1.5),
)}


@dataclass
class State:
    """One kind's arrays: params, grads, momentum (array or (codes, scales)), compensation."""

    kind: Kind
    param: Any
    grad: Any
    buffer: Any
    compensation: Any = None

    def step(self, hyper: Variant, *, step: int = 0, first: bool = False) -> None:
        """One ``sgd_`` call on these arrays (``step``: the stochastic rounding's counter)."""
        from ...functional import sgd_

        call: Callable[..., Any] = sgd_  # the stubs predate the low-precision keywords
        extra = dict(self.kind.sgd_keywords())
        if self.compensation is not None:
            extra["compensations"] = [self.compensation]
        if self.kind.write == "stochastic":
            extra["step"] = step
        call([self.param], [self.grad], [self.buffer], first_step=first, **hyper.kwargs(),
             **extra)

    def widened(self) -> tuple[F32, F32, F32]:
        """The float32 values of p (plus its compensation), g and the decoded buffer."""
        p = np.asarray(self.param, np.float32)
        if self.compensation is not None:  # x = widen(p) + widen(c), one float32 addition
            p = p + np.asarray(self.compensation, np.float32)
        return p, np.asarray(self.grad, np.float32), decode(self.buffer)


def _e4m3_magnitudes() -> F32:
    """F(m), m = 0..127: the 8-bit code map (E4M3 without NaN or inf; F(127) = 480)."""
    m = np.arange(128)
    e, mant = m >> 3, (m & 7).astype(np.float64)
    values = np.where(e == 0, mant * 2.0**-9, (1 + mant / 8) * 2.0 ** (e - 7))
    return values.astype(np.float32)


def decode(buffer: Any) -> F32:
    """A buffer's float32 values: arrays widened; ``(codes, scales)`` decoded by the spec's
    ``sign(k) * F(|k|) * scale_j`` (one float32 multiplication)."""
    if not isinstance(buffer, tuple):
        return np.asarray(buffer, np.float32)
    codes, scales = buffer
    k = codes.astype(np.int16)
    f = _e4m3_magnitudes()[np.abs(k)]
    f = np.where(k < 0, -f, f).astype(np.float32)
    out: F32 = (f * np.repeat(scales, BLOCK)[: codes.size]).astype(np.float32)
    return out


def make_state(kind: Kind, p: F32, g: F32, hyper: Variant) -> State:
    """``kind``'s arrays holding ``p`` and ``g`` converted to its dtypes (nearest rounding), and
    a momentum that is the torch convention's first step's (``b <- g + wd*p``), written by the
    kernel itself (so the 8-bit buffer is encoded by the code under test, and p takes one step).
    ``p`` and ``g`` are not modified."""
    dtype = _dtype(kind.param)
    param, grad = p.astype(dtype), g.astype(dtype)
    if kind.buffer == "int8":
        buffer: Any = (np.zeros(p.shape, np.int8), np.zeros(math.ceil(p.size / BLOCK),
                                                            np.float32))
    else:
        buffer = np.zeros(p.shape, _dtype(kind.buffer))
    compensation = np.zeros(p.shape, dtype) if kind.write == "kahan" else None
    state = State(kind, param, grad, buffer, compensation)
    state.step(hyper, first=True)
    return state


def build(kind: Kind, p: F32, g: F32, b: F32, hyper: Variant) -> Step:
    """The timed step of ``kind``: the float32 kind steps ``p``, ``g``, ``b`` themselves (as
    the benchmark's fastmomentum column does); the others their own arrays made from ``p`` and
    ``g`` by :func:`make_state`. The stochastic rounding's step counter stays fixed: every call
    costs the same."""
    state = (State(kind, p, g, b) if kind.name == "float32" else make_state(kind, p, g, hyper))

    def step() -> None:
        state.step(hyper, step=1)

    return step


#: Relative rounding error of one narrowing, per storage and write-back (worst case: half an
#: ulp for nearest, one ulp for stochastic, the E4M3 code map's 3-bit mantissa for int8; a
#: Kahan pair keeps about 16 more bits than its parameter).
_EPS = {("float32", "nearest"): 2.0**-23, ("bfloat16", "nearest"): 2.0**-8,
        ("bfloat16", "stochastic"): 2.0**-7, ("bfloat16", "kahan"): 2.0**-16,
        ("float16", "nearest"): 2.0**-11, ("int8", "nearest"): 2.0**-4}
#: Safety factor over the worst case accumulated over the steps.
_MARGIN = 2.0


def check(kind: Kind, hyper: Variant, n: int, seed: int = 1) -> str | None:
    """None if ``kind`` steps a problem of ``n`` elements as float32 NumPy does within its
    storage's rounding, else why not (one line).

    The problem has large steps (``lr = 0.1``, ``|g| < 1``) so that an update that is skipped
    or wrong is far outside the tolerance: per element,
    ``|b - b_ref| <= 2 * STEPS * eps_b * max_k |b_ref,k|`` and
    ``|p - p_ref| <= 2 * STEPS * (eps_p * max_k |p_ref,k| + lr * (1 + momentum) * eps_b *
    max_k |b_ref,k|)`` (``eps``: the storage's relative rounding error; subnormals add an
    absolute one: ``2^-10`` of an 8-bit block's scale, ``2^-25`` for float16).
    """
    rng = np.random.default_rng(seed)
    p0 = (rng.random(n, dtype=np.float32) * 2 - 1).astype(np.float32)
    g0 = (rng.random(n, dtype=np.float32) * 2 - 1).astype(np.float32)
    loud = Variant(lr=0.1, momentum=hyper.momentum, weight_decay=hyper.weight_decay,
                   nesterov=hyper.nesterov)
    try:
        state = make_state(kind, p0, g0, loud)
        p, g, b = (a.copy() for a in state.widened())
        p_max, b_max = np.abs(p), np.abs(b)
        scratch = [np.empty_like(p) for _ in range(2)]
        for k in range(STEPS):
            state.step(loud, step=k)
            sgd_inplace_(p, g, b, scratch, **loud.kwargs())
            p_max, b_max = np.maximum(p_max, np.abs(p)), np.maximum(b_max, np.abs(b))
        got_p, _, got_b = state.widened()
    except Exception as exc:  # a kernel that refuses or breaks: a FAILED row, not a crash
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    eps_p = _EPS[(kind.param, kind.write)]
    eps_b = _EPS[(kind.buffer, "nearest")]
    # Absolute errors where the relative bound fails: subnormals (8-bit: half a code step of
    # the block's scale, at most 2^-10 * max|b| / 480; float16: half of 2^-24).
    b_abs = {"int8": 2.0**-10 * float(np.max(np.abs(b))) / 480, "float16": 2.0**-25}.get(
        kind.buffer, 0.0)
    tol_b = _MARGIN * STEPS * (eps_b * b_max + b_abs)
    tol_p = _MARGIN * STEPS * (eps_p * p_max + loud.lr * (1 + loud.momentum) * (
        eps_b * b_max + b_abs)) + 1e-7 * p_max
    for what, got, want, tol in (("buffer", got_b, b, tol_b), ("params", got_p, p, tol_p)):
        bad = ~(np.abs(got - want) <= tol)
        if bad.any():
            i = int(np.argmax(bad))
            return (f"{what}: {int(bad.sum())} of {n} elements off by more than the "
                    f"rounding allows after {STEPS} steps (element {i}: {got[i]!r} vs "
                    f"float32 {want[i]!r}, tolerance {tol[i]:.3g})")
    return None
