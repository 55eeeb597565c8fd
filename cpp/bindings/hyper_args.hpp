#pragma once
// Hyper-parameters from Python: strict parsing (real numbers and real bools only), PyTorch's
// validation and wording, and the check that the coefficients stay finite in the arrays' dtype.

#include <pybind11/pybind11.h>

#include "arrays.hpp"
#include "fastmomentum/hyper.hpp"

namespace fastmomentum::bindings {

// Parses and checks sgd_step's nine hyper-parameter arguments.
Hyper parse_hyper(py::handle style, py::handle lr, py::handle momentum, py::handle dampening,
                  py::handle nesterov, py::handle weight_decay, py::handle weight_decay_mode,
                  py::handle schedule_multiplier, py::handle maximize);

// The same, from a tuple of those nine values.
Hyper parse_hyper(const py::tuple& values);

// A step's guards, over all the calls of the step (README, "Guards").
struct Guard {
    bool check_finite = false;  // update nothing when a gradient has a NaN or an infinity
    bool clip = false;          // scale the gradients by rules::clip_coefficient(max_norm, norm)
    double max_norm = 0.0;
    double loss_scale = 1.0;  // the gradients are divided by it (and the norm is theirs after it)

    // The Hyper::grad_scale of the step's calls, before clipping.
    double grad_scale() const { return 1.0 / loss_scale; }
    // The norm of the gradients after unscaling, from the sum of their squares before it.
    double norm(double sum_squares) const;
    // The gradients' factor for that norm (rules::clip_coefficient).
    double clip_coefficient(double norm) const;
};

// Parses the guard arguments of the step entry points: check_finite (a bool), max_norm (None, or
// a number >= 0; inf measures the norm without clipping) and loss_scale (finite, > 0).
Guard parse_guard(py::handle check_finite, py::handle max_norm, py::handle loss_scale);

// Valid doubles can still overflow when rounded to float32, or multiply to infinity.
void check_coefficients(const Hyper& h, Dtype dtype);

// True or False (Python or NumPy); no truthiness of other objects.
bool flag(py::handle obj, const char* name);

// "torch", "keras" or "ema".
Style parse_style(py::handle style);

// What each style calls its buffers and its momentum, for messages.
const char* buffers_name(Style s);
const char* momentum_name(Style s);

}  // namespace fastmomentum::bindings
