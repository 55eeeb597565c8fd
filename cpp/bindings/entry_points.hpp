#pragma once
// What the module's hand-written entry points share: C functions registered as builtins, the
// translation of the bindings' C++ exceptions into the Python errors they stand for, and the
// StepOutcome objects the optimizer's steps write their outcome into.

#include <pybind11/pybind11.h>

#include "call.hpp"

namespace fastmomentum::bindings {

// Sets the Python error for the exception being handled; returns null (for a C entry point).
PyObject* set_python_error();

// Adds `def` (static: it must outlive the module) as a module function.
void add_function(pybind11::module_& m, PyMethodDef& def);

// A new _core.StepOutcome, and the Outcome inside one (TypeError for anything else).
pybind11::object new_outcome();
Outcome& outcome_of(pybind11::handle obj);

}  // namespace fastmomentum::bindings
