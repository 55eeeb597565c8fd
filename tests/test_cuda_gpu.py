"""The CUDA kernels on a GPU, against the independent NumPy references (tests/reference.py) and the
CPU kernels, bit for bit: every convention and option, float32 and float64, many and odd-sized
tensors, unaligned views, the guards, the optimizer and its state dicts, and streams. Runs with
CuPy and with PyTorch, whichever is installed; skips without the CUDA module or a usable device."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _backend

import reference
from conftest import rand, same_bits

# Skipped test by test (not the module: a file that collects nothing makes pytest exit 5).
_NO_DEVICE = _backend.no_device_reason()
pytestmark = pytest.mark.skipif(_NO_DEVICE is not None, reason=str(_NO_DEVICE))


class Library:
    """Moving arrays between NumPy and one GPU array library."""

    def __init__(self, name):
        self.name = name
        self.module = pytest.importorskip(name)
        if name == "torch" and not self.module.cuda.is_available():
            pytest.skip("PyTorch was built without CUDA")

    def to_device(self, a):
        if self.name == "cupy":
            return self.module.asarray(a)
        return self.module.from_numpy(np.ascontiguousarray(a)).cuda()

    def to_host(self, x):
        return _backend.to_host(x)

    def synchronize(self):
        if self.name == "cupy":
            self.module.cuda.Device().synchronize()
        else:
            self.module.cuda.synchronize()


@pytest.fixture(params=["cupy", "torch"], scope="module")
def lib(request):
    return Library(request.param)


SIZES = [0, 1, 3, 4, 17, 4096, 16384, 16385, 100_003]

# (functional step, reference, keyword arguments): every convention and option of the kernels.
VARIANTS = [
    *[("sgd_", reference.torch_sgd,
       dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, weight_decay_mode=mode,
            maximize=mx, first_step=fs, schedule_multiplier=0.5))
      for m, d, n, wd, mode, mx, fs in itertools.product(
          [0.0, 0.9], [0.0, 0.25], [False, True], [0.0, 1e-2], ["coupled", "decoupled", "sgdw"],
          [False, True], [False, True])
      if not (n and (m == 0 or d != 0))],
    *[("keras_sgd_", reference.keras_sgd,
       dict(momentum=m, nesterov=n, weight_decay=wd, weight_decay_mode=mode, maximize=mx,
            schedule_multiplier=0.5))
      for m, n, wd, mode, mx in itertools.product(
          [0.0, 0.9], [False, True], [0.0, 1e-2], ["coupled", "decoupled", "sgdw"], [False, True])
      if not (n and m == 0)],
    *[("ema_sgd_", reference.ema_sgd,
       dict(beta=beta, weight_decay=wd, weight_decay_mode=mode, maximize=mx))
      for beta, wd, mode, mx in itertools.product(
          [0.0, 0.9], [0.0, 1e-2], ["coupled", "decoupled", "sgdw"], [False, True])],
]


def _ids(variant):
    name, _, kw = variant
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS, ids=[_ids(v) for v in VARIANTS])
def test_every_variant_matches_the_reference_and_the_cpu_bitwise(lib, dtype, variant):
    name, ref, kw = variant
    rng = np.random.default_rng(len(_ids(variant)))
    ps = [rand(rng, n, dtype) for n in SIZES]
    gs = [rand(rng, n, dtype) for n in SIZES]
    bs = [rand(rng, n, dtype) for n in SIZES]
    lr = 0.05
    expected = []
    for p, g, b in zip(ps, gs, bs, strict=True):
        ref_kw = {k: v for k, v in kw.items() if k != "first_step" or name == "sgd_"}
        expected.append(ref(p, g, b, lr=lr, **ref_kw))
    cpu = [(p.copy(), b.copy()) for p, b in zip(ps, bs, strict=True)]
    getattr(fm.functional, name)([c[0] for c in cpu], gs, [c[1] for c in cpu], lr=lr, **kw)
    dev_p = [lib.to_device(p) for p in ps]
    dev_b = [lib.to_device(b) for b in bs]
    getattr(fm.functional, name)(dev_p, [lib.to_device(g) for g in gs], dev_b, lr=lr, **kw)
    for (ep, eb), (cp_, cb), dp, db in zip(expected, cpu, dev_p, dev_b, strict=True):
        same_bits(lib.to_host(dp), ep)
        same_bits(lib.to_host(dp), cp_)
        same_bits(lib.to_host(db), eb)  # the reference returns b as it was without momentum
        same_bits(lib.to_host(db), cb)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_unaligned_views_take_the_element_path_with_the_same_bits(lib, offset):
    rng = np.random.default_rng(offset)
    n = 50_001
    p, g, b = (rand(rng, n + offset, np.float32) for _ in range(3))
    dp, dg, db = (lib.to_device(a)[offset:] for a in (p, g, b))
    fm.functional.sgd_([dp], [dg], [db], lr=0.1, momentum=0.9, nesterov=True)
    ep, eb = reference.torch_sgd(p[offset:], g[offset:], b[offset:], lr=0.1, momentum=0.9,
                                 nesterov=True)
    same_bits(lib.to_host(dp), ep)
    same_bits(lib.to_host(db), eb)


def test_more_tensors_than_one_launch_holds_mixed_dtypes_and_first_steps(lib):
    rng = np.random.default_rng(7)
    dtypes = [np.float32, np.float64]
    ps = [rand(rng, int(rng.integers(0, 3000)), dtypes[i % 2]) for i in range(150)]
    gs = [rand(rng, p.size, p.dtype) for p in ps]
    bs = [rand(rng, p.size, p.dtype) for p in ps]
    first = [bool(i % 3 == 0) for i in range(150)]
    expected = [reference.torch_sgd(p, g, b, lr=0.01, momentum=0.8, dampening=0.1, first_step=f)
                for p, g, b, f in zip(ps, gs, bs, first, strict=True)]
    dp, db = [lib.to_device(p) for p in ps], [lib.to_device(b) for b in bs]
    fm.functional.sgd_(dp, [lib.to_device(g) for g in gs], db, lr=0.01, momentum=0.8,
                       dampening=0.1, first_step=first)
    for (ep, eb), p, b in zip(expected, dp, db, strict=True):
        same_bits(lib.to_host(p), ep)
        same_bits(lib.to_host(b), eb)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipping_gives_the_cpu_norm_and_update_bitwise(lib, dtype):
    rng = np.random.default_rng(3)
    ps = [rand(rng, n, dtype) for n in (5, 4096, 70_001, 3)]
    gs = [rand(rng, p.size, dtype) * 10 for p in ps]
    bs = [np.zeros_like(p) for p in ps]
    kw = dict(lr=0.1, momentum=0.9, max_grad_norm=1.0, loss_scale=4.0)
    cpu_p, cpu_b = [p.copy() for p in ps], [b.copy() for b in bs]
    cpu = fm.functional.sgd_(cpu_p, gs, cpu_b, **kw)
    dp, db = [lib.to_device(p) for p in ps], [lib.to_device(b) for b in bs]
    dev = fm.functional.sgd_(dp, [lib.to_device(g) for g in gs], db, **kw)
    assert dev.grad_norm == cpu.grad_norm  # the same float64 sum, block by block
    for p, c in zip(dp, cpu_p, strict=True):
        same_bits(lib.to_host(p), c)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_gradient_skips_or_raises_with_nothing_modified(lib, bad):
    rng = np.random.default_rng(4)
    ps = [rand(rng, 10_000, np.float32) for _ in range(3)]
    gs = [rand(rng, 10_000, np.float32) for _ in range(3)]
    gs[2][9_999] = bad
    dp = [lib.to_device(p) for p in ps]
    db = [lib.to_device(np.ones_like(p)) for p in ps]
    dg = [lib.to_device(g) for g in gs]
    result = fm.functional.sgd_(dp, dg, db, lr=0.1, momentum=0.9, nonfinite="skip")
    assert result.skipped
    with pytest.raises(FloatingPointError, match=r"grads\[2\] is not finite \(1 of its 10000"):
        fm.functional.sgd_(dp, dg, db, lr=0.1, momentum=0.9, nonfinite="raise")
    for p, b, host in zip(dp, db, ps, strict=True):
        same_bits(lib.to_host(p), host)
        same_bits(lib.to_host(b), np.ones_like(host))


def test_the_optimizer_on_device_follows_the_cpu_optimizer_and_its_checkpoints(lib):
    rng = np.random.default_rng(5)
    ws = [rand(rng, n, np.float32) for n in (1000, 33, 70_000)]
    dev_ws = [lib.to_device(w) for w in ws]
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    cpu_opt = fm.SGD([w.copy() for w in ws], **kw)
    cpu_ws = cpu_opt.param_groups[0]["params"]
    dev_opt = fm.SGD(dev_ws, **kw)
    cpu_sched = fm.lr_scheduler.StepLR(cpu_opt, step_size=2, gamma=0.5)
    dev_sched = fm.lr_scheduler.StepLR(dev_opt, step_size=2, gamma=0.5)
    assert dev_opt.on_device and not cpu_opt.on_device
    for _ in range(5):
        gs = [rand(rng, w.size, np.float32) for w in ws]
        cpu_opt.step(gs)
        dev_opt.step([lib.to_device(g) for g in gs])
        cpu_sched.step()
        dev_sched.step()
    for d, c in zip(dev_ws, cpu_ws, strict=True):
        same_bits(lib.to_host(d), c)
    # The buffers live on the device, made by the arrays' library; the state dict is NumPy.
    buf = dev_opt.state[dev_ws[0]]["momentum_buffer"]
    assert type(buf) is type(dev_ws[0]) and _backend.is_device_array(buf)
    state = dev_opt.state_dict()
    for i, c in enumerate(cpu_ws):
        saved = state["state"][i]["momentum_buffer"]
        assert type(saved) is np.ndarray
        same_bits(saved, cpu_opt.state[c]["momentum_buffer"])
    # Loaded into a fresh device optimizer, it continues exactly as the CPU one.
    resumed_ws = [lib.to_device(lib.to_host(w)) for w in dev_ws]
    resumed = fm.SGD(resumed_ws, **kw)
    resumed.load_state_dict(state)
    assert _backend.is_device_array(resumed.state[resumed_ws[0]]["momentum_buffer"])
    gs = [rand(rng, w.size, np.float32) for w in ws]
    cpu_opt.step(gs)
    resumed.step([lib.to_device(g) for g in gs])
    for d, c in zip(resumed_ws, cpu_ws, strict=True):
        same_bits(lib.to_host(d), c)


def test_host_and_device_arrays_cannot_be_mixed(lib):
    w = np.zeros(4, np.float32)
    d = lib.to_device(w)
    with pytest.raises(TypeError, match=r"params\[1\] must be a CUDA array .* got numpy\.ndarray"):
        fm.SGD([d, w], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a CUDA array"):
        fm.functional.sgd_([d], [w], lr=0.1)


def test_read_only_and_strided_device_arrays_are_refused(lib):
    w = lib.to_device(np.zeros(8, np.float32))
    g = lib.to_device(np.ones(8, np.float32))
    with pytest.raises(ValueError, match=r"params\[0\] is not dense"):
        fm.functional.sgd_([w[::2]], [g[::2]], lr=0.1)
    same_bits(lib.to_host(w), np.zeros(8, np.float32))


def test_a_torch_tensor_that_requires_grad_is_named():
    torch = Library("torch").module
    w = torch.zeros(4, device="cuda", requires_grad=True)
    with pytest.raises(TypeError, match=r"^params\[0\]: .*grad"):
        fm.functional.sgd_([w], [torch.ones(4, device="cuda")], lr=0.1)
    fm.functional.sgd_([w.detach()], [torch.ones(4, device="cuda")], lr=0.1)
    expected, _ = reference.torch_sgd(np.zeros(4, np.float32), np.ones(4, np.float32), None,
                                      lr=0.1)
    same_bits(w.detach().cpu().numpy(), expected)


def test_a_step_runs_on_the_librarys_current_stream(lib):
    rng = np.random.default_rng(6)
    p, g = rand(rng, 1_000_000, np.float32), rand(rng, 1_000_000, np.float32)
    if lib.name == "cupy":
        stream = lib.module.cuda.Stream(non_blocking=True)
        context = stream
    else:
        stream = lib.module.cuda.Stream()
        context = lib.module.cuda.stream(stream)
    with context:
        dp, dg = lib.to_device(p), lib.to_device(g)
        for _ in range(3):  # ordered after the copies above, on the same stream
            fm.functional.sgd_([dp], [dg], lr=0.1)
        stream.synchronize()
    expected = p
    for _ in range(3):
        expected = reference.torch_sgd(expected, g, None, lr=0.1)[0]
    same_bits(lib.to_host(dp), expected)
