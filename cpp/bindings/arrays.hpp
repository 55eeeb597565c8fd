#pragma once
// Zero-copy validation of the arrays of one call. Nothing here converts or copies: an array the
// kernel cannot update in place is rejected with an error that names the argument and list index.
// (pybind11's py::array_t would silently copy a strided or mistyped array, and the in-place write
// would be lost.)

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fastmomentum::bindings {

namespace py = pybind11;

enum class Dtype { f32, f64 };
enum class Access { read, write };

// A validated array: its memory and where it came from (for error messages).
struct CheckedArray {
    py::array array;
    void* data;
    std::int64_t size;
    std::size_t nbytes;
    Dtype dtype;
    Access access;
    const char* list;   // "params", "grads", "buffers", ...
    std::size_t index;  // as the caller numbers it (e.g. the position in the optimizer)
};

std::string type_name(py::handle obj);
std::string label(const CheckedArray& a);  // e.g. "grads[3]"

// Resolves types used by the checks; call once at import, with the GIL held.
void init_array_checks();

// The items of a list or tuple argument (never an array: that would iterate its rows), as a
// snapshot: a tuple, so that neither a list mutated by another thread nor a subclass's __iter__
// can change them while they are checked and used.
class Items {
public:
    Items() = default;  // no items
    Items(py::handle obj, const char* name);
    std::size_t size() const { return static_cast<std::size_t>(PyTuple_GET_SIZE(items_.ptr())); }
    py::handle operator[](std::size_t i) const {
        return PyTuple_GET_ITEM(items_.ptr(), static_cast<py::ssize_t>(i));
    }

private:
    py::tuple items_;
};

// `obj` must be a numpy.ndarray (not a masked array) of native float32/float64, C-contiguous and
// aligned, and writeable when `access` is write. It reads the array's fields directly: this runs
// for every array of every call.
CheckedArray check_array(py::handle obj, const char* list, std::size_t index, Access access);

// `other` must have the dtype and shape of `ref`.
void check_matches(const CheckedArray& other, const CheckedArray& ref);

// No array that is written may share memory with any other array (two reads may).
void check_no_overlap(const std::vector<CheckedArray>& arrays);

}  // namespace fastmomentum::bindings
