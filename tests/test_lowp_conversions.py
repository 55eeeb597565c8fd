"""The kernels' conversions (rules.hpp: widen, narrow, the 8-bit encode and decode) on every
bit pattern that matters, through the fused and staged kernels, on every ISA this CPU runs and
1, 2 and 3 threads, against the independent reference (tests/reference_lowp.py).

A torch-style first step with lr 0 stores b <- g: the buffer then holds narrow(g) (or g's 8-bit
blocks). A later step with momentum 1, lr 1, g = 0 and p = 0 gives p = 0 - widen(b) and stores b
back unchanged. The random tests elsewhere meet few of the cases a branch-free conversion gets
wrong (ties, carries into the exponent, subnormals, overflow, NaN); these tests meet all of them.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum.functional import sgd_

import reference_lowp as lp
from lowp_cases import CONFIGS, kernel_config

BF16 = lp.BFLOAT16
TYPES = {"bfloat16": BF16, "float16": np.dtype(np.float16)}


def float32_patterns():
    """Every float32 high half (sign, exponent, 7 fraction bits) with low halves at and around
    the roundings' boundaries: bfloat16's (bit 15) and float16's (bit 12), their ties, the
    neighbours of the ties and the extremes. 1.6 M values, NaN and infinities included."""
    highs = np.arange(1 << 16, dtype=np.uint32) << 16
    lows = np.array([0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2001, 0x3000,
                     0x5000, 0x7FFF, 0x8000, 0x8001, 0x9000, 0xB000, 0xD000, 0xE000, 0xEFFF,
                     0xF000, 0xF001, 0xFFFE, 0xFFFF, 0x3FFF, 0xC001, 0x6000], dtype=np.uint32)
    return (highs[:, None] | lows[None, :]).ravel().view(np.float32)


def nan_equal(got, want):
    """Bit for bit, any NaN equal to any NaN (the reference libraries' NaN payloads differ; the
    kernels' own NaN is checked in test_reference_lowp)."""
    got_nan, want_nan = np.isnan(got.astype(np.float32)), np.isnan(want.astype(np.float32))
    assert (got_nan == want_nan).all(), "NaN at other places"
    bits = {1: np.uint8, 2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
    diff = np.flatnonzero(got.view(bits)[~got_nan] != want.view(bits)[~want_nan])
    assert diff.size == 0, f"{diff.size} values differ, first {got[~got_nan][diff[:4]]} " \
                           f"for {want[~want_nan][diff[:4]]}"


def store(grads, buffers, **kw):
    """b <- g on a first step (lr 0, so p is not looked at); float32 parameters."""
    params = [np.zeros(g.shape, np.float32) for g in grads]
    with np.errstate(invalid="ignore"):
        sgd_(params, grads, buffers, lr=0.0, momentum=0.9, first_step=True, **kw)


def load(buffers):
    """0 - widen(b), by a step with momentum 1, lr 1 and zero gradients."""
    params = [np.zeros(_size(b), np.float32) for b in buffers]
    grads = [np.zeros(_size(b), np.float32) for b in buffers]
    sgd_(params, grads, buffers, lr=1.0, momentum=1.0)
    return params


def _size(b):
    return b.codes.size if isinstance(b, fm.QuantizedBuffer) else b.size


@pytest.mark.parametrize("name", TYPES)
def test_narrowing_every_boundary_matches_the_reference(name):
    x = float32_patterns()
    with np.errstate(invalid="ignore"):  # ml_dtypes warns on NaN
        want = lp.narrow(x, TYPES[name])
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            b = np.zeros(x.size, TYPES[name])
            store([x], [b])
            nan_equal(b, want)


@pytest.mark.parametrize("name", TYPES)
def test_widening_every_16bit_value_matches_the_reference(name):
    stored = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(TYPES[name])
    want = -lp.widen(stored)
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            b = stored.copy()
            (p,) = load([b])
            nonzero = want != 0
            nan_equal(p[nonzero], want[nonzero])
            assert (p[~nonzero] == 0).all()
            # and back: narrow(widen(b) + 0) is b, but for -0 (+0 after the addition) and NaN
            keep = stored.astype(np.float32) != 0
            nan_equal(b[keep], stored[keep])


def block_values(rng):
    """8-bit blocks that meet every code's boundaries: per block a largest magnitude 480 (scale 1,
    so the products are the values) and every midpoint between neighbouring E4M3 magnitudes,
    one float32 step below, at and above it, both signs; blocks of random magnitudes over 2**20
    of range; a block of subnormal-code values only; a zero block, a block below the smallest
    scale, and blocks holding an infinity and a NaN."""
    f = lp.e4m3_magnitudes().astype(np.float32)
    mid = ((f[:-1].astype(np.float64) + f[1:]) / 2).astype(np.float32)
    around = np.concatenate([np.nextafter(mid, -np.inf), mid, np.nextafter(mid, np.inf), f])
    ties = np.concatenate([around, -around])
    blocks = []
    for start in range(0, ties.size, 255):
        blk = np.zeros(256, np.float32)
        part = ties[start:start + 255]
        blk[:part.size] = part
        blk[255] = 480.0
        blocks.append(blk)
    for _ in range(8):
        mag = np.exp2(rng.uniform(-20, 0, 256)).astype(np.float32)
        signed = mag * rng.choice([-1, 1], 256) * rng.uniform(1e-30, 1e30)
        blocks.append(signed.astype(np.float32))
    blocks.append(np.linspace(-2**-6, 2**-6, 256, dtype=np.float32))
    blocks.append(np.zeros(256, np.float32))
    blocks.append(np.full(256, 1e-37, np.float32))
    for special in (np.inf, -np.inf, np.nan):
        blk = rng.standard_normal(256).astype(np.float32)
        blk[17] = special
        blocks.append(blk)
    return np.concatenate([*blocks, rng.standard_normal(77).astype(np.float32)])  # a tail


def test_encoding_every_code_boundary_matches_the_reference():
    x = block_values(np.random.default_rng(7))
    want_codes, want_scales = lp.quantize(x)
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            q = fm.QuantizedBuffer.zeros(x.size)
            store([x], [q])
            assert (q.codes == want_codes).all(), cfg
            nan_equal(q.scales, want_scales)


def test_decoding_every_code_matches_the_reference_and_encodes_back():
    codes = np.tile(np.arange(-127, 129, dtype=np.int16), 6)[:6 * 256].astype(np.int8)
    codes[codes == -128] = 0  # -128 is not a code
    scales = np.array([1.0, 2.0**-100, 3.7e30, 0.0, 1.5e-38, np.nan], np.float32)
    want = -lp.dequantize(codes, scales)
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            q = fm.QuantizedBuffer(codes.copy(), scales.copy())
            (p,) = load([q])
            nonzero = want != 0
            nan_equal(p[nonzero], want[nonzero])
            assert (p[~nonzero] == 0).all()
            # each block's largest code is 127, so the values encode back to the same codes
            finite = np.repeat(np.isfinite(scales) & (scales >= 480 * 2.0**-126), 256)
            assert (q.codes[finite] == codes[finite]).all(), cfg


@pytest.mark.parametrize("name", TYPES)
def test_compensated_parameters_split_every_boundary(name):
    """A Kahan-compensated parameter's own narrowing: p <- p - 0*g keeps its float32 value
    x = p + c, then splits it into narrow(x) and narrow(x - narrow(x))."""
    x = float32_patterns()
    with np.errstate(over="ignore", invalid="ignore"):
        x = x[np.isfinite(lp.narrow(x, TYPES[name]).astype(np.float32))]  # p + c finite
        p0 = lp.narrow(x, TYPES[name])
        c0 = lp.narrow(x - p0.astype(np.float32), TYPES[name])
        value = p0.astype(np.float32) + c0.astype(np.float32)
        want_p = lp.narrow(value, TYPES[name])
        want_c = lp.narrow(value - want_p.astype(np.float32), TYPES[name])
    for cfg in CONFIGS:
        with kernel_config(*cfg):
            p, c = p0.copy(), c0.copy()
            g = np.zeros(x.size, TYPES[name])
            sgd_([p], [g], [np.zeros(x.size, TYPES[name])], lr=0.0, momentum=0.9,
                 compensations=[c])
            nan_equal(p, want_p)
            nan_equal(c, want_c)
