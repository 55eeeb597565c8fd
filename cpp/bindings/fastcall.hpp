#pragma once
// Registers a C++ function of N `py::handle` arguments as a METH_FASTCALL builtin: the arguments
// arrive as a C array, positional only. pybind11's general dispatcher (overloads, keywords, an
// argument vector per call) costs ~0.15 us a call, which is a quarter of a small update.

#include <pybind11/pybind11.h>

#include <cstddef>
#include <exception>
#include <new>
#include <type_traits>
#include <utility>

namespace fastmomentum::bindings {

namespace detail {

// Translates the exceptions the bindings throw into the Python error they stand for.
inline PyObject* set_python_error() {
    try {
        throw;
    } catch (pybind11::error_already_set& e) {
        e.restore();
    } catch (const pybind11::builtin_exception& e) {
        e.set_error();
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
    return nullptr;
}

template <auto Fn, std::size_t... I>
PyObject* call(PyObject* const* args, std::index_sequence<I...>) {
    if constexpr (std::is_same_v<decltype(Fn(pybind11::handle(args[I])...)), int>)
        return PyLong_FromLong(Fn(pybind11::handle(args[I])...));
    else
        return Fn(pybind11::handle(args[I])...).release().ptr();
}

template <auto Fn, std::size_t N, const PyMethodDef& Def>
PyObject* fastcall(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != static_cast<Py_ssize_t>(N)) {
        // CPython's wording for a function of fixed arity.
        PyErr_Format(PyExc_TypeError, "%s() takes %zd positional arguments but %zd %s given",
                     Def.ml_name, static_cast<Py_ssize_t>(N), nargs, nargs == 1 ? "was" : "were");
        return nullptr;
    }
    try {
        return call<Fn>(args, std::make_index_sequence<N>{});
    } catch (...) {
        return set_python_error();
    }
}

}  // namespace detail

// `Def` is a PyMethodDef at namespace scope (it must outlive the module, and the entry point names
// it in its argument-count error); its ml_doc may start with a "name(args)\n--\n\n" signature line
// for inspect. Fn returns an int or a py::object.
template <auto Fn, std::size_t N, PyMethodDef& Def>
void def_fastcall(pybind11::module_& m) {
    Def.ml_meth = reinterpret_cast<PyCFunction>(
        reinterpret_cast<void (*)()>(&detail::fastcall<Fn, N, Def>));
    Def.ml_flags = METH_FASTCALL;
    pybind11::object name = m.attr("__name__");
    // The module as self, as for any module function: inspect then drops the signature's $module.
    pybind11::object f = pybind11::reinterpret_steal<pybind11::object>(
        PyCFunction_NewEx(&Def, m.ptr(), name.ptr()));
    if (!f) throw pybind11::error_already_set();
    m.add_object(Def.ml_name, f);
}

}  // namespace fastmomentum::bindings
