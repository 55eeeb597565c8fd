#pragma once
// A step's outcome as Python sees it: the package's StepResult, or the FloatingPointError of
// nonfinite="raise". The Python objects this needs are the package's (fastmomentum/guards.py), handed
// to the module once at import (_core._bind), so that their definitions exist once.

#include <pybind11/pybind11.h>

#include "args.hpp"
#include "call.hpp"

namespace fastmomentum::bindings {

// Keeps result_type (the StepResult type), nonfinite_error (a function of the gradients that
// returns the exception naming the first non-finite one) and device_step (a function
// (first_param, call, grads, guard) that runs a step of device arrays through the CUDA backend and
// returns its StepOutcome, or returns None when first_param is not a device array).
void bind_python(py::handle result_type, py::handle nonfinite_error, py::handle device_step);

// device_step(first, call, grads, guard), or None when nothing was bound.
py::object try_device_step(PyObject* first, const py::tuple& call, PyObject* grads,
                           const py::tuple& guard);

// The StepResult of a decided step; for a skipped step under nonfinite="raise", raises the error
// that nonfinite_error(grads) makes.
py::object step_result(const Outcome& outcome, PyObject* grads);

}  // namespace fastmomentum::bindings
