#pragma once
// NumPy arrays as checked arrays (array_desc.hpp), for the host module. Every field comes from the
// array object's own struct: no attribute lookup, no conversion, no Python code, so the reader may
// run between the first check and the last write of a step. It runs for every array of every
// step, so the usual case (an exact ndarray of native float32/float64 that passes every rule) is
// inline; anything else takes the general path, which also builds the messages.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "args.hpp"
#include "array_desc.hpp"

namespace fastmomentum::bindings {

// Resolves numpy.ma.MaskedArray; once, at import, with the GIL held (after init_args).
void init_host_arrays();

// NumPy's shapes and strides are npy_intp, read in place as the descriptions' int64 (the wheels
// are built for 64-bit platforms only).
static_assert(sizeof(py::ssize_t) == sizeof(std::int64_t), "npy_intp must be 64-bit");

// '=' native, '|' not applicable, or this machine's own order spelled out.
inline bool native_byte_order(char order) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return order == '=' || order == '|' || order == '>';
#else
    return order == '=' || order == '|' || order == '<';
#endif
}

// The usual case: fills `out` and returns true when `obj` is an exact ndarray of native float32
// or float64 that obeys every rule of check_layout; returns false (out unspecified) otherwise.
inline bool read_plain_host_array(Checked& out, PyObject* obj, Access access) {
    namespace npy = py::detail;
    if (!is_exact_ndarray(obj)) return false;
    const auto* fields = npy::array_proxy(obj);
    const auto* descr = npy::array_descriptor_proxy(fields->descr);
    if (!native_byte_order(descr->byteorder)) return false;
    Dtype dtype;
    if (descr->type_num == npy::npy_api::NPY_FLOAT_) dtype = Dtype::f32;
    else if (descr->type_num == npy::npy_api::NPY_DOUBLE_) dtype = Dtype::f64;
    else return false;
    const int flags = fields->flags;
    const auto address = reinterpret_cast<std::uintptr_t>(fields->data);
    if (!(flags & npy::npy_api::NPY_ARRAY_C_CONTIGUOUS_) ||
        (access == Access::write && !(flags & npy::npy_api::NPY_ARRAY_WRITEABLE_)) ||
        (address & (itemsize(dtype) - 1)) != 0)
        return false;
    ArrayDesc& a = out.desc;
    a.data = fields->data;
    a.dtype = dtype;
    a.ndim = fields->nd;
    a.shape = reinterpret_cast<const std::int64_t*>(fields->dimensions);
    a.strides = reinterpret_cast<const std::int64_t*>(fields->strides);
    a.c_order = a.dense = true;
    a.writeable = (flags & npy::npy_api::NPY_ARRAY_WRITEABLE_) != 0;
    // NumPy guarantees that an array's element count and size in bytes fit an npy_intp.
    std::int64_t size = 1;
    for (int d = 0; d < a.ndim; ++d) size *= a.shape[d];
    a.size = size;
    a.nbytes = static_cast<std::size_t>(size) * itemsize(dtype);
    out.access = access;
    out.owner = py::reinterpret_borrow<py::object>(obj);
    return true;
}

// The general case: fills `out` after every check, or raises the error that names what is wrong.
// `obj` must be a numpy.ndarray (not a masked array: its mask would be ignored) of native float32
// or float64. Only an error's message may look further (a dtype's name, whether the object is a
// CUDA array).
void read_host_array(Checked& out, PyObject* obj, Access access);

}  // namespace fastmomentum::bindings
