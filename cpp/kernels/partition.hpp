#pragma once
// How a kernel object splits the work of one call across threads: all tensors of a call seen as
// one concatenated element range, cut evenly across the threads of ONE parallel region; each
// thread walks the tensors that overlap its part. Included by each per-ISA kernel source (the
// update, the bandwidth probe) inside fastmomentum::<FM_ISA>, with internal linkage, so no two ISA
// objects share a symbol.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fastmomentum/kernels.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FM_ISA
#error "Define FM_ISA (the instruction-set namespace) first."
#endif

namespace fastmomentum::FM_ISA {
namespace {

using std::int64_t;

// Start of part `part` of `parts` in [0, total): floor(total * part / parts), without overflow.
int64_t split_point(int64_t total, int parts, int part) {
    return total / parts * part + total % parts * part / parts;
}

// Runs body(lo, hi) over [0, total) units of `unit_bytes` bytes (elements, or blocks of them),
// split evenly across at most launch.threads threads of ONE parallel region, and no more than one
// thread per launch.grain_bytes (below that, opening a region costs more than it saves). Returns
// the number of threads that ran, 0 when total is 0.
template <class Body>
int for_each_part(int64_t total, int64_t unit_bytes, const Launch& launch, const Body& body) {
    if (total == 0) return 0;
    const int64_t grain = std::max<int64_t>(1, launch.grain_bytes / unit_bytes);
    const int64_t useful = std::max<int64_t>(1, total / grain);
    const int threads = static_cast<int>(std::min<int64_t>(launch.threads, useful));
#ifdef _OPENMP
    if (threads > 1) {
        int ran = 1;
#pragma omp parallel num_threads(threads)
        {
            const int parts = omp_get_num_threads();
            const int part = omp_get_thread_num();
            if (part == 0) ran = parts;
            body(split_point(total, parts, part), split_point(total, parts, part + 1));
        }
        return ran;
    }
#endif
    body(int64_t{0}, total);
    return 1;
}

int64_t total_size(const TensorRef* tensors, std::size_t count) {
    int64_t total = 0;
    for (std::size_t i = 0; i < count; ++i) total += tensors[i].size;
    return total;
}

// Calls span(tensor, a, e) for the part [a, e) of each tensor that overlaps [lo, hi) of the
// concatenated range.
template <class Span>
void for_each_span(const TensorRef* tensors, std::size_t count, int64_t lo, int64_t hi,
                   const Span& span) {
    int64_t offset = 0;  // of tensor i in the concatenated range
    for (std::size_t i = 0; i < count && offset < hi; ++i) {
        const TensorRef& t = tensors[i];
        const int64_t a = std::max(lo, offset) - offset;
        const int64_t e = std::min(hi, offset + t.size) - offset;
        if (a < e) span(t, a, e);
        offset += t.size;
    }
}

}  // namespace
}  // namespace fastmomentum::FM_ISA
