#pragma once
// Python arguments -> C++ values: the ONE parser of a step's hyper-parameters, guards, lists and
// first_step flags, for every entry point (the functional keywords, the optimizer's tuples, the
// construction-time checks) and both modules.
//
// This is the only part of a step that may run Python code (a scalar's __float__ or __index__, an
// exception's construction). A step parses everything here first; the array checks and the
// kernels that follow read struct fields only (check-then-write with no Python in between).

#include <pybind11/pybind11.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "array_desc.hpp"
#include "fastmomentum/hyper.hpp"

namespace fastmomentum::bindings {

namespace py = pybind11;

// Resolves the NumPy types the parser recognises (numpy.bool_, numpy.complexfloating); once, at
// import, with the GIL held.
void init_args();

namespace detail {
inline PyTypeObject* g_ndarray = nullptr;  // numpy.ndarray, set by init_args
// ml_dtypes.bfloat16, the scalar type of bfloat16 arrays; null until ml_dtypes is imported.
inline std::atomic<PyTypeObject*> g_bfloat16{nullptr};
}

// Looks for ml_dtypes.bfloat16 once ml_dtypes has been imported (by anyone): then no bfloat16
// array can exist before. Phase 1 of every step calls it (it may run Python code: the import
// system's lookup); the readers then compare a dtype's type with it, a C struct read.
void resolve_bfloat16();

// Whether `obj` is a NumPy array (or of a subclass), from its type alone: C type checks.
inline bool is_exact_ndarray(PyObject* obj) { return Py_TYPE(obj) == detail::g_ndarray; }
inline bool is_ndarray(PyObject* obj) {
    return is_exact_ndarray(obj) || PyType_IsSubtype(Py_TYPE(obj), detail::g_ndarray);
}

// The type's name for messages: "numpy.ndarray", "int", "torch.Tensor".
std::string type_name(PyObject* obj);

// Whether `obj` is a PyTorch object (its type's module is torch or under it), for messages that
// say what to do with one; found by name, without importing torch.
bool from_torch(PyObject* obj);

// A real number: float, int or any object with __float__ / __index__ (NumPy and PyTorch scalars),
// never a bool, a complex, a str or a NumPy array. An int too large for a float64 is refused by
// name; an exception raised by the object's own conversion (a KeyboardInterrupt, say) propagates.
double real(PyObject* obj, const char* name);

// True or False, Python's or NumPy's; no truthiness of other objects.
bool flag(PyObject* obj, const char* name);

// A non-negative int (not a bool), e.g. an index.
std::size_t count(PyObject* obj, const char* name);

Style parse_style(PyObject* obj);
enum class NonFinite : std::uint8_t { ignore, skip, raise };
NonFinite parse_nonfinite(PyObject* obj);

// What each style calls its buffers and its momentum, for messages.
const char* buffers_name(Style s);
const char* momentum_name(Style s);

// A list or tuple argument (never an array: that would iterate its rows), held by a strong
// reference. Its items are read from its storage when used, so no __len__, __iter__ or
// __getitem__ of a subclass ever runs: what it holds is what it is. On a free-threaded CPython a
// list is copied into a tuple at once (under the list's lock), since another thread may change
// the list at any time: a borrowed item could be freed while in use, or the storage moved.
class List {
public:
    List() = default;  // no items
    List(py::handle obj, const char* name);
    std::size_t size() const;
    PyObject* operator[](std::size_t i) const;  // borrowed
    bool empty() const { return size() == 0; }
    // A tuple of the items as they are now (used where Python runs between parsing and use;
    // always the case on a free-threaded CPython, where the constructor does it).
    void freeze();

private:
    py::object items_;
};

// first_step: one bool for every array, or a list or tuple of bools, one per array.
class FirstStep {
public:
    FirstStep() = default;
    explicit FirstStep(PyObject* obj);
    // One entry per array when it is a list: raises unless it has n.
    void check(std::size_t n) const;
    bool operator[](std::size_t i) const { return is_list_ ? each_[i] != 0 : all_; }

private:
    bool all_ = false;
    bool is_list_ = false;
    std::vector<unsigned char> each_;
};

// A step's hyper-parameters as Python objects, borrowed: from an _protocol.Hyper tuple or from a
// functional call's keywords.
struct HyperArgs {
    PyObject* style;
    PyObject* lr;
    PyObject* momentum;
    PyObject* dampening;
    PyObject* nesterov;
    PyObject* weight_decay;
    PyObject* weight_decay_mode;
    PyObject* schedule_multiplier;
    PyObject* maximize;
    PyObject* rounding;
    PyObject* seed;
    PyObject* step;
};
HyperArgs hyper_args(py::handle tuple);  // the fields of an _protocol.Hyper

// `obj` as one of the protocol's tuples, `what` (e.g. "_protocol.Call") of `count` fields: a
// tuple of that length (its fields are then read by position, field::...), else TypeError.
PyObject* protocol_tuple(py::handle obj, int count, const char* what, const char* name);

// Converts and checks hyper-parameters: PyTorch's rules and wording ("Invalid learning rate:
// -0.1"), plus finiteness, momentum and dampening in [0, 1], and a decoupled decay of at most 1.
Hyper parse_hyper(const HyperArgs& args);

// A step's guards, over all the calls of the step (README, "Guards").
struct Guard {
    NonFinite nonfinite = NonFinite::ignore;  // what a NaN or an infinity in a gradient does
    bool clip = false;        // scale the gradients by clip_coefficient(norm)
    bool keras_rule = false;  // ... in Keras' global_clipnorm formula, else torch's
    double max_norm = 0.0;
    double clip_value = HUGE_VAL;  // Keras' clipvalue (Hyper::clip_value)
    double loss_scale = 1.0;  // the gradients are divided by it (the norm is theirs after it)
    // The gradients' statistics when the caller measured them (e.g. over every rank's shard):
    // then the step runs no statistics pass and uses these.
    bool stats_given = false;
    bool all_finite = true;
    double sum_squares = 0.0;  // of the gradients before the division by loss_scale

    // Whether a non-finite gradient stops the step.
    bool check_finite() const { return nonfinite != NonFinite::ignore; }
    // The Hyper::grad_scale of the step's calls, before clipping.
    double grad_scale() const { return 1.0 / loss_scale; }
    // The norm of the gradients after unscaling, from the sum of their squares before it.
    double norm(double sum) const;
    // The gradients' factor for that norm (rules::clip_coefficient or keras_clip_coefficient).
    double clip_coefficient(double norm) const;
};

// The guard of a step: nonfinite ("ignore", "skip" or "raise"), max_norm (None, or a number
// >= 0; inf measures the norm without clipping; with clip_rule "keras", Keras' global_clipnorm:
// finite and > 0), loss_scale (finite, > 0), stats (None, or a tuple (all_finite: bool,
// sum_squares: a number >= 0, inf or NaN)), clip_rule ("torch" or "keras") and clip_value
// (None, or Keras' clipvalue: finite and > 0; not with a max_norm, as Keras allows one clipping).
Guard parse_guard(PyObject* nonfinite, PyObject* max_norm, PyObject* loss_scale, PyObject* stats,
                  PyObject* clip_rule, PyObject* clip_value);
Guard parse_guard(py::handle tuple);  // the fields of an _protocol.Guard

// The coefficients in the dtype that a step on parameters of `dtype` computes in (float32 for
// the 16-bit ones) stay finite, and a decoupled decay, as the kernel computes it in
// that dtype, cannot flip a parameter's sign.
void check_coefficients(const Hyper& h, Dtype dtype);

// A parameter dtype by its NumPy name, "float32", "float64", "bfloat16" or "float16" (`name`
// names the argument).
Dtype parse_dtype_name(PyObject* obj, const char* name);

}  // namespace fastmomentum::bindings
