#include "signature.hpp"

#include <cstring>
#include <stdexcept>
#include <utility>

namespace fastmomentum::bindings {

Signature::Signature(const char* function, std::vector<const char*> names, std::size_t positional,
                     std::size_t required, const std::vector<const char*>& required_keywords)
    : function_(function), names_(std::move(names)), positional_(positional), required_(required) {
    for (const char* name : names_) {
        PyObject* s = PyUnicode_InternFromString(name);
        if (s == nullptr) throw std::runtime_error("cannot intern an argument name");
        interned_.push_back(s);
    }
    for (const char* keyword : required_keywords)
        for (std::size_t i = positional_; i < names_.size(); ++i)
            if (std::strcmp(names_[i], keyword) == 0) required_keywords_.push_back(i);
}

bool Signature::parse(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                      PyObject** slots) const {
    const std::size_t n = names_.size();
    for (std::size_t i = 0; i < n; ++i) slots[i] = nullptr;
    if (static_cast<std::size_t>(nargs) > positional_) {
        PyErr_Format(PyExc_TypeError, "%s() takes from %zu to %zu positional arguments but %zd %s given",
                     function_.c_str(), required_, positional_, nargs, nargs == 1 ? "was" : "were");
        return false;
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) slots[i] = args[i];
    const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; ++k) {
        PyObject* key = PyTuple_GET_ITEM(kwnames, k);
        std::size_t slot = n;
        for (std::size_t i = 0; i < n && slot == n; ++i)  // interned names: identity first
            if (interned_[i] == key) slot = i;
        for (std::size_t i = 0; i < n && slot == n; ++i)
            if (PyUnicode_Compare(interned_[i], key) == 0) slot = i;
        if (slot == n) {
            if (PyErr_Occurred()) return false;
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                         function_.c_str(), key);
            return false;
        }
        if (slots[slot] != nullptr) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         function_.c_str(), names_[slot]);
            return false;
        }
        slots[slot] = args[nargs + k];
    }
    for (std::size_t i = 0; i < required_; ++i)
        if (slots[i] == nullptr) return fail_missing(slots, false);
    for (std::size_t i : required_keywords_)
        if (slots[i] == nullptr) return fail_missing(slots, true);
    return true;
}

// CPython's wording: "f() missing 2 required positional arguments: 'a' and 'b'".
bool Signature::fail_missing(PyObject* const* slots, bool keyword_only) const {
    std::vector<const char*> missing;
    if (keyword_only) {
        for (std::size_t i : required_keywords_)
            if (slots[i] == nullptr) missing.push_back(names_[i]);
    } else {
        for (std::size_t i = 0; i < required_; ++i)
            if (slots[i] == nullptr) missing.push_back(names_[i]);
    }
    std::string list;
    for (std::size_t i = 0; i < missing.size(); ++i) {
        if (i > 0) list += missing.size() == 2 ? " and " : (i + 1 == missing.size() ? ", and " : ", ");
        list += std::string("'") + missing[i] + "'";
    }
    PyErr_Format(PyExc_TypeError, "%s() missing %zu required %s argument%s: %s", function_.c_str(),
                 missing.size(), keyword_only ? "keyword-only" : "positional",
                 missing.size() == 1 ? "" : "s", list.c_str());
    return false;
}

}  // namespace fastmomentum::bindings
