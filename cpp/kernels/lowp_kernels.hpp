#pragma once
// The low-precision kernel of one ISA object (lowp_kernels.cpp), which sgd_kernels.cpp puts in
// the object's KernelSet. Declared in fastmomentum::<FM_ISA>, so each ISA's copy has its own name.

#include <cstddef>

#include "fastmomentum/kernels.hpp"

#ifndef FM_ISA
#error "Define FM_ISA (the instruction-set namespace) first."
#endif

namespace fastmomentum::FM_ISA {

// The KernelSet's LowpKernelFn (kernels.hpp).
int sgd_lowp(const TensorRef* tensors, std::size_t count, const Hyper& h, const Kind& kind,
             const Launch& launch);

}  // namespace fastmomentum::FM_ISA
