"""Any dense layout (issue 20): an array whose elements fill its memory with no gaps and no
overlaps, whatever the order and signs of its strides, is updated in place in memory order,
provided every array of its index has its layout (the same strides in elements). Each step here
is compared with the same step on C-contiguous copies of the same values (np.ascontiguousarray):
identical bits. Gapped and overlapping arrays, and a gradient or buffer of another layout than
its parameter's, are refused with nothing modified."""

from __future__ import annotations

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import functional as F

from conftest import same_bits


def _fortran(v):
    return np.asfortranarray(v)


def _transposed(v):  # a transpose of a C-contiguous array: its strides reversed
    return np.ascontiguousarray(v.T).T


def _reversed(v):  # negative strides on every axis: the first element is the last in memory
    index = (slice(None, None, -1),) * v.ndim
    return np.ascontiguousarray(v[index])[index]


def _channels_last(v):  # (N, C, H, W) stored as (N, H, W, C), as torch's channels_last
    return np.ascontiguousarray(v.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# name: (shape, the layout of values v)
LAYOUTS = {
    "fortran-2d": ((5, 7), _fortran),
    "fortran-3d": ((3, 4, 5), _fortran),
    "transposed": ((6, 9), _transposed),
    "reversed-1d": ((37,), _reversed),
    "reversed-2d": ((4, 5), _reversed),
    "channels-last-4d": ((2, 3, 4, 5), _channels_last),
    "extent-1-axes": ((1, 6, 1, 7), _fortran),
    "large-fortran": ((130, 70), _fortran),  # several SIMD vectors and blocks, split over threads
}


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def laid_out(v, layout):
    a = LAYOUTS[layout][1](v)
    same_bits(a, v)  # the same values (same_bits compares in index order)
    assert not a.flags.c_contiguous
    return a


def _arrays(rng, shape, dtype, count=1):
    return [np.asarray(rng.standard_normal(shape), dtype) for _ in range(count)]


def _in_elements(a):
    return tuple(s // a.itemsize for s in a.strides)


def _check_layouts_kept(arrays, layout):
    """Each array still views memory in the layout it was given (nothing swapped or copied)."""
    for a in arrays:
        assert not a.flags.c_contiguous, layout


ENTRY_POINTS = {
    "sgd_": (F.sgd_, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "keras_sgd_": (F.keras_sgd_, dict(lr=0.05, momentum=0.8, weight_decay=1e-3)),
    "ema_sgd_": (F.ema_sgd_, dict(lr=0.05, beta=0.9, weight_decay=1e-3)),
}


def _step_both(fn, kw, params, grads, buffers, compensations=None, steps=2):
    """Runs `steps` steps on the given arrays and on C-contiguous copies; returns both sets."""
    copies = [[np.ascontiguousarray(a) for a in xs] if xs is not None else None
              for xs in (params, grads, buffers, compensations)]
    for _ in range(steps):
        for p, g, b, c in ((params, grads, buffers, compensations), copies):
            extra = {} if c is None else {"compensations": c}
            fn(p, g, b, **kw, **extra)
    return copies


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_a_dense_layout_is_updated_as_its_c_contiguous_copy(threads, entry, layout, dtype):
    """Mixed with C-contiguous arrays in one call, a dense array of any layout, with a gradient
    and buffer of its layout, gets the bits its C-contiguous copy gets."""
    rng = np.random.default_rng(len(layout) + 7 * len(entry))
    dt = _dtype(dtype)
    fn, kw = ENTRY_POINTS[entry]
    shape = LAYOUTS[layout][0]
    buf_dtype = np.float32 if dt.itemsize == 2 else dt
    cs = [_arrays(rng, (11,), dt, 2) for _ in range(2)]  # C-contiguous neighbours
    p = laid_out(_arrays(rng, shape, dt)[0], layout)
    g = laid_out(_arrays(rng, shape, dt)[0], layout)
    b = laid_out(_arrays(rng, shape, buf_dtype)[0], layout)
    params, grads = [cs[0][0], p, cs[0][1]], [cs[1][0], g, cs[1][1]]
    buffers = [np.zeros(11, buf_dtype), b, np.zeros(11, buf_dtype)]
    start = p.copy()
    ref = _step_both(fn, kw, params, grads, buffers)
    for got, want in zip(params + buffers, ref[0] + ref[2], strict=True):
        same_bits(got, want)
    assert not np.array_equal(p, start)  # the step moved it
    _check_layouts_kept([p, g, b], layout)


@pytest.mark.parametrize("layout", ["fortran-2d", "reversed-2d", "channels-last-4d"])
@pytest.mark.parametrize("grad_dtype", ["bfloat16", "float32"])
def test_a_bfloat16_parameter_with_a_kahan_compensation_of_its_layout(threads, layout, grad_dtype):
    """A bfloat16 parameter, a gradient of its element layout (a float32 one has twice its byte
    strides), a float32 buffer and a compensation, all in one layout."""
    rng = np.random.default_rng(3)
    bf16 = _dtype("bfloat16")
    shape = LAYOUTS[layout][0]
    p = laid_out(_arrays(rng, shape, bf16)[0], layout)
    g = laid_out(_arrays(rng, shape, _dtype(grad_dtype))[0], layout)
    b = laid_out(np.zeros(shape, np.float32), layout)
    c = laid_out(_arrays(rng, shape, bf16)[0] * bf16.type(1e-3), layout)
    ref = _step_both(F.sgd_, dict(lr=0.05, momentum=0.9), [p], [g], [b], [c],
                     steps=3)
    for got, want in zip([p, b, c], [ref[0][0], ref[2][0], ref[3][0]], strict=True):
        same_bits(got, want)


def test_one_layout_means_the_same_strides_in_elements():
    """Where the extent is 1 a stride does not matter (NumPy and torch set it freely); empty
    arrays are fine whatever their strides."""
    p = np.asfortranarray(np.ones((1, 6, 1, 7), np.float32))
    g = np.lib.stride_tricks.as_strided(np.ones(42, np.float32), (1, 6, 1, 7), (999, 4, 5, 24))
    F.sgd_([p], [g], lr=0.5)
    assert (p == 0.5).all()
    e = np.empty((0, 3), np.float32)
    F.sgd_([e], [np.empty((3, 0), np.float32).T], [np.empty((0, 3), np.float32)], lr=0.5,
           momentum=0.9)


# Refusals ----------------------------------------------------------------------------------

def _call(kind):
    """A three-parameter call whose parameter 1 is dense Fortran-ordered and the array `kind`
    refused (earlier and later ones valid): (kwargs for sgd_, the message)."""
    rng = np.random.default_rng(5)
    bf16 = _dtype("bfloat16")
    dt = bf16 if kind == "compensation" else np.dtype(np.float32)
    params = [np.asarray(rng.standard_normal((4, 6)), dt) for _ in range(3)]
    params[1] = np.asfortranarray(params[1])
    grads = [np.asarray(rng.standard_normal((4, 6)), dt) for _ in range(3)]
    grads[1] = np.asfortranarray(grads[1])
    buffers = [np.zeros_like(p, np.float32) for p in params]  # zeros_like keeps the layout
    comps = [np.zeros_like(p) for p in params] if kind == "compensation" else None
    if kind == "grad":
        grads[1] = np.ascontiguousarray(grads[1])
        msg = (r"grads\[1\] has strides \(24, 4\) but params\[1\] has strides \(4, 16\) "
               r"\(shape \(4, 6\)\); a parameter, its gradient and its buffers must share one "
               r"memory layout, as the update runs in memory order: create them with "
               r"np.empty_like\(param\) or torch.empty_like\(param\)")
    elif kind == "buffer":
        buffers[1] = np.zeros((4, 6), np.float32)
        msg = r"buffers\[1\] has strides \(24, 4\) but params\[1\] has strides \(4, 16\)"
    elif kind == "reversed-buffer":
        buffers[1] = np.zeros((4, 6), np.float32, order="F")[::-1]
        msg = r"buffers\[1\] has strides \(-4, 16\) but params\[1\] has strides \(4, 16\)"
    elif kind == "compensation":
        comps[1] = np.zeros((4, 6), bf16)
        msg = r"compensations\[1\] has strides \(12, 2\) but params\[1\] has strides \(2, 8\)"
    elif kind == "gapped":
        grads[1] = np.zeros((4, 12), np.float32)[:, ::2]
        msg = (r"grads\[1\] is not dense \(shape \(4, 6\), strides \(48, 8\)\): its elements "
               r"leave gaps or overlap in memory; fastmomentum never copies")
    elif kind == "overlapping":
        params[1] = np.lib.stride_tricks.as_strided(np.zeros(9, np.float32), (4, 6), (4, 4))
        msg = r"params\[1\] is not dense \(shape \(4, 6\), strides \(4, 4\)\)"
    elif kind == "broadcast":
        grads[1] = np.broadcast_to(np.ones(6, np.float32), (4, 6))
        msg = r"grads\[1\] is not dense \(shape \(4, 6\), strides \(0, 4\)\)"
    kw = dict(params=params, grads=grads, buffers=buffers, lr=0.1, momentum=0.9)
    if comps is not None:
        kw["compensations"] = comps
    return kw, msg


@pytest.mark.parametrize("kind", ["grad", "buffer", "reversed-buffer", "compensation", "gapped",
                                  "overlapping", "broadcast"])
def test_a_refused_layout_is_named_and_nothing_is_modified(kind):
    kw, msg = _call(kind)
    every = [a for key in ("params", "grads", "buffers", "compensations") for a in kw.get(key, [])]
    before = [a.copy() for a in every]
    with pytest.raises(ValueError, match=msg):
        F.sgd_(kw.pop("params"), kw.pop("grads"), kw.pop("buffers"), **kw)
    for a, b in zip(every, before, strict=True):
        same_bits(a, b)


def test_a_float32_gradient_of_another_element_layout_names_both_in_elements():
    bf16 = _dtype("bfloat16")
    p = np.asfortranarray(np.ones((3, 5), bf16))
    g = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"grads\[0\] has strides \(20, 4\) but params\[0\] has "
                                         r"strides \(2, 6\) \(in elements \(5, 1\) and \(1, 3\)\)"):
        F.sgd_([p], [g], lr=0.1)
    assert (p == 1).all()


def test_an_8bit_buffer_is_refused_for_a_parameter_that_is_not_c_contiguous():
    """Its blocks are runs of 256 codes in C order, which a step in memory order keeps only for
    C-contiguous parameters (and which np.save keeps only in C or Fortran order)."""
    p = np.asfortranarray(np.ones((20, 30), np.float32))
    q = np.ones((20, 30), np.float32)
    codes = fm.QuantizedBuffer.zeros_like(q)
    before = [codes.codes.copy(), codes.scales.copy()]
    for codes_layout in (codes, fm.QuantizedBuffer(np.asfortranarray(codes.codes), codes.scales)):
        with pytest.raises(ValueError, match=r"buffers\[1\]\.codes: an 8-bit buffer is for a "
                                             r"C-contiguous parameter, but params\[1\] has shape "
                                             r"\(20, 30\) and strides \(4, 80\)"):
            F.sgd_([q, p], [q.copy(), p.copy(order="F")],
                   [fm.QuantizedBuffer.zeros_like(q), codes_layout], lr=0.1, momentum=0.9)
    assert (p == 1).all() and (q == 1).all()
    same_bits(codes.codes, before[0])
    same_bits(codes.scales, before[1])
    # the same parameter C-contiguous: accepted
    F.sgd_([np.ascontiguousarray(p)], [q.copy()], [codes], lr=0.1, momentum=0.9)


def test_8bit_scales_must_be_in_block_order():
    p = np.ones(600, np.float32)
    buf = fm.QuantizedBuffer(np.zeros(600, np.int8), np.zeros(3, np.float32)[::-1])
    with pytest.raises(ValueError, match=r"buffers\[0\]\.scales is not C-contiguous \(strides "
                                         r"\(-4,\)\)"):
        F.sgd_([p], [p.copy()], [buf], lr=0.1, momentum=0.9)


# The optimizer ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["fortran-2d", "reversed-2d", "channels-last-4d"])
@pytest.mark.parametrize("state_dtype", [None, "bfloat16"])
def test_the_optimizer_makes_buffers_of_each_parameters_layout(threads, layout, state_dtype):
    if state_dtype == "bfloat16":
        _dtype("bfloat16")
    rng = np.random.default_rng(11)
    shape = LAYOUTS[layout][0]
    w = laid_out(_arrays(rng, shape, np.float32)[0], layout)
    params = [np.ones(7, np.float32), w, np.ones(5, np.float32)]
    copies = [np.ascontiguousarray(p) for p in params]
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, state_dtype=state_dtype)
    opt, ref = fm.SGD(params, **kw), fm.SGD(copies, **kw)
    for step in range(3):
        grads = [np.full(p.shape, 0.5 + step, np.float32) for p in params]
        grads[1] = laid_out(_arrays(rng, shape, np.float32)[0], layout)
        opt.step(grads)
        ref.step([np.ascontiguousarray(g) for g in grads])
    buf = opt.state[w]["momentum_buffer"]
    assert _in_elements(buf) == _in_elements(w)  # its parameter's layout
    for p, c in zip(params, copies, strict=True):
        same_bits(p, c)
    same_bits(buf, ref.state[copies[1]]["momentum_buffer"])

    # state_dict -> load_state_dict into an optimizer of the same layout: buffers of its layout
    again = [p.copy() for p in copies]
    again[1] = laid_out(copies[1], layout)
    loaded = fm.SGD(again, **kw)
    loaded.load_state_dict(opt.state_dict())
    g = [np.ones(p.shape, np.float32) for p in params]
    g[1] = laid_out(np.ones(shape, np.float32), layout)
    opt.step(g)
    loaded.step(g)
    for p, q in zip(params, again, strict=True):
        same_bits(p, q)


def test_a_checkpoint_loads_into_a_fortran_parameter(tmp_path):
    w = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    opt = fm.SGD([w], lr=0.1, momentum=0.9)
    opt.step([np.asfortranarray(np.ones((3, 4), np.float32))])
    fm.checkpoint.save(tmp_path / "c.npz", {"opt": opt.state_dict()})
    w2 = w.copy(order="F")
    opt2 = fm.SGD([w2], lr=0.1, momentum=0.9)
    opt2.load_state_dict(fm.checkpoint.load(tmp_path / "c.npz")["opt"])
    assert opt2.state[w2]["momentum_buffer"].flags.f_contiguous
    g = np.asfortranarray(np.full((3, 4), 2.0, np.float32))
    opt.step([g])
    opt2.step([g])
    same_bits(w2, w)


def test_the_optimizer_refuses_an_8bit_state_for_a_fortran_parameter_clearly():
    w = np.asfortranarray(np.ones((16, 20), np.float32))
    opt = fm.SGD([w], lr=0.1, momentum=0.9, state_dtype="int8")
    with pytest.raises(ValueError, match=r"an 8-bit buffer is for a C-contiguous parameter"):
        opt.step([w.copy(order="F")])
    assert (w == 1).all()


# PyTorch and other libraries' objects --------------------------------------------------------

def test_a_channels_last_tensor_is_updated_in_place_through_numpy():
    torch = pytest.importorskip("torch")
    t = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    grad = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    p, g = t.detach().numpy(), grad.numpy()
    assert not p.flags.c_contiguous
    buf = np.zeros_like(p)
    expected = np.ascontiguousarray(p)
    F.sgd_([expected], [np.ascontiguousarray(g)], [np.zeros(p.shape, np.float32)], lr=0.1,
           momentum=0.9)
    F.sgd_([p], [g], [buf], lr=0.1, momentum=0.9)
    same_bits(t.numpy(), expected)  # the tensor itself sees the update
    assert t.is_contiguous(memory_format=torch.channels_last)


def test_a_torch_tensor_passed_to_the_host_module_is_told_what_to_do():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"params\[0\] must be a numpy.ndarray, got torch.Tensor "
                                        r"\(for PyTorch tensors use fastmomentum.torch.SGD, or "
                                        r"pass p.detach\(\).numpy\(\), which shares memory\)"):
        F.sgd_([torch.zeros(3)], [np.zeros(3, np.float32)], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a numpy.ndarray, got torch.Tensor "
                                        r"\(for PyTorch tensors use fastmomentum.torch.SGD, or "
                                        r"pass p.grad.numpy\(\)"):
        F.sgd_([np.zeros(3, np.float32)], [torch.zeros(3)], lr=0.1)


def test_an_object_of_torch_is_recognised_by_its_module_without_torch():
    class Tensor:
        pass

    Tensor.__module__ = "torch"
    Tensor.__qualname__ = "Tensor"
    with pytest.raises(TypeError, match=r"got torch.Tensor \(for PyTorch tensors use "
                                        r"fastmomentum.torch.SGD"):
        F.sgd_([Tensor()], [np.zeros(3, np.float32)], lr=0.1)
    Tensor.__module__ = "torchvision_like"  # not torch's
    with pytest.raises(TypeError, match=r"got torchvision_like.Tensor$"):
        F.sgd_([Tensor()], [np.zeros(3, np.float32)], lr=0.1)
