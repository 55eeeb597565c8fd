#include <pybind11/pybind11.h>

#include "register.hpp"

// The GIL is not needed (Py_mod_gil on a free-threaded CPython; without it, importing the module
// would switch the GIL back on for the whole process). What is shared between threads: the
// thread cap, grain and ISA choice are atomics (threads.cpp, dispatch.cpp); the tables, types and
// entry points below are written once, while the module is imported, and only read after; the
// package's objects that _bind hands over are published atomically (results.cpp); a step holds
// strong references to every list item it uses (List, args.hpp).
PYBIND11_MODULE(_core, m, pybind11::mod_gil_not_used()) {
    m.doc() = "fastmomentum's compiled kernels (use the fastmomentum package, not this module)";
    fastmomentum::bindings::register_config(m);
    fastmomentum::bindings::register_steps(m);  // first: it resolves the types the parser needs
    fastmomentum::bindings::register_functional(m);
    fastmomentum::bindings::register_probe(m);
    fastmomentum::bindings::register_convert(m);
}
