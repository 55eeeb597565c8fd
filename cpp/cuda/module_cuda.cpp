// The CUDA module, _cuda: the step entry point for device arrays and what this build and machine
// offer. Importing it needs no GPU and no driver (cudart is linked statically): without them,
// devices() says why there is none, and nothing else is called.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "../bindings/call.hpp"
#include "../bindings/overlap.hpp"
#include "device_arrays.hpp"
#include "device_step.hpp"

namespace fastmomentum::cuda {
namespace {

StreamId parse_stream(py::handle obj) {
    if (!PyLong_Check(obj.ptr()) || PyBool_Check(obj.ptr()))
        throw py::type_error("stream must be an int (1: the legacy default stream, 2: the "
                             "per-thread default stream, else a cudaStream_t), got " +
                             bindings::type_name(obj));
    const auto id = obj.cast<StreamId>();
    if (id == 0)
        throw py::value_error("stream 0 is ambiguous (as in __cuda_array_interface__): pass 1 for "
                              "the legacy default stream or 2 for the per-thread default stream");
    return id;
}

// The arrays' check for one call's stream.
auto checker(StreamId stream) {
    return [stream](py::handle obj, const char* list, std::size_t index, Access access) {
        return check_device_array(obj, list, index, access, stream);
    };
}

// sgd_steps for device arrays: every array of every call checked (types, layout, shapes, that
// none overlaps a written one, and that all are memory of one device) before anything runs.
py::tuple sgd_steps(py::handle calls, py::handle check_finite, py::handle max_norm,
                    py::handle loss_scale, py::handle stream_obj) {
    const bindings::Guard guard = bindings::parse_guard(check_finite, max_norm, loss_scale);
    const StreamId stream = parse_stream(stream_obj);
    std::vector<DeviceArray> arrays;
    const std::vector<bindings::Call> prepared =
        bindings::prepare_calls(calls, guard, arrays, checker(stream));
    bindings::check_disjoint(arrays);
    const int device = check_devices(arrays);
    return bindings::to_python(run_on_device(prepared, guard, arrays, device, stream), guard);
}

// An optimizer's construction-time check: the arrays as params of a step, and on one device.
// Returns that device.
int check_params(py::handle params, std::size_t first_index) {
    std::vector<DeviceArray> arrays;
    const bindings::Items items(params, "params");
    for (std::size_t i = 0; i < items.size(); ++i)
        arrays.push_back(check_device_array(items[i], "params", first_index + i, Access::write, 1));
    bindings::check_disjoint(arrays);
    return check_devices(arrays);
}

// The usable devices, or why there are none.
py::dict devices() {
    py::dict out;
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    py::list found;
    if (status != cudaSuccess) {
        out["error"] = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
        cudaGetLastError();  // not a sticky error: clear it
        count = 0;
    } else {
        out["error"] = py::none();
    }
    for (int i = 0; i < count; ++i) {
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
        py::dict d;
        d["index"] = i;
        d["name"] = std::string(prop.name);
        d["compute_capability"] = std::to_string(prop.major) + "." + std::to_string(prop.minor);
        d["memory_bytes"] = prop.totalGlobalMem;
        found.append(d);
    }
    out["devices"] = found;
    return out;
}

py::dict build() {
    py::dict d;
    d["runtime_version"] = CUDART_VERSION;  // e.g. 13000 for 13.0
    int driver = 0;
    cudaDriverGetVersion(&driver);  // 0 without a driver
    d["driver_version"] = driver;
    d["architectures"] = FM_CUDA_ARCHITECTURES;
    return d;
}

}  // namespace
}  // namespace fastmomentum::cuda

PYBIND11_MODULE(_cuda, m) {
    namespace fc = fastmomentum::cuda;
    namespace py = pybind11;
    m.doc() = "fastmomentum's CUDA kernels (use the fastmomentum package, not this module)";
    m.def("sgd_steps", &fc::sgd_steps, py::arg("calls"), py::arg("check_finite"),
          py::arg("max_norm"), py::arg("loss_scale"), py::arg("stream"),
          "_core.sgd_steps for CUDA arrays (__cuda_array_interface__ or DLPack), run on `stream` "
          "(1: legacy default, 2: per-thread default, else a cudaStream_t) after the pending work "
          "of the streams the arrays name. Returns (applied, norm or None, 0).");
    m.def("check_params", &fc::check_params, py::arg("params"), py::arg("first_index"),
          "Check device arrays as sgd_steps checks params (numbered from first_index), and that "
          "none shares memory with another and all are on one device; returns the device.");
    m.def("devices", &fc::devices,
          "{'devices': [{index, name, compute_capability, memory_bytes}], 'error': None or why "
          "CUDA found no device (e.g. no driver)}.");
    m.def("build", &fc::build,
          "{'runtime_version', 'driver_version' (0 without a driver), 'architectures'}.");
}
