// The CUDA module, _cuda: the step entry point for device arrays and what this build and machine
// offer. Importing it needs no GPU and no driver (cudart is linked statically): without them,
// devices() says why there is none, and nothing else is called.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "../bindings/args.hpp"
#include "../bindings/call.hpp"
#include "../bindings/entry_points.hpp"
#include "device_arrays.hpp"
#include "device_step.hpp"

namespace fastmomentum::cuda {
namespace {

StreamId parse_stream(py::handle obj) {
    if (!PyLong_Check(obj.ptr()) || PyBool_Check(obj.ptr()))
        throw py::type_error("stream must be an int (1: the legacy default stream, 2: the "
                             "per-thread default stream, else a cudaStream_t), got " +
                             bindings::type_name(obj.ptr()));
    const StreamId id = int64_of(obj.ptr(), "stream");
    if (id == 0)
        throw py::value_error("stream 0 is ambiguous (as in __cuda_array_interface__): pass 1 for "
                              "the legacy default stream or 2 for the per-thread default stream");
    return id;
}

// sgd_steps for device arrays, in the phases of the host's (call.hpp): everything parsed and every
// array's interface read (Python code), then every array checked (types, layout, shapes, that
// none overlaps a written one, and that all are memory of one device), then the kernels.
void sgd_steps(py::handle calls_obj, py::handle grads_obj, py::handle guard_obj,
               py::handle outcome_obj, py::handle stream_obj) {
    bindings::Outcome& outcome = bindings::outcome_of(outcome_obj);
    outcome = bindings::Outcome{};
    // Phase 1.
    const StreamId stream = parse_stream(stream_obj);
    const bindings::Guard guard = bindings::parse_guard(guard_obj);
    std::vector<bindings::CallArgs> calls = bindings::parse_calls(calls_obj);
    bindings::List grads(grads_obj, "grads");
    DeviceReader read(stream);
    for (bindings::CallArgs& c : calls) {
        read.collect(c.params, "params", c.first_index);
        if (c.has_buffers)
            read.collect(c.buffers, bindings::buffers_name(c.hyper.style), c.first_index, true);
        if (c.has_compensations) read.collect(c.compensations, "compensations", c.first_index);
    }
    read.collect(grads, "grads");
    // Phase 2.
    bindings::Step step;
    bindings::check_calls(calls.data(), calls.size(), grads, true, guard, read, step);
    const int device = check_devices(step.arrays);
    // Phase 3.
    outcome = run_on_device(step, guard, device, stream, read.producer_streams());
}

// An optimizer's construction-time check: the arrays as params of a step, and on one device.
// Returns that device.
int check_params(py::handle params_obj, py::handle first_index_obj) {
    const std::size_t first = bindings::count(first_index_obj.ptr(), "first_index");
    bindings::List params(params_obj, "params");
    DeviceReader read(1);
    read.collect(params, "params", first);
    bindings::Step step;
    step.arrays.reserve(params.size());
    for (std::size_t i = 0; i < params.size(); ++i)
        step.add(read, params[i], Where{"params", first + i}, Access::write);
    step.check_disjoint();
    return check_devices(step.arrays);
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

// No GIL needed, as for _core (module.cpp): this module's own state is the parser's NumPy types,
// set once while it is imported; a step's device work is ordered by CUDA streams, not the GIL.
PYBIND11_MODULE(_cuda, m, pybind11::mod_gil_not_used()) {
    namespace fc = fastmomentum::cuda;
    namespace py = pybind11;
    m.doc() = "fastmomentum's CUDA kernels (use the fastmomentum package, not this module)";
    // The parser resolves NumPy's types (it refuses an array as a number, names a NumPy array as
    // such); the outcome objects are the host module's class.
    fastmomentum::bindings::init_args();
    py::module_::import("fastmomentum._core");
    m.def("sgd_steps", &fc::sgd_steps, py::arg("calls"), py::arg("grads"), py::arg("guard"),
          py::arg("outcome"), py::arg("stream"),
          "_core.sgd_steps for CUDA arrays (__cuda_array_interface__ or DLPack), run on `stream` "
          "(1: legacy default, 2: per-thread default, else a cudaStream_t) after the pending work "
          "of the streams the arrays name; outcome (a _core.StepOutcome) records what it did "
          "(threads: 0, no host threads ran).");
    m.def("check_params", &fc::check_params, py::arg("params"), py::arg("first_index"),
          "Check device arrays as sgd_steps checks params (numbered from first_index), and that "
          "none shares memory with another and all are on one device; returns the device.");
    m.def("devices", &fc::devices,
          "{'devices': [{index, name, compute_capability, memory_bytes}], 'error': None or why "
          "CUDA found no device (e.g. no driver)}.");
    m.def("build", &fc::build,
          "{'runtime_version', 'driver_version' (0 without a driver), 'architectures'}.");
}
