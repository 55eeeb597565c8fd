#include "device_arrays.hpp"

#include <cuda_runtime_api.h>

#include <cstring>

#include "dlpack_abi.hpp"
#include "launch.hpp"

namespace fastmomentum::cuda {
namespace {

std::string label(const char* list, std::size_t index) {
    return std::string(list) + "[" + std::to_string(index) + "]";
}

std::string shape_str(const std::vector<std::int64_t>& shape) {
    std::string s = "(";
    for (std::size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

const char* dtype_name(Dtype d) { return d == Dtype::f32 ? "float32" : "float64"; }

std::size_t itemsize(Dtype d) { return d == Dtype::f32 ? 4 : 8; }

std::int64_t product(const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (std::int64_t extent : shape) n *= extent;
    return n;
}

// Whether `strides` (in bytes, or in elements with itemsize 1) are C-contiguous for `shape`.
// Dimensions of extent 1 may have any stride, and an empty array is contiguous (NumPy's rules).
bool c_contiguous(const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& strides,
                  std::int64_t itemsize) {
    if (product(shape) == 0) return true;
    std::int64_t expected = itemsize;
    for (std::size_t d = shape.size(); d-- > 0;) {
        if (shape[d] != 1 && strides[d] != expected) return false;
        expected *= shape[d];
    }
    return true;
}

std::string where_not_device(py::handle obj) {
    return " must be a CUDA array (a CuPy array, a PyTorch CUDA tensor, or any object with "
           "__cuda_array_interface__ or __dlpack__ on a CUDA device), got " +
           bindings::type_name(obj);
}

// A CUDA-array-interface dict's fields, checked.
struct Interface {
    Dtype dtype;
    std::vector<std::int64_t> shape;
    void* data;
    bool readonly;
    std::intptr_t stream;
};

std::vector<std::int64_t> int_tuple(py::handle obj, const std::string& what) {
    if (!py::isinstance<py::tuple>(obj)) throw py::type_error(what + " must be a tuple of ints");
    std::vector<std::int64_t> out;
    for (py::handle item : obj) out.push_back(item.cast<std::int64_t>());
    return out;
}

Interface read_interface(const py::dict& d, const std::string& where) {
    const std::string field = where + ".__cuda_array_interface__";
    for (const char* key : {"typestr", "shape", "data"})
        if (!d.contains(key)) throw py::value_error(field + " has no '" + key + "'");
    Interface in{};
    const std::string typestr = py::str(d["typestr"]);
    // Little-endian machines only (x86-64, aarch64): '<' or native '='.
    if (typestr == "<f4" || typestr == "=f4") in.dtype = Dtype::f32;
    else if (typestr == "<f8" || typestr == "=f8") in.dtype = Dtype::f64;
    else
        throw py::type_error(where + " has dtype '" + typestr +
                             "'; expected float32 or float64 in native byte order");
    in.shape = int_tuple(d["shape"], field + "['shape']");
    if (d.contains("mask") && !d["mask"].is_none())
        throw py::value_error(where + " has a mask; it would be ignored: pass the unmasked data "
                              "and handle the masked elements yourself");
    const py::object data = d["data"];
    if (!py::isinstance<py::tuple>(data) || py::len(data) != 2)
        throw py::type_error(field + "['data'] must be a tuple (pointer, read_only)");
    in.data = reinterpret_cast<void*>(data[py::int_(0)].cast<std::uintptr_t>());
    in.readonly = data[py::int_(1)].cast<bool>();
    if (d.contains("strides") && !d["strides"].is_none()) {
        const auto strides = int_tuple(d["strides"], field + "['strides']");
        if (strides.size() != in.shape.size())
            throw py::value_error(field + " has " + std::to_string(strides.size()) +
                                  " strides for " + std::to_string(in.shape.size()) + " dimensions");
        if (!c_contiguous(in.shape, strides, static_cast<std::int64_t>(itemsize(in.dtype))))
            throw py::value_error(where + " is not C-contiguous (shape " + shape_str(in.shape) +
                                  ", strides " + shape_str(strides) + "); fastmomentum never "
                                  "copies: update a contiguous array");
    }
    in.stream = 0;
    if (d.contains("stream") && !d["stream"].is_none()) {
        in.stream = d["stream"].cast<std::intptr_t>();
        if (in.stream == 0)  // the interface's rule: 0 is ambiguous, so it is not allowed
            throw py::value_error(field + "['stream'] is 0, which the interface disallows");
    }
    return in;
}

// The DLPack export of `obj`, made for `stream`; fills `in` and returns the capsule.
py::object read_dlpack(py::handle obj, std::intptr_t stream, Interface& in,
                       const std::string& where) {
    // Where the memory lives, before exporting anything.
    if (py::hasattr(obj, "__dlpack_device__")) {
        const py::tuple device = obj.attr("__dlpack_device__")();
        const int type = device[0].cast<int>();
        if (type != dlpack::kCUDA && type != dlpack::kCUDAManaged)
            throw py::type_error(where + where_not_device(obj) + " (its DLPack device type is " +
                                 std::to_string(type) + (type == dlpack::kCPU ? ", the CPU)" : ")"));
    }
    py::object capsule = obj.attr("__dlpack__")(py::arg("stream") = stream);
    auto* managed = static_cast<dlpack::ManagedTensor*>(
        PyCapsule_GetPointer(capsule.ptr(), dlpack::kCapsuleName));
    if (managed == nullptr) throw py::error_already_set();
    const dlpack::Tensor& t = managed->dl_tensor;
    if (t.device.device_type != dlpack::kCUDA && t.device.device_type != dlpack::kCUDAManaged)
        throw py::type_error(where + where_not_device(obj));
    if (t.dtype.code == dlpack::kFloat && t.dtype.lanes == 1 && t.dtype.bits == 32)
        in.dtype = Dtype::f32;
    else if (t.dtype.code == dlpack::kFloat && t.dtype.lanes == 1 && t.dtype.bits == 64)
        in.dtype = Dtype::f64;
    else
        throw py::type_error(where + " has DLPack dtype (code " + std::to_string(t.dtype.code) +
                             ", bits " + std::to_string(t.dtype.bits) + ", lanes " +
                             std::to_string(t.dtype.lanes) + "); expected float32 or float64");
    in.shape.assign(t.shape, t.shape + t.ndim);
    if (t.strides != nullptr &&
        !c_contiguous(in.shape, std::vector<std::int64_t>(t.strides, t.strides + t.ndim), 1))
        throw py::value_error(where + " is not C-contiguous (shape " + shape_str(in.shape) +
                              ", strides in elements " +
                              shape_str(std::vector<std::int64_t>(t.strides, t.strides + t.ndim)) +
                              "); fastmomentum never copies: update a contiguous array");
    in.data = static_cast<char*>(t.data) + t.byte_offset;
    in.readonly = false;  // the unversioned ABI has no read-only flag
    in.stream = 0;
    return capsule;
}

}  // namespace

std::string label(const DeviceArray& a) { return label(a.list, a.index); }

DeviceArray check_device_array(py::handle obj, const char* list, std::size_t index, Access access,
                               std::intptr_t stream) {
    const std::string where = label(list, index);
    Interface in{};
    py::object owner = py::reinterpret_borrow<py::object>(obj);
    PyObject* d = PyObject_GetAttrString(obj.ptr(), "__cuda_array_interface__");
    if (d != nullptr) {
        const auto dict = py::reinterpret_steal<py::object>(d);
        if (!PyDict_Check(d))
            throw py::type_error(where + ".__cuda_array_interface__ is not a dict");
        in = read_interface(py::reinterpret_borrow<py::dict>(dict), where);
    } else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        if (!py::hasattr(obj, "__dlpack__")) throw py::type_error(where + where_not_device(obj));
        owner = read_dlpack(obj, stream, in, where);
    } else {
        // The producer refuses (e.g. a PyTorch tensor that requires grad): say which array.
        py::error_already_set e;
        throw py::type_error(where + ": " + e.what());
    }
    const std::size_t bytes = itemsize(in.dtype);
    if (reinterpret_cast<std::uintptr_t>(in.data) % bytes != 0)
        throw py::value_error(where + " is not aligned to its dtype; fastmomentum never copies: "
                              "use an aligned array");
    if (access == Access::write && in.readonly)
        throw py::value_error(where + " is read-only; it is updated in place and must be writeable");
    const std::int64_t size = product(in.shape);
    return DeviceArray{std::move(owner), in.data,   size,   static_cast<std::size_t>(size) * bytes,
                       in.dtype,         access,    std::move(in.shape), in.stream,
                       list,             index};
}

void check_matches(const DeviceArray& other, const DeviceArray& ref) {
    if (other.dtype != ref.dtype)
        throw py::type_error(label(other) + " has dtype " + dtype_name(other.dtype) + " but " +
                             label(ref) + " has dtype " + dtype_name(ref.dtype) + "; they must match");
    if (other.shape != ref.shape)
        throw py::value_error(label(other) + " has shape " + shape_str(other.shape) + " but " +
                              label(ref) + " has shape " + shape_str(ref.shape) + "; they must match");
}

int check_devices(const std::vector<DeviceArray>& arrays) {
    int device = -1;
    const DeviceArray* first = nullptr;
    for (const DeviceArray& a : arrays) {
        if (a.nbytes == 0) continue;
        cudaPointerAttributes attributes{};
        check(cudaPointerGetAttributes(&attributes, a.data),
              ("finding the device of " + label(a)).c_str());
        if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
            throw py::value_error(label(a) + " is not device memory (CUDA reports it as host "
                                  "memory); every array of a device step must be on the GPU");
        if (first == nullptr) {
            first = &a;
            device = attributes.device;
        } else if (attributes.device != device) {
            throw py::value_error(label(a) + " is on CUDA device " +
                                  std::to_string(attributes.device) + " but " + label(*first) +
                                  " is on device " + std::to_string(device) +
                                  "; every array of a step must be on one device");
        }
    }
    return device < 0 ? 0 : device;
}

}  // namespace fastmomentum::cuda
