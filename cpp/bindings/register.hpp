#pragma once
// One register function per area of the _core module; module.cpp calls them all.

#include <pybind11/pybind11.h>

namespace fastmomentum::bindings {

void register_config(pybind11::module_& m);      // build and runtime configuration
void register_steps(pybind11::module_& m);       // the step protocol (the optimizers' entry)
void register_functional(pybind11::module_& m);  // sgd_, keras_sgd_, ema_sgd_
void register_probe(pybind11::module_& m);       // the benchmarks' bandwidth floor
void register_convert(pybind11::module_& m);     // storage conversions of the state

}  // namespace fastmomentum::bindings
