"""The CUDA module without a GPU: its report, the routing of device arrays to it, and every check
of its inputs. Those checks all run before CUDA is asked where the memory lives, so stand-in
device arrays (objects exposing ``__cuda_array_interface__`` over NumPy memory) exercise them here;
with no driver, or on a GPU (where host memory is refused), such a step then fails at that last
check with nothing modified. The checks must give the host module's messages word for word."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastmomentum as fm
from fastmomentum import _backend, _core
from fastmomentum._protocol import Call, Guard, Hyper

from conftest import core_step

try:
    from fastmomentum import _cuda
except ImportError:
    _cuda = None
# Skipped test by test (not the module: a file that collects nothing makes pytest exit 5).
pytestmark = pytest.mark.skipif(_cuda is None, reason="built without the CUDA module")

# What the last check says for stand-ins: no driver here, or host memory on a machine with a GPU.
WHERE_THE_MEMORY_LIVES = r"finding the device of params\[0\]|params\[0\] is not device memory"


class FakeCudaArray:
    """A ``__cuda_array_interface__`` (v3) over a NumPy array's memory, with any field overridden
    (``None`` drops it)."""

    def __init__(self, host, **fields):
        self.host = host  # keeps the memory alive
        self.interface = {"version": 3, "typestr": host.dtype.str, "shape": host.shape,
                          "strides": None, "data": (host.ctypes.data, not host.flags.writeable),
                          "stream": None}
        for key, value in fields.items():
            if value is None:
                self.interface.pop(key)
            else:
                self.interface[key] = value

    @property
    def __cuda_array_interface__(self):
        return self.interface


class RefusingArray:
    """A producer that refuses to export (as PyTorch does for a tensor that requires grad)."""

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")


def fake(host, **fields):
    return FakeCudaArray(host, **fields)


def device_step(params, grads, buffers=None, *, stream=1, nonfinite="ignore", max_norm=None,
                first_step=False, **overrides):
    """``_cuda.sgd_steps`` on one call, with core_step's defaults; returns the outcome."""
    kw = dict(style="torch", lr=0.01, momentum=0.9, dampening=0.0, nesterov=True,
              weight_decay=1e-4, weight_decay_mode="coupled", schedule_multiplier=1.0,
              maximize=False)
    kw.update(overrides)
    outcome = _core.StepOutcome()
    _cuda.sgd_steps([Call(params, buffers, first_step, Hyper(**kw), 0)], grads,
                    Guard(nonfinite, max_norm, 1.0, None), outcome, stream)
    return outcome


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(6).astype(np.float32) for _ in range(6)]


def snapshot(arrays):
    return [a.copy() for a in arrays]


def unchanged(arrays, before):
    return all(a.tobytes() == b.tobytes() for a, b in zip(arrays, before, strict=True))


def test_show_config_says_the_module_is_built_and_which_devices_it_can_use():
    status = fm.show_config(mode="dicts")["cuda"]
    build = _cuda.build()
    assert status.startswith(f"built (CUDA {build['runtime_version'] // 1000}.")
    assert build["architectures"] in status
    found = _cuda.devices()
    if found["devices"]:
        assert found["error"] is None and "; devices 0: " in status
    elif build["driver_version"] == 0:  # this machine: a toolkit but no driver
        plainly = "no CUDA driver / no GPU (no NVIDIA driver is installed or loaded here)"
        assert status.endswith(f"; no usable device: {plainly}")
        assert _backend.no_device_reason() == f"no usable CUDA device: {plainly}"
    else:  # a driver, but no GPU
        assert found["error"] and f"; no usable device: {found['error']}" in status


def test_the_default_architectures_include_turing_ampere_and_hopper():
    # Unless the build overrode them: then this says what was asked for.
    archs = _cuda.build()["architectures"].split()
    assert {a.split("-")[0] for a in archs} >= {"75", "80", "90"}
    assert "native" not in archs


@pytest.mark.parametrize("step", ["sgd_", "keras_sgd_", "ema_sgd_"])
@pytest.mark.parametrize("guarded", [False, True])
def test_a_step_on_device_arrays_goes_to_the_cuda_module(arrays, step, guarded):
    p, g, b = arrays[:3]
    before = snapshot(arrays)
    kw = {"beta": 0.9} if step == "ema_sgd_" else {"momentum": 0.9}
    if guarded:
        kw["max_grad_norm"] = 1.0
    with pytest.raises((RuntimeError, ValueError), match=WHERE_THE_MEMORY_LIVES):
        getattr(fm.functional, step)([fake(p)], [fake(g)], [fake(b)], lr=0.1, **kw)
    assert unchanged(arrays, before)


def test_host_steps_do_not_route_to_the_cuda_module(arrays):
    p, g = arrays[:2]
    with pytest.raises(TypeError, match=r"params must be a list or tuple"):
        fm.functional.sgd_(p, [g], lr=0.1)  # the host module's own error, re-raised as it was


def test_is_device_array():
    assert _backend.is_device_array(fake(np.zeros(2, np.float32)))
    assert not _backend.is_device_array(np.zeros(2, np.float32))  # has __dlpack__, on the CPU
    assert not _backend.is_device_array([1.0])


def test_a_device_array_in_a_host_step_is_named_with_the_reason(arrays):
    p, g, b = arrays[:3]
    with pytest.raises(TypeError, match=r"grads\[0\] must be a numpy\.ndarray, got "
                                        r".*FakeCudaArray \(a CUDA array: a step's arrays must "
                                        r"all be NumPy arrays or all be on one GPU\)"):
        core_step([p], [fake(g)], [b])


def test_a_host_array_in_a_device_step_is_named_with_the_reason(arrays):
    p, g, b = arrays[:3]
    before = snapshot(arrays)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a CUDA array .* got numpy\.ndarray "
                                        r"\(its DLPack device type is 1, the CPU\)"):
        fm.functional.sgd_([fake(p)], [g], [fake(b)], lr=0.1, momentum=0.9)
    assert unchanged(arrays, before)


def test_a_dlpack_export_on_the_cpu_is_refused():
    class ClaimsCuda:  # says CUDA, but its export is NumPy's, on the CPU
        def __init__(self, host):
            self.host = host

        def __dlpack_device__(self):
            return (2, 0)

        def __dlpack__(self, stream=None):
            return self.host.__dlpack__()

    p = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match=r"params\[0\] must be a CUDA array"):
        device_step([ClaimsCuda(p)], [ClaimsCuda(p.copy())], momentum=0.0, nesterov=False)


def test_a_producer_that_refuses_is_named(arrays):
    p = arrays[0]
    with pytest.raises(TypeError, match=r"^grads\[0\]: .*requires grad"):
        device_step([fake(p)], [RefusingArray()], momentum=0.0, nesterov=False)


@pytest.mark.parametrize(("fields", "error", "message"), [
    ({"typestr": "<i4"}, TypeError, r"params\[0\] has dtype '<i4'; expected float32, float64, "
                                    r"bfloat16 \('<V2'\) or float16 in native byte order, or "
                                    r"int8 for an 8-bit buffer's codes"),
    ({"typestr": "<u2"}, TypeError, r"params\[0\] has dtype '<u2'"),
    ({"typestr": ">f4"}, TypeError, r"params\[0\] has dtype '>f4'; .* native byte order"),
    ({"typestr": ">f2"}, TypeError, r"params\[0\] has dtype '>f2'; .* native byte order"),
    ({"typestr": "<V4"}, TypeError, r"params\[0\] has dtype '<V4'"),
    ({"strides": (8,)}, ValueError, r"params\[0\] is not dense \(shape \(6,\), strides "
                                    r"\(8,\)\): its elements leave gaps or overlap in memory; "
                                    r"fastmomentum never copies"),
    ({"strides": (0,)}, ValueError, r"params\[0\] is not dense \(shape \(6,\), strides \(0,\)\)"),
    ({"mask": (1,)}, ValueError, r"params\[0\] has a mask"),
    ({"stream": 0}, ValueError, r"params\[0\]\.__cuda_array_interface__\['stream'\] is 0"),
    ({"data": None}, ValueError, r"params\[0\]\.__cuda_array_interface__ has no 'data'"),
    ({"shape": [6]}, TypeError, r"\['shape'\] must be a tuple of ints"),
    ({"strides": (4, 4)}, ValueError, r"has 2 strides for 1 dimensions"),
    # Sizes with checked arithmetic: no negative extent, no product that wraps around.
    ({"shape": (-6,)}, ValueError, r"params\[0\] has shape \(-6,\), with a negative extent"),
    ({"shape": (2, -3)}, ValueError, r"params\[0\] has shape \(2, -3\), with a negative extent"),
    ({"shape": (2**32, 2**32)}, ValueError, r"params\[0\] has shape \(4294967296, "
                                            r"4294967296\), whose number of elements overflows"),
    ({"shape": (2**62,)}, ValueError, r"params\[0\] has shape \(4611686018427387904,\), whose "
                                      r"size in bytes overflows"),
    ({"shape": (2**64,)}, ValueError, r"params\[0\]\.__cuda_array_interface__\['shape'\]\[0\] = "
                                      r"18446744073709551616 does not fit a 64-bit integer"),
    ({"shape": (6.0,)}, TypeError, r"\['shape'\]\[0\] must be an int, got float"),
    ({"shape": (True,)}, TypeError, r"\['shape'\]\[0\] must be an int, got bool"),
    ({"data": (2**70, False)}, ValueError, r"\['data'\]\[0\] = 1180591620717411303424 does not "
                                          r"fit a 64-bit integer"),
    ({"strides": (2**64,)}, ValueError, r"\['strides'\]\[0\] = 18446744073709551616 does not "
                                        r"fit"),
    ({"typestr": 4}, TypeError, r"\['typestr'\] must be a str, got int"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_interface_fields_are_checked(arrays, fields, error, message):
    p, g, b = arrays[:3]
    before = snapshot(arrays)
    with pytest.raises(error, match=message):
        device_step([fake(p, **fields)], [fake(g)], [fake(b)])
    assert unchanged(arrays, before)


def test_strides_that_are_c_contiguous_are_accepted(arrays):
    p, g, b = arrays[:3]
    m = p.reshape(2, 3)
    # Explicit C strides, and any stride on a dimension of extent 1 (NumPy's rule).
    for strides in [(12, 4), None]:
        with pytest.raises((RuntimeError, ValueError), match=WHERE_THE_MEMORY_LIVES):
            device_step([fake(m, strides=strides)], [fake(g.reshape(2, 3))],
                        [fake(b.reshape(2, 3))])
    col = p.reshape(1, 6)
    with pytest.raises((RuntimeError, ValueError), match=WHERE_THE_MEMORY_LIVES):
        device_step([fake(col, strides=(999, 4))], [fake(g.reshape(1, 6))],
                    [fake(b.reshape(1, 6))])


def _dense_layouts(v):
    """(name, an array of v's values in another dense layout) pairs."""
    m = v.reshape(2, 3)
    return [("fortran", np.asfortranarray(m)), ("transposed", np.ascontiguousarray(m.T).T),
            ("reversed", np.ascontiguousarray(v[::-1])[::-1]),
            ("channels-last", np.ascontiguousarray(v.reshape(1, 3, 2, 1).transpose(0, 2, 3, 1))
             .transpose(0, 3, 1, 2))]


def test_dense_layouts_of_one_index_are_accepted(arrays):
    """Each reaches the last check (where the memory lives), past every rule of the arrays: the
    stand-ins declare their strides, and the data pointer is the first element's (not the lowest
    address, under negative strides)."""
    p, g, b = arrays[:3]
    layouts = zip(*(_dense_layouts(x) for x in (p, g, b)), strict=True)
    for (name, lp), (_, lg), (_, lb) in layouts:
        assert not lp.flags.c_contiguous, name
        with pytest.raises((RuntimeError, ValueError), match=WHERE_THE_MEMORY_LIVES):
            device_step([fake(lp, strides=lp.strides)], [fake(lg, strides=lg.strides)],
                        [fake(lb, strides=lb.strides)])


def test_a_layout_mismatch_is_refused_with_the_host_words(arrays):
    p, g, b = arrays[:3]
    before = snapshot(arrays)
    lp = np.asfortranarray(p.reshape(2, 3))
    with pytest.raises(ValueError, match=r"^grads\[0\] has strides \(12, 4\) but params\[0\] has "
                                         r"strides \(4, 8\) \(shape \(2, 3\)\); a parameter, its "
                                         r"gradient and its buffers must share one memory layout"):
        device_step([fake(lp, strides=lp.strides)], [fake(g.reshape(2, 3))],
                    [fake(b.reshape(2, 3))])
    assert unchanged(arrays, before)


class _TorchLike(FakeCudaArray):
    """A stand-in whose type says it is PyTorch's (by its module's name, as torch's types do)."""


_TorchLike.__module__ = "torch"
_TorchLike.__qualname__ = "Tensor"


class _TorchRefusing(RefusingArray):
    pass


_TorchRefusing.__module__ = "torch"
_TorchRefusing.__qualname__ = "Tensor"


def test_a_torch_tensor_refused_for_its_layout_is_told_what_to_do(arrays):
    p, g = arrays[:2]
    with pytest.raises(ValueError, match=r"^params\[0\] is not dense \(shape \(3,\), strides "
                                         r"\(8,\)\): .*\(a PyTorch tensor: update the tensor that "
                                         r"owns the memory; .*fastmomentum.torch.SGD"):
        device_step([_TorchLike(p[::2], strides=(8,))], [fake(g[::2], strides=(8,))],
                    momentum=0.0, nesterov=False)
    with pytest.raises(ValueError, match=r"^params\[0\] is not dense \(shape \(3,\), strides "
                                         r"\(8,\)\): .*then keep using it\)$"):  # not torch's
        device_step([fake(p[::2], strides=(8,))], [fake(g[::2], strides=(8,))],
                    momentum=0.0, nesterov=False)
    with pytest.raises(TypeError, match=r"^grads\[0\]: \(for PyTorch parameters use "
                                        r"fastmomentum.torch.SGD, or pass p.detach\(\), which "
                                        r"shares memory\) RuntimeError: .*requires grad"):
        device_step([fake(p)], [_TorchRefusing()], momentum=0.0, nesterov=False)


def test_a_misaligned_pointer_is_refused():
    raw = np.zeros(16, np.uint8)
    p = fake(np.zeros(2, np.float32), data=(raw.ctypes.data + 1, False))
    with pytest.raises(ValueError, match=r"params\[0\] is not aligned to its dtype"):
        device_step([p], [fake(np.zeros(2, np.float32))], momentum=0.0, nesterov=False)


# Each case: (params, grads, buffers) for the host module, and keyword overrides. The device
# module must refuse the same inputs, given as stand-ins, with the same message.
def _cases(arrays):
    p, g, b, q, h, c = arrays
    ro = p.copy()
    ro.flags.writeable = False
    g64 = g.astype(np.float64)
    return {
        "lengths": (([p, q], [g], [b, c]), {}),
        "buffers lengths": (([p, q], [g, h], [b]), {}),
        "no buffers": (([p], [g], None), {}),
        "shape": (([p], [g[:5]], [b]), {}),
        "dtype": (([p], [g64], [b]), {}),
        "buffer shape": (([p], [g], [b.reshape(2, 3)]), {}),
        "read-only param": (([ro], [g], [b]), {}),
        "read-only buffer": (([p], [g], [ro]), {}),
        "param overlaps buffer": (([p], [g], [p]), {}),
        "grad overlaps param": (([p, q], [g, p], [b, c]), {}),
        "lr": (([p], [g], [b]), {"lr": -1.0}),
        "momentum": (([p], [g], [b]), {"momentum": 1.5}),
        "nesterov": (([p], [g], [b]), {"dampening": 0.5}),
        "style": (([p], [g], [b]), {"style": "adam"}),
        "first_step": (([p], [g], [b]), {"first_step": [True, False]}),
        "overflow": (([p], [g], [b]), {"lr": 1e39}),
        # dense layouts: gapped, overlapping, or not the parameter's
        "gapped grad": (([p], [g[::2]], [b]), {}),
        "overlapping param": (([np.lib.stride_tricks.as_strided(p, (6,), (0,))], [g], [b]), {}),
        "reversed buffer": (([p], [g], [b[::-1]]), {}),
        "transposed grad": (([p.reshape(2, 3)], [g.reshape(3, 2).T], [b.reshape(2, 3)]), {}),
        "fortran param, c grad": (([np.asfortranarray(p.reshape(2, 3))], [g.reshape(2, 3)],
                                   [np.asfortranarray(b.reshape(2, 3))]), {}),
    }


@pytest.mark.parametrize("case", list(_cases([np.zeros(6, np.float32)] * 6)))
def test_the_device_module_refuses_what_the_host_module_refuses_with_its_words(arrays, case):
    (params, grads, buffers), overrides = _cases(arrays)[case]
    before = snapshot(arrays)
    with pytest.raises((TypeError, ValueError)) as host:
        core_step(params, grads, buffers, **overrides)

    def as_fake(items):  # the host array's own strides, where they are not C order's
        return None if items is None else [
            fake(a, strides=None if a.flags.c_contiguous else a.strides) for a in items]

    with pytest.raises(type(host.value), match=f"^{re.escape(str(host.value))}$"):
        device_step(as_fake(params), as_fake(grads), as_fake(buffers), **overrides)
    assert unchanged(arrays, before)


def test_the_stream_argument_is_checked(arrays):
    p, g = arrays[:2]
    with pytest.raises(ValueError, match="stream 0 is ambiguous"):
        device_step([fake(p)], [fake(g)], momentum=0.0, nesterov=False, stream=0)
    with pytest.raises(TypeError, match="stream must be an int"):
        device_step([fake(p)], [fake(g)], momentum=0.0, nesterov=False, stream=True)


def test_an_optimizer_of_device_arrays_checks_them_with_the_device_module(arrays):
    p, q = arrays[:2]
    with pytest.raises(TypeError, match=r"params\[1\] must be a CUDA array .* got numpy\.ndarray"):
        fm.SGD([fake(p), q], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[1\] must be a numpy\.ndarray, got "
                                        r".*FakeCudaArray \(a CUDA array"):
        fm.SGD([p, fake(q)], lr=0.1)
    with pytest.raises(TypeError, match=r"should be an iterable of arrays or dicts, but got "
                                        r"FakeCudaArray \(wrap it: \[w\]\)"):
        fm.SGD(fake(p), lr=0.1)
    # Valid stand-ins pass every check but the last one.
    with pytest.raises((RuntimeError, ValueError), match=WHERE_THE_MEMORY_LIVES):
        fm.SGD([fake(p), fake(q)], lr=0.1)


def test_the_host_module_is_unchanged_by_the_device_routing(arrays):
    # One host step, checked against the host module called directly.
    p, g, b = arrays[:3]
    p2, b2 = p.copy(), b.copy()
    fm.functional.sgd_([p], [g], [b], lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    core_step([p2], [g], [b2])
    assert p.tobytes() == p2.tobytes() and b.tobytes() == b2.tobytes()


def test_the_cuda_status_without_the_module(monkeypatch):
    monkeypatch.setattr(_backend, "_cuda", None)
    assert _core.cuda_not_built == ""  # this build has the module
    assert fm.show_config(mode="dicts")["cuda"].startswith("not built (it is missing from this "
                                                           "installation); to build it")
    with pytest.raises(RuntimeError, match=r"is a CUDA array, but fastmomentum's CUDA module is "
                                           r"not built"):
        fm.functional.sgd_([fake(np.zeros(2, np.float32))], [fake(np.zeros(2, np.float32))],
                           lr=0.1)


def test_module_functions_are_registered_without_touching_the_host_module():
    assert {"sgd_steps", "check_params", "devices", "build"} <= set(dir(_cuda))
    assert _core.sgd_steps is not _cuda.sgd_steps


def test_every_interface_is_read_once_before_any_array_is_checked(arrays):
    """An interface is Python code: a device step reads each array's once, all of them before the
    first check (the phase in which Python may run), so that no interface's code can change an
    array between its check and the kernels. The same array given twice is read once."""
    reads = []

    class Counting(FakeCudaArray):
        @property
        def __cuda_array_interface__(self):
            reads.append(self.name)
            return self.interface

    def counting(host, name, **fields):
        a = Counting(host, **fields)
        a.name = name
        return a

    p, g, b = (counting(a, n) for a, n in zip(arrays[:3], "pgb", strict=True))
    bad = counting(arrays[3], "bad", typestr="<i4")  # refused by its check, after every read
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype '<i4'"):
        device_step([p, p], [g, bad], [b, b])
    assert sorted(reads) == ["b", "bad", "g", "p"]
