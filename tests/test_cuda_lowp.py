"""The low-precision storage kinds (issue 19) on a GPU, bit for bit against the independent NumPy
reference (tests/reference_lowp.py) and the CPU kernels: bfloat16/float16 parameters rounded to
nearest, stochastically or with Kahan compensations, float32 gradients for them, float32 /
bfloat16 / float16 / 8-bit buffers, every update variant, odd sizes, many tensors, and the
guards' norm over narrow gradients. Skips without the CUDA module or a usable device, as
test_cuda_gpu.py does.

Arrays reach the device four ways: CuPy and PyTorch arrays as they are (their 2-byte dtypes are
read through DLPack, which tells bfloat16 from float16), and the same memory behind an object
with only a ``__cuda_array_interface__`` (typestr '<f2', '<V2' for bfloat16, '|i1'). CuPy has
no bfloat16, so its bfloat16 arrays are always uint16 memory behind such an interface."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _backend

import reference
import reference_lowp as rl
from conftest import rand, same_bits

# Skipped test by test (not the module: a file that collects nothing makes pytest exit 5).
_NO_DEVICE = _backend.no_device_reason()
pytestmark = pytest.mark.skipif(_NO_DEVICE is not None, reason=str(_NO_DEVICE))

BF16, F16, F32 = rl.BFLOAT16, rl.FLOAT16, rl.FLOAT32


class Interface:
    """A device array's memory with only a ``__cuda_array_interface__`` (no DLPack), whose
    typestr names the dtype the memory holds."""

    def __init__(self, array, typestr):
        self.array = array  # keeps the memory alive
        self.__cuda_array_interface__ = {**array.__cuda_array_interface__, "typestr": typestr}


class Library:
    """Moving arrays of any of the kinds' dtypes between NumPy and one GPU array library, given
    as they are ("cupy", "torch") or behind an Interface ("cupy-interface", ...)."""

    def __init__(self, name):
        self.name = name
        self.base, _, how = name.partition("-")
        self.interface = how == "interface"
        self.module = pytest.importorskip(self.base)
        if self.base == "torch" and not self.module.cuda.is_available():
            pytest.skip("PyTorch was built without CUDA")

    def to_device(self, a):
        a = np.ascontiguousarray(a)
        raw = a.view(np.int16) if a.dtype == BF16 else a
        if self.base == "cupy":
            x = self.module.asarray(raw)
        else:
            x = self.module.from_numpy(raw.copy()).cuda()
            if a.dtype == BF16:
                x = x.view(self.module.bfloat16)
        if self.interface or (self.base == "cupy" and a.dtype == BF16):
            return Interface(x, a.dtype.str)
        return x

    def to_host(self, x, dtype):
        x = x.array if isinstance(x, Interface) else x
        if self.base == "cupy":
            host = x.get()
        else:
            if x.dtype == self.module.bfloat16:
                x = x.view(self.module.int16)
            host = x.cpu().numpy()
        return np.ascontiguousarray(host).view(dtype)

    def buffer_to_device(self, b):
        if isinstance(b, tuple):
            return tuple(self.to_device(a) for a in b)
        return None if b is None else self.to_device(b)

    def buffer_to_host(self, x, like):
        if isinstance(like, tuple):
            return tuple(self.to_host(d, a.dtype) for d, a in zip(x, like, strict=True))
        return None if like is None else self.to_host(x, like.dtype)


@pytest.fixture(params=["cupy", "torch", "cupy-interface", "torch-interface"], scope="module")
def lib(request):
    return Library(request.param)


SIZES = [0, 1, 255, 256, 257, 4099, 70_001]

# (parameter dtype, gradient dtype, rounding or "kahan"): every parameter kind.
PARAM_KINDS = [
    (F32, F32, "nearest"),
    *[(p, g, r) for p, g, r in itertools.product([BF16, F16], ["param", F32],
                                                 ["nearest", "stochastic", "kahan"])],
]
BUFFER_KINDS = ["float32", "bfloat16", "float16", "8-bit"]

RULES = {"sgd_": reference.torch_sgd, "keras_sgd_": reference.keras_sgd,
         "ema_sgd_": reference.ema_sgd}


def _kind_id(kind):
    p, g, r = kind
    return f"{p.name}-grad_{g if g == 'param' else g.name}-{r}"


def _buffer(rng, kind, like):
    """A buffer of `kind` holding values of the magnitude momentum reaches (8-bit: quantized)."""
    values = rand(rng, like.shape, np.float32) * np.float32(0.1)
    if kind == "8-bit":
        return rl.quantize(values)
    return values.astype({"float32": F32, "bfloat16": BF16, "float16": F16}[kind])


def _copy(b):
    return tuple(a.copy() for a in b) if isinstance(b, tuple) else b.copy()


def _same_buffer(actual, expected):
    if isinstance(expected, tuple):
        for a, e in zip(actual, expected, strict=True):
            same_bits(a, e)
    else:
        same_bits(actual, expected)


def _check_step(lib, name, kw, ps, gs, bs, comps, rounding, seed=0, step=0):
    """One step of `name` over the lists, on the device, against lowp_step (parameter i is
    stream i) and the CPU kernels; inputs untouched."""
    expected = []
    for i, (p, g, b, c) in enumerate(zip(ps, gs, bs, comps, strict=True)):
        ref_kw = dict(kw)
        if isinstance(kw.get("first_step"), list):
            ref_kw["first_step"] = kw["first_step"][i]
        expected.append(rl.lowp_step(RULES[name], p, g, b, comp=c, rounding=rounding,
                                     seed=seed, step=step, stream=i, **ref_kw))
    step_kw = dict(kw, rounding=rounding, seed=seed, step=step)
    if any(c is not None for c in comps):
        step_kw["compensations"] = [None if c is None else c.copy() for c in comps]
    cpu_p, cpu_b = [p.copy() for p in ps], [None if b is None else _copy(b) for b in bs]
    getattr(fm.functional, name)(cpu_p, gs, None if bs[0] is None else cpu_b, **step_kw)
    cpu_c = step_kw.get("compensations")
    dev_p = [lib.to_device(p) for p in ps]
    dev_b = [lib.buffer_to_device(b) for b in bs]
    if "compensations" in step_kw:
        step_kw["compensations"] = [None if c is None else lib.to_device(c) for c in comps]
    getattr(fm.functional, name)(dev_p, [lib.to_device(g) for g in gs],
                                 None if bs[0] is None else dev_b, **step_kw)
    for i, (ep, eb, ec) in enumerate(expected):
        host_p = lib.to_host(dev_p[i], ps[i].dtype)
        same_bits(host_p, ep)
        same_bits(host_p, cpu_p[i])
        if bs[i] is not None:
            host_b = lib.buffer_to_host(dev_b[i], bs[i])
            _same_buffer(host_b, eb)
            _same_buffer(host_b, cpu_b[i])
        if comps[i] is not None:
            host_c = lib.to_host(step_kw["compensations"][i], comps[i].dtype)
            same_bits(host_c, ec)
            same_bits(host_c, cpu_c[i])


def _arrays(rng, kind, buffer_kind, sizes):
    p_dtype, g_dtype, rounding = kind
    ps = [rand(rng, n, p_dtype) for n in sizes]
    gs = [rand(rng, n, p_dtype if g_dtype == "param" else g_dtype) for n in sizes]
    bs = [None if buffer_kind is None else _buffer(rng, buffer_kind, p) for p in ps]
    # Compensations of the size rounding leaves: below half an ulp of p.
    comps = [(rand(rng, p.shape, np.float32) * np.float32(2.0**-10) * rl.widen(p)).astype(p_dtype)
             if rounding == "kahan" else None for p in ps]
    return ps, gs, bs, comps, "nearest" if rounding == "kahan" else rounding


# Every low-precision kind: all but float32 everywhere (the exact kind, test_cuda_gpu.py).
KINDS = [(k, b) for k in PARAM_KINDS for b in BUFFER_KINDS if (k[0], b) != (F32, "float32")]


@pytest.mark.parametrize(("kind", "buffer_kind"), KINDS,
                         ids=[f"{_kind_id(k)}-{b}" for k, b in KINDS])
def test_every_kind_matches_the_reference_and_the_cpu_bitwise(lib, kind, buffer_kind):
    rng = np.random.default_rng(len(_kind_id(kind)) * 7 + len(buffer_kind))
    ps, gs, bs, comps, rounding = _arrays(rng, kind, buffer_kind, SIZES)
    kw = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2,
              weight_decay_mode="decoupled")
    # Later steps, then the torch convention's first step (b <- g, the buffer is not read).
    _check_step(lib, "sgd_", kw, ps, gs, bs, comps, rounding, seed=11, step=3)
    _check_step(lib, "sgd_", dict(kw, first_step=[i % 2 == 0 for i in range(len(ps))]),
                ps, gs, bs, comps, rounding, seed=11, step=4)


@pytest.mark.parametrize("kind", [k for k in PARAM_KINDS if k[0] != F32],
                         ids=[_kind_id(k) for k in PARAM_KINDS if k[0] != F32])
def test_plain_steps_without_buffers(lib, kind):
    rng = np.random.default_rng(len(_kind_id(kind)))
    ps, gs, bs, comps, rounding = _arrays(rng, kind, None, SIZES)
    _check_step(lib, "sgd_", dict(lr=0.05, weight_decay=1e-2), ps, gs, bs, comps, rounding,
                seed=5)


# Every update variant (form, Nesterov, decay, scaled gradient): one kernel instantiation each.
VARIANTS = [
    *[("sgd_", dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, weight_decay_mode=mode,
                    maximize=mx, first_step=fs, schedule_multiplier=0.5))
      for m, d, n, wd, mode, mx, fs in itertools.product(
          [0.0, 0.9], [0.0, 0.25], [False, True], [0.0, 1e-2], ["coupled", "decoupled", "sgdw"],
          [False, True], [False, True])
      if not (n and (m == 0 or d != 0))],
    *[("keras_sgd_", dict(momentum=m, nesterov=n, weight_decay=wd, weight_decay_mode=mode,
                          maximize=mx, schedule_multiplier=0.5))
      for m, n, wd, mode, mx in itertools.product(
          [0.0, 0.9], [False, True], [0.0, 1e-2], ["coupled", "decoupled", "sgdw"], [False, True])
      if not (n and m == 0)],
    *[("ema_sgd_", dict(beta=beta, weight_decay=wd, weight_decay_mode=mode, maximize=mx))
      for beta, wd, mode, mx in itertools.product(
          [0.0, 0.9], [0.0, 1e-2], ["coupled", "decoupled", "sgdw"], [False, True])],
]


def _variant_id(variant):
    name, kw = variant
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("buffer_kind", ["bfloat16", "8-bit"])
@pytest.mark.parametrize("variant", VARIANTS, ids=[_variant_id(v) for v in VARIANTS])
def test_every_variant_matches_the_reference_and_the_cpu_bitwise(lib, variant, buffer_kind):
    name, kw = variant
    rng = np.random.default_rng(len(_variant_id(variant)))
    momentum = kw.get("momentum", kw.get("beta"))
    kind = (BF16, F32, "stochastic") if buffer_kind == "8-bit" else (F16, "param", "nearest")
    ps, gs, bs, comps, rounding = _arrays(rng, kind, buffer_kind if momentum else None,
                                          [3, 256, 1000])
    _check_step(lib, name, dict(kw, lr=0.05), ps, gs, bs, comps, rounding, seed=2, step=9)


def test_8bit_blocks_of_zeros_tiny_and_non_finite_values(lib):
    """The block scale's special cases (spec "encode block j"): an infinite or NaN new value
    makes its block NaN, a block below 480 * 2^-126 is stored as zero; the others are scaled by
    their own largest magnitude, whatever their neighbours hold."""
    n = 6 * 256 + 10
    p = np.zeros(n, F32)
    g = np.zeros(n, F32)
    g[256:512] = np.float32(2.0**-130)  # tiny: a zero block
    g[600] = np.inf  # an infinite new value
    g[900] = np.nan
    g[1100:1200] = rand(np.random.default_rng(1), 100, np.float32) * np.float32(1e30)
    g[-10:] = np.float32(3.0)  # the short last block
    b = rl.quantize(np.zeros(n, np.float32))
    _check_step(lib, "sgd_", dict(lr=0.1, momentum=0.5), [p], [g], [b], [None], "nearest")


def test_stochastic_rounding_depends_on_seed_step_and_the_parameters_index(lib):
    rng = np.random.default_rng(8)
    ps = [rand(rng, 3000, BF16) for _ in range(3)]
    gs = [rand(rng, 3000, np.float32) * np.float32(1e-3) for _ in range(3)]
    bs = [None] * 3
    for seed, step in [(0, 0), (2**63 - 1, 7), (123, 2**62 + 5)]:
        _check_step(lib, "sgd_", dict(lr=0.1), ps, gs, bs, [None] * 3, "stochastic",
                    seed=seed, step=step)


# One call's kinds: rounding is the call's, Kahan is per parameter (compensations or None), and
# float32 parameters (one exact kind among them) go with either.
MIXED = {
    "nearest": [(BF16, F32, "kahan"), (F16, "param", "nearest"), (F32, F32, "nearest"),
                (F16, F32, "kahan"), (BF16, "param", "nearest")],
    "stochastic": [(BF16, F32, "stochastic"), (F16, "param", "stochastic"), (F32, F32, "nearest"),
                   (F16, F32, "stochastic")],
}


@pytest.mark.parametrize("rounding", list(MIXED))
def test_more_tensors_than_one_launch_holds_mixed_kinds_and_first_steps(lib, rounding):
    rng = np.random.default_rng(7)
    kinds = MIXED[rounding]
    ps, gs, bs, comps = [], [], [], []
    for i in range(240):  # over 48 (one launch) of several lists
        kind = kinds[i % len(kinds)]
        buffer_kind = BUFFER_KINDS[(i // len(kinds)) % 2 * 3]  # float32 or 8-bit
        p, g, b, c, _ = _arrays(rng, kind, buffer_kind, [int(rng.integers(0, 1500))])
        ps += p
        gs += g
        bs += b
        comps += c
    first = [i % 7 == 0 for i in range(len(ps))]
    _check_step(lib, "sgd_", dict(lr=0.01, momentum=0.8, dampening=0.1, first_step=first),
                ps, gs, bs, comps, rounding, seed=3, step=1)


@pytest.mark.parametrize("grad_dtype", [BF16, F16, F32])
def test_clipping_gives_the_cpu_norm_and_update_bitwise_for_narrow_gradients(lib, grad_dtype):
    rng = np.random.default_rng(3)
    p_dtype = F16 if grad_dtype == F16 else BF16
    ps = [rand(rng, n, p_dtype) for n in (5, 4096, 70_001, 3)]
    gs = [(rand(rng, p.size, np.float32) * np.float32(10)).astype(grad_dtype) for p in ps]
    bs = [rl.quantize(np.zeros(p.size, np.float32)) for p in ps]
    kw = dict(lr=0.1, momentum=0.9, max_grad_norm=1.0, loss_scale=4.0)
    cpu_p, cpu_b = [p.copy() for p in ps], [_copy(b) for b in bs]
    cpu = fm.functional.sgd_(cpu_p, gs, cpu_b, **kw)
    dev_p = [lib.to_device(p) for p in ps]
    dev_b = [lib.buffer_to_device(b) for b in bs]
    dev = fm.functional.sgd_(dev_p, [lib.to_device(g) for g in gs], dev_b, **kw)
    assert dev.grad_norm == cpu.grad_norm  # the same float64 sum, block by block
    for d, c, db, cb in zip(dev_p, cpu_p, dev_b, cpu_b, strict=True):
        same_bits(lib.to_host(d, p_dtype), c)
        _same_buffer(lib.buffer_to_host(db, cb), cb)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_narrow_gradient_skips_with_nothing_modified(lib, bad):
    rng = np.random.default_rng(4)
    ps = [rand(rng, 1000, BF16) for _ in range(2)]
    gs = [rand(rng, 1000, BF16) for _ in range(2)]
    gs[1][999] = bad
    bs = [rl.quantize(rand(rng, 1000, np.float32)) for _ in range(2)]
    dp = [lib.to_device(p) for p in ps]
    db = [lib.buffer_to_device(b) for b in bs]
    result = fm.functional.sgd_(dp, [lib.to_device(g) for g in gs], db, lr=0.1, momentum=0.9,
                                nonfinite="skip")
    assert result.skipped
    for d, p, dbuf, b in zip(dp, ps, db, bs, strict=True):
        same_bits(lib.to_host(d, BF16), p)
        _same_buffer(lib.buffer_to_host(dbuf, b), b)
