#pragma once
// The float32 / float64 update loop over one tensor's span, shared by the exact kernels
// (sgd_kernels.cpp) and the general path of the low-precision kernels (lowp_kernels.cpp), which
// runs it on blocks widened to float32. Included inside fastmomentum::<FM_ISA> with internal
// linkage, like partition.hpp, so no two ISA objects share a symbol.

#include <cstdint>

#include "fastmomentum/kernels.hpp"
#include "fastmomentum/rules.hpp"  // (which stops a build without FM_ISA)

namespace fastmomentum::FM_ISA {
namespace {

using std::int64_t;

// The inner loop: a plain loop over one tensor's [lo, hi) that the compiler vectorises for this
// ISA. The variant is a set of template parameters, so the loop body has no branches. `k` is taken
// by value so the compiler knows the stores cannot alias it and keeps the coefficients in
// registers; each element is loaded once into locals and stored once.
template <class T, Form F, bool Nesterov, Decay D, bool ScaleGrad>
void update_span(const TensorRef& t, int64_t lo, int64_t hi, const Coeffs<T> k) {
    T* __restrict p = static_cast<T*>(t.param) + lo;
    const T* __restrict g = static_cast<const T*>(t.grad) + lo;
    const int64_t n = hi - lo;
    if constexpr (F == Form::plain) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
            T param = p[i], no_buffer{};
            rules::update<T, F, Nesterov, D, ScaleGrad>(param, no_buffer, g[i], k);
            p[i] = param;
        }
    } else {
        T* __restrict b = static_cast<T*>(t.buf) + lo;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
            T param = p[i], buffer = b[i];
            rules::update<T, F, Nesterov, D, ScaleGrad>(param, buffer, g[i], k);
            p[i] = param;
            b[i] = buffer;
        }
    }
}

template <class T>
using SpanFn = void (*)(const TensorRef&, int64_t, int64_t, Coeffs<T>);

template <class T>
SpanFn<T> pick(Form f, bool nesterov, Decay d, bool scale_grad) {
    return rules::pick_variant(f, nesterov, d, scale_grad, [](auto F, auto N, auto D, auto S) {
        return &update_span<T, decltype(F)::value, decltype(N)::value, decltype(D)::value,
                            decltype(S)::value>;
    });
}

}  // namespace
}  // namespace fastmomentum::FM_ISA
