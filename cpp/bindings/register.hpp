#pragma once
// One register function per area of the _core module; module.cpp calls them all.

#include <pybind11/pybind11.h>

namespace fastmomentum::bindings {

void register_sgd(pybind11::module_& m);
void register_config(pybind11::module_& m);
void register_plan(pybind11::module_& m);

}  // namespace fastmomentum::bindings
