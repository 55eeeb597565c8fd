#pragma once
// The ISA-neutral kernel interface: a list of tensor slices and one hyper-parameter struct in, the
// arrays updated in place. Each ISA object (cpp/kernels/sgd_kernels.cpp compiled once per ISA)
// defines `fastmomentum::<isa>::kernel_set()`; dispatch.cpp gathers them into a table.

#include <cstddef>
#include <cstdint>

#include "fastmomentum/hyper.hpp"
#include "fastmomentum/storage.hpp"

namespace fastmomentum {

// One tensor of a call: dense, aligned memory of `size` elements of its list's Kind, from its
// lowest address (the update is element-wise: every array of a tensor has one layout, so memory
// order pairs their elements).
// `buf` is null when the call has no momentum buffer (momentum == 0). The low-precision kinds
// also use `scales` (an 8-bit buffer's, one float32 per kQuantBlock elements), `comp` (a Kahan
// compensation, the parameter's dtype) and `stream` (the parameter's index in the step, which
// keys its stochastic rounding).
struct TensorRef {
    void* param;
    const void* grad;
    void* buf;
    std::int64_t size;
    bool first_step;
    float* scales = nullptr;
    void* comp = nullptr;
    std::uint64_t stream = 0;
};

// How a call may use threads: at most `threads`, and no thread for fewer than `grain_bytes`
// bytes of parameters.
struct Launch {
    int threads;
    std::int64_t grain_bytes;
};

// Updates every tensor in place; returns the number of threads that ran (0 for no elements).
using KernelFn = int (*)(const TensorRef* tensors, std::size_t count, const Hyper& hyper,
                         const Launch& launch);
// The same for tensors of one low-precision kind (cpp/kernels/lowp_kernels.cpp): each
// parameter's elements in blocks of kQuantBlock, widened to float32, updated by the float32
// formula and narrowed back.
using LowpKernelFn = int (*)(const TensorRef* tensors, std::size_t count, const Hyper& hyper,
                             const Kind& kind, const Launch& launch);

// The gradient statistics of a step's guards, in one read pass over the gradients. The sum of
// squares is taken over fixed blocks of kNormBlock elements of the tensors' concatenated range,
// each block in a fixed summation order, so it is the same on every ISA and thread count, and
// whether or not tensors are adjacent in memory. When block_sums is not null, it receives each
// block's sum of g*g (in double), ceil(total / kNormBlock) of them. Returns whether every element
// is finite.
inline constexpr std::int64_t kNormBlock = 4096;
// Each block is summed in kNormLanes running sums, element i in lane i % kNormLanes, combined
// pairwise: the order every device (CPU and CUDA) writes out, so the sums are the same bits.
inline constexpr int kNormLanes = 16;
static_assert(kNormBlock % kNormLanes == 0, "lanes restart with each block");
using GradStatsFn = bool (*)(const TensorRef* tensors, std::size_t count, double* block_sums,
                             const Launch& launch);

struct KernelSet {
    const char* isa;  // set by the ISA object itself, so a mis-wired table is visible
    KernelFn f32;
    KernelFn f64;
    LowpKernelFn lowp;
    GradStatsFn stats_f32;
    GradStatsFn stats_f64;
    GradStatsFn stats_bf16;
    GradStatsFn stats_f16;
};

// Declares one ISA object's entry point, e.g. FM_DECLARE_KERNEL_SET(avx2).
#define FM_DECLARE_KERNEL_SET(isa) \
    namespace isa {                \
    KernelSet kernel_set();        \
    }

}  // namespace fastmomentum
