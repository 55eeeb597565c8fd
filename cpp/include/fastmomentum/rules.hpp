#pragma once
// THE per-element update math of fastmomentum. Every kernel (each CPU ISA object, and the CUDA
// kernels) includes this header and calls `update`; no formula is written anywhere else.
//
// Exactness contract (tested bitwise):
//   * hyper-parameters are combined in double on the host (1 - tau, lr * wd, s * wd) and rounded
//     ONCE to the array's dtype (`coeffs`);
//   * each element then goes through the operations below, in the order written, each one rounded
//     in the array's dtype. Kernels are compiled with FMA contraction OFF, so every ISA (and any
//     thread count) produces the same bits as a plain NumPy evaluation of the same expressions.
//
// ODR safety: the functions live in an inline namespace named after the ISA the including object
// is compiled for (FM_ISA), so each ISA's copy has its own mangled names and the linker can never
// substitute, say, the AVX-512 copy into the baseline path (cmake/check_isa_symbols.cmake checks).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastmomentum/hyper.hpp"
#include "fastmomentum/storage.hpp"

#ifndef FM_ISA
#error "Define FM_ISA (the instruction-set namespace, e.g. baseline, avx2, avx512, gpu) first."
#endif

#if defined(__CUDACC__)
#define FM_HOST_DEVICE __host__ __device__
#else
#define FM_HOST_DEVICE
#endif

namespace fastmomentum::rules {
inline namespace FM_ISA {

// The scale of decoupled weight decay: the lr, or the SGDW schedule multiplier.
FM_HOST_DEVICE inline double decay_scale(const Hyper& h) {
    return h.decay_mode == DecayMode::sgdw ? h.schedule_multiplier : h.lr;
}

// Hyper-parameters -> coefficients in the array's dtype (host side, once per call).
template <class T>
FM_HOST_DEVICE inline Coeffs<T> coeffs(const Hyper& h) {
    const bool ema = h.style == Style::ema;
    const double scale = decay_scale(h);
    return Coeffs<T>{
        static_cast<T>(h.lr),
        static_cast<T>(h.momentum),
        static_cast<T>(1.0 - (ema ? h.momentum : h.dampening)),
        static_cast<T>(h.weight_decay),
        static_cast<T>(1.0 - scale * h.weight_decay),
        static_cast<T>(scale),
        static_cast<T>(h.maximize ? -h.grad_scale : h.grad_scale),
        static_cast<T>(h.clip_value),
    };
}

// Which decay operation a call uses. A decay that cannot change p is skipped (as PyTorch skips
// weight_decay == 0), so an infinite parameter never turns into NaN through 0 * inf.
template <class T>
FM_HOST_DEVICE inline Decay decay_of(const Hyper& h, const Coeffs<T>& k) {
    if (h.decay_mode == DecayMode::coupled) return k.weight_decay != T(0) ? Decay::coupled : Decay::none;
    if (h.style == Style::keras)
        return k.weight_decay != T(0) && k.decay_scale != T(0) ? Decay::keras : Decay::none;
    return k.decay_keep != T(1) ? Decay::keep : Decay::none;
}

// Whether the gradient needs its factors: its scale (the sign for maximize, the loss scale and
// the clipping coefficient), its clipping to [-clip_value, clip_value] and 1 - dampening
// (1 - beta for ema). They are usually 1, infinity and 1, which change nothing, so
// `update<..., false>` skips them: a kernel that is compute-bound in cache then does two
// multiplications and two comparisons fewer per element.
template <class T>
FM_HOST_DEVICE inline bool scales_grad(const Coeffs<T>& k) {
    return k.grad_scale != T(1) || k.clip_value != static_cast<T>(HUGE_VAL) ||
           k.one_minus_dampening != T(1);
}

// Keras' clipvalue (ops.clip(g, -v, v)): g limited to [-v, v]; a NaN stays NaN (it compares
// false both ways), as in Keras.
template <class T>
FM_HOST_DEVICE inline T clipped(const T g, const T v) {
    return g < -v ? -v : (v < g ? v : g);
}

// Keras 3's decoupled decay, p - (p*wd)*scale, each operation rounded in the array's dtype. The
// bindings check with this same function that a call's coefficients cannot flip a sign.
template <class T>
FM_HOST_DEVICE inline T keras_decayed(const T p, const Coeffs<T>& k) {
    return p - p * k.weight_decay * k.decay_scale;
}

// Which buffer form a tensor uses this step. `first_step` matters only to the torch convention.
FM_HOST_DEVICE inline Form form_of(const Hyper& h, bool first_step) {
    if (h.momentum == 0.0) return Form::plain;
    if (h.style == Style::keras) return Form::keras;
    return first_step && h.style == Style::torch ? Form::torch_first : Form::torch;
}

// One element: p (parameter) and b (buffer / velocity) updated in place from gradient g.
// For Form::plain, b is not read or written. ScaleGrad: see scales_grad.
template <class T, Form F, bool Nesterov, Decay D, bool ScaleGrad>
FM_HOST_DEVICE inline void update(T& p, T& b, const T g, const Coeffs<T>& k) {
    T d = ScaleGrad ? clipped(k.grad_scale * g, k.clip_value) : g;  // unscaled, clipped,
                                                                     // sign flipped: first
    if constexpr (D == Decay::coupled) d = d + k.weight_decay * p;         // g + wd*p
    if constexpr (D == Decay::keep) p = p * k.decay_keep;                  // before the step
    if constexpr (D == Decay::keras) p = keras_decayed(p, k);

    if constexpr (F == Form::plain) {
        p = p - k.lr * d;
    } else if constexpr (F == Form::keras) {
        b = k.momentum * b - k.lr * d;                                      // v <- mu*v - lr*g
        if constexpr (Nesterov) p = p + (k.momentum * b - k.lr * d);
        else p = p + b;
    } else {
        if constexpr (F == Form::torch_first) b = d;                        // b <- g, step 1
        else b = k.momentum * b + (ScaleGrad ? k.one_minus_dampening * d : d);  // mu*b + (1-tau)*g
        if constexpr (Nesterov) p = p - k.lr * (d + k.momentum * b);
        else p = p - k.lr * b;
    }
}

// The runtime variant -> one template instantiation, once per call (never per element): returns
// make(form, nesterov, decay, scale_grad), each argument a std::integral_constant of the variant's
// value, for a `make` that returns, say, &kernel<T, decltype(form)::value, ...>. The plain form has
// no buffer, so no Nesterov. Host code only: the kernels of every ISA and of CUDA pick with it.
namespace variant {
template <Form F, bool N, Decay D, class Make>
auto with_scale(bool scale_grad, const Make& make) {
    using Fc = std::integral_constant<Form, F>;
    using Dc = std::integral_constant<Decay, D>;
    return scale_grad ? make(Fc{}, std::bool_constant<N>{}, Dc{}, std::true_type{})
                      : make(Fc{}, std::bool_constant<N>{}, Dc{}, std::false_type{});
}

template <Form F, bool N, class Make>
auto with_decay(Decay d, bool scale_grad, const Make& make) {
    switch (d) {
        case Decay::coupled: return with_scale<F, N, Decay::coupled>(scale_grad, make);
        case Decay::keep: return with_scale<F, N, Decay::keep>(scale_grad, make);
        case Decay::keras: return with_scale<F, N, Decay::keras>(scale_grad, make);
        case Decay::none: break;
    }
    return with_scale<F, N, Decay::none>(scale_grad, make);
}

template <Form F, class Make>
auto with_nesterov(bool nesterov, Decay d, bool scale_grad, const Make& make) {
    return nesterov ? with_decay<F, true>(d, scale_grad, make)
                    : with_decay<F, false>(d, scale_grad, make);
}
}  // namespace variant

template <class Make>
auto pick_variant(Form f, bool nesterov, Decay d, bool scale_grad, const Make& make) {
    switch (f) {
        case Form::torch_first: return variant::with_nesterov<Form::torch_first>(nesterov, d, scale_grad, make);
        case Form::torch: return variant::with_nesterov<Form::torch>(nesterov, d, scale_grad, make);
        case Form::keras: return variant::with_nesterov<Form::keras>(nesterov, d, scale_grad, make);
        case Form::plain: break;
    }
    return variant::with_decay<Form::plain, false>(d, scale_grad, make);
}

// ---------------------------------------------------------------------------------------------
// Storage conversions (README, "Low-precision state"). The update itself is always the float32
// formula above: a narrower stored value is widened to float32 exactly, updated, and narrowed
// back by one of the roundings below. Every function is exact integer or exactly-rounded float32
// arithmetic, so each ISA, thread count and the GPU give the same bits as the NumPy reference.
// They are written without branches: each case is computed and one is selected, so that the
// compilers vectorise the kernels' loops (a branch on a value's sign or range mispredicts on
// every other element, and stops the vectoriser).

FM_HOST_DEVICE inline std::uint32_t bits_of(const float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(x);
#else
    std::uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    return u;
#endif
}

FM_HOST_DEVICE inline float float_of(const std::uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float x;
    std::memcpy(&x, &u, sizeof x);
    return x;
#endif
}

// Widening: exact. (float and double are their own widening, for templates over storage.)
FM_HOST_DEVICE inline float widen(const float x) { return x; }
FM_HOST_DEVICE inline double widen(const double x) { return x; }
FM_HOST_DEVICE inline float widen(const bf16 h) { return float_of(std::uint32_t{h.bits} << 16); }
FM_HOST_DEVICE inline float widen(const f16 h) {
    // The exponent is rebiased by an integer addition; infinities and NaNs get a second rebias;
    // subnormals (exponent 0) become 2^-14 + m*2^-24 by the addition, minus 2^-14 in one exact
    // float32 subtraction.
    constexpr std::uint32_t kExponent = 0x7c00u << 13;
    const std::uint32_t shifted = (std::uint32_t{h.bits} & 0x7fffu) << 13;
    const std::uint32_t exponent = shifted & kExponent;
    const std::uint32_t normal = shifted + (112u << 23);
    const std::uint32_t special = normal + (112u << 23);
    const std::uint32_t subnormal = bits_of(float_of(normal + (1u << 23)) - float_of(113u << 23));
    const std::uint32_t o = exponent == kExponent ? special : exponent == 0 ? subnormal : normal;
    return float_of(o | ((std::uint32_t{h.bits} & 0x8000u) << 16));
}

// float32 storage narrows to itself (for templates over storage).
FM_HOST_DEVICE inline void narrow(const float x, float& out) { out = x; }

// Narrowing to nearest, ties to even: ml_dtypes' float32 -> bfloat16 and NumPy's float32 ->
// float16 (overflow to infinity, subnormals kept). A NaN stays a (quiet) NaN. The result is an
// out-parameter so that templates over the storage type pick the overload.
FM_HOST_DEVICE inline void narrow(const float x, bf16& out) {
    const std::uint32_t u = bits_of(x);
    const std::uint32_t nan = (u >> 16) | 0x40u;
    const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    out.bits = static_cast<std::uint16_t>(x != x ? nan : rounded);  // one vector compare for NaN
}

FM_HOST_DEVICE inline void narrow(const float x, f16& out) {
    const std::uint32_t u = bits_of(x);
    const std::uint32_t sign = u & 0x80000000u;
    const std::uint32_t a = u ^ sign;
    // |x| >= 65536, infinite or NaN: infinity, or a quiet NaN.
    const std::uint32_t special = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
    // Below float16's smallest normal, 2^-14: adding 0.5 puts float16's subnormal step, 2^-24,
    // at float32's last place; the float32 addition rounds to nearest even, and the bits above
    // 0.5 are the float16 bits.
    const std::uint32_t subnormal = bits_of(float_of(a) + 0.5f) - 0x3f000000u;
    // Normal: rebias, then round the 13 dropped bits to nearest even (a carry may give inf).
    const std::uint32_t normal = (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    const std::uint32_t o = a >= 0x47800000u ? special : a < 0x38800000u ? subnormal : normal;
    out.bits = static_cast<std::uint16_t>(o | (sign >> 16));
}

// Stochastic rounding with a random r in [0, 65536): the magnitude rounds away from zero with
// probability (distance to the lower neighbour) / (distance between the neighbours), so the
// rounding is exact on average and no update is lost for being small.
FM_HOST_DEVICE inline void narrow_stochastic(const float x, const std::uint32_t r, bf16& out) {
    const std::uint32_t u = bits_of(x);
    const std::uint32_t rounded = (u + r) >> 16;  // the dropped 16 bits decide
    const std::uint32_t nan = (u >> 16) | 0x40u;  // as narrow
    out.bits = static_cast<std::uint16_t>(x != x ? nan : rounded);
}

FM_HOST_DEVICE inline void narrow_stochastic(const float x, const std::uint32_t r, f16& out) {
    const std::uint32_t u = bits_of(x);
    const std::uint32_t a = u & 0x7fffffffu;
    // float16's step q at |x|: 2^(e-10) for an exponent e, 2^-24 among its subnormals. |x|/q
    // and (t + up)*q are products with powers of two, exact; so is y - t. (Clamped so that the
    // powers stay normal floats when |x| >= 65536, infinite or NaN, which round to nearest:
    // infinity, or NaN.)
    const std::int32_t e = static_cast<std::int32_t>(a >> 23) - 127;
    const std::int32_t clamped = e < 15 ? e : 15;
    const std::int32_t qe = clamped - 10 > -24 ? clamped - 10 : -24;
    const float y = float_of(a) * float_of(static_cast<std::uint32_t>(127 - qe) << 23);
    const float t = static_cast<float>(static_cast<std::int32_t>(y < 4096.0f ? y : 0.0f));
    // r < 2^16 converts through int32: x86 before AVX-512 converts no unsigned int to float.
    const float up = static_cast<float>(static_cast<std::int32_t>(r)) * 0x1p-16f < y - t ? 1.0f : 0.0f;
    f16 stochastic, nearest;
    narrow((t + up) * float_of(static_cast<std::uint32_t>(127 + qe) << 23), stochastic);
    narrow(x, nearest);
    out.bits = a < 0x47800000u
                   ? static_cast<std::uint16_t>(stochastic.bits | ((u >> 16) & 0x8000u))
                   : nearest.bits;
}

// The random numbers of stochastic rounding: counter-based, keyed by (seed, step, stream) and
// drawn for an element from its index alone, so they do not depend on the thread count, the ISA
// or the device, and a resumed run draws the same ones. mix64 is SplitMix64's output function.
FM_HOST_DEVICE inline std::uint64_t mix64(std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// One parameter's key in one step: stream is its index among the step's parameters.
FM_HOST_DEVICE inline std::uint64_t rounding_key(const std::uint64_t seed, const std::uint64_t step,
                                                 const std::uint64_t stream) {
    return mix64(mix64(mix64(seed) ^ step) ^ stream);
}

// The key of the elements whose index has these high 32 bits (constant over a block).
FM_HOST_DEVICE inline std::uint32_t index_key(const std::uint64_t key, const std::int64_t index) {
    return static_cast<std::uint32_t>(mix64(key ^ (static_cast<std::uint64_t>(index) >> 32)));
}

// The 16-bit random number of the element with these low 32 bits of its index: a 32-bit
// integer hash (Wellons' lowbias32, a bijection with full avalanche), its top half. 32-bit
// multiplications only, so every SIMD ISA vectorises it.
FM_HOST_DEVICE inline std::uint32_t random16(const std::uint32_t index_key, const std::uint32_t low) {
    std::uint32_t x = low ^ index_key;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x >> 16;
}

// Kahan-compensated parameters (optimi's method): the parameter's float32 value is p + c, which
// carries the bits that rounding p dropped; after the update x, p takes x to nearest and c what
// remains (x - p is exact in float32), itself rounded to p's dtype.
template <class S>
FM_HOST_DEVICE inline float compensated(const S p, const S c) {
    return widen(p) + widen(c);
}

template <class S>
FM_HOST_DEVICE inline void split_compensated(const float x, S& p, S& c) {
    narrow(x, p);
    narrow(x - widen(p), c);
}

// 8-bit buffers: blocks of kQuantBlock elements, each with a float32 scale. A code k in
// [-127, 127] stands for sign(k) * F(|k|) * scale, where F(m) is the magnitude m of an E4M3
// float (4 exponent bits, bias 7, 3 fraction bits, subnormals, no infinity or NaN): F(127) =
// 480 = kQuantMax. A floating-point code map keeps each value's relative error within 1/16
// across 2^17 of dynamic range below the block's largest, where a linear one would round every
// value under 1/254 of the largest to zero (FP8-LM keeps first moments in E4M3; bitsandbytes'
// dynamic map is similar in spirit).
inline constexpr float kQuantMax = 480.0f;

FM_HOST_DEVICE inline float quant_magnitude(const std::uint32_t m) {
    // m's exponent and fraction fields land on float32's by one shift, rebiased by an addition;
    // a subnormal m < 8 gets the exponent of 2^-6 one higher, which one exact subtraction of
    // 2^-6 takes away again (Sterbenz), leaving m * 2^-9.
    const std::uint32_t normal = (m << 20) + (120u << 23);
    const float subnormal = float_of(normal + (1u << 23)) - 0x1p-6f;
    return static_cast<std::int32_t>(m) < 8 ? subnormal : float_of(normal);
}

FM_HOST_DEVICE inline float dequantized(const std::int8_t k, const float scale) {
    // |k| as (k ^ sign) - sign in 32 bits: the compilers' own abs of an int8 widens the codes
    // twice (once for the magnitude, once for the sign), a quarter of the decoding's time.
    const std::int32_t code = k;
    const std::int32_t sign = code >> 31;  // 0 or -1
    const float magnitude = quant_magnitude(static_cast<std::uint32_t>((code ^ sign) - sign));
    // k's sign bit onto the magnitude: (k < 0 ? -F : F), negation being exact.
    return float_of(bits_of(magnitude) | (static_cast<std::uint32_t>(sign) & 0x80000000u)) * scale;
}

// A block's scale, and the factor its values are multiplied by before rounding to a code, from
// the largest magnitude of its new values: a block with an infinity or a NaN is stored as NaN
// (scale NaN, every code 0); one whose largest magnitude is below 480 * 2^-126 (zero included)
// as zero, which keeps both factors finite and normal.
struct QuantScale {
    float scale;
    float inverse;
};

FM_HOST_DEVICE inline QuantScale quant_scale(const float largest, const bool finite) {
    if (!finite) return QuantScale{NAN, 0.0f};
    if (largest < kQuantMax * 0x1p-126f) return QuantScale{0.0f, 0.0f};
    return QuantScale{largest / kQuantMax, kQuantMax / largest};
}

// The code of one value: |v| * inverse, at most 480, to the nearest E4M3 magnitude (ties to
// even), with v's sign. In a NaN block (inverse 0) an infinite or NaN v gives NaN there: code 0,
// as every other value of the block.
FM_HOST_DEVICE inline std::int8_t quantized(const float v, const float inverse) {
    const std::uint32_t u = bits_of(v);
    const float product = float_of(u & 0x7fffffffu) * inverse;
    // The largest magnitude's product may round above 480. (A NaN product gives 480 here, and
    // code 0 at the end.)
    const float y = product < kQuantMax ? product : kQuantMax;
    // Subnormal codes, steps of 2^-9: y * 512 < 8 to the nearest even integer. Beside 2^14,
    // float32's step is 2^-9, so the addition rounds y there; the bits above 2^14's are the code.
    const auto subnormal = static_cast<std::int32_t>(bits_of(y + 0x1p14f) - bits_of(0x1p14f));
    // Normal codes: rebias to E4M3's exponent, round the 20 dropped fraction bits to nearest even.
    const std::uint32_t b = bits_of(y);
    const auto normal =
        static_cast<std::int32_t>((b - (120u << 23) + 0x7ffffu + ((b >> 20) & 1u)) >> 20);
    const std::int32_t m = y < 0x1p-6f ? subnormal : normal;
    const std::int32_t sign = -static_cast<std::int32_t>(u >> 31);  // 0 or -1
    const std::int32_t code = (m ^ sign) - sign;
    return static_cast<std::int8_t>(product == product ? code : 0);
}

// The guards of a step (README, "Guards"), computed before the update pass.

// g*g of one gradient element, in double: the term of the global norm's sum. float32 squares
// cannot overflow a double sum, so a float32 sum is finite exactly when every element is.
template <class T>
FM_HOST_DEVICE inline double square(const T g) {
    const double v = g;
    return v * v;
}

// 0 for a finite element, NaN for an infinite or NaN one: a sum of these tells whether every
// element is finite, in any summation order.
template <class T>
FM_HOST_DEVICE inline T nonfinite_term(const T g) {
    return g - g;
}

#if !defined(__CUDACC__)
// Host code (the CPU kernels and _core.convert); the CUDA kernel reduces across its threads.

// A block's reduction runs over the bits of its values' magnitudes: as integers they order as
// the magnitudes do, and every infinity's and NaN's exceed every finite value's, so one integer
// maximum gives both the largest magnitude and whether all were finite (one vector operation
// per element, where a float maximum would need a second reduction to see a NaN).
inline std::uint32_t magnitude_bits(const float v) { return bits_of(v) & 0x7fffffffu; }

// The scale of a block whose largest magnitude_bits is `largest`.
inline QuantScale quant_scale_of_bits(const std::uint32_t largest) {
    return quant_scale(float_of(largest), largest < 0x7f800000u);
}

// The codes of one 8-bit block of n <= kQuantBlock new values x, whose scale is q.
inline void encode_block(const float* __restrict x, const std::int64_t n, const QuantScale q,
                         std::int8_t* __restrict codes) {
#pragma omp simd
    for (std::int64_t i = 0; i < n; ++i) codes[i] = quantized(x[i], q.inverse);
}

// One 8-bit block of n <= kQuantBlock new values x: its codes into `codes`, its scale returned.
inline float quantize_block(const float* __restrict x, const std::int64_t n,
                            std::int8_t* __restrict codes) {
    std::uint32_t largest = 0;
#pragma omp simd reduction(max : largest)
    for (std::int64_t i = 0; i < n; ++i) largest = std::max(largest, magnitude_bits(x[i]));
    const QuantScale q = quant_scale_of_bits(largest);
    encode_block(x, n, q, codes);
    return q.scale;
}
#endif

// torch.nn.utils.clip_grad_norm_'s epsilon.
inline constexpr double kClipEpsilon = 1e-6;

// The factor of the gradients for max_norm: min(1, max_norm / (norm + eps)), with a NaN norm
// giving NaN (as torch.clamp keeps NaN), so non-finite gradients are not silently clipped to 0.
FM_HOST_DEVICE inline double clip_coefficient(const double max_norm, const double norm) {
    const double c = max_norm / (norm + kClipEpsilon);
    return (c < 1.0 || c != c) ? c : 1.0;
}

// Keras 3's factor for global_clipnorm (clip_by_global_norm): clip_norm * min(1/norm,
// 1/clip_norm), applied whatever the norm (so 1 only up to rounding below clip_norm), and NaN
// for an infinite or NaN norm (the `+ (norm - norm)`), as Keras computes it.
FM_HOST_DEVICE inline double keras_clip_coefficient(const double clip_norm, const double norm) {
    const double inverse = 1.0 / norm, bound = 1.0 / clip_norm;
    return clip_norm * (inverse < bound ? inverse : bound) + (norm - norm);
}

}  // namespace FM_ISA
}  // namespace fastmomentum::rules
