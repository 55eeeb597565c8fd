// The fused momentum-SGD kernels. This one source is compiled once per ISA (CMake passes
// -DFM_ISA=<name> and that ISA's flags) into namespace fastmomentum::<isa>; the helpers here have
// internal linkage and the rules live in fastmomentum::rules::<isa>, so no two ISA objects share a
// symbol (cmake/check_isa_symbols.cmake verifies it at build time).
//
// One call = one pass: each element of p, g (and b) is read once and p (and b) written once.
// All tensors of a call are seen as one concatenated element range that is split evenly across
// the threads of ONE parallel region; each thread walks the tensors that overlap its range. The
// update is element-wise, so the split cannot change any result bit.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "fastmomentum/kernels.hpp"
#include "fastmomentum/rules.hpp"
#include "partition.hpp"

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

template <class T>
int sgd(const TensorRef* tensors, std::size_t count, const Hyper& h, const Launch& launch) {
    const Coeffs<T> k = rules::coeffs<T>(h);
    const Decay decay = rules::decay_of(h, k);
    const bool scale_grad = rules::scales_grad(k);
    const SpanFn<T> regular = pick<T>(rules::form_of(h, false), h.nesterov, decay, scale_grad);
    const SpanFn<T> first = pick<T>(rules::form_of(h, true), h.nesterov, decay, scale_grad);
    return for_each_part(total_size(tensors, count), sizeof(T), launch, [&](int64_t lo, int64_t hi) {
        for_each_span(tensors, count, lo, hi, [&](const TensorRef& t, int64_t a, int64_t e) {
            (t.first_step ? first : regular)(t, a, e, k);
        });
    });
}

// ---------------------------------------------------------------------------------------------
// The low-precision kinds (storage.hpp): each parameter's elements in blocks of kQuantBlock,
// which are never split between threads (an 8-bit block's scale depends on all its values).
// A block is widened to float32 into buffers on the stack (L1-resident), updated there by the
// float32 span above (the same instantiations as the float32 kernel: one formula), and narrowed
// back. Storage already in float32 is updated where it lies. Each stage is a plain loop over one
// block that the compiler vectorises for this ISA, chosen once per call: the storage
// combinations add up, where fused loops would multiply with the update's variants.

// A stage runs over up to kChunkBlocks blocks at a time: longer loops amortise each stage's call
// and its vector loop's prologue and epilogue; 3 x 4 KiB of float32 still fit in L1 beside the
// streams.
constexpr int64_t kChunkBlocks = 4;
using Chunk = float[kChunkBlocks * kQuantBlock];

// Widening a stored array's elements [off, off + n) into `out`.
template <class S>
void widen_into(const void* data, int64_t off, int64_t n, float* __restrict out) {
    const S* __restrict in = static_cast<const S*>(data) + off;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = rules::widen(in[i]);
}

template <class S>
void widen_param(const TensorRef& t, int64_t off, int64_t n, float* out) {
    widen_into<S>(t.param, off, n, out);
}

template <class S>
void widen_grad(const TensorRef& t, int64_t off, int64_t n, float* out) {
    widen_into<S>(t.grad, off, n, out);
}

template <class S>
void widen_buf(const TensorRef& t, int64_t off, int64_t n, float* out) {
    widen_into<S>(t.buf, off, n, out);
}

template <class S>
void widen_compensated(const TensorRef& t, int64_t off, int64_t n, float* __restrict out) {
    const S* __restrict p = static_cast<const S*>(t.param) + off;
    const S* __restrict c = static_cast<const S*>(t.comp) + off;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = rules::compensated(p[i], c[i]);
}

// 8-bit buffers, block by block: `off` is a block's start.
void dequantize(const TensorRef& t, int64_t off, int64_t n, float* __restrict out) {
    for (int64_t start = 0; start < n; start += kQuantBlock) {
        const std::int8_t* __restrict codes = static_cast<const std::int8_t*>(t.buf) + off + start;
        const float scale = t.scales[(off + start) / kQuantBlock];
        const int64_t m = std::min(kQuantBlock, n - start);
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) out[start + i] = rules::dequantized(codes[i], scale);
    }
}

// Narrowing a block back; `key` is the parameter's rounding key (stochastic rounding only).
template <class S>
void narrow_nearest(const TensorRef& t, int64_t off, int64_t n, const float* __restrict x,
                    std::uint64_t) {
    S* __restrict p = static_cast<S*>(t.param) + off;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) rules::narrow(x[i], p[i]);
}

template <class S>
void narrow_stochastic(const TensorRef& t, int64_t off, int64_t n, const float* __restrict x,
                       std::uint64_t key) {
    S* __restrict p = static_cast<S*>(t.param) + off;
    const std::uint32_t high = rules::index_key(key, off);  // chunks never cross 2^32
    const auto low = static_cast<std::uint32_t>(off);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
        rules::narrow_stochastic(x[i], rules::random16(high, low + static_cast<std::uint32_t>(i)), p[i]);
}

template <class S>
void narrow_compensated(const TensorRef& t, int64_t off, int64_t n, const float* __restrict x,
                        std::uint64_t) {
    S* __restrict p = static_cast<S*>(t.param) + off;
    S* __restrict c = static_cast<S*>(t.comp) + off;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) rules::split_compensated(x[i], p[i], c[i]);
}

template <class S>
void narrow_buf(const TensorRef& t, int64_t off, int64_t n, const float* __restrict x) {
    S* __restrict b = static_cast<S*>(t.buf) + off;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) rules::narrow(x[i], b[i]);
}

void quantize(const TensorRef& t, int64_t off, int64_t n, const float* __restrict x) {
    for (int64_t start = 0; start < n; start += kQuantBlock)
        t.scales[(off + start) / kQuantBlock] = rules::quantize_block(
            x + start, std::min(kQuantBlock, n - start), static_cast<std::int8_t*>(t.buf) + off + start);
}

using WidenFn = void (*)(const TensorRef&, int64_t, int64_t, float*);
using NarrowParamFn = void (*)(const TensorRef&, int64_t, int64_t, const float*, std::uint64_t);
using NarrowBufFn = void (*)(const TensorRef&, int64_t, int64_t, const float*);

// The stages of one kind; a null stage is storage in float32, updated where it lies.
struct Stages {
    WidenFn param = nullptr, grad = nullptr, buf = nullptr;
    NarrowParamFn param_back = nullptr;
    NarrowBufFn buf_back = nullptr;
};

template <class S>
void param_stages(Rounding r, Stages& s) {
    switch (r) {
        case Rounding::kahan:
            s.param = &widen_compensated<S>;
            s.param_back = &narrow_compensated<S>;
            return;
        case Rounding::stochastic: s.param_back = &narrow_stochastic<S>; break;
        case Rounding::nearest: s.param_back = &narrow_nearest<S>; break;
    }
    s.param = &widen_param<S>;
}

Stages stages_of(const Kind& kind) {
    Stages s;
    if (kind.param == Dtype::bf16) param_stages<bf16>(kind.rounding, s);
    else if (kind.param == Dtype::f16) param_stages<f16>(kind.rounding, s);
    if (kind.grad == Dtype::bf16) s.grad = &widen_grad<bf16>;
    else if (kind.grad == Dtype::f16) s.grad = &widen_grad<f16>;
    switch (kind.buf) {
        case Dtype::bf16: s.buf = &widen_buf<bf16>; s.buf_back = &narrow_buf<bf16>; break;
        case Dtype::f16: s.buf = &widen_buf<f16>; s.buf_back = &narrow_buf<f16>; break;
        case Dtype::i8: s.buf = &dequantize; s.buf_back = &quantize; break;
        case Dtype::f32: case Dtype::f64: break;
    }
    return s;
}

int64_t bytes_of(Dtype d) { return kItemsize[static_cast<int>(d)]; }

int64_t blocks_of(int64_t size) { return (size + kQuantBlock - 1) / kQuantBlock; }

int sgd_lowp(const TensorRef* tensors, std::size_t count, const Hyper& h, const Kind& kind,
             const Launch& launch) {
    const Coeffs<float> k = rules::coeffs<float>(h);
    const Decay decay = rules::decay_of(h, k);
    const bool scale_grad = rules::scales_grad(k);
    const SpanFn<float> regular = pick<float>(rules::form_of(h, false), h.nesterov, decay, scale_grad);
    const SpanFn<float> first = pick<float>(rules::form_of(h, true), h.nesterov, decay, scale_grad);
    // The torch convention's first step sets b <- g without reading b.
    const bool first_reads_buf = rules::form_of(h, true) != Form::torch_first;
    const Stages stages = stages_of(kind);
    int64_t total = 0;
    for (std::size_t i = 0; i < count; ++i) total += blocks_of(tensors[i].size);
    const int64_t block_bytes =
        kQuantBlock * (bytes_of(kind.param) + bytes_of(kind.grad) + bytes_of(kind.buf));
    return for_each_part(total, block_bytes, launch, [&](int64_t lo, int64_t hi) {
        Chunk param_block, grad_block, buf_block;
        int64_t start = 0;  // the first block of tensor i in the concatenated range of blocks
        for (std::size_t i = 0; i < count && start < hi; ++i) {
            const TensorRef& t = tensors[i];
            const int64_t blocks = blocks_of(t.size);
            const int64_t a = std::max(lo, start) - start, e = std::min(hi, start + blocks) - start;
            start += blocks;
            if (a >= e) continue;
            const std::uint64_t key =
                kind.rounding == Rounding::stochastic ? rules::rounding_key(h.seed, h.step, t.stream) : 0;
            const SpanFn<float> span = t.first_step ? first : regular;
            const bool reads_buf = t.buf != nullptr && (!t.first_step || first_reads_buf);
            // Chunks end at multiples of kChunkBlocks blocks, so none crosses an index that is a
            // multiple of 2^32 (narrow_stochastic takes the index's high bits once per chunk).
            for (int64_t j = a, next; j < e; j = next) {
                next = std::min(e, (j / kChunkBlocks + 1) * kChunkBlocks);
                const int64_t off = j * kQuantBlock;
                const int64_t n = std::min((next - j) * kQuantBlock, t.size - off);
                float* p = static_cast<float*>(t.param) + off;
                const float* g = static_cast<const float*>(t.grad) + off;
                float* b = t.buf ? static_cast<float*>(t.buf) + off : nullptr;
                if (stages.param) {
                    p = param_block;
                    stages.param(t, off, n, p);
                }
                if (stages.grad) {
                    stages.grad(t, off, n, grad_block);
                    g = grad_block;
                }
                if (b && stages.buf) {
                    b = buf_block;
                    if (reads_buf) stages.buf(t, off, n, buf_block);
                }
                span(TensorRef{p, g, b, n, t.first_step}, 0, n, k);
                if (stages.param_back) stages.param_back(t, off, n, p, key);
                if (b && stages.buf_back) stages.buf_back(t, off, n, b);
            }
        }
    });
}

// The guards' statistics (kernels.hpp, GradStatsFn). Gradients narrower than float32 are read
// widened, so their statistics are those of float32 gradients of the same values.

// Whether g[0, n) is all finite: one vectorised sum of rules::nonfinite_term, in any order.
template <class T>
bool all_finite(const T* __restrict g, int64_t n) {
    using Wide = decltype(rules::widen(T{}));
    Wide sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += rules::nonfinite_term(rules::widen(g[i]));
    return sum == Wide(0);
}

// Running sums of squares for one block of the norm: element `pos` of the concatenated range goes
// to lane pos % kLanes, each lane adds in element order, and the lanes combine pairwise. The order
// is written out, not left to the vectoriser, so every ISA gives the same bits (the lanes
// vectorise as they are). kNormBlock is a multiple of kLanes, so lanes restart with each block.
class BlockSum {
public:
    static constexpr int kLanes = kNormLanes;

    // Adds g[0, n), whose first element is at position `pos` of the concatenated range.
    template <class T>
    void add(const T* __restrict g, int64_t n, int64_t pos) {
        int64_t i = 0;
        for (; i < n && (pos + i) % kLanes != 0; ++i)
            lane_[(pos + i) % kLanes] += rules::square(rules::widen(g[i]));
        for (; i + kLanes <= n; i += kLanes)
            for (int j = 0; j < kLanes; ++j) lane_[j] += rules::square(rules::widen(g[i + j]));
        for (int j = 0; i < n; ++i, ++j) lane_[j] += rules::square(rules::widen(g[i]));
    }

    // The block's sum; starts the next block.
    double take() {
        for (int width = kLanes / 2; width > 0; width /= 2)
            for (int j = 0; j < width; ++j) lane_[j] += lane_[j + width];
        const double sum = lane_[0];
        std::fill(lane_, lane_ + kLanes, 0.0);
        return sum;
    }

private:
    double lane_[kLanes] = {};
};
static_assert(kNormBlock % BlockSum::kLanes == 0, "blocks must restart the lanes");

// The blocks are cut from the tensors' concatenated range, not from each tensor, so tensors that
// are adjacent in memory (merged into one span by the bindings) give the same sums as separate
// ones: the norm depends only on the gradients' values and order.
template <class T>
bool grad_stats(const TensorRef* tensors, std::size_t count, double* block_sums,
                const Launch& launch) {
    const int64_t total = total_size(tensors, count);
    std::atomic<bool> finite{true};  // parts only ever clear it
    if (block_sums == nullptr) {
        for_each_part(total, sizeof(T), launch, [&](int64_t lo, int64_t hi) {
            bool ok = true;
            for_each_span(tensors, count, lo, hi, [&](const TensorRef& t, int64_t a, int64_t e) {
                ok = ok && all_finite(static_cast<const T*>(t.grad) + a, e - a);
            });
            if (!ok) finite.store(false, std::memory_order_relaxed);
        });
        return finite.load();
    }
    const int64_t blocks = (total + kNormBlock - 1) / kNormBlock;
    for_each_part(blocks, kNormBlock * int64_t{sizeof(T)}, launch, [&](int64_t lo, int64_t hi) {
        BlockSum sum;
        bool ok = true;
        int64_t pos = lo * kNormBlock;  // in the concatenated range
        for_each_span(tensors, count, pos, std::min(hi * kNormBlock, total),
                      [&](const TensorRef& t, int64_t a, int64_t e) {
            const T* g = static_cast<const T*>(t.grad);
            while (a < e) {  // the span, cut at block ends
                const int64_t block_end = std::min(total, (pos / kNormBlock + 1) * kNormBlock);
                const int64_t n = std::min(e - a, block_end - pos);
                sum.add(g + a, n, pos);
                a += n;
                pos += n;
                if (pos == block_end) {
                    const double block = sum.take();
                    block_sums[(pos - 1) / kNormBlock] = block;
                    ok = ok && std::isfinite(block);
                }
            }
        });
        if (!ok) finite.store(false, std::memory_order_relaxed);
    });
    if (finite.load()) return true;
    // A finite sum has only finite terms; an infinite one may be float64 overflow of finite ones.
    return grad_stats<T>(tensors, count, nullptr, launch);
}

}  // namespace

#define FM_STR2(x) #x
#define FM_STR(x) FM_STR2(x)
KernelSet kernel_set() {
    return KernelSet{FM_STR(FM_ISA),       &sgd<float>,         &sgd<double>,
                     &sgd_lowp,            &grad_stats<float>,  &grad_stats<double>,
                     &grad_stats<bf16>,    &grad_stats<f16>};
}

}  // namespace fastmomentum::FM_ISA
