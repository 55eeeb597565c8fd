#include "args.hpp"

#include <pybind11/numpy.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "protocol.hpp"

// The coefficients are checked, and the clipping coefficient computed, with the functions the
// kernels use; this object's copy of the rules lives in its own namespace, rules::host.
#define FM_ISA host
#include "fastmomentum/rules.hpp"

namespace fastmomentum::bindings {
namespace {

// Resolved once at import and kept for the interpreter's lifetime.
PyTypeObject* g_numpy_bool = nullptr;
PyTypeObject* g_numpy_complex = nullptr;  // numpy.complexfloating

std::string repr(double x) { return py::repr(py::float_(x)).cast<std::string>(); }

bool is_numpy_bool(PyObject* obj) { return Py_TYPE(obj) == g_numpy_bool; }

// Types that convert to a float but are not real numbers (or are arrays): refused by name rather
// than converted (a bool would pass as 0 or 1, a complex lose its imaginary part with a warning).
bool never_real(PyObject* obj) {
    return PyBool_Check(obj) || is_numpy_bool(obj) || PyComplex_Check(obj) ||
           PyType_IsSubtype(Py_TYPE(obj), g_numpy_complex) ||
           is_ndarray(obj) || PyUnicode_Check(obj) || PyBytes_Check(obj);
}

[[noreturn]] void not_real(PyObject* obj, const char* name) {
    throw py::type_error(std::string(name) + " must be a real number, got " + type_name(obj));
}

// `obj`'s attribute `attr`, or null when it has none (any other error propagates).
py::object optional_attr(PyObject* obj, const char* attr) {
    PyObject* value = PyObject_GetAttrString(obj, attr);
    if (value == nullptr) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) throw py::error_already_set();
        PyErr_Clear();
        return py::object();
    }
    return py::reinterpret_steal<py::object>(value);
}

// Another library's array or scalar (a torch tensor, a CuPy or JAX array) that converts to a
// float but is not one real number: more than zero dimensions, or a bool or complex dtype. Such
// objects are refused as NumPy's are (never_real), not converted.
bool array_like_not_real(PyObject* obj) {
    if (PyFloat_Check(obj) || PyLong_Check(obj)) return false;  // numpy.float64 is a float
    const py::object shape = optional_attr(obj, "shape");
    if (shape && PyTuple_Check(shape.ptr()) && PyTuple_GET_SIZE(shape.ptr()) > 0) return true;
    const py::object dtype = optional_attr(obj, "dtype");
    if (!dtype) return false;
    const std::string kind = py::str(dtype).cast<std::string>();
    return kind.find("bool") != std::string::npos || kind.find("complex") != std::string::npos;
}

// The error set by a failed conversion: a TypeError means "not a number", an OverflowError "too
// large", a ValueError "not one number" (a tensor of many elements), named and chained to the
// conversion's own; anything else (a KeyboardInterrupt in __float__, a MemoryError) is the
// caller's own and propagates unchanged.
[[noreturn]] void conversion_failed(PyObject* obj, const char* name) {
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        not_real(obj, name);
    }
    if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();
        throw py::value_error(std::string(name) + " must be a real number within a float64's "
                              "range, got " + type_name(obj) + " too large for one");
    }
    if (PyErr_ExceptionMatches(PyExc_ValueError)) {
        py::raise_from(PyExc_ValueError, (std::string(name) + " must be a real number, got " +
                                          type_name(obj) + ", whose conversion to a float failed")
                                             .c_str());
        throw py::error_already_set();
    }
    throw py::error_already_set();
}

bool is_str(PyObject* obj, const char* value) {
    return PyUnicode_CompareWithASCIIString(obj, value) == 0;
}

void require_str(PyObject* obj, const char* name) {
    if (!PyUnicode_Check(obj))
        throw py::type_error(std::string(name) + " must be a str, got " + type_name(obj));
}

std::string str_of(PyObject* obj) {
    // backslashreplace: a lone surrogate (a valid str, not valid UTF-8) is shown escaped
    PyObject* bytes = PyUnicode_AsEncodedString(obj, "utf-8", "backslashreplace");
    if (!bytes) throw py::error_already_set();
    std::string out(PyBytes_AS_STRING(bytes), static_cast<std::size_t>(PyBytes_GET_SIZE(bytes)));
    Py_DECREF(bytes);
    return out;
}

// A str's repr, as Python writes it ('a\\x00b'): NULs and lone surrogates escaped, so that the
// message shows the value whole (a NUL would end it). str's own repr: a subclass's is not run.
std::string str_repr(PyObject* obj) {
    const py::object text = py::reinterpret_steal<py::object>(PyUnicode_Type.tp_repr(obj));
    if (!text) throw py::error_already_set();
    return str_of(text.ptr());
}

DecayMode parse_decay_mode(PyObject* s) {
    require_str(s, "weight_decay_mode");
    if (is_str(s, "coupled")) return DecayMode::coupled;
    if (is_str(s, "decoupled")) return DecayMode::decoupled;
    if (is_str(s, "sgdw")) return DecayMode::sgdw;
    throw py::value_error("weight_decay_mode must be 'coupled', 'decoupled' or 'sgdw', got " +
                          str_repr(s));
}

// PyTorch's wording ("Invalid learning rate: -0.1"), then what is expected. Called only on a
// failure, so that a valid call builds no message.
[[noreturn]] void invalid(const std::string& what, double value, const std::string& expected) {
    throw py::value_error("Invalid " + what + ": " + repr(value) + " (expected " + expected + ")");
}

// PyTorch's rules, plus finiteness (a NaN learning rate would silently poison every parameter),
// momentum and dampening in [0, 1], and a decoupled decay of at most 1 (a larger one flips the
// parameters' sign; check_coefficients checks the rounded coefficients of each dtype too).
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
    // PyTorch's constructor rule. Keras (and scikit-learn) take nesterov with momentum 0 as
    // plain SGD, so the keras style does too.
    if (h.style == Style::torch && h.nesterov && (h.momentum <= 0.0 || h.dampening != 0.0))
        throw py::value_error("Nesterov momentum requires a momentum and zero dampening");
}

// Whether a * c <= 1 - u exactly, for a, c >= 0 of type T with unit roundoff u (= epsilon / 2).
// float: the product of two floats is exact in double. double: hi + lo is the exact product
// (fma rounds once), and 1 - u is the double just below 1.
template <class T>
bool product_below_one(T a, T c) {
    if constexpr (sizeof(T) == sizeof(float)) {
        return static_cast<double>(a) * static_cast<double>(c) <= 1.0 - 0x1p-24;
    } else {
        const double hi = a * c;
        const double lo = std::fma(a, c, -hi);
        const double bound = 1.0 - 0x1p-53;
        return hi < bound || (hi == bound && lo <= 0.0);
    }
}

// Whether Keras' decay p - (p*wd)*scale, as rules::keras_decayed computes it in T, keeps the sign
// of every finite p (for p >= 0; rounding to nearest is symmetric). With a = wd, c = scale,
// q = fl(p*a):
//  - a > 1: p*a overflows to infinity for the largest p, and p - inf flips them: refused;
//  - q normal: q <= p*a*(1 + u), so q*c <= p*(1 - u)*(1 + u) < p when a*c <= 1 - u;
//  - q subnormal: q = s*J with s the smallest subnormal, p = s*K, J <= K*a + 1/2, and fl(q*c) <= p
//    whenever J*c < K + 1/2, which holds for every K when c <= 1, and for K > k1 = (c - 1) /
//    (2 (1 - a*c)) otherwise: the few p = s*K with K <= k1 are tried one by one.
// Returns false when a sign can flip (or, for c > 1 with a*c so near 1 that more than kTries
// values would need trying, when it cannot be ruled out cheaply).
template <class T>
bool keras_decay_keeps_sign(const Coeffs<T>& k) {
    const T a = k.weight_decay, c = k.decay_scale;
    if (a == T(0) || c == T(0)) return true;  // no decay: rules::decay_of skips it
    if (a > T(1) || !product_below_one(a, c)) return false;
    if (c <= T(1)) return true;
    constexpr double kTries = 4096;
    const double k1 = (static_cast<double>(c) - 1.0) /
                      (2.0 * (1.0 - static_cast<double>(a) * static_cast<double>(c)));
    if (!(k1 <= kTries)) return false;
    const T smallest = std::numeric_limits<T>::denorm_min();
    for (int K = 1; K <= static_cast<int>(k1); ++K)
        if (rules::keras_decayed(static_cast<T>(K) * smallest, k) < T(0)) return false;
    return true;
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
    if (h.decay_mode == DecayMode::coupled) return;
    const char* scale = h.decay_mode == DecayMode::sgdw ? "schedule_multiplier" : "lr";
    finite(k.decay_scale, scale, rules::decay_scale(h));
    // The torch and ema forms multiply by 1 - scale*wd, in [0, 1] (check_hyper bounds the
    // product): no sign can flip. Keras' form rounds wd and scale separately.
    if (h.style == Style::keras && !keras_decay_keeps_sign(k))
        invalid(std::string(scale) + " * weight_decay", rules::decay_scale(h) * h.weight_decay,
                std::string("a decay that cannot flip a parameter's sign in ") + dtype +
                    ": Keras' p - (p*weight_decay)*" + scale + " rounds both factors to " +
                    dtype + ", so their product must stay below 1 - 2^-" +
                    (sizeof(T) == sizeof(float) ? "24" : "53") + ", further from 1 when " +
                    scale + " > 1, and weight_decay <= 1 (p*weight_decay must not overflow)");
}

}  // namespace

void init_args() {
    detail::g_ndarray = py::detail::npy_api::get().PyArray_Type_;
    const py::module_ numpy = py::module_::import("numpy");
    g_numpy_bool = reinterpret_cast<PyTypeObject*>(py::object(numpy.attr("bool_")).release().ptr());
    g_numpy_complex =
        reinterpret_cast<PyTypeObject*>(py::object(numpy.attr("complexfloating")).release().ptr());
}

std::string type_name(PyObject* obj) {
    PyTypeObject* type = Py_TYPE(obj);
    if (!PyType_HasFeature(type, Py_TPFLAGS_HEAPTYPE)) return type->tp_name;  // "numpy.ndarray"
    // A class defined in Python: module.qualname, read from the type's own fields (no lookup
    // that could run code). Builtin heap types keep their plain name.
    const auto* heap = reinterpret_cast<PyHeapTypeObject*>(type);
    std::string name = heap->ht_qualname ? str_of(heap->ht_qualname) : std::string(type->tp_name);
    PyObject* module = type->tp_dict ? PyDict_GetItemString(type->tp_dict, "__module__") : nullptr;
    if (module && PyUnicode_Check(module) && !is_str(module, "builtins"))
        name = str_of(module) + "." + name;
    return name;
}

bool from_torch(PyObject* obj) { return type_name(obj).rfind("torch.", 0) == 0; }

double real(PyObject* obj, const char* name) {
    if (PyFloat_CheckExact(obj)) return PyFloat_AS_DOUBLE(obj);  // the usual case
    if (never_real(obj) || array_like_not_real(obj)) not_real(obj, name);
    const double value = PyFloat_AsDouble(obj);
    if (value == -1.0 && PyErr_Occurred()) conversion_failed(obj, name);
    return value;
}

bool flag(PyObject* obj, const char* name) {
    if (PyBool_Check(obj)) return obj == Py_True;
    if (is_numpy_bool(obj)) return PyObject_IsTrue(obj) == 1;  // numpy.bool_ is final
    throw py::type_error(std::string(name) + " must be a bool, got " + type_name(obj));
}

std::size_t count(PyObject* obj, const char* name) {
    if (PyBool_Check(obj) || !PyIndex_Check(obj))
        throw py::type_error(std::string(name) + " must be an int, got " + type_name(obj));
    const Py_ssize_t n = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) throw py::error_already_set();
        PyErr_Clear();
        throw py::value_error(std::string(name) + " must be an int >= 0 and < 2**63, got one "
                              "beyond an index's range");
    }
    if (n < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(n));
    return static_cast<std::size_t>(n);
}

Style parse_style(PyObject* s) {
    require_str(s, "style");
    if (is_str(s, "torch")) return Style::torch;
    if (is_str(s, "keras")) return Style::keras;
    if (is_str(s, "ema")) return Style::ema;
    throw py::value_error("style must be 'torch', 'keras' or 'ema', got " + str_repr(s));
}

NonFinite parse_nonfinite(PyObject* s) {
    if (PyUnicode_Check(s)) {
        if (is_str(s, "ignore")) return NonFinite::ignore;
        if (is_str(s, "skip")) return NonFinite::skip;
        if (is_str(s, "raise")) return NonFinite::raise;
    }
    throw py::value_error("nonfinite must be 'raise', 'skip' or 'ignore', got " +
                          py::repr(s).cast<std::string>());
}

const char* buffers_name(Style s) { return s == Style::keras ? "velocities" : "buffers"; }
const char* momentum_name(Style s) { return s == Style::ema ? "beta" : "momentum"; }

List::List(py::handle obj, const char* name) {
    if (!PyList_Check(obj.ptr()) && !PyTuple_Check(obj.ptr())) {
        std::string msg = std::string(name) + " must be a list or tuple, got " + type_name(obj.ptr());
        if (is_ndarray(obj.ptr())) msg += " (wrap a single array as [a])";
        throw py::type_error(msg);
    }
    items_ = py::reinterpret_borrow<py::object>(obj);
#ifdef Py_GIL_DISABLED
    freeze();
#endif
}

std::size_t List::size() const {
    if (!items_) return 0;
    PyObject* o = items_.ptr();
    return static_cast<std::size_t>(PyList_Check(o) ? PyList_GET_SIZE(o) : PyTuple_GET_SIZE(o));
}

PyObject* List::operator[](std::size_t i) const {
    PyObject* o = items_.ptr();
    const auto at = static_cast<Py_ssize_t>(i);
    return PyList_Check(o) ? PyList_GET_ITEM(o, at) : PyTuple_GET_ITEM(o, at);
}

void List::freeze() {
    if (items_ && PyList_Check(items_.ptr())) {
        PyObject* tuple = nullptr;
#ifdef Py_GIL_DISABLED
        // The list's own lock, which its methods take: no other thread changes it mid-copy.
        Py_BEGIN_CRITICAL_SECTION(items_.ptr());
        tuple = PyList_AsTuple(items_.ptr());
        Py_END_CRITICAL_SECTION();
#else
        tuple = PyList_AsTuple(items_.ptr());
#endif
        if (tuple == nullptr) throw py::error_already_set();
        items_ = py::reinterpret_steal<py::object>(tuple);
    }
}

FirstStep::FirstStep(PyObject* obj) {
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
        all_ = flag(obj, "first_step");
        return;
    }
    const List flags(obj, "first_step");
    is_list_ = true;
    each_.resize(flags.size());
    for (std::size_t i = 0; i < each_.size(); ++i)
        each_[i] = flag(flags[i], ("first_step[" + std::to_string(i) + "]").c_str());
}

void FirstStep::check(std::size_t n) const {
    if (is_list_ && each_.size() != n)
        throw py::value_error("first_step has " + std::to_string(each_.size()) +
                              " entries but params has " + std::to_string(n));
}

PyObject* protocol_tuple(py::handle obj, int count, const char* what, const char* name) {
    if (!PyTuple_Check(obj.ptr()) || PyTuple_GET_SIZE(obj.ptr()) != count)
        throw py::type_error(std::string(name) + " must be a fastmomentum._protocol." + what +
                             " (a tuple of " + std::to_string(count) + " fields), got " +
                             type_name(obj.ptr()));
    return obj.ptr();
}

HyperArgs hyper_args(py::handle tuple) {
    PyObject* t = protocol_tuple(tuple, field::kHyperCount, "Hyper", "a call's hyper");
    const auto at = [&](int f) { return PyTuple_GET_ITEM(t, f); };
    using namespace field;
    return HyperArgs{at(style),        at(lr),
                     at(momentum),     at(dampening),
                     at(nesterov),     at(weight_decay),
                     at(weight_decay_mode), at(schedule_multiplier),
                     at(maximize),     at(rounding),
                     at(seed),         at(step)};
}

Hyper parse_hyper(const HyperArgs& a) {
    Hyper h;
    h.style = parse_style(a.style);
    h.lr = real(a.lr, "lr");
    h.momentum = real(a.momentum, momentum_name(h.style));
    h.dampening = real(a.dampening, "dampening");
    h.nesterov = flag(a.nesterov, "nesterov");
    h.weight_decay = real(a.weight_decay, "weight_decay");
    h.decay_mode = parse_decay_mode(a.weight_decay_mode);
    h.schedule_multiplier = real(a.schedule_multiplier, "schedule_multiplier");
    h.maximize = flag(a.maximize, "maximize");
    require_str(a.rounding, "rounding");
    if (is_str(a.rounding, "stochastic")) h.rounding = Rounding::stochastic;
    else if (!is_str(a.rounding, "nearest"))
        throw py::value_error("rounding must be 'nearest' or 'stochastic', got " +
                              str_repr(a.rounding) + " (for Kahan compensation, pass "
                              "compensations)");
    h.seed = count(a.seed, "seed");
    h.step = count(a.step, "step");
    check_hyper(h);
    return h;
}

Guard parse_guard(PyObject* nonfinite, PyObject* max_norm, PyObject* loss_scale, PyObject* stats,
                  PyObject* clip_rule, PyObject* clip_value) {
    Guard guard;
    guard.nonfinite = parse_nonfinite(nonfinite);
    require_str(clip_rule, "clip_rule");
    if (is_str(clip_rule, "keras"))
        guard.keras_rule = true;
    else if (!is_str(clip_rule, "torch"))
        throw py::value_error("clip_rule must be 'torch' or 'keras', got " + str_repr(clip_rule));
    if (max_norm != Py_None) {
        guard.clip = true;
        if (guard.keras_rule) {  // Keras takes 0 (and less) to mean no clipping: None says it
            guard.max_norm = real(max_norm, "global_clipnorm");
            if (!(guard.max_norm > 0.0) || !std::isfinite(guard.max_norm))
                throw py::value_error("global_clipnorm must be None or a finite number > 0, got " +
                                      repr(guard.max_norm));
        } else {
            guard.max_norm = real(max_norm, "max_grad_norm");
            if (!(guard.max_norm >= 0.0))
                throw py::value_error("max_grad_norm must be None or a number >= 0, got " +
                                      repr(guard.max_norm));
        }
    }
    if (clip_value != Py_None) {
        guard.clip_value = real(clip_value, "clipvalue");
        if (!(guard.clip_value > 0.0) || !std::isfinite(guard.clip_value))
            throw py::value_error("clipvalue must be None or a finite number > 0, got " +
                                  repr(guard.clip_value));
        if (guard.clip)
            throw py::value_error(std::string("clipvalue cannot be combined with ") +
                                  (guard.keras_rule ? "global_clipnorm" : "max_grad_norm") +
                                  ": only one gradient clipping can be set, as in Keras");
    }
    guard.loss_scale = real(loss_scale, "loss_scale");
    if (!(guard.loss_scale > 0.0) || !std::isfinite(guard.loss_scale))
        throw py::value_error("loss_scale must be a finite number > 0, got " +
                              repr(guard.loss_scale));
    if (stats != Py_None) {
        if (!PyTuple_Check(stats) || PyTuple_GET_SIZE(stats) != 2)
            throw py::type_error("stats must be None or a tuple (all_finite, sum_squares), got " +
                                 type_name(stats));
        guard.stats_given = true;
        guard.all_finite = flag(PyTuple_GET_ITEM(stats, 0), "stats[0] (all_finite)");
        guard.sum_squares = real(PyTuple_GET_ITEM(stats, 1), "stats[1] (sum_squares)");
        if (guard.sum_squares < 0.0)  // inf (overflow, an infinite gradient) and NaN are sums too
            throw py::value_error("stats[1] (sum_squares) must be >= 0, got " +
                                  repr(guard.sum_squares));
        // Only a NaN gradient makes a NaN sum: such statistics are of gradients not all finite,
        // whatever all_finite says (so that "skip" and "raise" cannot apply a NaN step).
        if (std::isnan(guard.sum_squares)) guard.all_finite = false;
    }
    return guard;
}

Guard parse_guard(py::handle tuple) {
    PyObject* t = protocol_tuple(tuple, field::kGuardCount, "Guard", "guard");
    const auto at = [&](int f) { return PyTuple_GET_ITEM(t, f); };
    return parse_guard(at(field::nonfinite), at(field::max_norm), at(field::loss_scale),
                       at(field::stats), at(field::clip_rule), at(field::clip_value));
}

double Guard::norm(double sum) const { return std::sqrt(sum) / loss_scale; }

double Guard::clip_coefficient(double norm) const {
    return keras_rule ? rules::keras_clip_coefficient(max_norm, norm)
                      : rules::clip_coefficient(max_norm, norm);
}

void resolve_bfloat16() {
    if (detail::g_bfloat16.load(std::memory_order_acquire) != nullptr) return;
    static PyObject* const name = PyUnicode_InternFromString("ml_dtypes");  // kept
    if (name == nullptr) throw py::error_already_set();
    PyObject* module = PyImport_GetModule(name);
    if (module == nullptr) {
        if (PyErr_Occurred()) throw py::error_already_set();
        return;  // not imported: no bfloat16 array exists
    }
    const py::object owner = py::reinterpret_steal<py::object>(module);
    const py::object type = py::getattr(owner, "bfloat16", py::none());
    if (!PyType_Check(type.ptr())) return;
    PyTypeObject* expected = nullptr;
    // Kept for the interpreter's lifetime; another thread may have stored the same type first.
    if (detail::g_bfloat16.compare_exchange_strong(expected, reinterpret_cast<PyTypeObject*>(type.ptr())))
        type.inc_ref();
}

Dtype parse_dtype_name(PyObject* obj, const char* name) {
    require_str(obj, name);
    for (const Dtype d : {Dtype::f32, Dtype::f64, Dtype::bf16, Dtype::f16})
        if (is_str(obj, dtype_name(d))) return d;
    throw py::value_error(std::string(name) + " must be 'float32', 'float64', 'bfloat16' or "
                          "'float16', got " + str_repr(obj));
}

void check_coefficients(const Hyper& h, Dtype dtype) {
    if (dtype == Dtype::f64) check_coefficients_as<double>(h, dtype_name(dtype));
    else check_coefficients_as<float>(h, dtype_name(Dtype::f32));  // 16-bit kinds: float32 math
}

}  // namespace fastmomentum::bindings
