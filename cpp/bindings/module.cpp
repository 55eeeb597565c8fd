#include <pybind11/pybind11.h>

#include "register.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastmomentum's compiled kernels (use the fastmomentum package, not this module)";
    fastmomentum::bindings::register_config(m);
    fastmomentum::bindings::register_steps(m);  // first: it resolves the types the parser needs
    fastmomentum::bindings::register_functional(m);
    fastmomentum::bindings::register_probe(m);
}
