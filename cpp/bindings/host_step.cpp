#include "host_step.hpp"

#include <algorithm>
#include <optional>
#include <vector>

#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/threads.hpp"
#include "host_arrays.hpp"

namespace fastmomentum::bindings {
namespace {

// Each block's sum of squares, for the norm. One per Python thread that steps, grown as needed
// and kept: a step in steady state allocates nothing. (Filled and summed with no Python code in
// between, so a step on the same thread cannot interleave.)
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

// One dtype's statistics pass (run_updates' `stats`), on the active ISA's kernels.
bool measure_gradients(const KernelSet& kernels, const Launch& launch,
                       const std::vector<TensorRef>& list, Dtype dtype, double* sum_squares) {
    const GradStatsFn stats = dtype == Dtype::f64    ? kernels.stats_f64
                              : dtype == Dtype::bf16 ? kernels.stats_bf16
                              : dtype == Dtype::f16  ? kernels.stats_f16
                                                     : kernels.stats_f32;
    if (sum_squares == nullptr) return stats(list.data(), list.size(), nullptr, launch);
    const std::int64_t blocks = blocks_of(list);
    double* sums = block_sums(blocks).data();
    const bool finite = stats(list.data(), list.size(), sums, launch);
    for (std::int64_t b = 0; b < blocks; ++b) *sum_squares += sums[b];
    return finite;
}

std::int64_t elements_of(const Step& step) {
    std::int64_t elements = 0;
    for (const Update& u : step.updates) {
        for (const auto* list : {&u.f32, &u.f64})
            for (const TensorRef& t : *list) elements += t.size;
        for (const LowpList& l : u.lowp)
            for (const TensorRef& t : l.tensors) elements += t.size;
    }
    return elements;
}

}  // namespace

void run_on_host(const Step& step, const Guard& guard, Outcome& out) {
    const KernelSet& kernels = active_kernels();
    const Launch launch = current_launch();
    // Like NumPy, keep the GIL for a kernel shorter than releasing and re-taking it.
    std::optional<py::gil_scoped_release> release;
    if (elements_of(step) >= kReleaseGilElements) release.emplace();
    publish(out, run_updates(
        step.updates, guard,
        [&](const std::vector<TensorRef>& list, Dtype dtype, double* sum_squares) {
            return measure_gradients(kernels, launch, list, dtype, sum_squares);
        },
        [&](const Update& u, const Hyper& h) {
            int threads = 0;
            if (!u.f32.empty()) threads = kernels.f32(u.f32.data(), u.f32.size(), h, launch);
            if (!u.f64.empty())
                threads = std::max(threads, kernels.f64(u.f64.data(), u.f64.size(), h, launch));
            for (const LowpList& l : u.lowp)
                threads = std::max(threads, kernels.lowp(l.tensors.data(), l.tensors.size(), h,
                                                         l.kind, launch));
            return threads;
        }));
}

GradStats measure_on_host(const Step& step) {
    const KernelSet& kernels = active_kernels();
    const Launch launch = current_launch();
    std::optional<py::gil_scoped_release> release;
    if (elements_of(step) >= kReleaseGilElements) release.emplace();
    GradStats out{true, 0.0};
    for (const Update& u : step.updates) {
        for (const Dtype dtype : {Dtype::f32, Dtype::f64}) {
            const std::vector<TensorRef>& list = dtype == Dtype::f32 ? u.f32 : u.f64;
            if (!list.empty())
                out.finite = measure_gradients(kernels, launch, list, dtype, &out.sum_squares) &&
                             out.finite;
        }
        for (const LowpList& l : u.lowp)
            out.finite = measure_gradients(kernels, launch, l.tensors, l.kind.grad,
                                           &out.sum_squares) && out.finite;
    }
    return out;
}

}  // namespace fastmomentum::bindings
