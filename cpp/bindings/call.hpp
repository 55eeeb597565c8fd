#pragma once
// One validated update of a list of arrays (a "call"), independent of where it runs: the argument
// rules of a step (list lengths, buffers, first_step, indices) and the merging of adjacent
// tensors. Shared by the host module (_core, arrays checked by check_array) and the CUDA module
// (_cuda, device arrays), so both accept and reject exactly the same calls.
//
// An array type A has: `void* data; std::int64_t size; std::size_t nbytes; Dtype dtype;`, and a
// `check_matches(const A& other, const A& ref)` found by name lookup.

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "arrays.hpp"
#include "fastmomentum/hyper.hpp"
#include "fastmomentum/kernels.hpp"
#include "hyper_args.hpp"

namespace fastmomentum::bindings {

// One call's hyper-parameters and its tensors, by dtype.
struct Call {
    Hyper hyper;
    std::vector<TensorRef> f32, f64;

    // Appends one tensor (buffer may be null). A tensor whose param, grad and buffer each start
    // where the previous tensor's end (views into one flat storage) extends that tensor instead:
    // one long span costs the kernel less than many short ones, and the update is element-wise.
    template <class A>
    void append(const A& param, const A& grad, const A* buffer, bool first_step) {
        std::vector<TensorRef>& list = param.dtype == Dtype::f32 ? f32 : f64;
        void* buf = buffer ? buffer->data : nullptr;
        if (!list.empty()) {
            TensorRef& last = list.back();
            const std::size_t nbytes =
                static_cast<std::size_t>(last.size) * (param.dtype == Dtype::f32 ? 4 : 8);
            if (last.first_step == first_step && continues(param.data, last.param, nbytes) &&
                continues(grad.data, last.grad, nbytes) &&
                (buf == nullptr ? last.buf == nullptr
                                : last.buf != nullptr && continues(buf, last.buf, nbytes))) {
                last.size += param.size;
                return;
            }
        }
        list.push_back(TensorRef{param.data, grad.data, buf, param.size, first_step});
    }

private:
    static bool continues(const void* next, const void* start, std::size_t nbytes) {
        return static_cast<const char*>(start) + nbytes == next;
    }
};

// Checks the coefficients for the dtypes the call has.
inline void check_call_coefficients(const Call& call) {
    if (!call.f32.empty()) check_coefficients(call.hyper, Dtype::f32);
    if (!call.f64.empty()) check_coefficients(call.hyper, Dtype::f64);
}

// What running a step's calls did.
struct Outcome {
    bool applied = true;  // false: a gradient was not finite and nothing was written
    double norm = 0.0;    // the global 2-norm of the (unscaled) gradients, when clipping
    int threads = 0;      // the most threads any kernel ran
};

// The Python value of an outcome: (applied, norm or None, threads).
inline py::tuple to_python(const Outcome& outcome, const Guard& guard) {
    return py::make_tuple(outcome.applied,
                          guard.clip ? py::object(py::float_(outcome.norm)) : py::object(py::none()),
                          outcome.threads);
}

namespace call_args {

inline void check_length(const Items& items, const char* name, std::size_t n) {
    if (items.size() != n)
        throw py::value_error(std::string(name) + " has " + std::to_string(items.size()) +
                              " arrays but params has " + std::to_string(n));
}

// first_step: one bool for every array, or a list of bools as long as params.
class FirstStep {
public:
    FirstStep(py::handle obj, std::size_t n) {
        if (!py::isinstance<py::list>(obj) && !py::isinstance<py::tuple>(obj)) {
            all_ = flag(obj, "first_step");
            return;
        }
        const Items flags(obj, "first_step");
        if (flags.size() != n)
            throw py::value_error("first_step has " + std::to_string(flags.size()) +
                                  " entries but params has " + std::to_string(n));
        each_.resize(n);
        for (std::size_t i = 0; i < n; ++i)
            each_[i] = flag(flags[i], ("first_step[" + std::to_string(i) + "]").c_str());
    }
    bool operator[](std::size_t i) const { return each_.empty() ? all_ : each_[i]; }

private:
    bool all_ = false;
    std::vector<bool> each_;
};

// How array i of a call is numbered in messages: i, or the caller's number for it.
class Indices {
public:
    Indices(py::handle obj, std::size_t n) {
        if (obj.is_none()) return;
        const Items items(obj, "indices");
        if (items.size() != n) throw py::value_error("indices must have one entry per parameter");
        each_.resize(n);
        for (std::size_t i = 0; i < n; ++i) each_[i] = items[i].cast<std::size_t>();
    }
    std::size_t operator[](std::size_t i) const { return each_.empty() ? i : each_[i]; }

private:
    std::vector<std::size_t> each_;
};

}  // namespace call_args

// Checks params, grads and (when not None) buffers as one call's lists with `check(obj, list,
// index, access)`, appends every checked array to `arrays` (for the overlap check across calls)
// and returns the call. `indices` numbers the arrays in messages (None: 0, 1, ...); `first_step`
// is one bool or one per array.
template <class A, class Check>
Call prepare_call(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
                  const Hyper& h, py::handle indices, std::vector<A>& arrays, const Check& check) {
    const char* b_name = buffers_name(h.style);
    const Items p_items(params, "params");
    const std::size_t n = p_items.size();
    const Items g_items(grads, "grads");
    call_args::check_length(g_items, "grads", n);
    const bool has_buffers = !buffers.is_none();
    if (!has_buffers && h.momentum != 0.0)
        throw py::value_error(std::string(b_name) + " is required when " + momentum_name(h.style) +
                              " != 0 (one array per parameter, e.g. np.zeros_like(p))");
    const Items b_items = has_buffers ? Items(buffers, b_name) : Items();
    if (has_buffers) call_args::check_length(b_items, b_name, n);
    const call_args::FirstStep first(first_step, n);
    const call_args::Indices index(indices, n);

    // Every array checked before any is written: an error leaves all of them untouched.
    const std::size_t start = arrays.size();
    const std::size_t stride = has_buffers ? 3 : 2;
    arrays.reserve(start + stride * n);
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t p = arrays.size();  // an index: appending may move the elements
        arrays.push_back(check(p_items[i], "params", index[i], Access::write));
        arrays.push_back(check(g_items[i], "grads", index[i], Access::read));
        check_matches(arrays.back(), arrays[p]);
        if (has_buffers) {
            arrays.push_back(check(b_items[i], b_name, index[i], Access::write));
            check_matches(arrays.back(), arrays[p]);
        }
    }

    Call call{h, {}, {}};
    const bool use_buffers = h.momentum != 0.0;  // buffers given with momentum 0 are left alone
    for (std::size_t i = 0; i < n; ++i) {
        const A* a = &arrays[start + stride * i];
        call.append(a[0], a[1], use_buffers ? &a[2] : nullptr, first[i]);
    }
    check_call_coefficients(call);
    return call;
}

// The calls of sgd_steps: `calls` is a list of tuples of sgd_step's 13 arguments plus `indices`.
// Every call's arrays are checked (and appended to `arrays`) before any is written.
inline constexpr std::size_t kCallFields = 14;

template <class A, class Check>
std::vector<Call> prepare_calls(py::handle calls, const Guard& guard, std::vector<A>& arrays,
                                const Check& check) {
    std::vector<Call> prepared;
    const Items items(calls, "calls");
    for (std::size_t i = 0; i < items.size(); ++i) {
        const py::handle item = items[i];
        if (!py::isinstance<py::tuple>(item) || py::len(item) != kCallFields)
            throw py::type_error("each call must be a tuple of " + std::to_string(kCallFields) +
                                 " fields (sgd_step's arguments, then indices)");
        const auto f = py::reinterpret_borrow<py::tuple>(item);
        Hyper h = parse_hyper(f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12]);
        h.grad_scale = guard.grad_scale();
        prepared.push_back(prepare_call(f[0], f[1], f[2], f[3], h, f[13], arrays, check));
    }
    return prepared;
}

// Runs validated calls under their guard, wherever the kernels run: the statistics pass over
// every gradient first when the guard asks for one, then the updates unless that pass found a
// non-finite gradient. The calls' hypers must carry grad_scale = 1 / guard.loss_scale.
//   stats(list, dtype, sum_squares): whether every gradient of one dtype's list is finite; when
//     sum_squares is not null, also adds their kNormBlock blocks' sums of squares to it, block
//     after block (calls in order, f32 before f64: the same sum on every device).
//   update(call, hyper): runs one call's kernels with that hyper; returns the threads that ran.
template <class Stats, class Update>
Outcome run_calls(const Call* calls, std::size_t count, const Guard& guard, const Stats& stats,
                  const Update& update) {
    Outcome outcome;
    double clip = 1.0;
    if (guard.check_finite || guard.clip) {
        bool finite = true;
        double sum_squares = 0.0;
        for (std::size_t i = 0; i < count; ++i)
            for (const Dtype dtype : {Dtype::f32, Dtype::f64}) {
                const std::vector<TensorRef>& list = dtype == Dtype::f32 ? calls[i].f32 : calls[i].f64;
                if (!list.empty())
                    finite = stats(list, dtype, guard.clip ? &sum_squares : nullptr) && finite;
            }
        if (guard.clip) {
            outcome.norm = guard.norm(sum_squares);
            clip = guard.clip_coefficient(outcome.norm);
        }
        if (guard.check_finite && !finite) {
            outcome.applied = false;
            return outcome;
        }
    }
    for (std::size_t i = 0; i < count; ++i) {
        Hyper h = calls[i].hyper;
        h.grad_scale *= clip;
        const int threads = update(calls[i], h);
        if (threads > outcome.threads) outcome.threads = threads;
    }
    return outcome;
}

}  // namespace fastmomentum::bindings
