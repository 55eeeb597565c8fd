#pragma once
// A step, wherever it runs, in three phases:
//   1. parse: every argument converted and checked (args.hpp): the only phase that may run Python;
//   2. check: every array of every call read and checked by a reader (a NumPy or a CUDA one),
//      held by a strong reference, and gathered into Updates: C struct reads only;
//   3. run: the guard's statistics pass, then the kernels, unless it found a non-finite gradient.
// Shared by the host module and the CUDA module, so both accept and refuse exactly the same steps.
//
// A Reader is `void operator()(Checked& out, PyObject* obj, Access access)`: it fills `out` (whose
// `where` is set) with obj's description and a reference to its owner, or raises.

#include <pybind11/pybind11.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "args.hpp"
#include "array_desc.hpp"
#include "fastmomentum/hyper.hpp"
#include "fastmomentum/kernels.hpp"

namespace fastmomentum::bindings {

// One call after phase 1.
struct CallArgs {
    Hyper hyper;
    List params;
    List buffers;  // empty when None
    bool has_buffers = false;
    List compensations;  // empty when None
    bool has_compensations = false;
    FirstStep first_step;
    std::size_t first_index = 0;  // params[0]'s gradient is grads[first_index]
};

// Phase 1 of a call given as its parts (the functional entry points).
CallArgs parse_call(PyObject* params, PyObject* buffers, PyObject* compensations,
                    PyObject* first_step, const Hyper& hyper, std::size_t first_index);
// Phase 1 of an _protocol.Call tuple.
CallArgs parse_call(py::handle call);
// Phase 1 of a list of them.
std::vector<CallArgs> parse_calls(py::handle calls);

// The tensors of one low-precision kind in a call.
struct LowpList {
    Kind kind;
    std::vector<TensorRef> tensors;
};

// A tensor's arrays in a step (null: the call has none).
struct TensorArrays {
    const Checked* param;
    const Checked* grad;
    const Checked* buffer;
    const Checked* scales;        // of an 8-bit buffer
    const Checked* compensation;  // Kahan
};

// What the kernels run for one call: its hyper-parameters and its tensors, by kind: the exact
// float32 and float64 ones, then a list per low-precision kind, in order of appearance.
struct Update {
    Hyper hyper;
    std::vector<TensorRef> f32, f64;
    std::vector<LowpList> lowp;

    // Appends one tensor of `kind`, the `stream`-th parameter of the step. An exact tensor whose
    // param, grad and buffer each start where the previous tensor's end (views into one flat
    // storage) extends that tensor instead: one long span costs the kernel less than many short
    // ones, and the update is element-wise. (Low-precision tensors are never merged: their
    // blocks and random numbers count from each parameter's first element.)
    void append(const Kind& kind, const TensorArrays& arrays, bool first_step, std::size_t stream);
};

// The kind of parameter `p` with gradient `g`, and its buffer (null: none, or unused) and
// compensation (null: none) under `hyper`; raises, naming the array, for a combination that no
// kind has.
Kind kind_of(const Checked& p, const Checked& g, const Checked* buffer, const Checked* scales,
             const Checked* compensation, const Hyper& hyper);

// The result of phase 2: the updates, and every array they touch, held until they have run.
struct Step {
    std::vector<Update> updates;
    std::vector<Checked> arrays;
    std::vector<Range> scratch, spare;  // check_disjoint's

    void check_disjoint() { bindings::check_disjoint(arrays, scratch, spare); }

    // Reads `obj` with `read` into a new checked array; returns its index in `arrays`.
    template <class Reader>
    std::size_t add(Reader& read, PyObject* obj, const Where& where, Access access) {
        read(arrays.emplace_back(where, access), obj, access);
        return arrays.size() - 1;
    }
};

// An 8-bit buffer's scales must be C-contiguous (also for _core.convert).
void check_scales_order(const Checked& scales);

// The error for a tuple in buffers that is not a (codes, scales) pair (also for _core.convert).
[[noreturn]] void quantized_buffer_size_error(const Where& where, PyObject* tuple);

// Phase 2 of `count` parsed calls over one list of gradients (one per parameter of all the calls
// in order, None to leave a parameter alone when `none_skips` is set) under `guard`, into `step`.
// Every array is checked before any is used, and no written memory may be shared; a failure
// raises with nothing written.
template <class Reader>
void check_calls(const CallArgs* calls, std::size_t count, const List& grads, bool none_skips,
                 const Guard& guard, Reader& read, Step& step) {
    std::size_t total = 0;
    for (std::size_t c = 0; c < count; ++c) total += calls[c].params.size();
    if (grads.size() != total)
        throw py::value_error("grads has " + std::to_string(grads.size()) +
                              " arrays but params has " + std::to_string(total));
    step.arrays.reserve(3 * total);
    step.updates.reserve(count);
    std::size_t next_index = 0;  // where the call's gradients start in grads
    for (std::size_t c = 0; c < count; ++c) {
        const CallArgs& call = calls[c];
        const std::size_t n = call.params.size();
        const char* b_name = buffers_name(call.hyper.style);
        if (call.has_buffers && call.buffers.size() != n)
            throw py::value_error(std::string(b_name) + " has " +
                                  std::to_string(call.buffers.size()) + " arrays but params has " +
                                  std::to_string(n));
        // The calls' params tile grads in order: every gradient is read by exactly one parameter.
        if (call.first_index != next_index)
            throw py::value_error("calls[" + std::to_string(c) + "].first_index is " +
                                  std::to_string(call.first_index) + " but the calls before it "
                                  "have " + std::to_string(next_index) + " params; each call's "
                                  "gradients follow the previous call's in grads");
        next_index += n;
        call.first_step.check(n);
        if (call.has_compensations && call.compensations.size() != n)
            throw py::value_error("compensations has " + std::to_string(call.compensations.size()) +
                                  " entries but params has " + std::to_string(n));
        const bool use_buffers = call.hyper.momentum != 0.0;  // else given buffers are left alone
        Update update{call.hyper, {}, {}, {}};
        update.hyper.grad_scale = guard.grad_scale();  // before clipping: checked as it is
        for (std::size_t i = 0; i < n; ++i) {
            const std::size_t at = call.first_index + i;
            PyObject* grad = grads[at];
            if (grad == Py_None && none_skips) continue;
            // Indices, not references: adding an array may move the others.
            const std::size_t p = step.add(read, call.params[i], Where{"params", at}, Access::write);
            const std::size_t g = step.add(read, grad, Where{"grads", at}, Access::read);
            std::size_t b = 0, s = 0, c = 0;
            bool quantized = false, compensated = false;
            if (call.has_buffers) {  // always when use_buffers (parse_call)
                PyObject* buffer = call.buffers[i];
                // An 8-bit buffer is a (codes, scales) tuple (a QuantizedBuffer): its items are
                // read from the tuple's storage, which cannot change.
                quantized = PyTuple_Check(buffer);
                if (!quantized) {
                    b = step.add(read, buffer, Where{b_name, at}, Access::write);
                } else if (PyTuple_GET_SIZE(buffer) != 2) {
                    quantized_buffer_size_error(Where{b_name, at}, buffer);
                } else {
                    b = step.add(read, PyTuple_GET_ITEM(buffer, 0), Where{b_name, at, ".codes"},
                                 Access::write);
                    s = step.add(read, PyTuple_GET_ITEM(buffer, 1), Where{b_name, at, ".scales"},
                                 Access::write);
                }
            }
            if (call.has_compensations && call.compensations[i] != Py_None) {
                compensated = true;
                c = step.add(read, call.compensations[i], Where{"compensations", at}, Access::write);
            }
            // Indices are stable now: every array of this parameter has been added.
            const TensorArrays arrays{
                &step.arrays[p], &step.arrays[g],
                call.has_buffers ? &step.arrays[b] : nullptr,
                quantized ? &step.arrays[s] : nullptr,
                compensated ? &step.arrays[c] : nullptr};
            const Kind kind = kind_of(*arrays.param, *arrays.grad, arrays.buffer, arrays.scales,
                                      arrays.compensation, call.hyper);
            update.append(kind,
                          TensorArrays{arrays.param, arrays.grad,
                                       use_buffers ? arrays.buffer : nullptr,
                                       use_buffers ? arrays.scales : nullptr,
                                       arrays.compensation},
                          call.first_step[i], at);
        }
        if (!update.f32.empty() || !update.lowp.empty()) check_coefficients(update.hyper, Dtype::f32);
        if (!update.f64.empty()) check_coefficients(update.hyper, Dtype::f64);
        step.updates.push_back(std::move(update));
    }
    step.check_disjoint();
}

// What running a step did.
struct Outcome {
    NonFinite nonfinite = NonFinite::ignore;  // the guard's, for the result
    bool ran = false;      // the step was decided: applied, or skipped for a non-finite gradient
    bool applied = false;  // false: a gradient was not finite and nothing was written
    bool has_norm = false;
    double norm = 0.0;  // the global 2-norm of the (unscaled) gradients, when clipping
    int threads = 0;    // the most threads any kernel ran
};

// Writes `from` into `to`, `ran` last: a copy of memory taken between the stores (a fork() by
// another thread while this one runs without the GIL) shows the outcome whole or not at all.
inline void publish(Outcome& to, const Outcome& from) {
    Outcome staged = from;
    staged.ran = false;
    to = staged;
    std::atomic_thread_fence(std::memory_order_release);
    to.ran = from.ran;
}

// Runs checked updates under their guard, wherever the kernels run: the statistics pass over
// every gradient first when the guard needs one (and was not handed the caller's statistics),
// then the updates unless a gradient is not finite and the guard checks for it. The updates' hypers carry grad_scale = 1 / guard.loss_scale.
//   stats(list, dtype, sum_squares): whether every gradient of a list, of that dtype, is finite;
//     when sum_squares is not null, also adds their kNormBlock blocks' sums of squares to it,
//     block after block (updates in order; f32, f64, then the low-precision lists: the same sum
//     on every device).
//   run(update, hyper): runs one update's kernels with that hyper; returns the threads that ran.
template <class Stats, class Run>
Outcome run_updates(const std::vector<Update>& updates, const Guard& guard, const Stats& stats,
                    const Run& run) {
    Outcome outcome;
    outcome.nonfinite = guard.nonfinite;
    bool finite = guard.all_finite;
    double sum_squares = guard.sum_squares;
    if (!guard.stats_given && (guard.check_finite() || guard.clip)) {
        sum_squares = 0.0;
        for (const Update& u : updates) {
            for (const Dtype dtype : {Dtype::f32, Dtype::f64}) {
                const std::vector<TensorRef>& list = dtype == Dtype::f32 ? u.f32 : u.f64;
                if (!list.empty())
                    finite = stats(list, dtype, guard.clip ? &sum_squares : nullptr) && finite;
            }
            for (const LowpList& l : u.lowp)
                finite = stats(l.tensors, l.kind.grad, guard.clip ? &sum_squares : nullptr) && finite;
        }
    }
    double clip = 1.0;
    if (guard.clip) {
        outcome.has_norm = true;
        outcome.norm = guard.norm(sum_squares);
        clip = guard.clip_coefficient(outcome.norm);
    }
    if (guard.check_finite() && !finite) {
        outcome.ran = true;
        return outcome;
    }
    for (const Update& u : updates) {
        Hyper h = u.hyper;
        h.grad_scale *= clip;
        h.clip_value = guard.clip_value;
        const int threads = run(u, h);
        if (threads > outcome.threads) outcome.threads = threads;
    }
    outcome.ran = true;
    outcome.applied = true;
    return outcome;
}

}  // namespace fastmomentum::bindings
