// The benchmarks' bandwidth probe (fastmomentum/probe.hpp) as _core.bandwidth_probe: its arrays
// checked by the same rules as a step's (every buffer required, nothing shared), then run on the
// active ISA's probe with the step's threads.

#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "args.hpp"
#include "array_desc.hpp"
#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/probe.hpp"
#include "fastmomentum/threads.hpp"
#include "host_step.hpp"
#include "register.hpp"

namespace fastmomentum::bindings {
namespace {

int bandwidth_probe(py::handle params_obj, py::handle grads_obj, py::handle buffers_obj,
                    double scale) {
    const List params(params_obj, "params");
    const List grads(grads_obj, "grads");
    const List buffers(buffers_obj, "buffers");
    const std::size_t n = params.size();
    for (const auto* other : {&grads, &buffers})
        if (other->size() != n)
            throw py::value_error(std::string(other == &grads ? "grads" : "buffers") + " has " +
                                  std::to_string(other->size()) + " arrays but params has " +
                                  std::to_string(n));
    Step step;  // its arrays, held; the tensors by dtype in one Update
    step.arrays.reserve(3 * n);
    step.updates.emplace_back();
    HostReader read;
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t p = step.add(read, params[i], Where{"params", i}, Access::write);
        step.add(read, grads[i], Where{"grads", i}, Access::read);
        step.add(read, buffers[i], Where{"buffers", i}, Access::write);
        const Dtype dtype = step.arrays[p].desc.dtype;
        if (dtype != Dtype::f32 && dtype != Dtype::f64)
            throw py::type_error("params[" + std::to_string(i) + "] has dtype " + dtype_name(dtype) +
                                 "; the probe moves float32 or float64 arrays");
        check_matches(step.arrays[p + 1], step.arrays[p]);
        check_matches(step.arrays[p + 2], step.arrays[p]);
        step.updates[0].append(Kind{dtype, dtype, dtype, Rounding::nearest},
                               TensorArrays{&step.arrays[p], &step.arrays[p + 1],
                                            &step.arrays[p + 2], nullptr, nullptr},
                               false, i);
    }
    step.check_disjoint();
    const ProbeSet& probes = active_probes();
    const Launch launch = current_launch();
    const Update& u = step.updates[0];
    py::gil_scoped_release release;
    int threads = 0;
    if (!u.f32.empty()) threads = probes.f32(u.f32.data(), u.f32.size(), scale, launch);
    if (!u.f64.empty()) threads = std::max(threads, probes.f64(u.f64.data(), u.f64.size(), scale, launch));
    return threads;
}

}  // namespace

void register_probe(py::module_& m) {
    m.def("bandwidth_probe", &bandwidth_probe, py::arg("params"), py::arg("grads"),
          py::arg("buffers"), py::arg("scale"),
          "The benchmarks' bandwidth floor, not an update: p += scale*g; b += scale*g in one "
          "pass over arrays checked as a step's, threaded like the kernels. Returns the number "
          "of threads that ran.");
}

}  // namespace fastmomentum::bindings
