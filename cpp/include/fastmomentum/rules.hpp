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

#include <cmath>
#include <type_traits>

#include "fastmomentum/hyper.hpp"

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
