// The step entry points. `_core.sgd_step` updates one list of arrays; `_core.sgd_steps` updates
// several (an optimizer's parameter groups, each with its own hyper-parameters). Both validate
// EVERYTHING first (hyper-parameters, list lengths, every array of every call, aliasing across all
// of them), so a bad input raises with nothing modified; then they release the GIL and run the
// active ISA's kernels. Also the construction-time checks and the bandwidth reference.

#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "fastcall.hpp"
#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/threads.hpp"
#include "hyper_args.hpp"
#include "register.hpp"
#include "step_call.hpp"

namespace fastmomentum::bindings {
namespace {

// One checked call's outcome.
Outcome step(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             py::handle style, py::handle lr, py::handle momentum, py::handle dampening,
             py::handle nesterov, py::handle weight_decay, py::handle weight_decay_mode,
             py::handle schedule_multiplier, py::handle maximize, const Guard& guard) {
    Hyper h = parse_hyper(style, lr, momentum, dampening, nesterov, weight_decay,
                          weight_decay_mode, schedule_multiplier, maximize);
    h.grad_scale = guard.grad_scale();
    std::vector<CheckedArray> arrays;
    const Call call = prepare(params, grads, buffers, first_step, h, py::none(), arrays);
    check_no_overlap(arrays);
    return run(&call, 1, guard);
}

// The unguarded step, the common case: no result to build but the thread count.
int sgd_step(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             py::handle style, py::handle lr, py::handle momentum, py::handle dampening,
             py::handle nesterov, py::handle weight_decay, py::handle weight_decay_mode,
             py::handle schedule_multiplier, py::handle maximize) {
    return step(params, grads, buffers, first_step, style, lr, momentum, dampening, nesterov,
                weight_decay, weight_decay_mode, schedule_multiplier, maximize, Guard{})
        .threads;
}

py::object sgd_step_guarded(py::handle params, py::handle grads, py::handle buffers,
                            py::handle first_step, py::handle style, py::handle lr,
                            py::handle momentum, py::handle dampening, py::handle nesterov,
                            py::handle weight_decay, py::handle weight_decay_mode,
                            py::handle schedule_multiplier, py::handle maximize,
                            py::handle check_finite, py::handle max_norm, py::handle loss_scale) {
    const Guard guard = parse_guard(check_finite, max_norm, loss_scale);
    return to_python(step(params, grads, buffers, first_step, style, lr, momentum, dampening,
                          nesterov, weight_decay, weight_decay_mode, schedule_multiplier,
                          maximize, guard),
                     guard);
}

py::tuple sgd_steps(py::handle calls, py::handle check_finite, py::handle max_norm,
                    py::handle loss_scale) {
    const Guard guard = parse_guard(check_finite, max_norm, loss_scale);
    std::vector<CheckedArray> arrays;
    const std::vector<Call> prepared = prepare_calls(calls, guard, arrays, &check_array);
    check_no_overlap(arrays);
    return to_python(run(prepared.data(), prepared.size(), guard), guard);
}

// Construction-time checks of an optimizer: the same rules as a step, before any step.
void check_params(py::handle params, std::size_t first_index) {
    std::vector<CheckedArray> arrays;
    const Items items(params, "params");
    for (std::size_t i = 0; i < items.size(); ++i)
        arrays.push_back(check_array(items[i], "params", first_index + i, Access::write));
    check_no_overlap(arrays);
}

void check_hyper_args(py::handle style, py::handle lr, py::handle momentum, py::handle dampening,
                      py::handle nesterov, py::handle weight_decay, py::handle weight_decay_mode,
                      py::handle schedule_multiplier, py::handle maximize) {
    parse_hyper(style, lr, momentum, dampening, nesterov, weight_decay, weight_decay_mode,
                schedule_multiplier, maximize);
}

// The bandwidth reference, validated like a step with buffers (a plain torch-style momentum).
int rmw_reference(py::handle params, py::handle grads, py::handle buffers, double scale) {
    Hyper h;
    h.momentum = 0.5;  // only to require the buffers: the reference ignores the hyper-parameters
    std::vector<CheckedArray> arrays;
    const Call call = prepare(params, grads, buffers, py::bool_(false), h, py::none(), arrays);
    check_no_overlap(arrays);
    const KernelSet& kernels = active_kernels();
    const Launch launch = current_launch();
    py::gil_scoped_release release;
    int threads = 0;
    if (!call.f32.empty()) threads = kernels.rmw_f32(call.f32.data(), call.f32.size(), scale, launch);
    if (!call.f64.empty())
        threads = std::max(threads, kernels.rmw_f64(call.f64.data(), call.f64.size(), scale, launch));
    return threads;
}

// The fast entry points' method tables (they outlive the module; see def_fastcall).
PyMethodDef sgd_step_def{
    "sgd_step", nullptr, 0,
    "sgd_step($module, params, grads, buffers, first_step, style, lr, momentum, dampening, "
    "nesterov, weight_decay, weight_decay_mode, schedule_multiplier, maximize, /)\n--\n\n"
    "Validate every array and hyper-parameter, then update params (and buffers) in place in "
    "one fused pass with the GIL released. Returns the number of threads that ran (0 when "
    "there was nothing to update). Positional arguments only."};
PyMethodDef sgd_step_guarded_def{
    "sgd_step_guarded", nullptr, 0,
    "sgd_step_guarded($module, params, grads, buffers, first_step, style, lr, momentum, "
    "dampening, nesterov, weight_decay, weight_decay_mode, schedule_multiplier, maximize, "
    "check_finite, max_norm, loss_scale, /)\n--\n\n"
    "sgd_step with guards: the gradients are divided by loss_scale; with max_norm (not None) "
    "their global 2-norm is computed in a read pass and they are scaled by "
    "min(1, max_norm / (norm + 1e-6)); with check_finite, nothing is written when a gradient "
    "has a NaN or an infinity. Returns (applied, norm or None, threads)."};

}  // namespace

void register_sgd(py::module_& m) {
    init_array_checks();
    def_fastcall<&sgd_step, 13, sgd_step_def>(m);
    def_fastcall<&sgd_step_guarded, 16, sgd_step_guarded_def>(m);
    m.def("sgd_steps", &sgd_steps, py::arg("calls"), py::arg("check_finite") = false,
          py::arg("max_norm") = py::none(), py::arg("loss_scale") = 1.0,
          "Several sgd_step calls, each a tuple of sgd_step's 13 arguments plus `indices` (how each "
          "array is numbered in error messages, or None), under one guard as sgd_step_guarded's "
          "(the norm is over all the calls' gradients). Everything is validated before anything "
          "is written. Returns (applied, norm or None, threads).");
    m.def("check_params", &check_params, py::arg("params"), py::arg("first_index"),
          "Check arrays as sgd_step checks params (numbered from first_index), and that none "
          "shares memory with another.");
    m.def("check_hyper", &check_hyper_args, py::arg("style"), py::arg("lr"), py::arg("momentum"),
          py::arg("dampening"), py::arg("nesterov"), py::arg("weight_decay"),
          py::arg("weight_decay_mode"), py::arg("schedule_multiplier"), py::arg("maximize"),
          "Check hyper-parameters as sgd_step does.");
    m.def("rmw_reference", &rmw_reference, py::arg("params"), py::arg("grads"),
          py::arg("buffers"), py::arg("scale"),
          "The bandwidth reference of the benchmarks: `p += scale*g; b += scale*g` in one pass over "
          "arrays checked as sgd_step checks them (the update's memory traffic with the least "
          "arithmetic), threaded like the kernels. Returns the number of threads that ran.");
}

}  // namespace fastmomentum::bindings
