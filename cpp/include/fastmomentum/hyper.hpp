#pragma once
// The hyper-parameters of one update call, as plain data. No functions live here: this header is
// shared by the ISA-neutral code (dispatch, bindings) and by every per-ISA kernel object, and plain
// aggregates cannot cause the weak-symbol ODR hazard that inline functions can (BUILD-FACTS.md).

#include <cstdint>

namespace fastmomentum {

// Which momentum convention the buffer follows (MATH.md section 1).
enum class Style : std::uint8_t {
    torch,  // b without the lr: b <- mu*b + (1-tau)*g, p <- p - lr*b   (also optax trace, EMA form)
    keras,  // v with the lr:    v <- mu*v - lr*g,      p <- p + v
};

// How weight decay is applied (MATH.md section 2).
enum class DecayMode : std::uint8_t {
    coupled,    // L2 into the gradient:      g <- g + wd*p
    decoupled,  // lr-scaled, before the step: p <- p - (lr*wd)*p
    sgdw,       // paper SGDW:                 p <- p - (s*wd)*p, s = schedule multiplier
};

struct Hyper {
    Style style = Style::torch;
    DecayMode decay_mode = DecayMode::coupled;
    double lr = 0.0;
    double momentum = 0.0;
    double dampening = 0.0;
    double weight_decay = 0.0;
    double schedule_multiplier = 1.0;  // s of SGDW; ignored by the other decay modes
    bool nesterov = false;
    bool maximize = false;
};

// The per-element variant, chosen once per tensor (never per element).
enum class Form : std::uint8_t {
    plain,        // momentum == 0: no buffer at all
    torch_first,  // torch, this tensor's first step: b <- g (no dampening)
    torch,        // torch, later steps
    keras,        // keras velocity
};

enum class Decay : std::uint8_t { none, coupled, decoupled };

// Hyper-parameters rounded once to the array's dtype. Every per-element operation uses these, so
// float32 arithmetic never mixes in a double.
template <class T>
struct Coeffs {
    T lr;
    T momentum;
    T one_minus_dampening;
    T coupled_decay;    // wd of the coupled form
    T decoupled_decay;  // lr*wd or s*wd, computed in double and rounded once
    T grad_sign;        // -1 when maximizing: multiplying by +-1 is exact
};

}  // namespace fastmomentum
