#pragma once
// How a step's arrays are stored, as plain data shared by the bindings, every CPU ISA object and
// the CUDA kernels: the element types, and the storage kind of one list of tensors. The
// conversions between them and float32 are the rules' (rules.hpp); nothing here computes.

#include <cstdint>

namespace fastmomentum {

// The 16-bit floats, as their bits: bfloat16 (ml_dtypes.bfloat16: float32's top half) and IEEE
// binary16 (numpy.float16). Distinct types, so that a template over storage cannot mix them up.
struct bf16 {
    std::uint16_t bits;
};
struct f16 {
    std::uint16_t bits;
};

// An array's element type. i8 is the code array of an 8-bit block-quantized buffer, whose
// float32 scales (one per kQuantBlock elements) travel beside it.
enum class Dtype : std::uint8_t { f32, f64, bf16, f16, i8 };

// Each Dtype's bytes per element, indexed by the Dtype (a table of internal linkage: ISA objects
// include this header, see hyper.hpp).
constexpr int kItemsize[] = {4, 8, 2, 2, 1};  // internal linkage: no weak symbol

// How a parameter narrower than float32 takes its updated float32 value back.
enum class Rounding : std::uint8_t {
    nearest,     // to nearest, ties to even: lossy, an update below half an ulp is lost
    stochastic,  // up or down with the probabilities that make it exact on average
    kahan,       // to nearest, the remainder kept in a compensation array (optimi's method)
};

// The elements of one block of an 8-bit buffer: each block has its own float32 scale. Also the
// unit in which the kernels of the low-precision kinds split work (rules.hpp, "8-bit buffers").
constexpr std::int64_t kQuantBlock = 256;  // internal linkage: std::min odr-uses it

// The storage of one list of tensors of a call: what its parameters, gradients and buffers are
// (buf is the parameter's dtype when the call has no buffers), and how the parameters round.
// float32 and float64 with everything in the parameter's dtype are the exact kinds (rounding is
// then unused); every other combination is a low-precision kind, computed in float32. (Plain
// data, no member functions: ISA objects include this header, see hyper.hpp.)
struct Kind {
    Dtype param;
    Dtype grad;
    Dtype buf;
    Rounding rounding;
};

}  // namespace fastmomentum
