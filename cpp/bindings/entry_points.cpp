#include "entry_points.hpp"

#include <exception>
#include <new>

#include "args.hpp"

namespace fastmomentum::bindings {

namespace py = pybind11;

PyObject* set_python_error() {
    try {
        throw;
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (const py::builtin_exception& e) {
        e.set_error();
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
    } catch (const std::exception& e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
    return nullptr;
}

void add_function(py::module_& m, PyMethodDef& def) {
    py::object name = m.attr("__name__");
    // The module as self, as for any module function: inspect then drops the signature's $module.
    auto f = py::reinterpret_steal<py::object>(PyCFunction_NewEx(&def, m.ptr(), name.ptr()));
    if (!f) throw py::error_already_set();
    m.add_object(def.ml_name, f);
}

py::object new_outcome() { return py::cast(Outcome{}); }

Outcome& outcome_of(py::handle obj) {
    if (!py::isinstance<Outcome>(obj))
        throw py::type_error("outcome must be a fastmomentum._core.StepOutcome, got " +
                             type_name(obj.ptr()));
    return obj.cast<Outcome&>();
}

}  // namespace fastmomentum::bindings
