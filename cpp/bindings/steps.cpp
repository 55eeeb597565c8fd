// The step protocol's entry points (fastmomentum/_protocol.py): sgd_steps, which an optimizer calls
// with its groups as Call tuples, and the checks it makes at construction and on load, through the
// same parser and rules as a step. Also the shared pieces of the hand-written entry points
// (entry_points.hpp).

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "args.hpp"
#include "call.hpp"
#include "entry_points.hpp"
#include "host_arrays.hpp"
#include "host_step.hpp"
#include "protocol.hpp"
#include "register.hpp"
#include "results.hpp"

namespace fastmomentum::bindings {
namespace {

template <std::size_t N>
py::tuple names(const char* const (&list)[N]) {
    py::tuple t(N);
    for (std::size_t i = 0; i < N; ++i) t[i] = py::str(list[i]);
    return t;
}

void sgd_steps(py::handle calls_obj, py::handle grads_obj, py::handle guard_obj,
               py::handle outcome_obj) {
    Outcome& outcome = outcome_of(outcome_obj);
    outcome = Outcome{};
    // Phase 1: every conversion (the only Python code a step may run).
    const Guard guard = parse_guard(guard_obj);
    const std::vector<CallArgs> calls = parse_calls(calls_obj);
    const List grads(grads_obj, "grads");
    // Phase 2: every array checked, with no Python code, before anything is written.
    Step step;
    HostReader read;
    check_calls(calls.data(), calls.size(), grads, true, guard, read, step);
    // Phase 3. The outcome is a C++ struct: writing it runs no Python code, so a KeyboardInterrupt
    // that arrives while the kernels run cannot come between them and the record of what they did.
    run_on_host(step, guard, outcome);
}

// Construction-time checks of an optimizer: its arrays as a step's params, numbered from
// first_index, and no two sharing memory.
void check_params(py::handle params_obj, py::handle first_index_obj) {
    resolve_bfloat16();
    const std::size_t first = count(first_index_obj.ptr(), "first_index");
    const List params(params_obj, "params");
    Step step;
    step.arrays.reserve(params.size());
    HostReader read;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const Checked& p = step.arrays[step.add(read, params[i], Where{"params", first + i}, Access::write)];
        if (p.desc.dtype == Dtype::i8)
            throw py::type_error(p.where.str() + " has dtype int8; expected float32, float64, "
                                 "bfloat16 or float16");
    }
    step.check_disjoint();
}

// The guard's statistics pass over gradients alone: (every element finite, sum of squares).
py::tuple grad_stats(py::handle grads_obj) {
    resolve_bfloat16();
    const List grads(grads_obj, "grads");
    Step step;
    step.arrays.reserve(grads.size());
    step.updates.emplace_back();
    HostReader read;
    for (std::size_t i = 0; i < grads.size(); ++i) {
        step.add(read, grads[i], Where{"grads", i}, Access::read);
        const Checked& g = step.arrays.back();
        Update& u = step.updates[0];
        const TensorRef t{nullptr, g.desc.data, nullptr, g.desc.size, false};
        if (g.desc.dtype == Dtype::f32) u.f32.push_back(t);
        else if (g.desc.dtype == Dtype::f64) u.f64.push_back(t);
        else if (g.desc.dtype == Dtype::i8) throw py::type_error(g.where.str() + " has dtype int8; "
                                                                 "expected a float dtype");
        else u.lowp.push_back(LowpList{Kind{g.desc.dtype, g.desc.dtype, g.desc.dtype,
                                            Rounding::nearest}, {t}});
    }
    const GradStats stats = measure_on_host(step);
    return py::make_tuple(stats.finite, stats.sum_squares);
}

void check_hyper(py::handle hyper_obj, py::handle dtypes_obj, py::handle guard_obj) {
    Hyper hyper = parse_hyper(hyper_args(hyper_obj));
    if (!guard_obj.is_none()) hyper.grad_scale = parse_guard(guard_obj).grad_scale();  // as a step
    const List dtypes(dtypes_obj, "dtypes");
    for (std::size_t i = 0; i < dtypes.size(); ++i)
        check_coefficients(hyper, parse_dtype_name(dtypes[i], "each of dtypes"));
}

// Whether two lists or tuples hold the same objects, in the same order (identity, not equality).
bool same_items(py::handle a_obj, py::handle b_obj) {
    const List a(a_obj, "a");
    const List b(b_obj, "b");
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i] != b[i]) return false;
    return true;
}

}  // namespace

void register_steps(py::module_& m) {
    init_args();
    init_host_arrays();
    m.attr("QUANT_BLOCK") = kQuantBlock;  // the elements of an 8-bit buffer's block
    m.attr("HYPER_FIELDS") = names(field::kHyperNames);
    m.attr("CALL_FIELDS") = names(field::kCallNames);
    m.attr("GUARD_FIELDS") = names(field::kGuardNames);
    py::class_<Outcome>(m, "StepOutcome",
                        "What a step did, written by the kernels' entry point after they ran: "
                        "ran (the step was decided), applied (False: a non-finite gradient "
                        "stopped it, nothing was written), norm (the gradients' norm when "
                        "clipping, else None), threads.")
        .def(py::init<>())
        .def_property_readonly("ran", [](const Outcome& o) { return o.ran; })
        .def_property_readonly("applied", [](const Outcome& o) { return o.applied; })
        .def_property_readonly("norm", [](const Outcome& o) -> py::object {
            return o.has_norm ? py::object(py::float_(o.norm)) : py::none();
        })
        .def_property_readonly("threads", [](const Outcome& o) { return o.threads; })
        .def("result", [](const Outcome& o, py::handle grads) { return step_result(o, grads.ptr()); },
             py::arg("grads"),
             "The StepResult of the decided step; raises FloatingPointError for a skipped step "
             "under nonfinite='raise' (naming the first non-finite gradient of grads).");
    m.def("sgd_steps", &sgd_steps, py::arg("calls"), py::arg("grads"), py::arg("guard"),
          py::arg("outcome"),
          "One step of every call (a list of _protocol.Call) over grads (one per parameter of all "
          "the calls, in order; None leaves that parameter and its buffer alone) under guard (a "
          "_protocol.Guard): everything is parsed, then every array checked, before anything is "
          "written; then the kernels run, the GIL released unless the step is tiny, and outcome "
          "(a StepOutcome) records what they did.");
    m.def("real", [](py::handle value, const std::string& name) { return real(value.ptr(), name.c_str()); },
          py::arg("value"), py::arg("name"),
          "value as a float, by the rules of a step's hyper-parameters (a real number: never a "
          "bool, a complex, a str or an array); errors name it `name`.");
    m.def("check_hyper", &check_hyper, py::arg("hyper"), py::arg("dtypes") = py::tuple(),
          py::arg("guard") = py::none(),
          "Check a _protocol.Hyper as a step does (the same parser), and its coefficients as a "
          "step on arrays of each of dtypes ('float32', 'float64') computes them, under guard "
          "(a _protocol.Guard: its loss_scale) if given.");
    m.def("check_guard", [](py::handle guard) { parse_guard(guard); }, py::arg("guard"),
          "Check a _protocol.Guard as a step does.");
    m.def("check_params", &check_params, py::arg("params"), py::arg("first_index"),
          "Check arrays as a step checks params (numbered from first_index), and that none "
          "shares memory with another.");
    m.def("grad_stats", &grad_stats, py::arg("grads"),
          "(finite, sum_squares) of arrays checked as gradients: the statistics pass of a step's "
          "guards, in the kernels' fixed summation order.");
    m.def("same_items", &same_items, py::arg("a"), py::arg("b"),
          "Whether two lists or tuples hold the same objects in the same order (identity).");
    m.def("_bind", &bind_python, py::arg("step_result"), py::arg("nonfinite_error"),
          py::arg("device_step"),
          "Called once by the fastmomentum package at import: the objects steps need from it.");
}

}  // namespace fastmomentum::bindings
