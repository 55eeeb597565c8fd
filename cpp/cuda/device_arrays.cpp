#include "device_arrays.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <limits>
#include <string>

#include "dlpack_abi.hpp"
#include "launch.hpp"

namespace fastmomentum::cuda {
namespace {

std::string where_not_device(PyObject* obj) {
    return " must be a CUDA array (a CuPy array, a PyTorch CUDA tensor, or any object with "
           "__cuda_array_interface__ or __dlpack__ on a CUDA device), got " +
           bindings::type_name(obj);
}

}  // namespace

std::int64_t int64_of(PyObject* obj, const std::string& what) {
    if (!PyLong_Check(obj) || PyBool_Check(obj))
        throw py::type_error(what + " must be an int, got " + bindings::type_name(obj));
    int overflow = 0;
    const long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow != 0)
        throw py::value_error(what + " = " + py::repr(obj).cast<std::string>() +
                              " does not fit a 64-bit integer");
    return value;
}

namespace {

std::vector<std::int64_t> int_tuple(PyObject* obj, const std::string& what) {
    if (!PyTuple_Check(obj))
        throw py::type_error(what + " must be a tuple of ints, got " + bindings::type_name(obj));
    std::vector<std::int64_t> out;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(obj); ++i)
        out.push_back(int64_of(PyTuple_GET_ITEM(obj, i), what + "[" + std::to_string(i) + "]"));
    return out;
}

struct Fields {
    Dtype dtype;
    std::vector<std::int64_t> shape, strides;  // strides in bytes, empty: contiguous
    void* data;
    bool readonly;
    StreamId stream;  // 0: none named
};

// A __cuda_array_interface__ dict's fields, converted and checked.
Fields read_interface(PyObject* d, const std::string& where) {
    const std::string field = where + ".__cuda_array_interface__";
    const auto item = [&](const char* key) { return PyDict_GetItemString(d, key); };  // borrowed
    for (const char* key : {"typestr", "shape", "data"})
        if (item(key) == nullptr) throw py::value_error(field + " has no '" + key + "'");
    Fields f{};
    PyObject* typestr = item("typestr");
    if (!PyUnicode_Check(typestr))
        throw py::type_error(field + "['typestr'] must be a str, got " +
                             bindings::type_name(typestr));
    const std::string type = py::reinterpret_borrow<py::str>(typestr).cast<std::string>();
    // Little-endian machines only (x86-64, aarch64): '<' or native '='; one byte: '|' too.
    // bfloat16 has no typestr of its own: '<V2' is ml_dtypes' (NumPy's dtype.str of a 2-byte
    // void), which PyTorch >= 2.6 gives; see read_interface_or_dlpack for '<f2'.
    const auto is = [&](const char* code) {
        return type.size() == 3 && (type[0] == '<' || type[0] == '=') && type.compare(1, 2, code) == 0;
    };
    if (is("f4")) f.dtype = Dtype::f32;
    else if (is("f8")) f.dtype = Dtype::f64;
    else if (is("f2")) f.dtype = Dtype::f16;
    else if (is("V2")) f.dtype = Dtype::bf16;
    else if (type == "|i1" || is("i1")) f.dtype = Dtype::i8;  // an 8-bit buffer's codes
    else
        throw py::type_error(where + " has dtype '" + type +
                             "'; expected float32, float64, bfloat16 ('<V2') or float16 in "
                             "native byte order, or int8 for an 8-bit buffer's codes");
    f.shape = int_tuple(item("shape"), field + "['shape']");
    PyObject* mask = item("mask");
    if (mask != nullptr && mask != Py_None)
        throw py::value_error(where + " has a mask; it would be ignored: pass the unmasked data "
                              "and handle the masked elements yourself");
    PyObject* data = item("data");
    if (!PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2)
        throw py::type_error(field + "['data'] must be a tuple (pointer, read_only)");
    const std::int64_t pointer = int64_of(PyTuple_GET_ITEM(data, 0), field + "['data'][0]");
    f.data = reinterpret_cast<void*>(static_cast<std::uintptr_t>(pointer));
    const int readonly = PyObject_IsTrue(PyTuple_GET_ITEM(data, 1));
    if (readonly < 0) throw py::error_already_set();
    f.readonly = readonly != 0;
    PyObject* strides = item("strides");
    if (strides != nullptr && strides != Py_None) {
        f.strides = int_tuple(strides, field + "['strides']");
        if (f.strides.size() != f.shape.size())
            throw py::value_error(field + " has " + std::to_string(f.strides.size()) +
                                  " strides for " + std::to_string(f.shape.size()) + " dimensions");
    }
    PyObject* stream = item("stream");
    if (stream != nullptr && stream != Py_None) {
        f.stream = int64_of(stream, field + "['stream']");
        if (f.stream == 0)  // the interface's rule: 0 is ambiguous, so it is not allowed
            throw py::value_error(field + "['stream'] is 0, which the interface disallows");
    }
    return f;
}

// The DLPack export of `obj`, made for `stream`: fills `f` and returns the capsule.
py::object read_dlpack(PyObject* obj, StreamId stream, Fields& f, const std::string& where) {
    const py::handle h(obj);
    // Where the memory lives, before exporting anything.
    if (py::hasattr(h, "__dlpack_device__")) {
        const py::object device = h.attr("__dlpack_device__")();
        if (!PyTuple_Check(device.ptr()) || PyTuple_GET_SIZE(device.ptr()) < 1)
            throw py::type_error(where + ".__dlpack_device__() must return a tuple");
        const std::int64_t type = int64_of(PyTuple_GET_ITEM(device.ptr(), 0),
                                           where + ".__dlpack_device__()[0]");
        if (type != dlpack::kCUDA && type != dlpack::kCUDAManaged)
            throw py::type_error(where + where_not_device(obj) + " (its DLPack device type is " +
                                 std::to_string(type) + (type == dlpack::kCPU ? ", the CPU)" : ")"));
    }
    py::object capsule = h.attr("__dlpack__")(py::arg("stream") = stream);
    auto* managed = static_cast<dlpack::ManagedTensor*>(
        PyCapsule_GetPointer(capsule.ptr(), dlpack::kCapsuleName));
    if (managed == nullptr) throw py::error_already_set();
    const dlpack::Tensor& t = managed->dl_tensor;
    if (t.device.device_type != dlpack::kCUDA && t.device.device_type != dlpack::kCUDAManaged)
        throw py::type_error(where + where_not_device(obj));
    const auto is = [&](std::uint8_t code, std::uint8_t bits) {
        return t.dtype.code == code && t.dtype.bits == bits && t.dtype.lanes == 1;
    };
    if (is(dlpack::kFloat, 32)) f.dtype = Dtype::f32;
    else if (is(dlpack::kFloat, 64)) f.dtype = Dtype::f64;
    else if (is(dlpack::kFloat, 16)) f.dtype = Dtype::f16;
    else if (is(dlpack::kBfloat, 16)) f.dtype = Dtype::bf16;
    else if (is(dlpack::kInt, 8)) f.dtype = Dtype::i8;
    else
        throw py::type_error(where + " has DLPack dtype (code " + std::to_string(t.dtype.code) +
                             ", bits " + std::to_string(t.dtype.bits) + ", lanes " +
                             std::to_string(t.dtype.lanes) + "); expected float32, float64, "
                             "bfloat16 or float16, or int8 for an 8-bit buffer's codes");
    if (t.ndim < 0) throw py::value_error(where + " has a negative number of dimensions");
    f.shape.assign(t.shape, t.shape + t.ndim);
    if (t.strides != nullptr) {  // in elements: as bytes, checked
        const auto item = static_cast<std::int64_t>(bindings::itemsize(f.dtype));
        for (std::int32_t d = 0; d < t.ndim; ++d) {
            const std::int64_t s = t.strides[d];
            if (s > std::numeric_limits<std::int64_t>::max() / item ||
                s < std::numeric_limits<std::int64_t>::min() / item)
                throw py::value_error(where + " has a stride that overflows a 64-bit count of bytes");
            f.strides.push_back(s * item);
        }
    }
    f.data = static_cast<char*>(t.data) + t.byte_offset;
    f.readonly = false;  // the unversioned ABI has no read-only flag
    f.stream = 0;        // DLPack synchronises with the consumer's stream itself
    return capsule;
}

}  // namespace

void DeviceReader::collect(List& list, const char* name, std::size_t first, bool pairs) {
    list.freeze();
    for (std::size_t i = 0; i < list.size(); ++i) {
        PyObject* obj = list[i];
        if (pairs && PyTuple_Check(obj)) {
            // An 8-bit buffer, (codes, scales): a tuple's items cannot change. Another size is
            // left for phase 2, which names it.
            if (PyTuple_GET_SIZE(obj) == 2) {
                collect_one(PyTuple_GET_ITEM(obj, 0), Where{name, first + i, ".codes"});
                collect_one(PyTuple_GET_ITEM(obj, 1), Where{name, first + i, ".scales"});
            }
            continue;
        }
        collect_one(obj, Where{name, first + i});
    }
}

void DeviceReader::collect_one(PyObject* obj, const Where& at) {
    if (obj == Py_None || infos_.count(obj) != 0) return;
    const std::string where = at.str();
    held_.push_back(py::reinterpret_borrow<py::object>(obj));
    Fields f{};
    py::object owner = held_.back();
    PyObject* d = PyObject_GetAttrString(obj, "__cuda_array_interface__");
    if (d != nullptr) {
        const auto dict = py::reinterpret_steal<py::object>(d);
        if (!PyDict_Check(d))
            throw py::type_error(where + ".__cuda_array_interface__ is not a dict");
        f = read_interface(d, where);
        // A 2-byte typestr does not tell bfloat16 from float16 for every producer (PyTorch
        // 2.5 gives '<f2' for both): DLPack names them apart, so an array that also exports
        // DLPack is read through it, keeping the interface's read-only flag (DLPack's
        // unversioned ABI has none).
        if ((f.dtype == Dtype::f16 || f.dtype == Dtype::bf16) && py::hasattr(obj, "__dlpack__")) {
            const bool readonly = f.readonly;
            f = Fields{};
            owner = read_dlpack(obj, stream_, f, where);
            f.readonly = readonly;
        }
    } else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        if (!py::hasattr(obj, "__dlpack__")) throw py::type_error(where + where_not_device(obj));
        owner = read_dlpack(obj, stream_, f, where);
    } else if (PyErr_ExceptionMatches(PyExc_Exception)) {
        // The producer refuses (e.g. a PyTorch tensor that requires grad): say which array.
        py::error_already_set e;
        // (Advice before the producer's words, which may end in a traceback.)
        throw py::type_error(where + ": " +
                             (bindings::from_torch(obj)
                                  ? "(for PyTorch parameters use fastmomentum.torch.SGD, or pass "
                                    "p.detach(), which shares memory) "
                                  : "") +
                             e.what());
    } else {
        throw py::error_already_set();  // KeyboardInterrupt and the like: the caller's
    }
    Info info{};
    info.shape = std::move(f.shape);
    info.strides = std::move(f.strides);
    info.readonly = f.readonly;
    info.owner = std::move(owner);
    bindings::ArrayDesc& a = info.desc;
    a.data = f.data;
    a.dtype = f.dtype;
    a.ndim = static_cast<int>(info.shape.size());
    a.shape = info.shape.data();
    a.strides = info.strides.empty() ? nullptr : info.strides.data();
    a.writeable = !f.readonly;
    bindings::count_elements(a, at);
    bindings::find_layout(a);  // a.data: then the lowest address
    if (f.stream != 0 && f.stream != stream_ &&
        std::find(producers_.begin(), producers_.end(), f.stream) == producers_.end())
        producers_.push_back(f.stream);
    auto [it, inserted] = infos_.emplace(obj, std::move(info));
    it->second.desc.shape = it->second.shape.data();  // the vectors moved into the map
    it->second.desc.strides = it->second.strides.empty() ? nullptr : it->second.strides.data();
}

void DeviceReader::operator()(Checked& out, PyObject* obj, Access access) const {
    const auto it = infos_.find(obj);
    if (it == infos_.end())  // None, or an object phase 1 did not see
        throw py::type_error(out.where.str() + where_not_device(obj));
    out.desc = it->second.desc;
    // An error path may look the type up: say what to do with a PyTorch tensor.
    const bool torch_gapped = !out.desc.dense && bindings::from_torch(obj);
    bindings::check_layout(out.desc, out.where, access,
                           torch_gapped ? " (a PyTorch tensor: update the tensor that owns the "
                                          "memory; a model's parameters are dense in every "
                                          "memory format, and fastmomentum.torch.SGD takes them "
                                          "as they are)"
                                        : "");
    out.access = access;
    out.owner = it->second.owner;
}

int check_devices(const std::vector<Checked>& arrays) {
    int device = -1;
    const Checked* first = nullptr;
    for (const Checked& a : arrays) {
        if (a.desc.nbytes == 0) continue;
        cudaPointerAttributes attributes{};
        check(cudaPointerGetAttributes(&attributes, a.desc.data),
              ("finding the device of " + a.where.str()).c_str());
        if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
            throw py::value_error(a.where.str() + " is not device memory (CUDA reports it as host "
                                  "memory); every array of a device step must be on the GPU");
        if (first == nullptr) {
            first = &a;
            device = attributes.device;
        } else if (attributes.device != device) {
            throw py::value_error(a.where.str() + " is on CUDA device " +
                                  std::to_string(attributes.device) + " but " + first->where.str() +
                                  " is on device " + std::to_string(device) +
                                  "; every array of a step must be on one device");
        }
    }
    return device < 0 ? 0 : device;
}

}  // namespace fastmomentum::cuda
