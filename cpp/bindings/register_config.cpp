// Build and runtime configuration: version, ISAs, threads. Also applies FASTMOMENTUM_ISA at import.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/threads.hpp"
#include "args.hpp"
#include "register.hpp"

namespace fastmomentum::bindings {
namespace py = pybind11;
namespace {

std::vector<std::string> isas_where(bool (*pred)(Isa)) {
    std::vector<std::string> out;
    for (Isa isa : kAllIsas)
        if (pred(isa)) out.emplace_back(isa_name(isa));
    return out;
}

void select_isa_by_name(const std::string& name) {
    const auto isa = isa_from_name(name);
    if (!isa) throw py::value_error("unknown ISA '" + name + "'; expected baseline, avx2 or avx512");
    try {
        select_isa(*isa);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

// Chosen at import: FASTMOMENTUM_ISA when set and not empty, else the best one. An unusable value
// fails the import rather than silently running something other than what was asked for.
void select_isa_at_import() {
    const char* forced = std::getenv(kIsaEnvVar);
    if (forced == nullptr || *forced == '\0') {
        select_isa(best_isa());
        return;
    }
    try {
        select_isa_by_name(forced);
    } catch (const py::value_error& e) {
        throw std::runtime_error(std::string(kIsaEnvVar) + "=" + forced + ": " + e.what());
    }
}

py::dict config() {
    py::dict d;
    d["version"] = FM_VERSION;
    d["isa"] = active_kernels().isa;  // named by the kernel object itself
    d["isas_compiled"] = isas_where(isa_compiled);
    d["isas_supported"] = isas_where([](Isa isa) { return isa_compiled(isa) && isa_supported(isa); });
    d["openmp"] = openmp_enabled();
    d["openmp_version"] = openmp_version();
    d["openmp_runtime"] = openmp_runtime();
    d["threads"] = max_threads();
    d["grain_bytes"] = grain_bytes();
    d["compiler"] = FM_COMPILER;
    d["fp_contract"] = "off";
    return d;
}

}  // namespace

void register_config(py::module_& m) {
    select_isa_at_import();
    install_fork_handler();
    m.attr("__version__") = FM_VERSION;
    // Why the build left the CUDA module out (CMakeLists.txt), for fm.show_config(); empty when
    // it was built.
    m.attr("cuda_not_built") = FM_CUDA_NOT_BUILT;
    m.def("config", &config, "Build and runtime configuration as a dict.");
    m.def("set_num_threads", [](py::handle n) {
        const std::size_t cap = count(n.ptr(), "n");
        if (cap > static_cast<std::size_t>(std::numeric_limits<int>::max()))
            throw py::value_error("set_num_threads: n is too large");
        set_thread_cap(static_cast<int>(cap));
    }, py::arg("n"), "Cap the threads of every call (an int >= 0, not a bool); 0 removes the cap.");
    m.def("get_num_threads", &max_threads);
    m.def("select_isa", &select_isa_by_name, py::arg("name"));
    m.def("set_grain_bytes", [](std::int64_t bytes) {
        if (bytes < 1) throw py::value_error("grain_bytes must be >= 1, got " + std::to_string(bytes));
        set_grain_bytes(bytes);
    }, py::arg("bytes"), "Bytes of parameters per thread below which a call stays serial.");
}

}  // namespace fastmomentum::bindings
