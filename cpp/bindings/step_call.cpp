#include "step_call.hpp"

// The rules used on the host (the clipping coefficient).
#define FM_ISA host
#include "fastmomentum/rules.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/threads.hpp"
#include "hyper_args.hpp"

namespace fastmomentum::bindings {
namespace {

void check_length(const Items& items, const char* name, std::size_t n) {
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

bool continues(const void* next, const void* start, std::size_t nbytes) {
    return static_cast<const char*>(start) + nbytes == next;
}

}  // namespace

void Call::append(const CheckedArray& param, const CheckedArray& grad, const CheckedArray* buffer,
                  bool first_step) {
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

Call prepare(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             const Hyper& h, py::handle indices, std::vector<CheckedArray>& arrays) {
    const char* b_name = buffers_name(h.style);
    const Items p_items(params, "params");
    const std::size_t n = p_items.size();
    const Items g_items(grads, "grads");
    check_length(g_items, "grads", n);
    const bool has_buffers = !buffers.is_none();
    if (!has_buffers && h.momentum != 0.0)
        throw py::value_error(std::string(b_name) + " is required when " + momentum_name(h.style) +
                              " != 0 (one array per parameter, e.g. np.zeros_like(p))");
    const Items b_items = has_buffers ? Items(buffers, b_name) : Items();
    if (has_buffers) check_length(b_items, b_name, n);
    const FirstStep first(first_step, n);
    const Indices index(indices, n);

    // Every array checked before any is written: an error leaves all of them untouched.
    const std::size_t start = arrays.size();
    const std::size_t stride = has_buffers ? 3 : 2;
    arrays.reserve(start + stride * n);
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t p = arrays.size();  // an index: appending may move the elements
        arrays.push_back(check_array(p_items[i], "params", index[i], Access::write));
        arrays.push_back(check_array(g_items[i], "grads", index[i], Access::read));
        check_matches(arrays.back(), arrays[p]);
        if (has_buffers) {
            arrays.push_back(check_array(b_items[i], b_name, index[i], Access::write));
            check_matches(arrays.back(), arrays[p]);
        }
    }

    Call call{h, {}, {}};
    const bool use_buffers = h.momentum != 0.0;  // buffers given with momentum 0 are left alone
    for (std::size_t i = 0; i < n; ++i) {
        const CheckedArray* a = &arrays[start + stride * i];
        call.append(a[0], a[1], use_buffers ? &a[2] : nullptr, first[i]);
    }
    check_call_coefficients(call);
    return call;
}

void check_call_coefficients(const Call& call) {
    if (!call.f32.empty()) check_coefficients(call.hyper, Dtype::f32);
    if (!call.f64.empty()) check_coefficients(call.hyper, Dtype::f64);
}

py::tuple to_python(const Outcome& outcome, const Guard& guard) {
    return py::make_tuple(outcome.applied,
                          guard.clip ? py::object(py::float_(outcome.norm)) : py::object(py::none()),
                          outcome.threads);
}

namespace {

// Each block's sum of squares, for the norm. One per Python thread that steps, grown as needed
// and kept: a step in steady state allocates nothing.
std::vector<double>& block_sums(std::int64_t blocks) {
    thread_local std::vector<double> sums;
    if (sums.size() < static_cast<std::size_t>(blocks)) sums.resize(static_cast<std::size_t>(blocks));
    return sums;
}

std::int64_t blocks_of(const std::vector<TensorRef>& tensors) {
    std::int64_t total = 0;
    for (const TensorRef& t : tensors) total += t.size;
    return (total + kNormBlock - 1) / kNormBlock;
}

// The statistics pass over every gradient of the calls: whether all are finite, and (when
// clipping) the sum of their squares, added block after block in call order, f32 before f64.
bool measure_gradients(const KernelSet& kernels, const Launch& launch, const Call* calls,
                std::size_t count, bool norm, double& sum_squares) {
    bool finite = true;
    sum_squares = 0.0;
    for (std::size_t i = 0; i < count; ++i) {
        for (const bool f32 : {true, false}) {
            const std::vector<TensorRef>& list = f32 ? calls[i].f32 : calls[i].f64;
            if (list.empty()) continue;
            const GradStatsFn stats = f32 ? kernels.stats_f32 : kernels.stats_f64;
            if (!norm) {
                finite = stats(list.data(), list.size(), nullptr, launch) && finite;
                continue;
            }
            const std::int64_t blocks = blocks_of(list);
            double* sums = block_sums(blocks).data();
            finite = stats(list.data(), list.size(), sums, launch) && finite;
            for (std::int64_t b = 0; b < blocks; ++b) sum_squares += sums[b];
        }
    }
    return finite;
}

}  // namespace

Outcome run(const Call* calls, std::size_t count, const Guard& guard) {
    const KernelSet& kernels = active_kernels();
    const Launch launch = current_launch();
    std::int64_t elements = 0;
    for (std::size_t i = 0; i < count; ++i)
        for (const auto* list : {&calls[i].f32, &calls[i].f64})
            for (const TensorRef& t : *list) elements += t.size;
    // Like NumPy, keep the GIL for a kernel shorter than releasing and re-taking it.
    std::optional<py::gil_scoped_release> release;
    if (elements >= kReleaseGilElements) release.emplace();

    Outcome outcome;
    double clip = 1.0;
    if (guard.check_finite || guard.clip) {
        double sum_squares = 0.0;
        const bool finite = measure_gradients(kernels, launch, calls, count, guard.clip, sum_squares);
        if (guard.clip) {
            outcome.norm = std::sqrt(sum_squares) / guard.loss_scale;
            clip = rules::clip_coefficient(guard.max_norm, outcome.norm);
        }
        if (guard.check_finite && !finite) {
            outcome.applied = false;
            return outcome;
        }
    }
    for (std::size_t i = 0; i < count; ++i) {
        Hyper h = calls[i].hyper;
        h.grad_scale *= clip;
        const Call& c = calls[i];
        if (!c.f32.empty())
            outcome.threads = std::max(outcome.threads, kernels.f32(c.f32.data(), c.f32.size(), h, launch));
        if (!c.f64.empty())
            outcome.threads = std::max(outcome.threads, kernels.f64(c.f64.data(), c.f64.size(), h, launch));
    }
    return outcome;
}

}  // namespace fastmomentum::bindings
