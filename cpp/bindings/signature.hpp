#pragma once
// The arguments of a METH_FASTCALL | METH_KEYWORDS entry point, matched to its parameters as
// CPython matches a Python function's (vectorcall: positional values, then keyword values named
// by a tuple), with CPython's error messages. Parsing keywords here, where they arrive, spares a
// Python wrapper and its frame on every call.

#include <Python.h>

#include <cstddef>
#include <string>
#include <vector>

namespace fastmomentum::bindings {

class Signature {
public:
    // `names`: every parameter, in slot order; the first `positional` may be passed by position
    // (the rest are keyword-only); the first `required` of those and the keyword-only ones in
    // `required_keywords` must be given. Interns the names: construct with the GIL held.
    Signature(const char* function, std::vector<const char*> names, std::size_t positional,
              std::size_t required, const std::vector<const char*>& required_keywords);

    std::size_t size() const { return names_.size(); }

    // Fills slots[0 .. size()) with the arguments (borrowed), null where not given; raises
    // TypeError as CPython would (too many or missing arguments, an unknown keyword, a value
    // given twice). Returns false with the error set.
    bool parse(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames, PyObject** slots) const;

private:
    bool fail_missing(PyObject* const* slots, bool keyword_only) const;
    std::string function_;
    std::vector<const char*> names_;
    std::vector<PyObject*> interned_;  // kept for the interpreter's lifetime
    std::size_t positional_, required_;
    std::vector<std::size_t> required_keywords_;
};

}  // namespace fastmomentum::bindings
