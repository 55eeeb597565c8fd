#include "arrays.hpp"
#include "overlap.hpp"

#include <cstdint>

namespace fastmomentum::bindings {
namespace {

// numpy.ndarray and numpy.ma.MaskedArray, resolved once at import (kept for the interpreter's
// lifetime).
PyTypeObject* g_ndarray = nullptr;
PyObject* g_masked_array = nullptr;

constexpr int kFloat32 = py::detail::npy_api::NPY_FLOAT_;
constexpr int kFloat64 = py::detail::npy_api::NPY_DOUBLE_;
constexpr int kCContiguous = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_;
constexpr int kWriteable = py::detail::npy_api::NPY_ARRAY_WRITEABLE_;

// '=' native, '|' not applicable, or this machine's own order spelled out.
bool native_byte_order(char order) {
    const std::uint16_t probe = 1;
    const bool little = *reinterpret_cast<const unsigned char*>(&probe) == 1;
    return order == '=' || order == '|' || order == (little ? '<' : '>');
}

std::string label(const char* list, std::size_t index) {
    return std::string(list) + "[" + std::to_string(index) + "]";
}

// Formats like a Python tuple: "()", "(3,)", "(3, 4)".
template <class Item>
std::string tuple_str(py::ssize_t n, Item item) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < n; ++d) s += (d ? ", " : "") + std::to_string(item(d));
    return s + (n == 1 ? ",)" : ")");
}

std::string shape_of(const py::array& a) {
    return tuple_str(a.ndim(), [&](py::ssize_t d) { return a.shape(d); });
}

std::string strides_of(const py::array& a) {
    return tuple_str(a.ndim(), [&](py::ssize_t d) { return a.strides(d); });
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

bool same_shape(const py::array& a, const py::array& b) {
    if (a.ndim() != b.ndim()) return false;
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        if (a.shape(d) != b.shape(d)) return false;
    return true;
}

}  // namespace

std::string type_name(py::handle obj) { return Py_TYPE(obj.ptr())->tp_name; }

std::string label(const CheckedArray& a) { return label(a.list, a.index); }

void init_array_checks() {
    g_ndarray = py::detail::npy_api::get().PyArray_Type_;
    py::object masked = py::module_::import("numpy.ma").attr("MaskedArray");
    g_masked_array = masked.release().ptr();
}

Items::Items(py::handle obj, const char* name) {
    if (PyTuple_CheckExact(obj.ptr())) {
        items_ = py::reinterpret_borrow<py::tuple>(obj);
    } else if (PyList_CheckExact(obj.ptr())) {
        items_ = py::reinterpret_steal<py::tuple>(PyList_AsTuple(obj.ptr()));
    } else if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
        items_ = py::reinterpret_steal<py::tuple>(PySequence_Tuple(obj.ptr()));  // a subclass: its
        // own iteration decides the items
    } else {
        std::string msg = std::string(name) + " must be a list or tuple, got " + type_name(obj);
        if (py::isinstance<py::array>(obj)) msg += " (wrap a single array as [a])";
        throw py::type_error(msg);
    }
    if (!items_) throw py::error_already_set();
}

CheckedArray check_array(py::handle obj, const char* list, std::size_t index, Access access) {
    const auto where = [&] { return label(list, index); };  // built only for an error
    PyObject* o = obj.ptr();
    if (Py_TYPE(o) != g_ndarray) {  // exact ndarrays (the usual case) skip the subclass checks
        if (!py::isinstance<py::array>(obj))
            throw py::type_error(where() + " must be a numpy.ndarray, got " + type_name(obj) +
                                 (py::hasattr(obj, "__cuda_array_interface__")
                                      ? " (a CUDA array: a step's arrays must all be NumPy arrays "
                                        "or all be on one GPU)"
                                      : ""));
        if (PyObject_IsInstance(o, g_masked_array) == 1)
            throw py::type_error(where() + " is a numpy.ma.MaskedArray; its mask would be ignored: "
                                 "pass its .data and handle the masked elements yourself");
    }
    const auto* fields = py::detail::array_proxy(o);
    const auto* descr = py::detail::array_descriptor_proxy(fields->descr);
    auto a = py::reinterpret_borrow<py::array>(obj);

    Dtype dtype;
    std::size_t itemsize;
    if (descr->type_num == kFloat32 && native_byte_order(descr->byteorder)) {
        dtype = Dtype::f32;
        itemsize = sizeof(float);
    } else if (descr->type_num == kFloat64 && native_byte_order(descr->byteorder)) {
        dtype = Dtype::f64;
        itemsize = sizeof(double);
    } else {
        throw py::type_error(where() + " has dtype " + dtype_str(a) +
                             "; expected float32 or float64 in native byte order");
    }
    if (!(fields->flags & kCContiguous))
        throw py::value_error(where() + " is not C-contiguous (shape " + shape_of(a) + ", strides " +
                              strides_of(a) + "); fastmomentum never copies: update a contiguous "
                              "array (np.ascontiguousarray once, then keep using it)");
    void* data = fields->data;
    if (reinterpret_cast<std::uintptr_t>(data) % itemsize != 0)
        throw py::value_error(where() + " is not aligned to its dtype; fastmomentum never copies: "
                              "use an aligned array");
    if (access == Access::write && !(fields->flags & kWriteable))
        throw py::value_error(where() + " is read-only; it is updated in place and must be writeable");

    std::int64_t size = 1;
    for (int d = 0; d < fields->nd; ++d) size *= fields->dimensions[d];
    const auto nbytes = static_cast<std::size_t>(size) * itemsize;
    return CheckedArray{std::move(a), data, size, nbytes, dtype, access, list, index};
}

void check_matches(const CheckedArray& other, const CheckedArray& ref) {
    if (other.dtype != ref.dtype)
        throw py::type_error(label(other) + " has dtype " + dtype_str(other.array) + " but " +
                             label(ref) + " has dtype " + dtype_str(ref.array) + "; they must match");
    if (!same_shape(other.array, ref.array))
        throw py::value_error(label(other) + " has shape " + shape_of(other.array) + " but " +
                              label(ref) + " has shape " + shape_of(ref.array) + "; they must match");
}

void check_no_overlap(const std::vector<CheckedArray>& arrays) { check_disjoint(arrays); }

}  // namespace fastmomentum::bindings
