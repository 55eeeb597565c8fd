"""What the low-precision kernel tests share: the storage kinds, their random states, one call
through the functional API and the same call through tests/reference_lowp.lowp_step, and the
ISA x thread-count configurations every result must be the same bits on.

A "state" is the four lists a call updates: params, buffers (None, or one float array or
(codes, scales) tuple per parameter), compensations (None, or one array or None per parameter)
and the read-only grads. Arrays are copied, never shared, between the reference and the
kernels and between configurations.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass

import numpy as np
import threadpoolctl

import fastmomentum as fm
from fastmomentum import _core

import reference_lowp as lp
from conftest import (
    COMPILED_ISAS,
    DEFAULT_GRAIN_BYTES,
    DEFAULT_ISA,
    SMALL_GRAIN_BYTES,
    SUPPORTED_ISAS,
)
from reference import ema_sgd, keras_sgd, torch_sgd

BF16, F16, F32 = lp.BFLOAT16, lp.FLOAT16, lp.FLOAT32
ISAS = [isa for isa in COMPILED_ISAS if isa in SUPPORTED_ISAS]
THREADS = [1, 2, 3]
FUNCTIONS = {"torch": fm.functional.sgd_, "keras": fm.functional.keras_sgd_,
             "ema": fm.functional.ema_sgd_}
RULES = {"torch": torch_sgd, "keras": keras_sgd, "ema": ema_sgd}
MOMENTUM_NAME = {"torch": "momentum", "keras": "momentum", "ema": "beta"}
BUFFER_NAME = {"torch": "buffers", "keras": "velocities", "ema": "buffers"}
# Several blocks of 256 with odd tails, a 2-D one (codes keep the shape), a tiny and an empty one:
# with SMALL_GRAIN_BYTES every block is a part of its own, so 2 and 3 threads cut inside tensors.
SHAPES = [(1537,), (3,), (7, 45), (0,), (700,)]


@dataclass(frozen=True)
class Kind:
    """One storage kind: the parameter's, gradient's and buffer's storage ("int8": the 8-bit
    buffer; "none": no buffers, momentum 0) and the parameter's write-back ("nearest",
    "stochastic" or "kahan")."""

    param: np.dtype
    grad: np.dtype
    buf: str
    writeback: str = "nearest"

    @functools.cached_property
    def id(self):
        return f"p{self.param}-g{self.grad}-b{self.buf}-{self.writeback}"

    @property
    def rounding(self):
        return "stochastic" if self.writeback == "stochastic" else "nearest"


def _all_kinds():
    out = [Kind(F32, F32, buf) for buf in ("bfloat16", "float16", "int8")]
    for p, grad, buf, wb in itertools.product(
            (BF16, F16), ("param", "float32"), ("float32", "bfloat16", "float16", "int8", "none"),
            ("nearest", "stochastic", "kahan")):
        out.append(Kind(p, p if grad == "param" else F32, buf, wb))
    return out


KINDS = _all_kinds()


# Two calls that mix kinds (so each call runs several kinds' kernels, with a float32 one on the
# exact path beside them), one per SHAPES entry: stochastic rounding in one, Kahan compensations
# in the other.
MIXED = {
    "stochastic": [Kind(BF16, BF16, "int8", "stochastic"), Kind(F16, F32, "float16", "stochastic"),
                   Kind(F32, F32, "bfloat16"), Kind(BF16, F32, "float32", "stochastic"),
                   Kind(F32, F32, "float32")],
    "kahan": [Kind(F16, F16, "int8", "kahan"), Kind(BF16, BF16, "bfloat16", "kahan"),
              Kind(F16, F16, "float32"), Kind(F32, F32, "int8"), Kind(BF16, F32, "float16")],
}


# --- configurations -------------------------------------------------------------------------

# OpenMP's own limit (the cores, 2 on a small machine) also caps a call's threads: 3 threads
# need it raised, which threadpoolctl does for the calling thread (README, "Threads").
_OPENMP = threadpoolctl.ThreadpoolController()


@contextlib.contextmanager
def kernel_config(isa, threads):
    """conftest's ISA and thread settings (a 64-byte grain with more than one thread, so that
    every block of 256 is a part of its own) with OpenMP's limit at `threads` too, restored
    whatever happens."""
    try:
        with _OPENMP.limit(limits=threads, user_api="openmp"):
            _core.select_isa(isa)
            fm.set_num_threads(threads)
            _core.set_grain_bytes(SMALL_GRAIN_BYTES if threads > 1 else DEFAULT_GRAIN_BYTES)
            yield
    finally:
        _core.select_isa(DEFAULT_ISA)
        fm.set_num_threads(None)
        _core.set_grain_bytes(DEFAULT_GRAIN_BYTES)


def _configs():
    out = []
    for isa, threads in itertools.product(ISAS, THREADS):
        with kernel_config(isa, threads):
            if fm.get_num_threads() >= threads:  # an OpenMP-less build runs one thread
                out.append((isa, threads))
    return out


CONFIGS = _configs()


# --- states ---------------------------------------------------------------------------------

def values(rng, shape, dtype, *, scale=1.0, specials=True):
    """Normal values times `scale`, rounded to `dtype`; with `specials`, an array of 64 elements
    or more starts with 16 values near 1e-5 (float16 subnormals once updated), float16's largest
    (a stochastic round-up is inf), 65000 and -0.0."""
    v = (rng.standard_normal(shape) * scale).astype(np.float32)
    flat = v.reshape(-1)
    if specials and flat.size >= 64:
        flat[:16] *= np.float32(1e-5)
        flat[16:20] = [65504.0, -65504.0, 65000.0, -0.0]
    return lp.narrow(v, dtype)


def zero_quantized(shape):
    """An 8-bit buffer of zeros (a plain (codes, scales) tuple)."""
    n = int(np.prod(shape))
    return np.zeros(shape, np.int8), np.zeros(-(-n // lp.BLOCK), np.float32)


def make_buffer(rng, shape, buf, *, zero=False):
    if buf == "none":
        return None
    if buf == "int8":
        if zero:
            return zero_quantized(shape)
        return lp.quantize((rng.standard_normal(shape) * 0.5).astype(np.float32))
    dtype = np.dtype(buf)
    return np.zeros(shape, dtype) if zero else values(rng, shape, dtype, scale=0.5, specials=False)


def make_grads(rng, kinds, shapes):
    """Gradients of kinds[i].grad and shapes[i]: small where the params start small (values()'
    specials), so that those results stay float16 subnormals."""
    grads = [values(rng, s, k.grad, specials=False) for k, s in zip(kinds, shapes, strict=True)]
    for g in grads:
        flat = g.reshape(-1)
        if flat.size >= 64:
            flat[:16] = lp.narrow(lp.widen(flat[:16]) * np.float32(1e-5), g.dtype)
    return grads


def make_state(rng, kinds, shapes=None, *, zero_buffers=False):
    """Params, grads, buffers and compensations of one call, parameter i of kind kinds[i] (one
    kind: all of it) and shape shapes[i] (default SHAPES). Buffers are None when every kind has
    "none"; compensations None when no kind is "kahan"."""
    shapes = SHAPES if shapes is None else shapes
    kinds = list(kinds) if len(kinds) == len(shapes) else [kinds[0]] * len(shapes)
    params = [values(rng, s, k.param) for k, s in zip(kinds, shapes, strict=True)]
    grads = make_grads(rng, kinds, shapes)
    if all(k.buf == "none" for k in kinds):
        buffers = None
    else:
        buffers = [make_buffer(rng, s, k.buf, zero=zero_buffers)
                   for k, s in zip(kinds, shapes, strict=True)]
    if any(k.writeback == "kahan" for k in kinds):
        comps = [values(rng, s, k.param, scale=2.0**-10, specials=False)
                 if k.writeback == "kahan" else None for k, s in zip(kinds, shapes, strict=True)]
    else:
        comps = None
    return State(params, grads, buffers, comps, kinds)


def _copy(x):
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(a.copy() for a in x)
    return x.copy()


@dataclass
class State:
    params: list
    grads: list
    buffers: list | None
    comps: list | None
    kinds: list | None = None  # for messages

    def copy(self):
        return State([_copy(p) for p in self.params], [_copy(g) for g in self.grads],
                     None if self.buffers is None else [_copy(b) for b in self.buffers],
                     None if self.comps is None else [_copy(c) for c in self.comps], self.kinds)

    def arrays(self):
        """(name, array) of every array, grads included, for snapshots and comparisons; a name
        says the parameter's kind when the state knows it."""
        def at(i):
            return f"[{i}]" if self.kinds is None else f"[{i}] ({self.kinds[i].id})"

        out = [(f"params{at(i)}", p) for i, p in enumerate(self.params)]
        out += [(f"grads{at(i)}", g) for i, g in enumerate(self.grads)]
        for i, b in enumerate(self.buffers or []):
            if isinstance(b, (tuple, list)):  # (codes, scales), or a bad tuple, or a list
                parts = [".codes", ".scales"] + [f"[{k}]" for k in range(2, len(b))]
                out += [(f"buffers{at(i)}{part}", a) for part, a in zip(parts, b, strict=False)]
            elif b is not None:
                out.append((f"buffers{at(i)}", b))
        out += [(f"compensations{at(i)}", c) for i, c in enumerate(self.comps or [])
                if c is not None]
        return out


def _flat(x):
    """A 0-d array (or a 0-d buffer's codes) as one element; anything else as it is."""
    if isinstance(x, tuple):
        return (_flat(x[0]), x[1])
    return x.reshape(1) if x is not None and x.ndim == 0 else x


def _shaped(x, shape):
    if x is None or shape != ():
        return x
    if isinstance(x, tuple):
        return (x[0].reshape(shape), x[1])
    return np.asarray(x).reshape(shape)


# --- one call -------------------------------------------------------------------------------

def run_kernels(style, state, hyper, *, rounding="nearest", seed=0, step=0, first_step=False,
                **guards):
    """The functional call of `style` on `state`, in place; returns its StepResult."""
    extra = {"first_step": first_step} if style == "torch" else {}
    return FUNCTIONS[style](state.params, state.grads, state.buffers, **hyper, **extra,
                            compensations=state.comps, rounding=rounding, seed=seed, step=step,
                            **guards)


def run_reference(style, state, hyper, *, rounding="nearest", seed=0, step=0, first_step=False,
                  grads=None):
    """The same call through lowp_step, parameter i with stream i, into a new State. `grads`
    replaces the state's gradients (float32 ones, e.g. after a guard's scaling)."""
    n = len(state.params)
    grads = state.grads if grads is None else grads
    firsts = first_step if isinstance(first_step, list | tuple) else [first_step] * n
    bufs = state.buffers if state.buffers is not None else [None] * n
    comps = state.comps if state.comps is not None else [None] * n
    out = State([], list(state.grads), None if state.buffers is None else [],
                None if state.comps is None else [], state.kinds)
    with np.errstate(all="ignore"):  # inf - inf and overflow are the arithmetic's, not errors
        for i in range(n):
            extra = {"first_step": firsts[i]} if style == "torch" else {}
            shape = state.params[i].shape
            # lowp_step's stochastic bfloat16 rounding fails on 0-d arrays (NumPy returns scalars
            # there): a 0-d parameter goes through it as one element, the same arithmetic.
            p, b, c = lp.lowp_step(RULES[style], _flat(state.params[i]), _flat(grads[i]),
                                   _flat(_copy(bufs[i])), comp=_flat(comps[i]),
                                   rounding=rounding, seed=seed, step=step, stream=i, **hyper,
                                   **extra)
            p, b, c = (_shaped(x, shape) for x in (p, b, c))
            out.params.append(np.asarray(p))
            if out.buffers is not None:
                out.buffers.append(b)
            if out.comps is not None:
                out.comps.append(c)
    return out


# --- comparisons ----------------------------------------------------------------------------

_FLOATS = (np.dtype(np.float64), F32, BF16, F16)


def same_bits(actual, expected, what):
    """Equal dtype, shape and bits, except that any NaN equals any NaN (the spec's 8-bit buffer
    and the libraries' conversions fix no NaN payload)."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, (
        f"{what}: {a.dtype}{a.shape} != {e.dtype}{e.shape}")
    if a.tobytes() == e.tobytes():
        return
    a, e = a.reshape(-1), e.reshape(-1)
    if a.dtype in _FLOATS:
        na, ne = np.isnan(a.astype(np.float64)), np.isnan(e.astype(np.float64))
    else:
        na = ne = np.zeros(a.shape, bool)
    width = a.dtype.itemsize
    differ = (a.view(np.uint8).reshape(-1, width) != e.view(np.uint8).reshape(-1, width))
    bad = np.flatnonzero((na != ne) | (~na & differ.any(axis=1)))
    assert bad.size == 0, (f"{what}: {bad.size} of {a.size} elements differ, first at {bad[0]}: "
                           f"{a[bad[0]]!r} != {e[bad[0]]!r} (expected)")


def same_state(actual, expected, what=""):
    """Every parameter, buffer (codes and scales) and compensation of two states."""
    got, want = dict(actual.arrays()), dict(expected.arrays())
    assert got.keys() == want.keys(), f"{what}: {sorted(got)} != {sorted(want)}"
    for name in got:
        same_bits(got[name], want[name], f"{what} {name}")


def snapshot(state):
    return {name: (a.dtype, a.shape, a.tobytes()) for name, a in state.arrays()}


def untouched(state, before, what=""):
    for name, a in state.arrays():
        assert (a.dtype, a.shape, a.tobytes()) == before[name], f"{what}: {name} was modified"
