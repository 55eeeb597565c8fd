#include "results.hpp"

#include <stdexcept>

namespace fastmomentum::bindings {
namespace {

// Bound once at import, kept for the interpreter's lifetime.
PyObject* g_step_result = nullptr;
PyObject* g_applied = nullptr;  // StepResult(False, None): the result of most steps
PyObject* g_nonfinite_error = nullptr;
PyObject* g_device_step = nullptr;

py::object make_result(bool skipped, const Outcome& outcome) {
    py::object norm = outcome.has_norm ? py::object(py::float_(outcome.norm)) : py::none();
    return py::reinterpret_borrow<py::object>(g_step_result)(py::bool_(skipped), norm);
}

}  // namespace

void bind_python(py::handle result_type, py::handle nonfinite_error, py::handle device_step) {
    // Bound again when the package's module is reloaded: the new objects replace the old ones.
    PyObject* applied = result_type(false, py::none()).release().ptr();
    for (PyObject** slot : {&g_applied, &g_step_result, &g_nonfinite_error, &g_device_step})
        Py_XDECREF(*slot);
    g_applied = applied;
    g_step_result = result_type.inc_ref().ptr();
    g_nonfinite_error = nonfinite_error.inc_ref().ptr();
    g_device_step = device_step.inc_ref().ptr();
}

py::object try_device_step(PyObject* first, const py::tuple& call, PyObject* grads,
                           const py::tuple& guard) {
    if (g_device_step == nullptr) return py::none();
    return py::reinterpret_borrow<py::object>(g_device_step)(py::handle(first), call,
                                                             py::handle(grads), guard);
}

py::object step_result(const Outcome& outcome, PyObject* grads) {
    if (g_step_result == nullptr)
        throw std::runtime_error("fastmomentum._core is used before the fastmomentum package bound it");
    if (!outcome.ran) throw std::runtime_error("a step's outcome was read before it ran");
    if (outcome.applied) {
        if (!outcome.has_norm) return py::reinterpret_borrow<py::object>(g_applied);
        return make_result(false, outcome);
    }
    if (outcome.nonfinite == NonFinite::raise) {
        const py::object error = py::reinterpret_borrow<py::object>(g_nonfinite_error)(py::handle(grads));
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
        throw py::error_already_set();
    }
    return make_result(true, outcome);
}

}  // namespace fastmomentum::bindings
