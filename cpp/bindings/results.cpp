#include "results.hpp"

#include <atomic>
#include <stdexcept>

namespace fastmomentum::bindings {
namespace {

// The package's objects, bound at import (_core._bind). Published through one atomic pointer:
// without the GIL a step may read them while another thread binds new ones (a reload of the
// package), and must see one binding whole. A binding that is replaced is never freed, nor are
// its references released: a step in another thread may still be using it, and there is no
// point after which none can be (a reload leaves a few objects alive; nothing else replaces one).
struct Bound {
    PyObject* step_result;
    PyObject* applied;  // StepResult(False, None): the result of most steps
    PyObject* nonfinite_error;
    PyObject* device_step;
};
std::atomic<const Bound*> g_bound{nullptr};

const Bound& bound() {
    const Bound* b = g_bound.load(std::memory_order_acquire);
    if (b == nullptr)
        throw std::runtime_error("fastmomentum._core is used before the fastmomentum package bound it");
    return *b;
}

py::object make_result(const Bound& b, bool skipped, const Outcome& outcome) {
    py::object norm = outcome.has_norm ? py::object(py::float_(outcome.norm)) : py::none();
    return py::reinterpret_borrow<py::object>(b.step_result)(py::bool_(skipped), norm);
}

}  // namespace

void bind_python(py::handle result_type, py::handle nonfinite_error, py::handle device_step) {
    PyObject* applied = result_type(false, py::none()).release().ptr();
    g_bound.store(new Bound{result_type.inc_ref().ptr(), applied, nonfinite_error.inc_ref().ptr(),
                            device_step.inc_ref().ptr()},
                  std::memory_order_release);
}

py::object try_device_step(PyObject* first, const py::tuple& call, PyObject* grads,
                           const py::tuple& guard) {
    const Bound* b = g_bound.load(std::memory_order_acquire);
    if (b == nullptr) return py::none();
    return py::reinterpret_borrow<py::object>(b->device_step)(py::handle(first), call,
                                                              py::handle(grads), guard);
}

py::object step_result(const Outcome& outcome, PyObject* grads) {
    const Bound& b = bound();
    if (!outcome.ran) throw std::runtime_error("a step's outcome was read before it ran");
    if (outcome.applied) {
        if (!outcome.has_norm) return py::reinterpret_borrow<py::object>(b.applied);
        return make_result(b, false, outcome);
    }
    if (outcome.nonfinite == NonFinite::raise) {
        const py::object error = py::reinterpret_borrow<py::object>(b.nonfinite_error)(py::handle(grads));
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
        throw py::error_already_set();
    }
    return make_result(b, true, outcome);
}

}  // namespace fastmomentum::bindings
