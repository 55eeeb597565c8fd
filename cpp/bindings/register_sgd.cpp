// The step entry point `_core.sgd_step`: validates EVERYTHING (hyper-parameters, list lengths,
// every array, aliasing) before touching memory, so a bad input raises with nothing modified;
// then releases the GIL and runs the active ISA's kernels.

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/threads.hpp"
#include "register.hpp"

namespace fastmomentum::bindings {
namespace {

Style parse_style(const std::string& s) {
    if (s == "torch") return Style::torch;
    if (s == "keras") return Style::keras;
    throw py::value_error("style must be 'torch' or 'keras', got '" + s + "'");
}

DecayMode parse_decay_mode(const std::string& s) {
    if (s == "coupled") return DecayMode::coupled;
    if (s == "decoupled") return DecayMode::decoupled;
    if (s == "sgdw") return DecayMode::sgdw;
    throw py::value_error("weight_decay_mode must be 'coupled', 'decoupled' or 'sgdw', got '" + s + "'");
}

std::string repr(double x) { return py::repr(py::float_(x)).cast<std::string>(); }

void require(bool ok, const std::string& name, double value, const char* expected) {
    if (!ok) throw py::value_error("Invalid " + name + ": " + repr(value) + " (expected " + expected + ")");
}

// PyTorch's rules, plus finiteness (a NaN learning rate would silently poison every parameter).
void check_hyper(const Hyper& h) {
    require(std::isfinite(h.lr) && h.lr >= 0.0, "lr", h.lr, "a finite value >= 0");
    require(h.momentum >= 0.0 && h.momentum <= 1.0, "momentum", h.momentum, "0 <= momentum <= 1");
    require(h.dampening >= 0.0 && h.dampening <= 1.0, "dampening", h.dampening, "0 <= dampening <= 1");
    require(std::isfinite(h.weight_decay) && h.weight_decay >= 0.0, "weight_decay", h.weight_decay,
            "a finite value >= 0");
    require(std::isfinite(h.schedule_multiplier) && h.schedule_multiplier >= 0.0,
            "schedule_multiplier", h.schedule_multiplier, "a finite value >= 0");
    if (h.style == Style::keras && h.dampening != 0.0)
        throw py::value_error("dampening is not part of the keras convention; it must be 0");
    if (h.nesterov && (h.momentum <= 0.0 || h.dampening != 0.0))
        throw py::value_error("Nesterov momentum requires a momentum > 0 and zero dampening");
}

// Python or NumPy bool only: no truthiness conversion of other objects.
bool strict_bool(py::handle obj, bool& out) {
    py::detail::make_caster<bool> caster;
    if (!caster.load(obj, /*convert=*/false)) return false;
    out = static_cast<bool>(caster);
    return true;
}

// One bool for every array, or a list of bools as long as params.
std::vector<bool> parse_first_step(py::handle obj, std::size_t n) {
    bool all = false;
    if (strict_bool(obj, all)) return std::vector<bool>(n, all);
    const std::vector<py::handle> flags = items_of(obj, "first_step");
    if (flags.size() != n)
        throw py::value_error("first_step has " + std::to_string(flags.size()) +
                              " entries but params has " + std::to_string(n));
    std::vector<bool> out(n);
    for (std::size_t i = 0; i < n; ++i) {
        bool flag = false;
        if (!strict_bool(flags[i], flag))
            throw py::type_error("first_step[" + std::to_string(i) + "] must be a bool, got " +
                                 Py_TYPE(flags[i].ptr())->tp_name);
        out[i] = flag;
    }
    return out;
}

void check_length(const std::vector<py::handle>& items, const char* name, std::size_t n) {
    if (items.size() != n)
        throw py::value_error(std::string(name) + " has " + std::to_string(items.size()) +
                              " arrays but params has " + std::to_string(n));
}

int sgd_step(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             const std::string& style, double lr, double momentum, double dampening, bool nesterov,
             double weight_decay, const std::string& weight_decay_mode, double schedule_multiplier,
             bool maximize) {
    Hyper h;
    h.style = parse_style(style);
    h.decay_mode = parse_decay_mode(weight_decay_mode);
    h.lr = lr;
    h.momentum = momentum;
    h.dampening = dampening;
    h.weight_decay = weight_decay;
    h.schedule_multiplier = schedule_multiplier;
    h.nesterov = nesterov;
    h.maximize = maximize;
    check_hyper(h);

    const std::vector<py::handle> p_items = items_of(params, "params");
    const std::size_t n = p_items.size();
    const std::vector<py::handle> g_items = items_of(grads, "grads");
    check_length(g_items, "grads", n);
    const bool has_buffers = h.momentum != 0.0;
    std::vector<py::handle> b_items;
    if (has_buffers) {
        if (buffers.is_none())
            throw py::value_error("buffers is required when momentum != 0 (one array per parameter, "
                                  "e.g. np.zeros_like(p))");
        b_items = items_of(buffers, "buffers");
        check_length(b_items, "buffers", n);
    }
    const std::vector<bool> first = parse_first_step(first_step, n);

    // Every array checked before any is written: an error leaves all of them untouched.
    std::vector<CheckedArray> arrays;
    arrays.reserve(3 * n);
    for (std::size_t i = 0; i < n; ++i) {
        const CheckedArray& p = arrays.emplace_back(check_array(p_items[i], "params", i, Access::write));
        check_matches(arrays.emplace_back(check_array(g_items[i], "grads", i, Access::read)), p);
        if (has_buffers)
            check_matches(arrays.emplace_back(check_array(b_items[i], "buffers", i, Access::write)), p);
    }
    check_no_overlap(arrays);

    std::vector<TensorRef> f32, f64;
    const std::size_t stride = has_buffers ? 3 : 2;
    for (std::size_t i = 0; i < n; ++i) {
        const CheckedArray* a = &arrays[stride * i];
        TensorRef t{a[0].data, a[1].data, has_buffers ? a[2].data : nullptr, a[0].size, first[i]};
        (a[0].dtype == Dtype::f32 ? f32 : f64).push_back(t);
    }

    const KernelSet& kernels = active_kernels();
    const Launch launch = current_launch();
    int threads = 0;
    {
        py::gil_scoped_release release;
        if (!f32.empty()) threads = std::max(threads, kernels.f32(f32.data(), f32.size(), h, launch));
        if (!f64.empty()) threads = std::max(threads, kernels.f64(f64.data(), f64.size(), h, launch));
    }
    return threads;
}

}  // namespace

void register_sgd(py::module_& m) {
    m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("grads"), py::arg("buffers"),
          py::arg("first_step"), py::arg("style"), py::arg("lr"),
          py::arg("momentum"), py::arg("dampening"), py::arg("nesterov"), py::arg("weight_decay"),
          py::arg("weight_decay_mode"), py::arg("schedule_multiplier"), py::arg("maximize"),
          "Validate every array and hyper-parameter, then update params (and buffers) in place in "
          "one fused pass with the GIL released. Returns the number of threads that ran (0 when "
          "there was nothing to update). Call it positionally: keyword matching costs ~1 us.");
}

}  // namespace fastmomentum::bindings
