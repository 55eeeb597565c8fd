// The bandwidth probe (fastmomentum/probe.hpp), compiled once per ISA like the update kernels and
// split across threads the same way (partition.hpp), so that its time is a fair floor for theirs.

#include <cstdint>

#include "fastmomentum/probe.hpp"
#include "partition.hpp"

namespace fastmomentum::FM_ISA {
namespace {

template <class T>
void probe_span(const TensorRef& t, int64_t lo, int64_t hi, const T s) {
    T* __restrict p = static_cast<T*>(t.param) + lo;
    const T* __restrict g = static_cast<const T*>(t.grad) + lo;
    T* __restrict b = static_cast<T*>(t.buf) + lo;
    const int64_t n = hi - lo;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        const T sg = s * g[i];
        p[i] = p[i] + sg;
        b[i] = b[i] + sg;
    }
}

template <class T>
int probe(const TensorRef* tensors, std::size_t count, double scale, const Launch& launch) {
    const T s = static_cast<T>(scale);
    return for_each_part(total_size(tensors, count), sizeof(T), launch, [&](int64_t lo, int64_t hi) {
        for_each_span(tensors, count, lo, hi, [&](const TensorRef& t, int64_t a, int64_t e) {
            probe_span<T>(t, a, e, s);
        });
    });
}

}  // namespace

#define FM_STR2(x) #x
#define FM_STR(x) FM_STR2(x)
ProbeSet probe_set() { return ProbeSet{FM_STR(FM_ISA), &probe<float>, &probe<double>}; }

}  // namespace fastmomentum::FM_ISA
