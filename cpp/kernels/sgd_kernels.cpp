// The fused momentum-SGD kernels. This one source is compiled once per ISA (CMake passes
// -DFM_ISA=<name> and that ISA's flags) into namespace fastmomentum::<isa>; the helpers here have
// internal linkage and the rules live in fastmomentum::rules::<isa>, so no two ISA objects share a
// symbol (cmake/check_isa_symbols.cmake verifies it at build time).
//
// One call = one pass: each element of p, g (and b) is read once and p (and b) written once.
// All tensors of a call are seen as one concatenated element range that is split evenly across
// the threads of ONE parallel region; each thread walks the tensors that overlap its range. The
// update is element-wise, so the split cannot change any result bit.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "fastmomentum/kernels.hpp"
#include "fastmomentum/rules.hpp"
#include "lowp_kernels.hpp"
#include "partition.hpp"
#include "prefetch.hpp"
#include "update_span.hpp"

namespace fastmomentum::FM_ISA {
namespace {

using std::int64_t;

template <class T>
int sgd(const TensorRef* tensors, std::size_t count, const Hyper& h, const Launch& launch) {
    const Coeffs<T> k = rules::coeffs<T>(h);
    const Decay decay = rules::decay_of(h, k);
    const bool scale_grad = rules::scales_grad(k);
    const SpanFn<T> regular = pick<T>(rules::form_of(h, false), h.nesterov, decay, scale_grad);
    const SpanFn<T> first = pick<T>(rules::form_of(h, true), h.nesterov, decay, scale_grad);
    return for_each_part(total_size(tensors, count), sizeof(T), launch, [&](int64_t lo, int64_t hi) {
        for_each_span(tensors, count, lo, hi, [&](const TensorRef& t, int64_t a, int64_t e) {
            (t.first_step ? first : regular)(t, a, e, k);
        });
    });
}

// The guards' statistics (kernels.hpp, GradStatsFn). Gradients narrower than float32 are read
// widened, so their statistics are those of float32 gradients of the same values.

// Whether g[0, n) is all finite: one vectorised sum of rules::nonfinite_term, in any order.
template <class T>
bool all_finite(const T* __restrict g, int64_t n) {
    using Wide = decltype(rules::widen(T{}));
    // In chunks of 1 KiB, each summed in vectors; the chunk kPrefetchBytes ahead asked for first.
    constexpr int64_t kChunk = 1024 / sizeof(T);
    Wide sum = 0;
    for (int64_t start = 0; start < n; start += kChunk) {
        for (int64_t line = 0; line < kChunk; line += 64 / sizeof(T))
            prefetch_ahead(g + start + line);
        const int64_t end = std::min(n, start + kChunk);
#pragma omp simd reduction(+ : sum)
        for (int64_t i = start; i < end; ++i) sum += rules::nonfinite_term(rules::widen(g[i]));
    }
    return sum == Wide(0);
}

// Running sums of squares for one block of the norm: element `pos` of the concatenated range goes
// to lane pos % kLanes, each lane adds in element order, and the lanes combine pairwise. The order
// is written out, not left to the vectoriser, so every ISA gives the same bits (the lanes
// vectorise as they are). kNormBlock is a multiple of kLanes, so lanes restart with each block.
class BlockSum {
public:
    static constexpr int kLanes = kNormLanes;

    // Adds g[0, n), whose first element is at position `pos` of the concatenated range.
    template <class T>
    void add(const T* __restrict g, int64_t n, int64_t pos) {
        int64_t i = 0;
        for (; i < n && (pos + i) % kLanes != 0; ++i)
            lane_[(pos + i) % kLanes] += rules::square(rules::widen(g[i]));
        // The lanes in a local array for the whole loop, so that they stay in whole vector
        // registers: summed in the member, GCC split them into vectors of 8, 4, 2, 1 and 1
        // (five chains, two scalar) and the pass ran at a third of memory speed.
        alignas(64) double acc[kLanes];
        std::copy(lane_, lane_ + kLanes, acc);
        for (; i + kLanes <= n; i += kLanes) {
            prefetch_ahead(g + i);  // 16 elements: one line of float32, two of float64
            if constexpr (sizeof(T) * kLanes > 64) prefetch_ahead(g + i + 64 / sizeof(T));
#pragma omp simd
            for (int j = 0; j < kLanes; ++j) acc[j] += rules::square(rules::widen(g[i + j]));
        }
        std::copy(acc, acc + kLanes, lane_);
        for (int j = 0; i < n; ++i, ++j) lane_[j] += rules::square(rules::widen(g[i]));
    }

    // The block's sum; starts the next block.
    double take() {
        for (int width = kLanes / 2; width > 0; width /= 2)
            for (int j = 0; j < width; ++j) lane_[j] += lane_[j + width];
        const double sum = lane_[0];
        std::fill(lane_, lane_ + kLanes, 0.0);
        return sum;
    }

private:
    double lane_[kLanes] = {};
};
static_assert(kNormBlock % BlockSum::kLanes == 0, "blocks must restart the lanes");

// The blocks are cut from the tensors' concatenated range, not from each tensor, so tensors that
// are adjacent in memory (merged into one span by the bindings) give the same sums as separate
// ones: the norm depends only on the gradients' values and order.
template <class T>
bool grad_stats(const TensorRef* tensors, std::size_t count, double* block_sums,
                const Launch& launch) {
    const int64_t total = total_size(tensors, count);
    std::atomic<bool> finite{true};  // parts only ever clear it
    if (block_sums == nullptr) {
        for_each_part(total, sizeof(T), launch, [&](int64_t lo, int64_t hi) {
            bool ok = true;
            for_each_span(tensors, count, lo, hi, [&](const TensorRef& t, int64_t a, int64_t e) {
                ok = ok && all_finite(static_cast<const T*>(t.grad) + a, e - a);
            });
            if (!ok) finite.store(false, std::memory_order_relaxed);
        });
        return finite.load();
    }
    const int64_t blocks = (total + kNormBlock - 1) / kNormBlock;
    for_each_part(blocks, kNormBlock * int64_t{sizeof(T)}, launch, [&](int64_t lo, int64_t hi) {
        BlockSum sum;
        bool ok = true;
        int64_t pos = lo * kNormBlock;  // in the concatenated range
        for_each_span(tensors, count, pos, std::min(hi * kNormBlock, total),
                      [&](const TensorRef& t, int64_t a, int64_t e) {
            const T* g = static_cast<const T*>(t.grad);
            while (a < e) {  // the span, cut at block ends
                const int64_t block_end = std::min(total, (pos / kNormBlock + 1) * kNormBlock);
                const int64_t n = std::min(e - a, block_end - pos);
                sum.add(g + a, n, pos);
                a += n;
                pos += n;
                if (pos == block_end) {
                    const double block = sum.take();
                    block_sums[(pos - 1) / kNormBlock] = block;
                    ok = ok && std::isfinite(block);
                }
            }
        });
        if (!ok) finite.store(false, std::memory_order_relaxed);
    });
    if (finite.load()) return true;
    // A finite sum has only finite terms; an infinite one may be float64 overflow of finite ones.
    return grad_stats<T>(tensors, count, nullptr, launch);
}

}  // namespace

#define FM_STR2(x) #x
#define FM_STR(x) FM_STR2(x)
KernelSet kernel_set() {
    return KernelSet{FM_STR(FM_ISA),       &sgd<float>,         &sgd<double>,
                     &sgd_lowp,            &grad_stats<float>,  &grad_stats<double>,
                     &grad_stats<bf16>,    &grad_stats<f16>};
}

}  // namespace fastmomentum::FM_ISA
