#include "step_call.hpp"

#include <algorithm>
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

int run(const Call* calls, std::size_t count) {
    const KernelSet& kernels = active_kernels();
    const Launch launch = current_launch();
    std::int64_t elements = 0;
    for (std::size_t i = 0; i < count; ++i)
        for (const auto* list : {&calls[i].f32, &calls[i].f64})
            for (const TensorRef& t : *list) elements += t.size;
    // Like NumPy, keep the GIL for a kernel shorter than releasing and re-taking it.
    std::optional<py::gil_scoped_release> release;
    if (elements >= kReleaseGilElements) release.emplace();
    int threads = 0;
    for (std::size_t i = 0; i < count; ++i) {
        const Call& c = calls[i];
        if (!c.f32.empty())
            threads = std::max(threads, kernels.f32(c.f32.data(), c.f32.size(), c.hyper, launch));
        if (!c.f64.empty())
            threads = std::max(threads, kernels.f64(c.f64.data(), c.f64.size(), c.hyper, launch));
    }
    return threads;
}

}  // namespace fastmomentum::bindings
