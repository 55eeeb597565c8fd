#include "hyper_args.hpp"

#include <cmath>
#include <cstring>
#include <string>

// The coefficients are checked, and the clipping coefficient computed, with the same functions the
// kernels use; this object's copy of the rules lives in its own namespace, rules::host.
#define FM_ISA host
#include "fastmomentum/rules.hpp"

namespace fastmomentum::bindings {
namespace {

std::string repr(double x) { return py::repr(py::float_(x)).cast<std::string>(); }

// A NumPy bool scalar (numpy.bool_, named numpy.bool since NumPy 2).
bool is_numpy_bool(py::handle obj) {
    const char* type = Py_TYPE(obj.ptr())->tp_name;
    return std::strcmp(type, "numpy.bool") == 0 || std::strcmp(type, "numpy.bool_") == 0;
}

// A Python real number: float, int or a NumPy scalar (never a bool, Python's or NumPy's, or an
// array).
double real(py::handle obj, const char* name) {
    if (PyFloat_CheckExact(obj.ptr())) return PyFloat_AS_DOUBLE(obj.ptr());  // the usual case
    if (!PyBool_Check(obj.ptr()) && !is_numpy_bool(obj) && !py::isinstance<py::array>(obj)) {
        const double value = PyFloat_AsDouble(obj.ptr());
        if (!(value == -1.0 && PyErr_Occurred())) return value;
        PyErr_Clear();
    }
    throw py::type_error(std::string(name) + " must be a real number, got " + type_name(obj));
}

bool is_str(py::handle obj, const char* value) {
    return PyUnicode_CompareWithASCIIString(obj.ptr(), value) == 0;
}

void require_str(py::handle obj, const char* name) {
    if (!PyUnicode_Check(obj.ptr()))
        throw py::type_error(std::string(name) + " must be a str, got " + type_name(obj));
}

DecayMode parse_decay_mode(py::handle s) {
    require_str(s, "weight_decay_mode");
    if (is_str(s, "coupled")) return DecayMode::coupled;
    if (is_str(s, "decoupled")) return DecayMode::decoupled;
    if (is_str(s, "sgdw")) return DecayMode::sgdw;
    throw py::value_error("weight_decay_mode must be 'coupled', 'decoupled' or 'sgdw', got '" +
                          s.cast<std::string>() + "'");
}

// PyTorch's wording ("Invalid learning rate: -0.1"), then what is expected. Called only on a
// failure, so that a valid call builds no message.
[[noreturn]] void invalid(const std::string& what, double value, const std::string& expected) {
    throw py::value_error("Invalid " + what + ": " + repr(value) + " (expected " + expected + ")");
}

// PyTorch's rules, plus finiteness (a NaN learning rate would silently poison every parameter),
// momentum and dampening in [0, 1], and a decoupled decay that cannot flip a parameter's sign.
void check_hyper(const Hyper& h) {
    const char* mu = momentum_name(h.style);
    if (!(std::isfinite(h.lr) && h.lr >= 0.0)) invalid("learning rate", h.lr, "a finite lr >= 0");
    if (!(h.momentum >= 0.0 && h.momentum <= 1.0))
        invalid(std::string(mu) + " value", h.momentum, std::string("0 <= ") + mu + " <= 1");
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

template <class T>
void check_coefficients_as(const Hyper& h, const char* dtype) {
    const Coeffs<T> k = rules::coeffs<T>(h);
    // The message is built only on failure: this runs on every call.
    const auto finite = [&](T value, const char* name, double given) {
        if (!std::isfinite(value))
            throw py::value_error(std::string(name) + "=" + repr(given) + " overflows " + dtype +
                                  ", the arrays' dtype");
    };
    finite(k.lr, "lr", h.lr);
    finite(k.weight_decay, "weight_decay", h.weight_decay);
    if (!std::isfinite(k.grad_scale))
        throw py::value_error("loss_scale is too small: 1/loss_scale = " + repr(h.grad_scale) +
                              " overflows " + dtype + ", the arrays' dtype");
    // (1 - scale*wd is in [0, 1]: check_hyper bounds scale*wd.)
    if (h.decay_mode != DecayMode::coupled)
        finite(k.decay_scale, h.decay_mode == DecayMode::sgdw ? "schedule_multiplier" : "lr",
               rules::decay_scale(h));
}

}  // namespace

Style parse_style(py::handle s) {
    require_str(s, "style");
    if (is_str(s, "torch")) return Style::torch;
    if (is_str(s, "keras")) return Style::keras;
    if (is_str(s, "ema")) return Style::ema;
    throw py::value_error("style must be 'torch', 'keras' or 'ema', got '" + s.cast<std::string>() +
                          "'");
}

const char* buffers_name(Style s) { return s == Style::keras ? "velocities" : "buffers"; }
const char* momentum_name(Style s) { return s == Style::ema ? "beta" : "momentum"; }

bool flag(py::handle obj, const char* name) {
    if (PyBool_Check(obj.ptr())) return obj.ptr() == Py_True;
    if (is_numpy_bool(obj)) return PyObject_IsTrue(obj.ptr()) == 1;
    throw py::type_error(std::string(name) + " must be a bool, got " + type_name(obj));
}

Hyper parse_hyper(py::handle style, py::handle lr, py::handle momentum, py::handle dampening,
                  py::handle nesterov, py::handle weight_decay, py::handle weight_decay_mode,
                  py::handle schedule_multiplier, py::handle maximize) {
    Hyper h;
    h.style = parse_style(style);
    h.lr = real(lr, "lr");
    h.momentum = real(momentum, momentum_name(h.style));
    h.dampening = real(dampening, "dampening");
    h.nesterov = flag(nesterov, "nesterov");
    h.weight_decay = real(weight_decay, "weight_decay");
    h.decay_mode = parse_decay_mode(weight_decay_mode);
    h.schedule_multiplier = real(schedule_multiplier, "schedule_multiplier");
    h.maximize = flag(maximize, "maximize");
    check_hyper(h);
    return h;
}

Hyper parse_hyper(const py::tuple& v) {
    if (v.size() != 9) throw py::type_error("hyper-parameters must be a tuple of 9 values");
    return parse_hyper(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
}

Guard parse_guard(py::handle check_finite, py::handle max_norm, py::handle loss_scale) {
    Guard guard;
    guard.check_finite = flag(check_finite, "check_finite");
    if (!max_norm.is_none()) {
        guard.clip = true;
        guard.max_norm = real(max_norm, "max_grad_norm");
        if (!(guard.max_norm >= 0.0))
            throw py::value_error("max_grad_norm must be None or a number >= 0, got " +
                                  repr(guard.max_norm));
    }
    guard.loss_scale = real(loss_scale, "loss_scale");
    if (!(guard.loss_scale > 0.0) || !std::isfinite(guard.loss_scale))
        throw py::value_error("loss_scale must be a finite number > 0, got " +
                              repr(guard.loss_scale));
    return guard;
}

double Guard::norm(double sum_squares) const { return std::sqrt(sum_squares) / loss_scale; }

double Guard::clip_coefficient(double norm) const { return rules::clip_coefficient(max_norm, norm); }

void check_coefficients(const Hyper& h, Dtype dtype) {
    if (dtype == Dtype::f32) check_coefficients_as<float>(h, "float32");
    else check_coefficients_as<double>(h, "float64");
}

}  // namespace fastmomentum::bindings
