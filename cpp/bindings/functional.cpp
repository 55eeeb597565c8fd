// The functional entry points, fastmomentum.functional.sgd_, keras_sgd_ and ema_sgd_: C functions
// that take their keywords where they arrive (vectorcall), parse everything (phase 1), check every
// array (phase 2) and run the kernels (phase 3) in one call. A step whose first parameter is not
// a NumPy array is offered to the CUDA backend that the package bound (results.hpp). The
// docstrings are set from Python (fastmomentum/functional.py).

#include <pybind11/pybind11.h>

#include <array>
#include <string>
#include <utility>
#include <vector>

#include "args.hpp"
#include "call.hpp"
#include "entry_points.hpp"
#include "host_step.hpp"
#include "protocol.hpp"
#include "register.hpp"
#include "results.hpp"
#include "signature.hpp"

namespace fastmomentum::bindings {
namespace {

// What a functional argument is, whatever the entry point calls it.
enum Kind : int {
    k_params, k_grads, k_buffers, k_lr, k_momentum, k_dampening, k_nesterov, k_weight_decay,
    k_weight_decay_mode, k_schedule_multiplier, k_maximize, k_first_step, k_nonfinite,
    k_max_grad_norm, k_loss_scale, k_global_clipnorm, k_clipvalue, k_compensations, k_rounding,
    k_seed, k_step, k_kinds
};

// One entry point: its signature, its style, which slot holds each kind of argument (-1: the
// entry point does not take it) and the value of each kind when it is not given.
struct Entry {
    Signature signature;
    PyObject* style;
    std::array<int, k_kinds> slot;
    std::array<PyObject*, k_kinds> fallback;
};

// Made at import, kept for the interpreter's lifetime.
std::array<Entry*, 3> g_entries{};
PyObject* g_torch_rule = nullptr;  // "torch" and "keras", the guard's clip_rule
PyObject* g_keras_rule = nullptr;

PyObject* keep(PyObject* obj) {
    if (obj == nullptr) throw py::error_already_set();
    return obj;
}

// An entry point's parameters, then every entry point's keywords for parameters narrower than
// float32 (README, "Low-precision state").
std::vector<std::pair<const char*, Kind>> with_lowp(std::vector<std::pair<const char*, Kind>> own) {
    own.insert(own.end(), {{"compensations", k_compensations}, {"rounding", k_rounding},
                           {"seed", k_seed}, {"step", k_step}});
    return own;
}

Entry* make_entry(const char* function, const char* style, const char* decay_mode,
                  const std::vector<std::pair<const char*, Kind>>& parameters,
                  const std::vector<const char*>& required_keywords) {
    std::vector<const char*> names;
    for (const auto& p : parameters) names.push_back(p.first);
    auto* e = new Entry{Signature(function, names, 3, 2, required_keywords),
                        keep(PyUnicode_InternFromString(style)), {}, {}};
    e->slot.fill(-1);
    for (std::size_t i = 0; i < parameters.size(); ++i)
        e->slot[parameters[i].second] = static_cast<int>(i);
    PyObject* zero = keep(PyFloat_FromDouble(0.0));
    PyObject* one = keep(PyFloat_FromDouble(1.0));
    PyObject* zero_int = keep(PyLong_FromLong(0));
    e->fallback.fill(nullptr);
    for (Kind k : {k_momentum, k_dampening, k_weight_decay}) e->fallback[k] = zero;
    for (Kind k : {k_schedule_multiplier, k_loss_scale}) e->fallback[k] = one;
    for (Kind k : {k_nesterov, k_maximize, k_first_step}) e->fallback[k] = Py_False;
    for (Kind k : {k_buffers, k_max_grad_norm, k_global_clipnorm, k_clipvalue, k_compensations})
        e->fallback[k] = Py_None;
    for (Kind k : {k_seed, k_step}) e->fallback[k] = zero_int;
    e->fallback[k_rounding] = keep(PyUnicode_InternFromString("nearest"));
    e->fallback[k_weight_decay_mode] = keep(PyUnicode_InternFromString(decay_mode));
    e->fallback[k_nonfinite] = keep(PyUnicode_InternFromString("ignore"));
    return e;
}

// The guard's max_norm and clip_rule: Keras' global_clipnorm (keras_sgd_) or max_grad_norm.
std::pair<PyObject*, PyObject*> norm_clipping(PyObject* const* arg) {
    if (arg[k_global_clipnorm] == Py_None) return {arg[k_max_grad_norm], g_torch_rule};
    if (arg[k_max_grad_norm] != Py_None)
        throw py::value_error("max_grad_norm cannot be combined with global_clipnorm: only one "
                              "gradient clipping can be set, as in Keras");
    return {arg[k_global_clipnorm], g_keras_rule};
}

// A normalised _protocol.Hyper tuple of `h`, for the CUDA backend.
py::tuple hyper_tuple(const Hyper& h) {
    static const char* const styles[] = {"torch", "keras", "ema"};
    static const char* const modes[] = {"coupled", "decoupled", "sgdw"};
    py::tuple t(field::kHyperCount);
    t[field::style] = py::str(styles[static_cast<int>(h.style)]);
    t[field::lr] = py::float_(h.lr);
    t[field::momentum] = py::float_(h.momentum);
    t[field::dampening] = py::float_(h.dampening);
    t[field::nesterov] = py::bool_(h.nesterov);
    t[field::weight_decay] = py::float_(h.weight_decay);
    t[field::weight_decay_mode] = py::str(modes[static_cast<int>(h.decay_mode)]);
    t[field::schedule_multiplier] = py::float_(h.schedule_multiplier);
    t[field::maximize] = py::bool_(h.maximize);
    t[field::rounding] = py::str(h.rounding == Rounding::stochastic ? "stochastic" : "nearest");
    t[field::seed] = py::int_(h.seed);
    t[field::step] = py::int_(h.step);
    return t;
}

// A step whose first parameter is not a NumPy array, offered to the CUDA backend as an
// _protocol.Call and Guard: its outcome, or None when `first` is not a device array.
py::object try_device(PyObject* first, PyObject* const* arg, const Hyper& h) {
    py::tuple call(field::kCallCount);
    call[field::params] = py::handle(arg[k_params]);
    call[field::buffers] = py::handle(arg[k_buffers]);
    call[field::first_step] = py::handle(arg[k_first_step]);
    call[field::hyper] = hyper_tuple(h);
    call[field::first_index] = py::int_(0);
    call[field::compensations] = py::handle(arg[k_compensations]);
    const auto [max_norm, clip_rule] = norm_clipping(arg);
    py::tuple guard(field::kGuardCount);
    guard[field::nonfinite] = py::handle(arg[k_nonfinite]);
    guard[field::max_norm] = py::handle(max_norm);
    guard[field::loss_scale] = py::handle(arg[k_loss_scale]);
    guard[field::stats] = py::none();
    guard[field::clip_rule] = py::handle(clip_rule);
    guard[field::clip_value] = py::handle(arg[k_clipvalue]);
    return try_device_step(first, call, arg[k_grads], guard);
}

template <int Id>
PyObject* functional_step(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargsf,
                          PyObject* kwnames) {
    const Entry& e = *g_entries[Id];
    PyObject* slots[k_kinds];
    if (!e.signature.parse(args, PyVectorcall_NARGS(nargsf), kwnames, slots)) return nullptr;
    PyObject* arg[k_kinds];
    for (int k = 0; k < k_kinds; ++k) {
        const int s = e.slot[k];
        arg[k] = s >= 0 && slots[s] != nullptr ? slots[s] : e.fallback[k];
    }
    try {
        // Phase 1: every conversion (the only Python code a step may run).
        const Hyper h = parse_hyper(HyperArgs{e.style, arg[k_lr], arg[k_momentum],
                                              arg[k_dampening], arg[k_nesterov],
                                              arg[k_weight_decay], arg[k_weight_decay_mode],
                                              arg[k_schedule_multiplier], arg[k_maximize],
                                              arg[k_rounding], arg[k_seed], arg[k_step]});
        const auto [max_norm, clip_rule] = norm_clipping(arg);
        const Guard guard = parse_guard(arg[k_nonfinite], max_norm, arg[k_loss_scale], Py_None,
                                        clip_rule, arg[k_clipvalue]);
        const CallArgs call = parse_call(arg[k_params], arg[k_buffers], arg[k_compensations],
                                         arg[k_first_step], h, 0);
        const List grads(arg[k_grads], "grads");
        if (!call.params.empty() && !is_ndarray(call.params[0])) {
            const py::object outcome = try_device(call.params[0], arg, h);
            if (!outcome.is_none())
                return step_result(outcome_of(outcome), arg[k_grads]).release().ptr();
        }
        // Phase 2: every array checked, with no Python code, before anything is written.
        Step step;
        HostReader read;
        check_calls(&call, 1, grads, false, guard, read, step);
        // Phase 3.
        Outcome outcome;
        run_on_host(step, guard, outcome);
        return step_result(outcome, arg[k_grads]).release().ptr();
    } catch (...) {
        return set_python_error();
    }
}

// The entry points' method tables (they outlive the module).
PyMethodDef g_defs[] = {
    {"sgd_", nullptr, METH_FASTCALL | METH_KEYWORDS, nullptr},
    {"keras_sgd_", nullptr, METH_FASTCALL | METH_KEYWORDS, nullptr},
    {"ema_sgd_", nullptr, METH_FASTCALL | METH_KEYWORDS, nullptr},
};

// The docstring (and text signature) of an entry point, from fastmomentum/functional.py. The
// string is kept for the interpreter's lifetime: the function reads it from its method table.
void set_doc(const std::string& name, py::str doc) {
    for (PyMethodDef& def : g_defs)
        if (name == def.ml_name) {
            const char* text = PyUnicode_AsUTF8(doc.ptr());
            if (text == nullptr) throw py::error_already_set();
            doc.inc_ref();
            def.ml_doc = text;
            return;
        }
    throw py::value_error("no functional entry point is named '" + name + "'");
}

}  // namespace

void register_functional(py::module_& m) {
    g_torch_rule = keep(PyUnicode_InternFromString("torch"));
    g_keras_rule = keep(PyUnicode_InternFromString("keras"));
    const std::vector<const char*> lr = {"lr"};
    g_entries[0] = make_entry(
        "sgd_", "torch", "coupled",
        with_lowp({{"params", k_params}, {"grads", k_grads}, {"buffers", k_buffers}, {"lr", k_lr},
         {"momentum", k_momentum}, {"dampening", k_dampening}, {"nesterov", k_nesterov},
         {"weight_decay", k_weight_decay}, {"weight_decay_mode", k_weight_decay_mode},
         {"schedule_multiplier", k_schedule_multiplier}, {"maximize", k_maximize},
         {"first_step", k_first_step}, {"nonfinite", k_nonfinite},
         {"max_grad_norm", k_max_grad_norm}, {"loss_scale", k_loss_scale}}),
        lr);
    g_entries[1] = make_entry(
        "keras_sgd_", "keras", "decoupled",
        with_lowp({{"params", k_params}, {"grads", k_grads}, {"velocities", k_buffers}, {"lr", k_lr},
         {"momentum", k_momentum}, {"nesterov", k_nesterov}, {"weight_decay", k_weight_decay},
         {"weight_decay_mode", k_weight_decay_mode},
         {"schedule_multiplier", k_schedule_multiplier}, {"maximize", k_maximize},
         {"nonfinite", k_nonfinite}, {"max_grad_norm", k_max_grad_norm},
         {"loss_scale", k_loss_scale}, {"global_clipnorm", k_global_clipnorm},
         {"clipvalue", k_clipvalue}}),
        lr);
    g_entries[2] = make_entry(
        "ema_sgd_", "ema", "coupled",
        with_lowp({{"params", k_params}, {"grads", k_grads}, {"buffers", k_buffers}, {"lr", k_lr},
         {"beta", k_momentum}, {"weight_decay", k_weight_decay},
         {"weight_decay_mode", k_weight_decay_mode},
         {"schedule_multiplier", k_schedule_multiplier}, {"maximize", k_maximize},
         {"nonfinite", k_nonfinite}, {"max_grad_norm", k_max_grad_norm},
         {"loss_scale", k_loss_scale}}),
        {"lr", "beta"});
    g_defs[0].ml_meth = reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&functional_step<0>));
    g_defs[1].ml_meth = reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&functional_step<1>));
    g_defs[2].ml_meth = reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&functional_step<2>));
    for (PyMethodDef& def : g_defs) add_function(m, def);
    m.def("_set_doc", &set_doc, py::arg("name"), py::arg("doc"),
          "Set the docstring of a functional entry point (its first line may be a text signature "
          "followed by '--').");
}

}  // namespace fastmomentum::bindings
