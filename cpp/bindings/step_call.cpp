#include "step_call.hpp"

#include <algorithm>
#include <cstdint>
#include <optional>

#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/threads.hpp"
#include "hyper_args.hpp"

namespace fastmomentum::bindings {

Call prepare(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             const Hyper& h, py::handle indices, std::vector<CheckedArray>& arrays) {
    return prepare_call(params, grads, buffers, first_step, h, indices, arrays, &check_array);
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

// One dtype's statistics pass (run_calls' `stats`), on the active ISA's kernels.
bool measure_gradients(const KernelSet& kernels, const Launch& launch,
                       const std::vector<TensorRef>& list, Dtype dtype, double* sum_squares) {
    const GradStatsFn stats = dtype == Dtype::f32 ? kernels.stats_f32 : kernels.stats_f64;
    if (sum_squares == nullptr) return stats(list.data(), list.size(), nullptr, launch);
    const std::int64_t blocks = blocks_of(list);
    double* sums = block_sums(blocks).data();
    const bool finite = stats(list.data(), list.size(), sums, launch);
    for (std::int64_t b = 0; b < blocks; ++b) *sum_squares += sums[b];
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
    return run_calls(
        calls, count, guard,
        [&](const std::vector<TensorRef>& list, Dtype dtype, double* sum_squares) {
            return measure_gradients(kernels, launch, list, dtype, sum_squares);
        },
        [&](const Call& c, const Hyper& h) {
            int threads = 0;
            if (!c.f32.empty()) threads = kernels.f32(c.f32.data(), c.f32.size(), h, launch);
            if (!c.f64.empty())
                threads = std::max(threads, kernels.f64(c.f64.data(), c.f64.size(), h, launch));
            return threads;
        });
}

}  // namespace fastmomentum::bindings
