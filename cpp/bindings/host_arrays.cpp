#include "host_arrays.hpp"

#include <pybind11/numpy.h>

#include <cstdint>
#include <string>

#include "args.hpp"

namespace fastmomentum::bindings {
namespace {

// Resolved once at import and kept for the interpreter's lifetime.
PyTypeObject* g_masked_array = nullptr;

constexpr int kFloat32 = py::detail::npy_api::NPY_FLOAT_;
constexpr int kFloat64 = py::detail::npy_api::NPY_DOUBLE_;
constexpr int kFloat16 = 23;  // NPY_HALF (pybind11 names no constant for it)
constexpr int kInt8 = py::detail::npy_api::NPY_BYTE_;
constexpr int kCContiguous = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_;
constexpr int kWriteable = py::detail::npy_api::NPY_ARRAY_WRITEABLE_;

// The error for an object that is not a NumPy array (an error path: it may look the type up).
[[noreturn]] void not_an_array(PyObject* obj, const Where& where) {
    std::string msg = where.str() + " must be a numpy.ndarray, got " + type_name(obj);
    if (from_torch(obj))
        msg += std::string(" (for PyTorch tensors use fastmomentum.torch.SGD, or pass ") +
               (where.list == std::string("grads") ? "p.grad.numpy()" : "p.detach().numpy()") +
               ", which shares memory)";
    else if (PyObject_HasAttrString(reinterpret_cast<PyObject*>(Py_TYPE(obj)), "__cuda_array_interface__"))
        msg += " (a CUDA array: a step's arrays must all be NumPy arrays or all be on one GPU)";
    else if (PyList_Check(obj) && PyList_GET_SIZE(obj) == 2 && where.part[0] == '\0' &&
             (std::string(where.list) == "buffers" || std::string(where.list) == "velocities"))
        msg += " (an 8-bit buffer is a (codes, scales) tuple: fastmomentum.QuantizedBuffer)";
    throw py::type_error(msg);
}

}  // namespace

void init_host_arrays() {
    py::object masked = py::module_::import("numpy.ma").attr("MaskedArray");
    g_masked_array = reinterpret_cast<PyTypeObject*>(masked.release().ptr());
}

void read_host_array(Checked& out, PyObject* obj, Access access) {
    const Where& where = out.where;
    if (!is_exact_ndarray(obj)) {
        if (!is_ndarray(obj)) not_an_array(obj, where);
        // The type itself, never its instance's __class__ (which a property can fake).
        if (PyType_IsSubtype(Py_TYPE(obj), g_masked_array))
            throw py::type_error(where.str() + " is a numpy.ma.MaskedArray; its mask would be "
                                 "ignored: pass its .data and handle the masked elements yourself");
    }
    const auto* fields = py::detail::array_proxy(obj);
    const auto* descr = py::detail::array_descriptor_proxy(fields->descr);
    ArrayDesc& a = out.desc;
    const bool native = native_byte_order(descr->byteorder);
    if (descr->type_num == kFloat32 && native) {
        a.dtype = Dtype::f32;
    } else if (descr->type_num == kFloat64 && native) {
        a.dtype = Dtype::f64;
    } else if (descr->type_num == kFloat16 && native) {
        a.dtype = Dtype::f16;
    } else if (descr->type_num == kInt8) {  // an 8-bit buffer's codes (the step checks where)
        a.dtype = Dtype::i8;
    } else if (descr->typeobj != nullptr &&
               descr->typeobj == reinterpret_cast<PyObject*>(detail::g_bfloat16.load()) && native) {
        a.dtype = Dtype::bf16;
    } else {
        const std::string dtype = py::str(reinterpret_cast<PyObject*>(fields->descr)).cast<std::string>();
        // An 8-bit buffer's parts have dtypes of their own (the step checks float ones there).
        const std::string part = where.part;
        throw py::type_error(where.str() + " has dtype " + dtype +
                             (part == ".codes"    ? "; an 8-bit buffer's codes are int8"
                              : part == ".scales" ? "; an 8-bit buffer's scales are float32 in "
                                                    "native byte order"
                                                  : "; expected float32, float64, bfloat16 "
                                                    "(ml_dtypes) or float16 in native byte "
                                                    "order"));
    }
    a.data = fields->data;
    a.ndim = fields->nd;
    a.shape = reinterpret_cast<const std::int64_t*>(fields->dimensions);
    a.strides = reinterpret_cast<const std::int64_t*>(fields->strides);
    a.writeable = (fields->flags & kWriteable) != 0;
    count_elements(a, where);
    if ((fields->flags & kCContiguous) != 0) a.c_order = a.dense = true;  // NumPy's rules are ours
    else find_layout(a);  // any other order of strides: dense, or gapped or overlapping
    check_layout(a, where, access);
    out.access = access;
    out.owner = py::reinterpret_borrow<py::object>(obj);
}

}  // namespace fastmomentum::bindings
