// The low-precision kinds (storage.hpp) on CUDA devices: the CPU's sgd_lowp, element for element.
// Each stored value is widened to float32 and updated by rules::update<float, ...> with
// rules::coeffs<float>, the float32 kernel's own formula, then narrowed back by rules.hpp's
// conversions; CMake compiles this file as sgd_kernels.cu (FM_ISA=gpu, --fmad=false), so the
// bits are the CPU's.
//
// One CUDA block per block of kQuantBlock elements of a parameter, one thread per element: an
// 8-bit buffer's block is encoded with the largest magnitude of its NEW values, which the block's
// threads find together (a shared-memory reduction) before any of them writes its code. The
// random numbers of stochastic rounding depend on the element's index alone.
//
// Instantiations: one kernel per update variant (rules::pick_variant, as the exact kernels); the
// storage kind is a kernel argument, and each element branches on it. The branches are uniform
// across a launch (one kind per list), so they cost no divergence, and the storage combinations
// (13 parameter/gradient kinds times 4 buffer kinds) do not multiply the 56 variants.

#include <cstdint>

#include "fastmomentum/rules.hpp"
#include "launch.hpp"

namespace fastmomentum::cuda {
namespace {

using std::int64_t;
using std::uint32_t;
using std::uint64_t;

constexpr int kThreads = static_cast<int>(kQuantBlock);
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "a block of whole warps");
constexpr int kWarps = kThreads / 32;
// Tensors per launch; the batch must fit the 4 KiB of kernel parameters of every architecture.
constexpr int kBatchTensors = 48;

struct LowpBatch {
    void* param[kBatchTensors];
    const void* grad[kBatchTensors];
    void* buf[kBatchTensors];  // null without momentum; an 8-bit buffer's codes
    float* scales[kBatchTensors];  // an 8-bit buffer's
    void* comp[kBatchTensors];     // a Kahan compensation
    uint64_t key[kBatchTensors];   // the stochastic rounding's key (rules::rounding_key)
    int64_t size[kBatchTensors];
    int64_t first_block[kBatchTensors + 1];  // block where tensor i starts; [count]: all blocks
    int count;
};
static_assert(sizeof(LowpBatch) + sizeof(Coeffs<float>) + sizeof(Kind) <= 4096, "kernel parameters");

// A gradient or buffer element of dtype d (float32, bfloat16 or float16), widened.
__device__ inline float load(const void* base, const Dtype d, const int64_t i) {
    if (d == Dtype::bf16) return rules::widen(static_cast<const bf16*>(base)[i]);
    if (d == Dtype::f16) return rules::widen(static_cast<const f16*>(base)[i]);
    return static_cast<const float*>(base)[i];
}

// x narrowed to S to nearest, stored with one store.
template <class S>
__device__ inline void put(void* base, const int64_t i, const float x) {
    S v;
    rules::narrow(x, v);
    static_cast<S*>(base)[i] = v;
}

__device__ inline void store(void* base, const Dtype d, const int64_t i, const float x) {
    if (d == Dtype::bf16) put<bf16>(base, i, x);
    else if (d == Dtype::f16) put<f16>(base, i, x);
    else static_cast<float*>(base)[i] = x;
}

// A 16-bit parameter's float32 value, and its rounding back.
template <class S>
__device__ inline float load_param(const LowpBatch& batch, const int t, const int64_t i,
                                   const Rounding r) {
    const S p = static_cast<const S*>(batch.param[t])[i];
    return r == Rounding::kahan ? rules::compensated(p, static_cast<const S*>(batch.comp[t])[i])
                                : rules::widen(p);
}

template <class S>
__device__ inline void store_param(const LowpBatch& batch, const int t, const int64_t i,
                                   const Rounding r, const float x) {
    S p;
    if (r == Rounding::kahan) {
        S c;
        rules::split_compensated(x, p, c);
        static_cast<S*>(batch.comp[t])[i] = c;
    } else if (r == Rounding::stochastic) {
        const uint32_t random = rules::random16(rules::index_key(batch.key[t], i),
                                                static_cast<uint32_t>(i));
        rules::narrow_stochastic(x, random, p);
    } else {
        rules::narrow(x, p);
    }
    static_cast<S*>(batch.param[t])[i] = p;
}

// Element i of a block of an 8-bit buffer holds new value b (when `active`: the last block of a
// parameter may be shorter). Every thread of the block calls this: the block's scale needs the
// largest |b| and whether every b is finite (rules::quant_scale), then each code is rounded.
__device__ inline void quantize(const LowpBatch& batch, const int t, const int64_t i,
                                const bool active, const float b) {
    __shared__ float warp_largest[kWarps];
    const bool finite = __syncthreads_and(!active || rules::nonfinite_term(b) == 0.0f) != 0;
    // The maximum is exact in any order; with a NaN the block is stored as NaN whatever it is.
    float largest = active ? fabsf(b) : 0.0f;
    for (int width = 16; width > 0; width /= 2)
        largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, width));
    if (threadIdx.x % 32 == 0) warp_largest[threadIdx.x / 32] = largest;
    __syncthreads();
    largest = warp_largest[0];
    for (int w = 1; w < kWarps; ++w) largest = fmaxf(largest, warp_largest[w]);
    const rules::QuantScale q = rules::quant_scale(largest, finite);
    if (active) static_cast<std::int8_t*>(batch.buf[t])[i] = rules::quantized(b, q.inverse);
    if (threadIdx.x == 0) batch.scales[t][i / kQuantBlock] = q.scale;
}

template <Form F, bool Nesterov, Decay D, bool ScaleGrad>
__global__ void __launch_bounds__(kThreads)
lowp_kernel(const LowpBatch batch, const Coeffs<float> k, const Kind kind) {
    const int64_t block = blockIdx.x;
    int t = 0;  // the tensor of this block: at most kBatchTensors steps through the parameters
    while (t + 1 < batch.count && batch.first_block[t + 1] <= block) ++t;
    const int64_t i = (block - batch.first_block[t]) * kQuantBlock + threadIdx.x;
    const bool active = i < batch.size[t];
    // The torch convention's first step sets b <- g without reading b; the plain form has none.
    constexpr bool kReadsBuf = F == Form::torch || F == Form::keras;
    const bool quantized = F != Form::plain && kind.buf == Dtype::i8;
    float b = 0.0f;
    if (active) {
        float p;
        if (kind.param == Dtype::bf16) p = load_param<bf16>(batch, t, i, kind.rounding);
        else if (kind.param == Dtype::f16) p = load_param<f16>(batch, t, i, kind.rounding);
        else p = static_cast<const float*>(batch.param[t])[i];
        const float g = load(batch.grad[t], kind.grad, i);
        if constexpr (kReadsBuf) {
            if (quantized)
                b = rules::dequantized(static_cast<const std::int8_t*>(batch.buf[t])[i],
                                       batch.scales[t][i / kQuantBlock]);
            else
                b = load(batch.buf[t], kind.buf, i);
        }
        rules::update<float, F, Nesterov, D, ScaleGrad>(p, b, g, k);
        if (kind.param == Dtype::bf16) store_param<bf16>(batch, t, i, kind.rounding, p);
        else if (kind.param == Dtype::f16) store_param<f16>(batch, t, i, kind.rounding, p);
        else static_cast<float*>(batch.param[t])[i] = p;
        if (F != Form::plain && !quantized) store(batch.buf[t], kind.buf, i, b);
    }
    if (quantized) quantize(batch, t, i, active, b);  // uniform: the whole block or none of it
}

using LowpKernel = void (*)(LowpBatch, Coeffs<float>, Kind);

LowpKernel pick(Form f, bool nesterov, Decay d, bool scale_grad) {
    return rules::pick_variant(f, nesterov, d, scale_grad, [](auto F, auto N, auto D, auto S) {
        return &lowp_kernel<decltype(F)::value, decltype(N)::value, decltype(D)::value,
                            decltype(S)::value>;
    });
}

// Launches `kernel` over the tensors whose first_step flag is `first`, kBatchTensors at a time.
void launch_batches(LowpKernel kernel, const TensorRef* tensors, std::size_t count, bool first,
                    const Coeffs<float>& k, const Kind& kind, const Hyper& h,
                    cudaStream_t stream) {
    LowpBatch batch{};
    const auto flush = [&] {
        if (batch.count == 0) return;
        const int64_t blocks = batch.first_block[batch.count];
        if (blocks > 0) {
            kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(batch, k, kind);
            check(cudaGetLastError(), "launching the low-precision update kernel");
        }
        batch = LowpBatch{};
    };
    for (std::size_t i = 0; i < count; ++i) {
        const TensorRef& t = tensors[i];
        if (t.first_step != first || t.size == 0) continue;
        const int64_t blocks = (t.size + kQuantBlock - 1) / kQuantBlock;
        // A grid has at most 2^31 - 1 blocks: a longer list of tensors goes in several launches.
        if (batch.count == kBatchTensors || batch.first_block[batch.count] + blocks > INT32_MAX)
            flush();
        const int j = batch.count++;
        batch.param[j] = t.param;
        batch.grad[j] = t.grad;
        batch.buf[j] = t.buf;
        batch.scales[j] = t.scales;
        batch.comp[j] = t.comp;
        batch.key[j] = kind.rounding == Rounding::stochastic
                           ? rules::rounding_key(h.seed, h.step, t.stream) : 0;
        batch.size[j] = t.size;
        batch.first_block[j + 1] = batch.first_block[j] + blocks;
    }
    flush();
}

}  // namespace

void sgd_lowp(const TensorRef* tensors, std::size_t count, const Hyper& h, const Kind& kind,
              cudaStream_t stream) {
    const Coeffs<float> k = rules::coeffs<float>(h);
    const Decay decay = rules::decay_of(h, k);
    const bool scale_grad = rules::scales_grad(k);
    for (const bool first : {false, true})
        launch_batches(pick(rules::form_of(h, first), h.nesterov, decay, scale_grad), tensors,
                       count, first, k, kind, h, stream);
}

}  // namespace fastmomentum::cuda
