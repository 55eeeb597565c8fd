#include "step_plan.hpp"

#include <algorithm>
#include <string>
#include <string_view>

#include "hyper_args.hpp"
#include "register.hpp"
#include "step_call.hpp"

namespace fastmomentum::bindings {
namespace {

std::uintptr_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

// group["params"], borrowed; null when missing.
PyObject* params_of(py::handle group) {
    return PyDict_Check(group.ptr()) ? PyDict_GetItemString(group.ptr(), "params") : nullptr;
}

}  // namespace

StepPlan::StepPlan(py::handle param_groups, py::handle states, py::handle style, py::handle key)
    : style_(parse_style(style)), key_(py::reinterpret_borrow<py::object>(key)) {
    const Items groups(param_groups, "param_groups");
    const Items group_states(states, "states");
    if (group_states.size() != groups.size())
        throw py::value_error("states must have one list per parameter group");
    const char* b_name = buffers_name(style_);
    std::vector<CheckedArray> arrays;
    for (std::size_t gi = 0; gi < groups.size(); ++gi) {
        PyObject* list = params_of(groups[gi]);
        if (list == nullptr || !PyList_CheckExact(list))
            throw py::type_error("each parameter group must be a dict with a list 'params' (a "
                                 "plan cannot follow another sequence's changes)");
        const Items params(list, "params");
        const Items param_states(group_states[gi], "states");
        if (param_states.size() != params.size())
            throw py::value_error("states must have one entry per parameter");
        groups_.push_back(Group{py::reinterpret_borrow<py::object>(list), params_.size(),
                                params.size()});
        for (std::size_t j = 0; j < params.size(); ++j) {
            const std::size_t index = params_.size();
            const std::size_t p = arrays.size();
            // Read access: a frozen (read-only) parameter without a gradient does not stop the
            // fast path; a step re-checks each parameter it writes for writeability.
            arrays.push_back(check_array(params[j], "params", index, Access::read));
            arrays.back().access = Access::write;  // for the overlap check: steps write it
            Param param{arrays[p].array, py::reinterpret_borrow<py::object>(param_states[j]),
                        py::none(), arrays[p].data, arrays[p].nbytes};
            if (PyDict_Check(param.state.ptr())) {
                PyObject* buffer = PyDict_GetItemWithError(param.state.ptr(), key_.ptr());
                if (buffer == nullptr && PyErr_Occurred()) throw py::error_already_set();
                if (buffer != nullptr && buffer != Py_None) {
                    arrays.push_back(check_array(buffer, b_name, index, Access::write));
                    check_matches(arrays.back(), arrays[p]);
                    param.buffer = arrays.back().array;
                }
            } else if (!param.state.is_none()) {
                throw py::type_error("a parameter's state must be a dict or None");
            }
            params_.push_back(std::move(param));
        }
    }
    check_no_overlap(arrays);
    // The written memory, for the gradients' overlap check: params and buffers, in address order
    // (a CheckedArray's `index` is its parameter's position).
    for (const CheckedArray& a : arrays) {
        const bool is_buffer = std::string_view(a.list) != "params";
        if (a.nbytes > 0)
            written_.push_back(Range{address(a.data), address(a.data) + a.nbytes, a.index, is_buffer});
    }
    std::sort(written_.begin(), written_.end(),
              [](const Range& a, const Range& b) { return a.begin < b.begin; });
}

bool StepPlan::same_groups(py::handle param_groups) const {
    if (!PyList_CheckExact(param_groups.ptr()) ||
        static_cast<std::size_t>(PyList_GET_SIZE(param_groups.ptr())) != groups_.size())
        return false;
    for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
        const Group& g = groups_[gi];
        PyObject* list = params_of(PyList_GET_ITEM(param_groups.ptr(), static_cast<py::ssize_t>(gi)));
        if (list != g.params.ptr() || static_cast<std::size_t>(PyList_GET_SIZE(list)) != g.count)
            return false;
        for (std::size_t j = 0; j < g.count; ++j)
            if (PyList_GET_ITEM(list, static_cast<py::ssize_t>(j)) != params_[g.first + j].array.ptr())
                return false;
    }
    return true;
}

const StepPlan::Range* StepPlan::written_overlap(std::uintptr_t begin, std::uintptr_t end,
                                                 const std::vector<char>& written) const {
    // The ranges are disjoint, so sorted by begin they are sorted by end too.
    auto it = std::upper_bound(written_.begin(), written_.end(), begin,
                               [](std::uintptr_t x, const Range& r) { return x < r.end; });
    for (; it != written_.end() && it->begin < end; ++it)
        if (written[2 * it->param + it->is_buffer]) return &*it;
    return nullptr;
}

py::object StepPlan::step(py::handle param_groups, py::handle grads, py::handle hypers,
                          py::handle check_finite, py::handle max_norm, py::handle loss_scale) {
    const Guard guard = parse_guard(check_finite, max_norm, loss_scale);
    const py::object stale = py::none();
    if (!same_groups(param_groups)) return stale;
    const Items g_items(grads, "grads");
    if (g_items.size() != params_.size())
        throw py::value_error("step() got " + std::to_string(g_items.size()) + " gradients for " +
                              std::to_string(params_.size()) + " parameters");
    const Items h_items(hypers, "hypers");
    if (h_items.size() != groups_.size())
        throw py::value_error("hypers must have one tuple per parameter group");
    const char* b_name = buffers_name(style_);

    // The same checks, in the same order, as sgd_steps on the calls the full path would make:
    // per group with a gradient, its hyper-parameters, then each parameter's param, grad and
    // buffer, then the coefficients; the overlaps last.
    std::vector<Call> calls;
    calls.reserve(groups_.size());
    std::vector<CheckedArray> arrays;  // keeps the checked arrays alive until the kernels ran
    arrays.reserve(3 * params_.size());
    std::vector<char> written(2 * params_.size(), 0);
    for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
        const Group& group = groups_[gi];
        const std::size_t end = group.first + group.count;
        bool any_grad = false;
        for (std::size_t i = group.first; i < end && !any_grad; ++i) any_grad = !g_items[i].is_none();
        if (!any_grad) continue;  // no call for this group: its hyper-parameters are not used
        if (!py::isinstance<py::tuple>(h_items[gi])) throw py::type_error("hypers must be tuples");
        Hyper h = parse_hyper(py::reinterpret_borrow<py::tuple>(h_items[gi]));
        h.grad_scale = guard.grad_scale();
        if (h.style != style_) return stale;
        const bool use_buffers = h.momentum != 0.0;
        Call call{h, {}, {}};
        for (std::size_t i = group.first; i < end; ++i) {
            const py::handle grad = g_items[i];
            if (grad.is_none()) continue;
            const Param& param = params_[i];
            if (use_buffers && param.buffer.is_none()) return stale;  // a new buffer is needed
            const std::size_t p = arrays.size();
            arrays.push_back(check_array(param.array, "params", i, Access::write));
            if (arrays[p].data != param.data || arrays[p].nbytes != param.nbytes) return stale;
            arrays.push_back(check_array(grad, "grads", i, Access::read));
            check_matches(arrays.back(), arrays[p]);
            const std::size_t g = arrays.size() - 1;
            const CheckedArray* buffer = nullptr;
            if (use_buffers) {
                PyObject* current = PyDict_GetItemWithError(param.state.ptr(), key_.ptr());
                if (current != param.buffer.ptr()) {
                    if (PyErr_Occurred()) throw py::error_already_set();
                    return stale;  // replaced or removed
                }
                arrays.push_back(check_array(param.buffer, b_name, i, Access::write));
                check_matches(arrays.back(), arrays[p]);
                buffer = &arrays.back();
            }
            written[2 * i] = 1;
            written[2 * i + 1] = buffer != nullptr;
            call.append(arrays[p], arrays[g], buffer, false);
        }
        check_call_coefficients(call);
        calls.push_back(std::move(call));
    }
    // A gradient may not overlap memory this step writes (params and buffers are disjoint: the
    // constructor checked them, and step() checked they have not moved). Named in address order,
    // as sgd_steps names a pair.
    for (const CheckedArray& a : arrays) {
        if (a.access != Access::read || a.nbytes == 0) continue;
        const Range* clash = written_overlap(address(a.data), address(a.data) + a.nbytes, written);
        if (clash == nullptr) continue;
        const std::string other =
            std::string(clash->is_buffer ? b_name : "params") + "[" + std::to_string(clash->param) + "]";
        const bool grad_first = address(a.data) < clash->begin;
        throw py::value_error((grad_first ? label(a) + " and " + other : other + " and " + label(a)) +
                              " share memory; every parameter and buffer of a call must be "
                              "distinct memory, and no gradient may overlap one");
    }
    return to_python(run(calls.data(), calls.size(), guard), guard);
}

void register_plan(py::module_& m) {
    py::class_<StepPlan>(m, "StepPlan",
                         "An optimizer's parameters and buffers, checked once for fast steps "
                         "(used by fastmomentum.SGD).")
        .def(py::init<py::handle, py::handle, py::handle, py::handle>(), py::arg("param_groups"),
             py::arg("states"), py::arg("style"), py::arg("key"))
        .def("step", &StepPlan::step, py::arg("param_groups"), py::arg("grads"),
             py::arg("hypers"), py::arg("check_finite"), py::arg("max_norm"),
             py::arg("loss_scale"),
             "One update of every parameter with a gradient, guarded as sgd_steps: "
             "(applied, norm or None, threads), or None (nothing done) when the plan is out of "
             "date.");
}

}  // namespace fastmomentum::bindings
