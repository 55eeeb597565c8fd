#pragma once
// The hyper-parameters of one update call, as plain data. No functions live here: this header is
// shared by the ISA-neutral code (dispatch, bindings) and by every per-ISA kernel object, and plain
// aggregates cannot cause the weak-symbol ODR hazard that inline functions can.

#include <cmath>
#include <cstdint>

#include "fastmomentum/storage.hpp"

namespace fastmomentum {

// Which momentum convention the buffer follows (README, "Conventions").
enum class Style : std::uint8_t {
    torch,  // b without the lr: b <- mu*b + (1-tau)*g, p <- p - lr*b   (also optax trace, apex)
    keras,  // v with the lr:    v <- mu*v - lr*g,      p <- p + v
    ema,    // b <- beta*b + (1-beta)*g from b = 0, p <- p - lr*b   (`momentum` holds beta)
};

// How weight decay is applied (README, "Conventions"). The decoupled forms follow the operation order
// of the style's reference framework: torch / ema as PyTorch's AdamW, p <- p * (1 - scale*wd);
// keras as Keras 3, p <- p - (p*wd)*scale.
enum class DecayMode : std::uint8_t {
    coupled,    // L2 into the gradient:  g <- g + wd*p
    decoupled,  // before the step, scale = lr
    sgdw,       // before the step, scale = s, the schedule multiplier (Loshchilov & Hutter)
};

struct Hyper {
    Style style = Style::torch;
    DecayMode decay_mode = DecayMode::coupled;
    double lr = 0.0;
    double momentum = 0.0;
    double dampening = 0.0;
    double weight_decay = 0.0;
    double schedule_multiplier = 1.0;  // s of SGDW; ignored by the other decay modes
    // The gradient's factor before anything else (g <- grad_scale*g): 1/loss_scale, times the
    // clipping coefficient when the step clips (rules::clip_coefficient). Not from Python's
    // hyper-parameters: the step's guard sets it.
    double grad_scale = 1.0;
    // Keras' clipvalue: each gradient element clipped to [-clip_value, clip_value] after
    // grad_scale; HUGE_VAL (infinity) clips nothing. From the step's guard, like grad_scale.
    double clip_value = HUGE_VAL;
    bool nesterov = false;
    bool maximize = false;
    // Stochastic rounding of parameters narrower than float32 (storage.hpp): how, and the key of
    // its random numbers (rules::rounding_key). The other kinds ignore them.
    Rounding rounding = Rounding::nearest;
    std::uint64_t seed = 0;
    std::uint64_t step = 0;
};

// The per-element variant, chosen once per tensor (never per element).
enum class Form : std::uint8_t {
    plain,        // momentum == 0: no buffer at all
    torch_first,  // torch, this tensor's first step: b <- g (no dampening)
    torch,        // torch, later steps
    keras,        // keras velocity
};

// The per-element weight-decay operation, chosen once per call.
enum class Decay : std::uint8_t {
    none,
    coupled,  // g <- g + wd*p
    keep,     // p <- p * keep, keep = 1 - scale*wd   (PyTorch AdamW order)
    keras,    // p <- p - (p*wd)*scale                 (Keras 3 order)
};

// Hyper-parameters rounded once to the array's dtype. Every per-element operation uses these, so
// float32 arithmetic never mixes in a double.
template <class T>
struct Coeffs {
    T lr;
    T momentum;             // beta for the ema style
    T one_minus_dampening;  // 1 - beta for the ema style
    T weight_decay;
    T decay_keep;   // 1 - scale*wd, computed in double and rounded once
    T decay_scale;  // lr or s
    T grad_scale;   // grad_scale, negated when maximizing (negation is exact in any rounding)
    T clip_value;   // infinity: no clipping
};

}  // namespace fastmomentum
