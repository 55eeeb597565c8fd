// The step entry points. `_core.sgd_step` updates one list of arrays; `_core.sgd_steps` updates
// several (an optimizer's parameter groups, each with its own hyper-parameters). Both validate
// EVERYTHING first (hyper-parameters, list lengths, every array of every call, aliasing across all
// of them), so a bad input raises with nothing modified; then they release the GIL and run the
// active ISA's kernels.

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/threads.hpp"
#include "register.hpp"

// The coefficients are checked with the same function the kernels use; this object's copy of the
// rules lives in its own namespace, rules::host.
#define FM_ISA host
#include "fastmomentum/rules.hpp"

namespace fastmomentum::bindings {
namespace {

std::string repr(double x) { return py::repr(py::float_(x)).cast<std::string>(); }

// A Python real number: float, int or a NumPy scalar (never a bool or an array).
double real(py::handle obj, const char* name) {
    if (!PyBool_Check(obj.ptr()) && !py::isinstance<py::array>(obj)) {
        const double value = PyFloat_AsDouble(obj.ptr());
        if (!(value == -1.0 && PyErr_Occurred())) return value;
        PyErr_Clear();
    }
    throw py::type_error(std::string(name) + " must be a real number, got " + type_name(obj));
}

// True or False (Python or NumPy); no truthiness of other objects.
bool flag(py::handle obj, const char* name) {
    if (PyBool_Check(obj.ptr())) return obj.ptr() == Py_True;
    const std::string type = type_name(obj);
    if (type == "numpy.bool" || type == "numpy.bool_") return PyObject_IsTrue(obj.ptr()) == 1;
    throw py::type_error(std::string(name) + " must be a bool, got " + type);
}

std::string text(py::handle obj, const char* name) {
    if (!py::isinstance<py::str>(obj))
        throw py::type_error(std::string(name) + " must be a str, got " + type_name(obj));
    return obj.cast<std::string>();
}

Style parse_style(const std::string& s) {
    if (s == "torch") return Style::torch;
    if (s == "keras") return Style::keras;
    if (s == "ema") return Style::ema;
    throw py::value_error("style must be 'torch', 'keras' or 'ema', got '" + s + "'");
}

DecayMode parse_decay_mode(const std::string& s) {
    if (s == "coupled") return DecayMode::coupled;
    if (s == "decoupled") return DecayMode::decoupled;
    if (s == "sgdw") return DecayMode::sgdw;
    throw py::value_error("weight_decay_mode must be 'coupled', 'decoupled' or 'sgdw', got '" + s + "'");
}

// What each style calls its buffers and its momentum, for messages.
const char* buffers_name(Style s) { return s == Style::keras ? "velocities" : "buffers"; }
const char* momentum_name(Style s) { return s == Style::ema ? "beta" : "momentum"; }

// PyTorch's wording ("Invalid learning rate: -0.1"), then what is expected. Called only on a
// failure, so that a valid call builds no message.
[[noreturn]] void invalid(const std::string& what, double value, const std::string& expected) {
    throw py::value_error("Invalid " + what + ": " + repr(value) + " (expected " + expected + ")");
}

// PyTorch's rules, plus finiteness (a NaN learning rate would silently poison every parameter),
// momentum and dampening in [0, 1], and a decoupled decay that cannot flip a parameter's sign.
void check_hyper(const Hyper& h) {
    const std::string mu = momentum_name(h.style);  // short: no allocation
    if (!(std::isfinite(h.lr) && h.lr >= 0.0)) invalid("learning rate", h.lr, "a finite lr >= 0");
    if (!(h.momentum >= 0.0 && h.momentum <= 1.0))
        invalid(mu + " value", h.momentum, "0 <= " + mu + " <= 1");
    if (!(h.dampening >= 0.0 && h.dampening <= 1.0))
        invalid("dampening value", h.dampening, "0 <= dampening <= 1");
    if (!(std::isfinite(h.weight_decay) && h.weight_decay >= 0.0))
        invalid("weight_decay value", h.weight_decay, "a finite weight_decay >= 0");
    if (!(std::isfinite(h.schedule_multiplier) && h.schedule_multiplier >= 0.0))
        invalid("schedule_multiplier value", h.schedule_multiplier,
                "a finite schedule_multiplier >= 0");
    if (h.decay_mode != DecayMode::coupled) {
        const double product = rules::decay_scale(h) * h.weight_decay;
        if (!(product <= 1.0))
            invalid(std::string(h.decay_mode == DecayMode::sgdw ? "schedule_multiplier" : "lr") +
                        " * weight_decay",
                    product, "<= 1: a larger decoupled decay would flip the parameters' sign");
    }
    const char* style = h.style == Style::keras ? "keras" : "ema";
    if (h.style != Style::torch && h.dampening != 0.0)
        throw py::value_error(std::string("dampening is not part of the ") + style + " convention");
    if (h.style == Style::ema && h.nesterov)
        throw py::value_error("Nesterov momentum is not part of the ema convention");
    if (h.nesterov && (h.momentum <= 0.0 || h.dampening != 0.0))
        throw py::value_error("Nesterov momentum requires a momentum and zero dampening");
}

// Valid doubles can still overflow when rounded to float32, or multiply to infinity.
template <class T>
void check_coefficients(const Hyper& h, const char* dtype) {
    const Coeffs<T> k = rules::coeffs<T>(h);
    // The message is built only on failure: this runs on every call.
    const auto finite = [&](T value, const char* name, double given) {
        if (!std::isfinite(value))
            throw py::value_error(std::string(name) + "=" + repr(given) + " overflows " + dtype +
                                  ", the arrays' dtype");
    };
    finite(k.lr, "lr", h.lr);
    finite(k.weight_decay, "weight_decay", h.weight_decay);
    // (1 - scale*wd is in [0, 1]: check_hyper bounds scale*wd.)
    if (h.decay_mode != DecayMode::coupled)
        finite(k.decay_scale, h.decay_mode == DecayMode::sgdw ? "schedule_multiplier" : "lr",
               rules::decay_scale(h));
}

Hyper parse_hyper(py::handle style, py::handle lr, py::handle momentum, py::handle dampening,
                  py::handle nesterov, py::handle weight_decay, py::handle weight_decay_mode,
                  py::handle schedule_multiplier, py::handle maximize) {
    Hyper h;
    h.style = parse_style(text(style, "style"));
    h.lr = real(lr, "lr");
    h.momentum = real(momentum, momentum_name(h.style));
    h.dampening = real(dampening, "dampening");
    h.nesterov = flag(nesterov, "nesterov");
    h.weight_decay = real(weight_decay, "weight_decay");
    h.decay_mode = parse_decay_mode(text(weight_decay_mode, "weight_decay_mode"));
    h.schedule_multiplier = real(schedule_multiplier, "schedule_multiplier");
    h.maximize = flag(maximize, "maximize");
    check_hyper(h);
    return h;
}

// One bool for every array, or a list of bools as long as params.
std::vector<bool> parse_first_step(py::handle obj, std::size_t n) {
    if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj))
        return std::vector<bool>(n, flag(obj, "first_step"));
    const std::vector<py::object> flags = items_of(obj, "first_step");
    if (flags.size() != n)
        throw py::value_error("first_step has " + std::to_string(flags.size()) +
                              " entries but params has " + std::to_string(n));
    std::vector<bool> out(n);
    for (std::size_t i = 0; i < n; ++i)
        out[i] = flag(flags[i], ("first_step[" + std::to_string(i) + "]").c_str());
    return out;
}

// How array i of a call is numbered in messages: i, or the caller's number for it.
std::vector<std::size_t> parse_indices(py::handle obj, std::size_t n) {
    std::vector<std::size_t> out(n);
    if (obj.is_none()) {
        for (std::size_t i = 0; i < n; ++i) out[i] = i;
        return out;
    }
    const std::vector<py::object> items = items_of(obj, "indices");
    if (items.size() != n) throw py::value_error("indices must have one entry per parameter");
    for (std::size_t i = 0; i < n; ++i) out[i] = items[i].cast<std::size_t>();
    return out;
}

void check_length(const std::vector<py::object>& items, const char* name, std::size_t n) {
    if (items.size() != n)
        throw py::value_error(std::string(name) + " has " + std::to_string(items.size()) +
                              " arrays but params has " + std::to_string(n));
}

// One validated call: its hyper-parameters and its tensors by dtype.
struct Call {
    Hyper hyper;
    std::vector<TensorRef> f32, f64;
};

// Validates one call and appends its arrays to `arrays` (checked for overlap across all calls).
Call prepare(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             const Hyper& h, py::handle indices, std::vector<CheckedArray>& arrays) {
    const char* b_name = buffers_name(h.style);
    const std::vector<py::object> p_items = items_of(params, "params");
    const std::size_t n = p_items.size();
    const std::vector<py::object> g_items = items_of(grads, "grads");
    check_length(g_items, "grads", n);
    std::vector<py::object> b_items;
    if (!buffers.is_none()) {
        b_items = items_of(buffers, b_name);
        check_length(b_items, b_name, n);
    } else if (h.momentum != 0.0) {
        throw py::value_error(std::string(b_name) + " is required when " + momentum_name(h.style) +
                              " != 0 (one array per parameter, e.g. np.zeros_like(p))");
    }
    const bool has_buffers = !b_items.empty();
    const std::vector<bool> first = parse_first_step(first_step, n);
    const std::vector<std::size_t> index = parse_indices(indices, n);

    // Every array checked before any is written: an error leaves all of them untouched.
    const std::size_t start = arrays.size();
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t p = arrays.size();  // an index: appending may move the elements
        arrays.push_back(check_array(p_items[i], "params", index[i], Access::write));
        arrays.push_back(check_array(g_items[i], "grads", index[i], Access::read));
        check_matches(arrays.back(), arrays[p]);
        if (has_buffers) {
            arrays.push_back(check_array(b_items[i], b_name, index[i], Access::write));
            check_matches(arrays.back(), arrays[p]);
        }
    }

    Call call{h, {}, {}};
    const std::size_t stride = has_buffers ? 3 : 2;
    const bool use_buffers = h.momentum != 0.0;  // buffers given with momentum 0 are left alone
    for (std::size_t i = 0; i < n; ++i) {
        const CheckedArray* a = &arrays[start + stride * i];
        const TensorRef t{a[0].data, a[1].data, use_buffers ? a[2].data : nullptr, a[0].size, first[i]};
        (a[0].dtype == Dtype::f32 ? call.f32 : call.f64).push_back(t);
    }
    if (!call.f32.empty()) check_coefficients<float>(h, "float32");
    if (!call.f64.empty()) check_coefficients<double>(h, "float64");
    return call;
}

// Runs validated calls with the GIL released; returns the most threads any kernel ran.
int run(const std::vector<Call>& calls) {
    const KernelSet& kernels = active_kernels();
    const Launch launch = current_launch();
    int threads = 0;
    py::gil_scoped_release release;
    for (const Call& c : calls) {
        if (!c.f32.empty()) threads = std::max(threads, kernels.f32(c.f32.data(), c.f32.size(), c.hyper, launch));
        if (!c.f64.empty()) threads = std::max(threads, kernels.f64(c.f64.data(), c.f64.size(), c.hyper, launch));
    }
    return threads;
}

int sgd_step(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             py::handle style, py::handle lr, py::handle momentum, py::handle dampening,
             py::handle nesterov, py::handle weight_decay, py::handle weight_decay_mode,
             py::handle schedule_multiplier, py::handle maximize) {
    const Hyper h = parse_hyper(style, lr, momentum, dampening, nesterov, weight_decay,
                                weight_decay_mode, schedule_multiplier, maximize);
    std::vector<CheckedArray> arrays;
    const std::vector<Call> calls{prepare(params, grads, buffers, first_step, h, py::none(), arrays)};
    check_no_overlap(arrays);
    return run(calls);
}

constexpr std::size_t kCallFields = 14;

int sgd_steps(py::handle calls) {
    std::vector<CheckedArray> arrays;
    std::vector<Call> prepared;
    for (const py::object& item : items_of(calls, "calls")) {
        if (!py::isinstance<py::tuple>(item) || py::len(item) != kCallFields)
            throw py::type_error("each call must be a tuple of " + std::to_string(kCallFields) +
                                 " fields (sgd_step's arguments, then indices)");
        const auto f = py::reinterpret_borrow<py::tuple>(item);
        const Hyper h = parse_hyper(f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12]);
        prepared.push_back(prepare(f[0], f[1], f[2], f[3], h, f[13], arrays));
    }
    check_no_overlap(arrays);
    return run(prepared);
}

// Construction-time checks of an optimizer: the same rules as a step, before any step.
void check_params(py::handle params, std::size_t first_index) {
    std::vector<CheckedArray> arrays;
    std::size_t i = first_index;
    for (const py::object& p : items_of(params, "params"))
        arrays.push_back(check_array(p, "params", i++, Access::write));
    check_no_overlap(arrays);
}

void check_hyper_args(py::handle style, py::handle lr, py::handle momentum, py::handle dampening,
                      py::handle nesterov, py::handle weight_decay, py::handle weight_decay_mode,
                      py::handle schedule_multiplier, py::handle maximize) {
    parse_hyper(style, lr, momentum, dampening, nesterov, weight_decay, weight_decay_mode,
                schedule_multiplier, maximize);
}

}  // namespace

void register_sgd(py::module_& m) {
    init_array_checks();
    m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("grads"), py::arg("buffers"),
          py::arg("first_step"), py::arg("style"), py::arg("lr"), py::arg("momentum"),
          py::arg("dampening"), py::arg("nesterov"), py::arg("weight_decay"),
          py::arg("weight_decay_mode"), py::arg("schedule_multiplier"), py::arg("maximize"),
          "Validate every array and hyper-parameter, then update params (and buffers) in place in "
          "one fused pass with the GIL released. Returns the number of threads that ran (0 when "
          "there was nothing to update). Call it positionally: keyword matching costs ~1 us.");
    m.def("sgd_steps", &sgd_steps, py::arg("calls"),
          "Several sgd_step calls, each a tuple of sgd_step's 13 arguments plus `indices` (how each "
          "array is numbered in error messages, or None). Everything is validated before anything "
          "is written. Returns the most threads any kernel ran.");
    m.def("check_params", &check_params, py::arg("params"), py::arg("first_index"),
          "Check arrays as sgd_step checks params (numbered from first_index), and that none "
          "shares memory with another.");
    m.def("check_hyper", &check_hyper_args, py::arg("style"), py::arg("lr"), py::arg("momentum"),
          py::arg("dampening"), py::arg("nesterov"), py::arg("weight_decay"),
          py::arg("weight_decay_mode"), py::arg("schedule_multiplier"), py::arg("maximize"),
          "Check hyper-parameters as sgd_step does.");
}

}  // namespace fastmomentum::bindings
