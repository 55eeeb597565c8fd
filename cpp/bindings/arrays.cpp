#include "arrays.hpp"

#include <algorithm>
#include <cstdint>

namespace fastmomentum::bindings {
namespace {

// numpy.ma.MaskedArray, resolved once at import (and kept for the interpreter's lifetime).
PyObject* g_masked_array = nullptr;

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
    py::object masked = py::module_::import("numpy.ma").attr("MaskedArray");
    g_masked_array = masked.release().ptr();
}

std::vector<py::object> items_of(py::handle obj, const char* name) {
    if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj)) {
        std::string msg = std::string(name) + " must be a list or tuple, got " + type_name(obj);
        if (py::isinstance<py::array>(obj)) msg += " (wrap a single array as [a])";
        throw py::type_error(msg);
    }
    std::vector<py::object> items;  // owning: a subclass's __iter__ may yield temporaries
    for (py::handle item : obj) items.push_back(py::reinterpret_borrow<py::object>(item));
    return items;
}

CheckedArray check_array(py::handle obj, const char* list, std::size_t index, Access access) {
    const auto where = [&] { return label(list, index); };  // built only for an error
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(where() + " must be a numpy.ndarray, got " + type_name(obj));
    if (PyObject_IsInstance(obj.ptr(), g_masked_array) == 1)
        throw py::type_error(where() + " is a numpy.ma.MaskedArray; its mask would be ignored: pass "
                             "its .data and handle the masked elements yourself");
    auto a = py::reinterpret_borrow<py::array>(obj);

    Dtype dtype;
    if (a.dtype().equal(py::dtype::of<float>())) dtype = Dtype::f32;
    else if (a.dtype().equal(py::dtype::of<double>())) dtype = Dtype::f64;
    else
        throw py::type_error(where() + " has dtype " + dtype_str(a) +
                             "; expected float32 or float64 in native byte order");
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(where() + " is not C-contiguous (shape " + shape_of(a) + ", strides " +
                              strides_of(a) + "); fastmomentum never copies: update a contiguous "
                              "array (np.ascontiguousarray once, then keep using it)");
    void* data = const_cast<void*>(a.data());
    if (reinterpret_cast<std::uintptr_t>(data) % static_cast<std::uintptr_t>(a.itemsize()) != 0)
        throw py::value_error(where() + " is not aligned to its dtype; fastmomentum never copies: "
                              "use an aligned array");
    if (access == Access::write && !a.writeable())
        throw py::value_error(where() + " is read-only; it is updated in place and must be writeable");

    const auto size = static_cast<std::int64_t>(a.size());
    const auto nbytes = static_cast<std::size_t>(a.nbytes());
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

void check_no_overlap(const std::vector<CheckedArray>& arrays) {
    // Sweep the byte ranges in address order. A range overlaps an earlier-starting one iff it
    // starts before the furthest end seen so far; a conflict needs one of the two to be written.
    std::vector<const CheckedArray*> order;
    order.reserve(arrays.size());
    for (const CheckedArray& a : arrays)
        if (a.nbytes > 0) order.push_back(&a);
    const auto begin = [](const CheckedArray* a) { return reinterpret_cast<std::uintptr_t>(a->data); };
    const auto end = [&](const CheckedArray* a) { return begin(a) + a->nbytes; };
    std::sort(order.begin(), order.end(),
              [&](const CheckedArray* x, const CheckedArray* y) { return begin(x) < begin(y); });

    const CheckedArray* furthest_any = nullptr;      // of all earlier ranges
    const CheckedArray* furthest_written = nullptr;  // of earlier written ranges
    for (const CheckedArray* a : order) {
        const CheckedArray* clash = nullptr;
        if (a->access == Access::write && furthest_any && end(furthest_any) > begin(a)) clash = furthest_any;
        else if (furthest_written && end(furthest_written) > begin(a)) clash = furthest_written;
        if (clash)
            throw py::value_error(label(*clash) + " and " + label(*a) + " share memory; every "
                                  "parameter and buffer of a call must be distinct memory, and no "
                                  "gradient may overlap one");
        if (!furthest_any || end(a) > end(furthest_any)) furthest_any = a;
        if (a->access == Access::write && (!furthest_written || end(a) > end(furthest_written)))
            furthest_written = a;
    }
}

}  // namespace fastmomentum::bindings
