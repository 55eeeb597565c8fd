#pragma once
// float16 conversions by the F16C instructions, 8 values at a time, for the kernels of the ISAs
// that have them (avx2, avx512: CMake adds -mf16c and dispatch checks the CPU's F16C bit). They
// give rules::widen's and rules::narrow's bits (test_lowp_conversions runs every 16-bit value
// and every rounding boundary on each ISA): widening is exact either way, and narrowing rounds to
// nearest even, with NaN made rules::narrow's quiet NaN first, since the instruction keeps
// payload bits the rule does not. The compilers do not vectorise rules::narrow's float16 case
// well, nor do they turn float16 conversions into these instructions by themselves.
// Included inside fastmomentum::<FM_ISA> with internal linkage.

#if defined(__F16C__) || (defined(_MSC_VER) && defined(__AVX2__))
#define FM_HAVE_F16C 1
#include <immintrin.h>

#include <cstdint>

#include "fastmomentum/storage.hpp"

#ifndef FM_ISA
#error "Define FM_ISA (the instruction-set namespace) first."
#endif

namespace fastmomentum::FM_ISA {
namespace {

// out[0, 8) = widen(in[0, 8)).
inline void widen8(const f16* in, float* out) {
    _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in))));
}

// out[0, 8) = narrow(in[0, 8)).
inline void narrow8(const float* in, f16* out) {
    const __m256 x = _mm256_loadu_ps(in);
    const __m256 sign = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN)));
    const __m256 quiet = _mm256_or_ps(sign, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)));
    const __m256 y = _mm256_blendv_ps(x, quiet, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                     _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

}  // namespace
}  // namespace fastmomentum::FM_ISA
#endif
