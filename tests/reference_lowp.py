"""Independent plain-NumPy references for the low-precision storage kinds (issue 19).

Each function transcribes one line of the low-precision spec ("Low-precision storage kinds"):
conversions, the counter-based random numbers, stochastic rounding, the 8-bit block buffer and
one update step that widens every stored value to float32, runs the float32 rule of
reference.py unchanged and narrows the results back. Nearest rounding is delegated to the
libraries' own conversions (ml_dtypes for bfloat16, NumPy for float16), which the spec names as
the truth; everything else is written out here without the bit tricks of the C++ kernels, so
that a shared misreading is unlikely. Nothing here modifies its inputs.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
LOW = (BFLOAT16, FLOAT16)
BLOCK = 256
E4M3_MAX = 480.0

_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


# --- conversions -----------------------------------------------------------------------------

def widen(a):
    """Spec "widen(bfloat16)", "widen(float16)": the exact float32 value (a float32 copy)."""
    a = np.asarray(a)
    if a.dtype not in (FLOAT32, BFLOAT16, FLOAT16):
        raise TypeError(f"widen takes float32, bfloat16 or float16, not {a.dtype}")
    return a.astype(np.float32)


def narrow(x, dtype):
    """Spec "nearest bf16(x)", "nearest f16(x)": round to nearest even through the libraries'
    own conversions (float32 stays as it is)."""
    dtype = np.dtype(dtype)
    x = np.asarray(x, dtype=np.float32)
    if dtype not in (FLOAT32, BFLOAT16, FLOAT16):
        raise TypeError(f"narrow makes float32, bfloat16 or float16, not {dtype}")
    # NumPy warns "overflow encountered in cast" for float16 inf: that overflow is the spec.
    with np.errstate(over="ignore"):
        return x.astype(dtype)


# --- random numbers --------------------------------------------------------------------------

def mix64(z):
    """Spec "mix64(z)" (SplitMix64's finaliser) on a Python int, wrapping by masking."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def key(seed, step, stream):
    """Spec "key(seed, step, stream) = mix64(mix64(mix64(seed) ^ step) ^ stream)"."""
    for v in (seed, step, stream):
        if not 0 <= int(v) <= _MASK64:
            raise ValueError("seed, step and stream are uint64")
    return mix64(mix64(mix64(int(seed)) ^ int(step)) ^ int(stream))


def random16_at(seed, step, stream, indices):
    """Spec "For element i ...": the 16-bit randoms (uint32 array, values < 65536) of the given
    element indices (int64, within the parameter) under key(seed, step, stream)."""
    i = np.asarray(indices, dtype=np.int64)
    if i.size and i.min() < 0:
        raise ValueError("element indices are >= 0")
    k = key(seed, step, stream)
    u = i.astype(np.uint64)
    # hk depends on i >> 32 only, which takes few values: one Python-int mix64 per value.
    hi = u >> np.uint64(32)
    hk = np.zeros(i.shape, dtype=np.uint64)
    for h in np.unique(hi):
        hk[hi == h] = mix64(k ^ int(h)) & _MASK32
    # lowbias32 in uint64 with explicit masking to 32 bits: both products stay below 2**64,
    # so nothing wraps implicitly.
    m32 = np.uint64(_MASK32)
    x = (u & m32) ^ hk
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & m32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & m32
    x ^= x >> np.uint64(16)
    return (x >> np.uint64(16)).astype(np.uint32)


def random16(seed, step, stream, n):
    """The randoms of elements 0..n-1 of one parameter (spec "Random bits")."""
    return random16_at(seed, step, stream, np.arange(n, dtype=np.int64))


# --- stochastic rounding ---------------------------------------------------------------------

def _stochastic_bf16(x, r):
    """Spec "to bfloat16": NaN -> nearest; else (u + r) >> 16 on the float32 bits u."""
    # uint64 so that the sum cannot wrap (it cannot for non-NaN u anyway: u + r < 0xFF810000).
    u = x.view(np.uint32).astype(np.uint64)
    bits = ((u + r.astype(np.uint64)) >> np.uint64(16)).astype(np.uint16)
    out = bits.view(BFLOAT16)
    nan = np.isnan(x)
    out[nan] = narrow(x[nan], BFLOAT16)
    return out


def _stochastic_f16(x, r):
    """Spec "to float16": the q / floor formulation, evaluated in float64, where every step is
    exact (a / q and y - t are exact in float32 already; float64 only leaves more room)."""
    a = np.abs(x).astype(np.float64)
    big = ~(a < 65536.0)  # inf, NaN or >= 65536: nearest
    a = np.where(big, 0.0, a)
    # floor(log2 a) from the exponent: frexp gives a = m * 2**ex with m in [0.5, 1). For 0 the
    # spec takes q = 2**-24; f32 subnormals (e <= -127) land there through the max anyway.
    _, ex = np.frexp(a)
    e = np.where(a == 0, -1000, ex - 1)
    q = np.ldexp(1.0, np.maximum(e - 10, -24).astype(np.int32))
    y = a / q
    t = np.floor(y)
    f = y - t
    up = r.astype(np.float64) * 2.0**-16 < f
    # sign(x) is read as x's sign bit, so -0.0 and negatives rounding to zero give -0.0.
    mag = (t + up) * q
    res = np.copysign(mag, x.astype(np.float64))
    # (t + up) * q is a float16 value except 65536 (a in [65504, 65536) rounding up), which the
    # conversion makes inf, the next value above float16's largest.
    with np.errstate(over="ignore"):
        out = res.astype(np.float16)
    out[big] = narrow(x[big], FLOAT16)
    return out


def stochastic(x, dtype, r):
    """Spec "Stochastic rounding of x (float32) with a 16-bit random r in [0, 65536)" to
    bfloat16 or float16; r has x's shape."""
    x = np.asarray(x)
    if x.dtype != FLOAT32:
        raise TypeError("stochastic rounding takes float32")
    r = np.asarray(r)
    if r.shape != x.shape:
        raise ValueError("one random per element")
    if r.size and (r.min() < 0 or r.max() >= 65536):
        raise ValueError("randoms are 16-bit")
    dtype = np.dtype(dtype)
    if dtype == BFLOAT16:
        return _stochastic_bf16(x, r)
    if dtype == FLOAT16:
        return _stochastic_f16(x, r)
    raise TypeError(f"stochastic rounding makes bfloat16 or float16, not {dtype}")


# --- 8-bit block buffer ----------------------------------------------------------------------

def e4m3_magnitudes():
    """Spec "code map": F(m) for m = 0..127 (float64; all exact, increasing, F(127) = 480)."""
    out = np.empty(128)
    for m in range(128):
        big_e, mant = m >> 3, m & 7
        out[m] = mant * 2.0**-9 if big_e == 0 else (1 + mant / 8) * 2.0 ** (big_e - 7)
    return out


_F = e4m3_magnitudes()
_F32 = _F.astype(np.float32)  # every F(m) is a float32 (4 significant bits)


def e4m3_index(y):
    """Spec "nearest-even E4M3 magnitude index of y" for float32 y in [0, 480]: the nearer of the
    two table neighbours, on a tie the even index (even mantissa). Written with the sorted table
    rather than bit fields; for y < 2**-6 this is round-half-even(y * 512) as the spec says."""
    y = np.asarray(y, dtype=np.float64)
    if y.size and not (y.min() >= 0 and y.max() <= E4M3_MAX):
        raise ValueError("y is in [0, 480]")
    hi = np.clip(np.searchsorted(_F, y, side="left"), 0, 127)  # first F >= y
    lo = np.maximum(hi - 1, 0)
    d_lo = y - _F[lo]  # exact: y and F have few bits and similar magnitudes
    d_hi = _F[hi] - y
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    return np.where(pick_hi, hi, lo).astype(np.int64)


def quantize(v):
    """Spec "encode block j": float32 values -> (codes int8 with v's shape, scales float32 of
    ceil(n / 256) entries)."""
    v = np.asarray(v)
    if v.dtype != FLOAT32:
        raise TypeError("quantize takes float32")
    flat = v.ravel()  # C order: block j is elements [256j, 256j + 256)
    n = flat.size
    codes = np.zeros(n, dtype=np.int8)
    scales = np.zeros(-(-n // BLOCK), dtype=np.float32)
    f480 = np.float32(E4M3_MAX)
    tiny = np.float32(E4M3_MAX * 2.0**-126)  # exact: 1.875 * 2**-118
    for j in range(scales.size):
        blk = flat[j * BLOCK:(j + 1) * BLOCK]
        if not np.isfinite(blk).all():
            scales[j] = np.nan
            continue
        m = np.max(np.abs(blk))
        if m < tiny:  # includes 0
            continue
        scales[j] = m / f480  # float32 / float32: one float32 division
        inv = f480 / m
        y = np.minimum(np.abs(blk) * inv, f480)  # float32 product, then the clamp
        mag = e4m3_index(y)
        codes[j * BLOCK:(j + 1) * BLOCK] = np.where(np.signbit(blk), -mag, mag)
    return codes.reshape(v.shape), scales


def dequantize(codes, scales):
    """Spec "decode": b = (+-F(|k|)) * scale_j, one float32 multiplication."""
    codes = np.asarray(codes)
    scales = np.asarray(scales)
    if codes.dtype != np.int8 or scales.dtype != FLOAT32:
        raise TypeError("codes are int8, scales float32")
    if scales.shape != (-(-codes.size // BLOCK),):
        raise ValueError("one scale per block of 256")
    k = codes.ravel().astype(np.int64)
    if k.size and k.min() < -127:
        raise ValueError("codes are in [-127, 127]")
    val = np.where(k < 0, -_F32[np.abs(k)], _F32[np.abs(k)])
    s = np.repeat(scales, BLOCK)[:k.size]
    return (val * s).reshape(codes.shape)


# --- one step --------------------------------------------------------------------------------

def _widen_buffer(b):
    if b is None:
        return None
    if isinstance(b, tuple):
        return dequantize(*b)
    return widen(b)


def _narrow_buffer(b32, b32_in, like):
    if b32 is b32_in:
        # The rule returned the buffer it was given (momentum 0, or None): it stays as stored.
        # (Whether re-quantizing is the identity is not something the spec says.)
        return like
    if like is None:
        return b32  # a buffer made without one (first step with None): float32
    if isinstance(like, tuple):
        return quantize(b32)
    return narrow(b32, np.asarray(like).dtype)


def lowp_step(rule, p, g, b, *, comp=None, rounding="nearest", seed=0, step=0, stream=0,
              **hyper):
    """Spec "All arithmetic of the update is float32": widen p (p + c, one float32 addition, when
    Kahan), g and b; run the float32 rule (reference.torch_sgd, keras_sgd or ema_sgd, hyper
    passed through); narrow p by `rounding` ("nearest", "stochastic" with key(seed, step, stream))
    or Kahan, b to its own storage (nearest; 8-bit: quantize). b is a float32/bfloat16/float16
    array, a (codes, scales) tuple, or None. Returns (p, b, comp); comp is None unless given.

    float64 p takes float64 g and b and runs the rule in float64 (no narrowing)."""
    p = np.asarray(p)
    g = np.asarray(g)
    pd = p.dtype
    if rounding not in ("nearest", "stochastic"):
        raise ValueError("rounding is 'nearest' or 'stochastic'")
    if pd == FLOAT64:
        # Spec "Buffer ... float64 only with float64 P": read as float64 P <-> float64 B.
        if g.dtype != FLOAT64 or (b is not None and np.asarray(b).dtype != FLOAT64):
            raise TypeError("float64 parameters take float64 gradients and buffers")
        if comp is not None:
            raise TypeError("Kahan compensation is for bfloat16/float16 parameters")
        p2, b2 = rule(p, g, b, **hyper)
        return p2, b2, None
    if pd not in (FLOAT32, *LOW):
        raise TypeError(f"parameter dtype {pd}")
    if g.dtype not in (pd, FLOAT32):
        raise TypeError("gradients are the parameter's dtype or float32")
    if g.shape != p.shape:
        raise ValueError("gradient shape")
    if isinstance(b, tuple) and (np.asarray(b[0]).shape != p.shape):
        raise ValueError("codes have the parameter's shape")

    if comp is not None:
        comp = np.asarray(comp)
        if pd not in LOW or comp.dtype != pd or comp.shape != p.shape:
            raise TypeError("compensation: same 16-bit dtype and shape as the parameter")
        if rounding == "stochastic":
            raise ValueError("stochastic rounding with compensations is refused")
        x = widen(p) + widen(comp)  # one float32 addition
    else:
        x = widen(p)

    b32_in = _widen_buffer(b)
    x2, b32 = rule(x, widen(g), b32_in, **hyper)
    x2 = np.asarray(x2, dtype=np.float32)

    if comp is not None:
        p_new = narrow(x2, pd)
        c_new = narrow(x2 - widen(p_new), pd)  # the subtraction in float32
    elif rounding == "stochastic" and pd in LOW:
        r = random16(seed, step, stream, x2.size).reshape(x2.shape)
        p_new, c_new = stochastic(x2, pd, r), None
    else:
        # float32 parameters store the float32 result as it is, whatever the rounding.
        p_new, c_new = narrow(x2, pd), None
    return p_new, _narrow_buffer(b32, b32_in, b), c_new
