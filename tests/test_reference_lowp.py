"""The low-precision reference (reference_lowp.py) checked against truths that do not come from
it: neighbours found with np.nextafter, exhaustive counts over all 65536 randoms, SplitMix64's
published outputs, a second scalar transcription of the hash, ml_dtypes' float8_e4m3fn, error
bounds derived from the float32 arithmetic, and float64 accumulations. Statistical checks use
fixed seeds and bounds of six standard deviations or more, so they are deterministic and not
tuned to the draws."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import reference as ref
import reference_lowp as lp

BF16 = lp.BFLOAT16
F16 = lp.FLOAT16
LOW = [pytest.param(BF16, id="bfloat16"), pytest.param(F16, id="float16")]
M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF


def finite_values(dtype):
    """Every finite value of a 16-bit dtype, as that dtype."""
    v = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)
    return v[np.isfinite(v.astype(np.float32))]


def random_f32(rng, n, lo_exp, hi_exp):
    """float32 values of both signs with exponents uniform in [lo_exp, hi_exp) and random
    23-bit significands (every bit pattern reachable, ties included)."""
    e = rng.integers(lo_exp, hi_exp, n)
    mant = rng.integers(0, 1 << 23, n)
    mag = np.ldexp(1.0 + mant / 2.0**23, e)
    return (mag * rng.choice([-1.0, 1.0], n)).astype(np.float32)


def neighbours(x, dtype):
    """The values of `dtype` just below and just above float32 x (equal when x is one), found
    with nearest rounding and np.nextafter only."""
    n = lp.narrow(x, dtype)
    nf = n.astype(np.float32)
    with np.errstate(over="ignore"):
        down = np.nextafter(n, np.array(-np.inf, dtype=dtype))
        upv = np.nextafter(n, np.array(np.inf, dtype=dtype))
    lo = np.where(nf <= x, n, down)
    hi = np.where(nf >= x, n, upv)
    return lo.astype(np.float64), hi.astype(np.float64)


# --- conversions -----------------------------------------------------------------------------

def test_widen_bfloat16_is_the_bits_shifted_left_by_16():
    h = np.arange(1 << 16, dtype=np.uint32)
    w = lp.widen(h.astype(np.uint16).view(BF16))
    assert w.dtype == np.float32
    assert np.array_equal(w.view(np.uint32), h << 16)


@pytest.mark.parametrize("dtype", LOW)
def test_narrow_after_widen_round_trips_every_finite_value(dtype):
    v = finite_values(dtype)
    assert np.array_equal(lp.narrow(lp.widen(v), dtype).view(np.uint16), v.view(np.uint16))


def test_narrow_float16_overflows_to_inf_and_keeps_subnormals():
    x = np.array([65519.99, 65520.0, -1e6, 2.0**-24, 2.0**-25, 3 * 2.0**-26], np.float32)
    out = lp.narrow(x, F16).astype(np.float64)
    # 65520 is the midpoint between 65504 and 65536 (= inf): a tie to even, i.e. to inf
    assert out.tolist() == [65504.0, np.inf, -np.inf, 2.0**-24, 0.0, 2.0**-24]


# --- random numbers --------------------------------------------------------------------------

def test_mix64_is_splitmix64():
    # SplitMix64 seeded with 0 outputs mix64(k * golden) for k = 0, 1, 2, ...: its published
    # first outputs.
    golden = 0x9E3779B97F4A7C15
    outs = [lp.mix64((k * golden) & M64) for k in range(4)]
    assert outs == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
                    0xF88BB8A8724C81EC]


def _random16_scalar(seed, step, stream, i):
    """A second transcription of the spec, one element, Python ints only."""
    def mix(z):
        z = (z + 0x9E3779B97F4A7C15) % 2**64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        return z ^ (z >> 31)

    k = mix(mix(mix(seed) ^ step) ^ stream)
    x = (i % 2**32) ^ (mix(k ^ (i >> 32)) % 2**32)
    x ^= x >> 16
    x = (x * 0x7FEB352D) % 2**32
    x ^= x >> 15
    x = (x * 0x846CA68B) % 2**32
    x ^= x >> 16
    return x >> 16


@pytest.mark.parametrize("seed,step,stream", [(0, 0, 0), (12345, 7, 3), (M64, M64, M64)])
def test_random16_matches_a_scalar_transcription_including_indices_above_2_32(seed, step, stream):
    idx = [0, 1, 255, 256, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**33 + 5, 2**40 - 1, 2**63 - 1]
    got = lp.random16_at(seed, step, stream, np.array(idx, dtype=np.int64))
    assert got.dtype == np.uint32
    assert got.tolist() == [_random16_scalar(seed, step, stream, i) for i in idx]
    assert np.array_equal(lp.random16(seed, step, stream, 300),
                          [_random16_scalar(seed, step, stream, i) for i in range(300)])


def test_random16_is_reproducible_and_16_bit():
    a = lp.random16(42, 9, 2, 5000)
    assert np.array_equal(a, lp.random16(42, 9, 2, 5000))
    assert a.dtype == np.uint32 and a.max() < 65536
    assert np.array_equal(lp.random16_at(42, 9, 2, np.arange(1000, 3000)), a[1000:3000])


def _chi_square_256(values):
    counts = np.bincount(values, minlength=256)
    expected = values.size / 256
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("offset", [0, 2**32, 3 * 2**40])
def test_random16_is_roughly_uniform(offset):
    r = lp.random16_at(1, 2, 3, offset + np.arange(1 << 18, dtype=np.int64))
    # chi-square with 255 degrees of freedom: mean 255, sd sqrt(510) ~ 22.6; +-7 sd
    for bins in (r >> 8, r & 255):
        assert 97 < _chi_square_256(bins) < 413
    assert abs(r.mean() - 32767.5) < 7 * 65536 / math.sqrt(12 * r.size)


def test_random16_changes_with_seed_step_stream_and_the_high_index_bits():
    n = 4096
    base = lp.random16(5, 6, 7, n)
    others = [lp.random16(4, 6, 7, n), lp.random16(5, 5, 7, n), lp.random16(5, 6, 8, n),
              lp.random16(6, 5, 7, n),  # seed and step swapped into each other
              lp.random16_at(5, 6, 7, 2**32 + np.arange(n, dtype=np.int64))]
    for o in others:
        # equal by chance with probability 2**-16 each: 0.06 expected in 4096
        assert np.count_nonzero(o == base) <= 5


# --- stochastic rounding ---------------------------------------------------------------------

def _values_for(dtype, rng, n):
    if dtype == BF16:
        return random_f32(rng, n, -140, 128)  # float32 subnormals up to the top binade
    # float16: its subnormals (below 2**-14) and below, up to >= 65536 (nearest there)
    return random_f32(rng, n, -30, 18)


@pytest.mark.parametrize("dtype", LOW)
def test_stochastic_gives_one_of_the_two_neighbours(dtype):
    rng = np.random.default_rng(0)
    x = _values_for(dtype, rng, 200_000)
    x[:6] = [0.0, -0.0, 65510.0, -65530.0, 3e38, -3e38]
    r = rng.integers(0, 65536, x.size).astype(np.uint32)
    out = lp.stochastic(x, dtype, r)
    assert out.dtype == dtype
    lo, hi = neighbours(x, dtype)
    o = out.astype(np.float64)
    assert np.all((o == lo) | (o == hi))
    assert np.array_equal(np.signbit(o), np.signbit(x))  # the sign is kept, zeros included


@pytest.mark.parametrize("dtype", LOW)
def test_stochastic_is_exact_for_representable_values_and_keeps_nan_and_inf(dtype):
    v = finite_values(dtype)
    x = lp.widen(v)
    for r in (0, 1, 32768, 65535):
        out = lp.stochastic(x, dtype, np.full(x.size, r, np.uint32))
        assert np.array_equal(out.view(np.uint16), v.view(np.uint16))
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    out = lp.stochastic(special, dtype, np.array([0, 65535, 65535], np.uint32))
    f = out.astype(np.float32)
    assert np.isnan(f[0]) and f[1] == np.inf and f[2] == -np.inf


@pytest.mark.parametrize("dtype", LOW)
def test_stochastic_rounds_up_for_exactly_ceil_65536_f_of_the_65536_randoms(dtype):
    # f = (|x| - |lo|) / (|hi| - |lo|), the fraction of the way to the value above: the number of
    # randoms that round the magnitude up is 65536 f when f has at most 16 bits (always for
    # bfloat16, for float16's normal numbers) and ceil(65536 f) otherwise (float16 subnormals).
    rng = np.random.default_rng(1)
    x = _values_for(dtype, rng, 300)
    x = x[np.abs(x.astype(np.float64)) < (65504 if dtype == F16 else 3e38)]
    r = np.arange(65536, dtype=np.uint32)
    lo, hi = neighbours(x, dtype)
    for xi, below, above in zip(x, lo, hi, strict=True):
        out = lp.stochastic(np.full(65536, xi), dtype, r).astype(np.float64)
        toward_zero = below if abs(below) < abs(above) else above
        ups = np.count_nonzero(out != toward_zero)
        gap = abs(above - below)
        f = (abs(float(xi)) - abs(toward_zero)) / gap if gap else 0.0
        assert ups == math.ceil(65536 * f), (xi, ups, f)


@pytest.mark.parametrize("dtype", LOW)
def test_stochastic_mean_over_steps_converges_to_x(dtype):
    rng = np.random.default_rng(2)
    x = _values_for(dtype, rng, 64)
    x = x[np.abs(x.astype(np.float64)) < 60000]
    lo, hi = neighbours(x, dtype)
    steps = 4096
    total = np.zeros(x.size)
    for s in range(steps):
        total += lp.stochastic(x, dtype, lp.random16(11, s, 0, x.size)).astype(np.float64)
    mean = total / steps
    gap = np.abs(hi - lo)
    p = np.where(gap > 0, np.abs(x - lo) / np.where(gap > 0, gap, 1), 0)
    # 6 sd of a mean of Bernoulli draws, one draw of slack (p near 0 or 1 is not normal) and the
    # 2**-16 by which ceil(65536 f) / 65536 may exceed f
    bound = gap * (6 * np.sqrt(p * (1 - p) / steps) + 1 / steps + 2.0**-16)
    assert np.all(np.abs(mean - x) <= bound)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_rounds_up_a_quarter_of_the_time_a_quarter_of_the_way(dtype, sign):
    base = np.float64(1.5)
    ulp = 2.0**-7 if dtype == BF16 else 2.0**-10
    x = np.float32(sign * (base + ulp / 4))
    away = np.float64(sign * (base + ulp))
    # across elements of one call (2**16 draws, sd 0.0017) ...
    n = 1 << 16
    out = lp.stochastic(np.full(n, x), dtype, lp.random16(3, 1, 0, n)).astype(np.float64)
    assert abs(np.mean(out == away) - 0.25) < 6 * math.sqrt(0.25 * 0.75 / n)
    # ... and across steps for one element (4096 draws, sd 0.0068)
    k = 4096
    rs = np.array([lp.random16_at(3, s, 5, [17])[0] for s in range(k)], np.uint32)
    out = lp.stochastic(np.full(k, x), dtype, rs).astype(np.float64)
    assert abs(np.mean(out == away) - 0.25) < 6 * math.sqrt(0.25 * 0.75 / k)


# --- 8-bit block buffer ----------------------------------------------------------------------

def test_e4m3_table_is_ml_dtypes_float8_e4m3fn_plus_480():
    f8 = np.arange(127, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    table = lp.e4m3_magnitudes()
    assert np.array_equal(table[:127], f8)
    assert table[127] == 480.0 and np.all(np.diff(table) > 0)


def _with_unit_scale(y):
    """Blocks of 255 magnitudes y, each led by 480 so that scale = inv = 1 and the codes are
    the E4M3 indices of y itself."""
    y = np.asarray(y, np.float32)
    pad = (-y.size) % 255
    blocks = np.concatenate([y, np.zeros(pad, np.float32)]).reshape(-1, 255)
    v = np.concatenate([np.full((blocks.shape[0], 1), 480, np.float32), blocks], axis=1)
    codes, scales = lp.quantize(v)
    assert np.all(scales == 1)
    return codes[:, 1:].ravel()[:y.size]


def test_e4m3_rounding_matches_ml_dtypes_below_448():
    table = lp.e4m3_magnitudes()
    mids = ((table[:-1] + table[1:]) / 2)[table[1:] <= 448].astype(np.float32)
    rng = np.random.default_rng(3)
    y = np.concatenate([
        mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(np.inf)),
        table[table <= 448].astype(np.float32),
        rng.uniform(0, 448, 50_000).astype(np.float32),
        np.exp2(rng.uniform(-30, np.log2(448), 50_000)).astype(np.float32)])
    y = np.minimum(y, np.float32(448))
    want = y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8) & 0x7F
    assert np.array_equal(_with_unit_scale(y), want)


def test_e4m3_subnormals_round_half_even_times_512():
    y = (np.arange(0, 8 * 512) / 512 * 2.0**-9).astype(np.float32)  # [0, 2**-6) in 2**-18 steps
    assert np.array_equal(_with_unit_scale(y), np.rint(y.astype(np.float64) * 512))


def test_e4m3_between_448_and_480():
    y = np.array([448, 463.99, 464, 464.01, 479, 480], np.float32)
    assert _with_unit_scale(y).tolist() == [126, 126, 126, 127, 127, 127]  # 464: tie to even 126


@pytest.mark.parametrize("k", [0, -20, 30, -100])
def test_every_e4m3_magnitude_round_trips_with_a_power_of_two_scale(k):
    f = lp.e4m3_magnitudes()
    v = np.concatenate([f, -f]) * 2.0**k  # absmax 480 * 2**k: scale 2**k, inv 2**-k exactly
    v = v.astype(np.float32)
    codes, scales = lp.quantize(v)
    m = np.arange(128)
    assert scales.tolist() == [2.0**k]
    assert np.array_equal(codes, np.concatenate([m, -m]))  # -0.0 -> code 0
    assert np.array_equal(lp.dequantize(codes, scales), v)


def test_quantize_shapes_and_code_range():
    rng = np.random.default_rng(4)
    v = (rng.standard_normal((3, 300)) * 10).astype(np.float32)  # 900: 4 blocks, last of 132
    codes, scales = lp.quantize(v)
    assert codes.dtype == np.int8 and codes.shape == v.shape and codes.flags.c_contiguous
    assert scales.dtype == np.float32 and scales.shape == (4,)
    assert codes.min() >= -127 and codes.max() <= 127
    flat = v.ravel()
    for j in range(4):
        blk = flat[256 * j:256 * j + 256]
        assert scales[j] == np.max(np.abs(blk)) / np.float32(480)  # the block's own absmax
        assert 127 in np.abs(codes.ravel()[256 * j:256 * j + 256])
    assert lp.dequantize(codes, scales).shape == v.shape
    empty = lp.quantize(np.zeros((0, 3), np.float32))
    assert empty[0].shape == (0, 3) and empty[1].shape == (0,)


def test_dequantize_error_bounds():
    # scale = (m/480)(1+d), inv = (480/m)(1+d), y = fl(|v| inv), out = fl(F(y) s), |d| <= 2**-24.
    # Where y >= 2**-6 (E4M3 normal), F = y(1 + e) with |e| <= 2**-4 / (1 + 2**-4) = 1/17 (half
    # a spacing over the smallest value of the binade; the clamp at 480 costs two roundings), so
    # |out - v| <= |v| ((1 + 1/17)(1 + 2**-24)**4 - 1) + (float32 underflow of out) <=
    # |v| (1/17 + 2**-21) + 2**-149; y >= 2**-6 holds where |v| >= 2**-6 (m/480)(1 + 2**-22).
    # Below, F is within 2**-10 of y: |out - v| <= (m/480)(2**-10 + 2**-28) + 2**-21 |v| + 2**-149.
    rng = np.random.default_rng(5)
    n = 256 * 400
    mags = np.exp2(rng.uniform(-40, 0, n)) * np.exp2(rng.integers(-80, 80, n // 256)).repeat(256)
    v = (mags * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    # a last block with absmax 480 (scale 1) and values just above 2**e (1 + 1/16), where the
    # relative error is largest
    e = np.arange(-6, 8)
    worst = np.ldexp(1 + 2.0**-4 + 2.0**-20, e) * np.where(e % 2, 1.0, -1.0)
    last = np.zeros(256)
    last[0], last[1:1 + e.size] = 480, worst
    v = np.concatenate([v, last.astype(np.float32)])
    codes, scales = lp.quantize(v)
    out = lp.dequantize(codes, scales).astype(np.float64)
    a = np.abs(v.astype(np.float64))
    m = np.repeat(np.abs(v.astype(np.float64)).reshape(-1, 256).max(axis=1), 256)
    err = np.abs(out - v)
    normal = a >= 2.0**-6 * (m / 480) * (1 + 2.0**-22)
    assert np.all(err[normal] <= a[normal] * (1 / 17 + 2.0**-21) + 2.0**-149)
    sub = ~normal
    assert np.all(err[sub] <= (m[sub] / 480) * (2.0**-10 + 2.0**-28) + 2.0**-21 * a[sub]
                  + 2.0**-149)
    assert np.all((out == 0) | (np.sign(out) == np.sign(v)))
    # the 1/17 is nearly reached: the bound is not loose by mistake
    assert np.max(err[normal] / a[normal]) > 1 / 17 - 1e-4
    assert np.max(err[normal] / a[normal]) <= 1 / 16


def _e4m3fn_index(y):
    """ml_dtypes' nearest-even float8_e4m3fn magnitude index of float32 y <= 448."""
    return np.asarray(y, np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8) & 0x7F


def test_encode_multiplies_by_inv_and_decode_multiplies_by_scale():
    # y = fl(|v| * fl(480 / m)), not fl(|v| / fl(m / 480)): values v whose y lands on or next to
    # the E4M3 midpoint 1.0625 separate the two.
    rng = np.random.default_rng(8)
    f480 = np.float32(480)
    ms = rng.uniform(1, 2, 200).astype(np.float32)
    rows, separating = [], 0
    for m in ms:
        c = np.float32(1.0625 * float(m) / 480)
        near = c + np.arange(-6, 7) * np.spacing(c)  # float32 neighbours of the midpoint's v
        blk = np.concatenate([[m], near]).astype(np.float32)
        y_mul = np.minimum(np.abs(blk) * (f480 / m), f480)
        y_div = np.minimum(np.abs(blk) / (m / f480), f480)
        separating += np.count_nonzero(_e4m3fn_index(y_mul[1:]) != _e4m3fn_index(y_div[1:]))
        rows.append((blk, np.concatenate([[127], _e4m3fn_index(y_mul[1:])])))
    assert separating > 50
    for blk, want in rows:
        codes, scales = lp.quantize(blk)
        assert np.array_equal(codes, want)
        # decode: F(|k|) from ml_dtypes (k < 127 here), times the scale, in float32
        f = np.abs(codes[1:]).astype(np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        assert np.array_equal(lp.dequantize(codes, scales)[1:], f * scales[0])


def test_nan_or_inf_block_has_nan_scale_and_zero_codes():
    v = np.ones(4 * 256, np.float32)
    v[256 + 3] = np.nan
    v[512 + 255] = np.inf
    v[768] = -np.inf
    codes, scales = lp.quantize(v)
    assert scales[0] == np.float32(1) / np.float32(480)
    assert np.isnan(scales[1:]).all()
    assert np.all(codes[256:] == 0) and np.all(codes[:256] == 127)
    out = lp.dequantize(codes, scales)
    assert np.all(out[:256] == 1) and np.isnan(out[256:]).all()


def test_zero_and_tiny_blocks_have_zero_scale():
    tiny = np.float32(480 * 2.0**-126)
    below = np.nextafter(tiny, np.float32(0))
    v = np.zeros(4 * 256, np.float32)
    v[256:512] = -0.0
    v[512:768] = np.linspace(-below, below, 256, dtype=np.float32)  # absmax just below the limit
    v[768] = tiny  # absmax exactly 480 * 2**-126: quantized
    v[769] = -tiny / 2
    codes, scales = lp.quantize(v)
    assert scales[:3].tolist() == [0.0, 0.0, 0.0] and np.all(codes[:768] == 0)
    assert scales[3] == np.float32(2.0**-126)
    assert codes[768] == 127 and codes[769] == -lp.e4m3_index(np.float32(240))[()]
    assert np.all(lp.dequantize(codes, scales)[:768] == 0)


# --- one step --------------------------------------------------------------------------------

RULES = [
    pytest.param(ref.torch_sgd, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
                 id="torch-nesterov"),
    pytest.param(ref.torch_sgd, dict(lr=0.1, momentum=0.9, dampening=0.1, first_step=True),
                 id="torch-first"),
    pytest.param(ref.keras_sgd, dict(lr=0.05, momentum=0.8, weight_decay=1e-3), id="keras"),
    pytest.param(ref.ema_sgd, dict(lr=0.2, beta=0.9, maximize=True), id="ema"),
]


def _problem(n=1000, seed=6):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("rule,hyper", RULES)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_float32_storage_is_the_plain_rule(rule, hyper, rounding):
    p, g, b = _problem()
    before = [p.copy(), g.copy(), b.copy()]
    p2, b2, c2 = lp.lowp_step(rule, p, g, b, rounding=rounding, seed=1, step=2, **hyper)
    pr, br = rule(p, g, b, **hyper)
    assert p2.dtype == b2.dtype == np.float32 and c2 is None
    assert np.array_equal(p2, pr) and np.array_equal(b2, br)
    assert all(np.array_equal(x, y) for x, y in zip([p, g, b], before, strict=True))


@pytest.mark.parametrize("rule,hyper", [(ref.torch_sgd, dict(lr=0.1)),
                                        (ref.keras_sgd, dict(lr=0.1)),
                                        (ref.ema_sgd, dict(lr=0.1, beta=0.0))])
def test_no_momentum_takes_no_buffer(rule, hyper):
    p, g, _ = _problem()
    p2, b2, _ = lp.lowp_step(rule, p.astype(BF16), g, None, **hyper)
    assert b2 is None
    assert np.array_equal(p2, lp.narrow(rule(lp.widen(p.astype(BF16)), g, None, **hyper)[0], BF16))


@pytest.mark.parametrize("kind", ["bf16", "8bit"])
def test_an_unused_buffer_stays_as_stored(kind):
    p, g, b = _problem(n=600)
    b = b.astype(BF16) if kind == "bf16" else lp.quantize(b)
    _, b2, _ = lp.lowp_step(ref.ema_sgd, p.astype(F16), g, b, lr=0.1, beta=0.0)
    assert b2 is b


def test_float64_runs_the_rule_in_float64():
    p, g, b = (x.astype(np.float64) for x in _problem())
    p2, b2, _ = lp.lowp_step(ref.torch_sgd, p, g, b, lr=0.1, momentum=0.9)
    pr, br = ref.torch_sgd(p, g, b, lr=0.1, momentum=0.9)
    assert p2.dtype == np.float64 and np.array_equal(p2, pr) and np.array_equal(b2, br)


@pytest.mark.parametrize("pdtype", LOW)
@pytest.mark.parametrize("bdtype", [np.float32, *LOW])
@pytest.mark.parametrize("gdtype", ["param", np.float32])
def test_sixteen_bit_storage_widens_runs_float32_and_narrows(pdtype, bdtype, gdtype):
    p, g, b = _problem()
    p = p.astype(pdtype)
    g = g.astype(pdtype if gdtype == "param" else gdtype)
    b = b.astype(bdtype)
    p2, b2, _ = lp.lowp_step(ref.torch_sgd, p, g, b, lr=0.1, momentum=0.9)
    pr, br = ref.torch_sgd(p.astype(np.float32), g.astype(np.float32), b.astype(np.float32),
                           lr=0.1, momentum=0.9)
    assert p2.dtype == pdtype and b2.dtype == bdtype
    assert np.array_equal(p2.view(np.uint16), pr.astype(pdtype).view(np.uint16))
    assert np.array_equal(b2, br.astype(bdtype))


def test_eight_bit_buffer_step():
    p, g, b = _problem(n=700)
    qb = lp.quantize(b)
    p2, (codes, scales), _ = lp.lowp_step(ref.torch_sgd, p, g, qb, lr=0.1, momentum=0.9)
    b_old = lp.dequantize(*qb)
    pr, br = ref.torch_sgd(p, g, b_old, lr=0.1, momentum=0.9)
    # the parameter sees the float32 buffer of this step, before it is quantized
    assert np.array_equal(p2, pr)
    assert codes.dtype == np.int8 and scales.shape == (3,)
    new = lp.dequantize(codes, scales)
    assert np.all(np.abs(new - br) <= np.abs(br) / 16 + np.max(np.abs(br)) / 480 * 2.0**-9)


@pytest.mark.parametrize("buffer", ["nan-bf16", "nan-8bit"])
def test_first_step_does_not_read_the_buffer(buffer):
    p, g, _ = _problem(n=600)
    if buffer == "nan-bf16":
        bad, zero = np.full(600, np.nan, BF16), np.zeros(600, BF16)
    else:
        bad = (np.full(600, 77, np.int8), np.full(3, np.nan, np.float32))
        zero = lp.quantize(np.zeros(600, np.float32))
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, first_step=True)
    p_bad, b_bad, _ = lp.lowp_step(ref.torch_sgd, p.astype(BF16), g, bad, **kw)
    p_zero, b_zero, _ = lp.lowp_step(ref.torch_sgd, p.astype(BF16), g, zero, **kw)
    assert np.array_equal(p_bad.view(np.uint16), p_zero.view(np.uint16))
    if buffer == "nan-bf16":
        assert np.array_equal(b_bad.view(np.uint16), b_zero.view(np.uint16))
    else:
        assert all(np.array_equal(x, y) for x, y in zip(b_bad, b_zero, strict=True))


def test_stochastic_step_uses_the_key_of_seed_step_and_stream():
    p, g, _ = _problem(n=4096)
    p = p.astype(BF16)
    runs = {key: lp.lowp_step(ref.torch_sgd, p, g, None, lr=1e-3, rounding="stochastic",
                              seed=key[0], step=key[1], stream=key[2])[0].view(np.uint16)
            for key in [(1, 2, 3), (0, 2, 3), (1, 0, 3), (1, 2, 0)]}
    again = lp.lowp_step(ref.torch_sgd, p, g, None, lr=1e-3, rounding="stochastic",
                         seed=1, step=2, stream=3)[0]
    assert np.array_equal(again.view(np.uint16), runs[(1, 2, 3)])
    x = lp.widen(p) + np.float32(-1e-3) * g
    want = lp.stochastic(x, BF16, lp.random16(1, 2, 3, x.size))
    assert np.array_equal(want.view(np.uint16), runs[(1, 2, 3)])
    for key, r in runs.items():
        if key != (1, 2, 3):
            assert not np.array_equal(r, runs[(1, 2, 3)])


def test_kahan_with_stochastic_is_refused():
    p, g, _ = _problem()
    p = p.astype(BF16)
    with pytest.raises(ValueError, match="stochastic"):
        lp.lowp_step(ref.torch_sgd, p, g, None, comp=np.zeros_like(p), rounding="stochastic",
                     lr=0.1)


def test_kahan_keeps_the_residual():
    p, g, _ = _problem()
    p = p.astype(F16)
    p2, _, c2 = lp.lowp_step(ref.torch_sgd, p, g, None, comp=np.zeros_like(p), lr=1e-3)
    x = lp.widen(p) + np.float32(-1e-3) * g  # the float32 result
    assert c2.dtype == F16
    assert np.array_equal(p2, lp.narrow(x, F16))
    assert np.array_equal(c2, lp.narrow(x - lp.widen(p2), F16))
    pc = lp.widen(p2).astype(np.float64) + lp.widen(c2)
    assert np.all(np.abs(pc - x) <= np.abs(x - lp.widen(p2).astype(np.float64)))


@pytest.mark.parametrize("dtype", LOW)
def test_kahan_tracks_float64_much_better_than_nearest(dtype):
    # every update is below half a spacing of the parameter: nearest rounding stalls, Kahan keeps
    # the lost part in c.
    rng = np.random.default_rng(7)
    n, steps = 512, 1000
    p0 = rng.uniform(1.5, 2, n).astype(dtype)
    ulp = 2.0**-7 if dtype == BF16 else 2.0**-10  # the parameter's spacing in [1, 2)
    g = (rng.uniform(0.02, 0.06, n) * ulp).astype(np.float32)  # p stays in [1, 2)
    p_near, p_k, c_k = p0, p0, np.zeros_like(p0)
    exact = p0.astype(np.float64)
    for _ in range(steps):
        p_near = lp.lowp_step(ref.torch_sgd, p_near, g, None, lr=1.0)[0]
        p_k, _, c_k = lp.lowp_step(ref.torch_sgd, p_k, g, None, comp=c_k, lr=1.0)
        exact -= g.astype(np.float64)
    err_near = np.max(np.abs(p_near.astype(np.float64) - exact))
    err_kahan = np.max(np.abs(lp.widen(p_k).astype(np.float64) + lp.widen(c_k) - exact))
    assert np.array_equal(p_near, p0)  # stalled
    assert err_near >= steps * 0.02 * ulp * 0.99
    # |c| <= ulp/2, so c's rounding loses at most ulp 2**-9 (bfloat16, 8 significant bits) or
    # ulp 2**-12 (float16, 11) per step; the float32 additions 2**-24 each (x in [1, 2)).
    # With a constant g these losses need not cancel (bfloat16 loses about a quarter of the bound
    # here), yet the bound stays >= 10 times below nearest's stall for both dtypes.
    c_half_spacing = ulp * (2.0**-9 if dtype == BF16 else 2.0**-12)
    assert err_kahan <= steps * (c_half_spacing + 2 * 2.0**-24)
    assert err_kahan < err_near / 10


def test_stochastic_rounding_tracks_float64_on_average_where_nearest_stalls():
    n, steps, d = 4096, 512, 2.0**-12  # below half bfloat16's spacing just under 1 (2**-9)
    p = np.ones(n, BF16)
    g = np.full(n, d, np.float32)
    p_near = p
    for s in range(steps):
        p = lp.lowp_step(ref.torch_sgd, p, g, None, lr=1.0, rounding="stochastic", seed=9,
                         step=s)[0]
        p_near = lp.lowp_step(ref.torch_sgd, p_near, g, None, lr=1.0)[0]
    exact = 1 - steps * d
    assert np.all(p_near.astype(np.float64) == 1)
    # each step adds a variance <= spacing**2 / 4 (spacing <= 2**-8): sd of the mean over n
    # elements <= sqrt(steps) 2**-9 / sqrt(n); 6 sd
    assert abs(p.astype(np.float64).mean() - exact) < 6 * math.sqrt(steps) * 2.0**-9 / math.sqrt(n)
