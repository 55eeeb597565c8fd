"""The CUDA module's reading and checking of the low-precision kinds (issue 19), without a GPU:
bfloat16, float16 and int8 device arrays through ``__cuda_array_interface__`` and DLPack, 8-bit
buffers as (codes, scales) tuples of device arrays, and compensations. As in
test_cuda_validation.py, stand-ins over NumPy memory pass every check but the last (where the
memory lives), and what the host module refuses the device module refuses with its words."""

from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest

import fastmomentum as fm

from test_cuda_validation import WHERE_THE_MEMORY_LIVES, FakeCudaArray, device_step, fake

try:
    from fastmomentum import _cuda
except ImportError:
    _cuda = None
# Skipped test by test (not the module: a file that collects nothing makes pytest exit 5).
pytestmark = pytest.mark.skipif(_cuda is None, reason="built without the CUDA module")


@pytest.fixture(scope="module")
def bf16():
    return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)


def unchanged(arrays, before):
    return all(a.tobytes() == b for a, b in zip(arrays, before, strict=True))


def as_fakes(items):
    """Stand-ins for a list of arrays, (codes, scales) tuples and Nones."""
    if items is None:
        return None
    return [None if a is None else tuple(fake(x) for x in a) if isinstance(a, tuple) else fake(a)
            for a in items]


def test_the_interface_typestrs_of_the_narrow_dtypes(bf16):
    # ml_dtypes' bfloat16 is a 2-byte void to NumPy: its dtype.str, which PyTorch >= 2.6 gives
    # a bfloat16 CUDA tensor's interface too, is what the stand-ins below present.
    assert (bf16.str, np.dtype(np.float16).str, np.dtype(np.int8).str) == ("<V2", "<f2", "|i1")


def _steps(bf16):
    """Valid steps of every storage kind: (params, grads, buffers, keywords)."""
    rng = np.random.default_rng(0)

    def r(dtype, n=300):
        return rng.standard_normal(n).astype(dtype)

    def q(n=300):
        return (np.zeros(n, np.int8), np.zeros((n + 255) // 256, np.float32))

    return {
        "bfloat16, float32 grad, 8-bit": ([r(bf16)], [r(np.float32)], [q()], {}),
        "float16 Kahan, bfloat16 buffer": ([r(np.float16)], [r(np.float16)], [r(bf16)],
                                           {"compensations": [r(np.float16)]}),
        "float32, float16 buffer": ([r(np.float32)], [r(np.float32)], [r(np.float16)], {}),
        "float32, 8-bit": ([r(np.float32, 600)], [r(np.float32, 600)], [q(600)], {}),
        "bfloat16 stochastic, plain": ([r(bf16)], [r(bf16)], None,
                                       {"rounding": "stochastic", "momentum": 0.0}),
    }


STEPS = ["bfloat16, float32 grad, 8-bit", "float16 Kahan, bfloat16 buffer",
         "float32, float16 buffer", "float32, 8-bit", "bfloat16 stochastic, plain"]


@pytest.mark.parametrize("case", STEPS)
def test_every_storage_kind_passes_every_check_but_where_the_memory_lives(bf16, case):
    params, grads, buffers, kw = _steps(bf16)[case]
    kw = {"lr": 0.1, "momentum": 0.9, **kw}
    host = [*params, *grads, *[x for b in buffers or [] for x in b if isinstance(b, tuple)],
            *[b for b in buffers or [] if not isinstance(b, tuple)], *kw.get("compensations", [])]
    before = [a.tobytes() for a in host]
    if "compensations" in kw:
        kw["compensations"] = as_fakes(kw["compensations"])
    with pytest.raises((RuntimeError, ValueError), match=WHERE_THE_MEMORY_LIVES):
        fm.functional.sgd_(as_fakes(params), as_fakes(grads), as_fakes(buffers), **kw)
    assert unchanged(host, before)


def _refusals(bf16):
    """Low-precision steps the host module refuses: (params, grads, buffers, keywords)."""
    rng = np.random.default_rng(1)

    def r(dtype, n=6):
        return rng.standard_normal(n).astype(dtype)

    p, c = r(bf16), r(bf16)
    g32, g16, b32 = r(np.float32), r(np.float16), r(np.float32)
    codes, scales = np.zeros(6, np.int8), np.zeros(1, np.float32)
    read_only = codes.copy()
    read_only.flags.writeable = False
    return {
        "gradient dtype": ([p], [g16], [b32], {}),
        "int8 parameter": ([codes.copy()], [g32], [b32], {}),
        "float64 buffer": ([p], [g32], [b32.astype(np.float64)], {}),
        "int8 buffer": ([p], [g32], [codes], {}),
        "codes dtype": ([p], [g32], [(b32, scales)], {}),
        "codes shape": ([p], [g32], [(codes[:5], scales)], {}),
        "scales dtype": ([p], [g32], [(codes, scales.astype(np.float64))], {}),
        "scales shape": ([p], [g32], [(codes, np.zeros(2, np.float32))], {}),
        "read-only codes": ([p], [g32], [(read_only, scales)], {}),
        "a tuple of 3": ([p], [g32], [(codes, scales, scales)], {}),
        "compensated float32": ([g32.copy()], [g32], [b32], {"compensations": [c]}),
        "compensation dtype": ([p], [g32], [b32], {"compensations": [g16]}),
        "Kahan and stochastic": ([p], [g32], [b32], {"compensations": [c],
                                                      "rounding": "stochastic"}),
        "compensations length": ([p], [g32], [b32], {"compensations": [c, c]}),
        "compensation is the param": ([p], [g32], [b32], {"compensations": [p]}),
    }


REFUSALS = ["gradient dtype", "int8 parameter", "float64 buffer", "int8 buffer", "codes dtype",
            "codes shape", "scales dtype", "scales shape", "read-only codes", "a tuple of 3",
            "compensated float32", "compensation dtype", "Kahan and stochastic",
            "compensations length", "compensation is the param"]


@pytest.mark.parametrize("case", REFUSALS)
def test_the_device_module_refuses_what_the_host_module_refuses_with_its_words(bf16, case):
    params, grads, buffers, kw = _refusals(bf16)[case]
    kw = {"lr": 0.1, "momentum": 0.9, **kw}
    with pytest.raises((TypeError, ValueError)) as host:
        fm.functional.sgd_(params, grads, buffers, **kw)
    if "compensations" in kw:
        kw["compensations"] = as_fakes(kw["compensations"])
    with pytest.raises(type(host.value), match=f"^{re.escape(str(host.value))}$"):
        fm.functional.sgd_(as_fakes(params), as_fakes(grads), as_fakes(buffers), **kw)


class WithDlpack(FakeCudaArray):
    """A stand-in that also exports DLPack, recording the streams it is asked for. Its export is
    NumPy's, on the CPU, so reading it is refused: which tells that it was read."""

    def __init__(self, host, **fields):
        super().__init__(host, **fields)
        self.streams = []

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        return np.zeros(1, np.float32).__dlpack__()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_two_byte_array_that_also_exports_dlpack_is_read_through_it(bf16, dtype):
    """'<f2' does not tell float16 from bfloat16 for every producer (PyTorch 2.5 gives it for
    both); DLPack does, so an array with both is read through DLPack, for the step's stream."""
    p = WithDlpack(np.zeros(4, bf16 if dtype == "bfloat16" else np.float16))
    with pytest.raises(TypeError, match=r"^params\[0\] must be a CUDA array .* got "
                                        r".*WithDlpack$"):
        device_step([p], [fake(np.zeros(4, np.float32))], momentum=0.0, nesterov=False, stream=5)
    assert p.streams == [5]
    # A 4-byte dtype is read from the interface alone.
    q = WithDlpack(np.zeros(4, np.float32))
    with pytest.raises((RuntimeError, ValueError), match=WHERE_THE_MEMORY_LIVES):
        device_step([q], [fake(np.zeros(4, np.float32))], momentum=0.0, nesterov=False)
    assert q.streams == []


# DLPack's C structs (dlpack.h, the unversioned DLManagedTensor), to make exports that claim CUDA
# memory for NumPy memory, of any DLPack dtype.
class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int32),
                ("dtype", _DataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _ManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

KDL_INT, KDL_UINT, KDL_FLOAT, KDL_BFLOAT = 0, 1, 2, 4


class DlpackOnly:
    """Only DLPack (no ``__cuda_array_interface__``): an export on "CUDA device 0" of a NumPy
    array's memory, with the given DLPack type code and bits."""

    _NAME = b"dltensor"

    def __init__(self, host, code, bits):
        self.host = host  # keeps the memory alive, as the structs below
        self.shape = (ctypes.c_int64 * host.ndim)(*host.shape)
        self.managed = _ManagedTensor()
        t = self.managed.dl_tensor
        t.data = host.ctypes.data
        t.device = _Device(2, 0)  # kDLCUDA
        t.ndim = host.ndim
        t.dtype = _DataType(code, bits, 1)
        t.shape = ctypes.cast(self.shape, ctypes.POINTER(ctypes.c_int64))

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        return _capsule_new(ctypes.addressof(self.managed), self._NAME, None)


def test_dlpack_exports_of_the_narrow_dtypes_are_read_as_them(bf16):
    def dl(dtype, code, bits, n=300):
        return DlpackOnly(np.zeros(n, dtype), code, bits)

    p = dl(bf16, KDL_BFLOAT, 16)
    # Valid: bfloat16 parameter, float32 gradient, 8-bit buffer of int8 codes.
    with pytest.raises((RuntimeError, ValueError), match=WHERE_THE_MEMORY_LIVES):
        device_step([p], [dl(np.float32, KDL_FLOAT, 32)],
                    [(dl(np.int8, KDL_INT, 8), dl(np.float32, KDL_FLOAT, 32, 2))])
    # Read as what they are: the kinds' rules name the dtypes.
    with pytest.raises(TypeError, match=r"^grads\[0\] has dtype float16; a bfloat16 parameter's "
                                        r"gradient is bfloat16 or float32 \(params\[0\]\)$"):
        device_step([p], [dl(np.float16, KDL_FLOAT, 16)], momentum=0.0, nesterov=False)
    with pytest.raises(TypeError, match=r"^params\[0\] has dtype int8; expected float32, "
                                        r"float64, bfloat16 or float16$"):
        device_step([dl(np.int8, KDL_INT, 8)], [dl(np.int8, KDL_INT, 8)], momentum=0.0,
                    nesterov=False)
    with pytest.raises(TypeError, match=r"^params\[0\] has DLPack dtype \(code 1, bits 16, lanes "
                                        r"1\); expected float32, float64, bfloat16 or float16, "
                                        r"or int8 for an 8-bit buffer's codes$"):
        device_step([dl(np.uint16, KDL_UINT, 16)], [p], momentum=0.0, nesterov=False)
