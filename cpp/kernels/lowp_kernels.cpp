// The low-precision kernels (storage.hpp): parameters, gradients or momentum buffers stored
// narrower than float32, updated by the float32 formula (rules::update) on values widened
// exactly, and narrowed back by the rules' roundings. Compiled once per ISA, like
// sgd_kernels.cpp, into namespace fastmomentum::<isa>, with internal linkage but for sgd_lowp.
//
// Each parameter's elements are cut in blocks of kQuantBlock, never split between threads (an
// 8-bit block's scale depends on all its values), so every thread count gives the same bits.
// Two paths compute the same bits (the tests compare both with one reference):
//   * fused, for the kinds people train with (fused_kernel lists them): ONE vectorised loop per
//     element range reads and widens p, g and b, updates, narrows and writes. At these byte
//     counts the conversions, not memory, bound the step, and the streams flow best when every
//     array advances together. Each is a template over the kind and the update's variant (32
//     with a buffer, 8 without: the torch convention's first step, once per parameter, is
//     staged), so these kinds multiply instantiations: 7 kinds, 240 loops. (Always scaling the
//     gradient and folding "no decay" into a factor 1 would be exact and need a third of them,
//     but costs a third more compute per element, which is the bound here.)
//   * staged, for every other kind and for the first step: a chunk of blocks is widened into
//     float32 buffers on the stack, updated there by the float32 span (update_span.hpp, the
//     float32 kernel's own instantiations) and narrowed back. The storage combinations add up
//     instead of multiplying.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fastmomentum/kernels.hpp"
#include "f16c.hpp"
#include "fastmomentum/rules.hpp"
#include "lowp_kernels.hpp"
#include "partition.hpp"
#include "update_span.hpp"

namespace fastmomentum::FM_ISA {
namespace {

using std::int64_t;

int64_t blocks_of(int64_t size) { return (size + kQuantBlock - 1) / kQuantBlock; }

// ---------------------------------------------------------------------------------------------
// The fused path.

struct NoBuffer {};   // the plain form (momentum 0)
struct Quantized {};  // an 8-bit buffer: int8 codes, one float32 scale per block

// A parameter (stored as P: float or bf16; its gradient is a P too) read as float32, and written
// back from float32 by rounding R. `c` is its Kahan compensation (kahan only); `high` and `low`
// key the stochastic rounding of element i.
template <class P, Rounding R>
float read_param(const P* __restrict p, const P* __restrict c, int64_t i) {
    if constexpr (std::is_same_v<P, float>) return p[i];
    else if constexpr (R == Rounding::kahan) return rules::compensated(p[i], c[i]);
    else return rules::widen(p[i]);
}

template <class P, Rounding R>
void write_param(const float x, P* __restrict p, P* __restrict c, int64_t i, std::uint32_t high,
                 std::uint32_t low) {
    if constexpr (std::is_same_v<P, float>) p[i] = x;
    else if constexpr (R == Rounding::kahan) rules::split_compensated(x, p[i], c[i]);
    else if constexpr (R == Rounding::stochastic)
        rules::narrow_stochastic(x, rules::random16(high, low + static_cast<std::uint32_t>(i)), p[i]);
    else rules::narrow(x, p[i]);
}

// The streams of one element range [off, off + n) of a tensor.
template <class P, Rounding R, class B>
struct Streams {
    static constexpr bool kCompensated = !std::is_same_v<P, float> && R == Rounding::kahan;
    static constexpr bool kBuffered = !std::is_same_v<B, NoBuffer>;
    using Stored = std::conditional_t<std::is_same_v<B, Quantized>, std::int8_t, B>;

    Streams(const TensorRef& t, int64_t off)
        : p(static_cast<P*>(t.param) + off),
          g(static_cast<const P*>(t.grad) + off),
          // Offsets only where the pointer exists: null + off is undefined.
          c(kCompensated ? static_cast<P*>(t.comp) + off : nullptr),
          b(kBuffered ? static_cast<Stored*>(t.buf) + off : nullptr) {}

    P* p;
    const P* g;
    P* c;
    Stored* b;
};

// One range [0, n) of a 16-bit buffer's kind (or of no buffer, or of a float32 buffer on the
// stack): every array in one pass. `high` and `low` key the stochastic rounding of element i.
template <class P, Rounding R, class B, Form F, bool N, Decay D, bool S>
void fused_loop(P* __restrict p, const P* __restrict g, P* __restrict c, B* __restrict b,
                int64_t n, const Coeffs<float> k, std::uint32_t high, std::uint32_t low) {
    constexpr bool kBuffered = !std::is_same_v<B, NoBuffer>;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
        float param = read_param<P, R>(p, c, i), buffer = 0.0f;  // no buffer: plain form
        if constexpr (kBuffered) buffer = rules::widen(b[i]);
        rules::update<float, F, N, D, S>(param, buffer, rules::widen(g[i]), k);
        write_param<P, R>(param, p, c, i, high, low);
        if constexpr (kBuffered) rules::narrow(buffer, b[i]);
    }
}

// A range [off, off + n) of a tensor. It never crosses an index that is a multiple of 2^32 (the
// driver cuts it), so the stochastic rounding's key of the index's high bits is taken once.
template <class P, Rounding R, class B, Form F, bool N, Decay D, bool S>
void fused_span(const TensorRef& t, int64_t off, int64_t n, const Coeffs<float> k,
                std::uint64_t key) {
    const Streams<P, R, B> io(t, off);
    const std::uint32_t high = rules::index_key(key, off);
    const auto low = static_cast<std::uint32_t>(off);
#ifdef FM_HAVE_F16C
    if constexpr (std::is_same_v<B, f16>) {
        // A block of the float16 buffer is widened by F16C onto the stack, updated there with
        // the other arrays in one pass, and narrowed back by F16C.
        alignas(32) float buffer[kQuantBlock];
        for (int64_t start = 0; start < n; start += kQuantBlock) {
            const int64_t m = std::min(kQuantBlock, n - start), whole = m / 8 * 8;
            f16* b = io.b + start;
            for (int64_t i = 0; i < whole; i += 8) widen8(b + i, buffer + i);
            for (int64_t i = whole; i < m; ++i) buffer[i] = rules::widen(b[i]);
            fused_loop<P, R, float, F, N, D, S>(io.p + start, io.g + start,
                                                io.c ? io.c + start : nullptr, buffer, m, k, high,
                                                low + static_cast<std::uint32_t>(start));
            for (int64_t i = 0; i < whole; i += 8) narrow8(buffer + i, b + i);
            for (int64_t i = whole; i < m; ++i) rules::narrow(buffer[i], b[i]);
        }
        return;
    }
#endif
    fused_loop<P, R, B, F, N, D, S>(io.p, io.g, io.c, io.b, n, k, high, low);
}

// The same with an 8-bit buffer, block by block: the block's new values are kept in L1 with
// their largest magnitude, then encoded with the block's new scale (rules::quantize_block's
// steps, the reduction folded into the update's loop).
template <class P, Rounding R, Form F, bool N, Decay D, bool S>
void fused_quantized(const TensorRef& t, int64_t off, int64_t n, const Coeffs<float> k,
                     std::uint64_t key) {
    const std::uint32_t high = rules::index_key(key, off);
    for (int64_t start = 0; start < n; start += kQuantBlock) {
        const int64_t at = off + start, m = std::min(kQuantBlock, n - start);
        const Streams<P, R, Quantized> io(t, at);
        P* __restrict p = io.p;
        const P* __restrict g = io.g;
        P* __restrict c = io.c;
        std::int8_t* __restrict codes = io.b;
        const float scale = t.scales[at / kQuantBlock];
        const auto low = static_cast<std::uint32_t>(at);
        alignas(64) float fresh[kQuantBlock];
        std::uint32_t largest = 0;
#pragma omp simd reduction(max : largest)
        for (int64_t i = 0; i < m; ++i) {
            float param = read_param<P, R>(p, c, i), buffer = rules::dequantized(codes[i], scale);
            rules::update<float, F, N, D, S>(param, buffer, rules::widen(g[i]), k);
            write_param<P, R>(param, p, c, i, high, low);
            fresh[i] = buffer;
            largest = std::max(largest, rules::magnitude_bits(buffer));
        }
        const rules::QuantScale q = rules::quant_scale_of_bits(largest);
        rules::encode_block(fresh, m, q, codes);
        t.scales[at / kQuantBlock] = q.scale;
    }
}

using FusedFn = void (*)(const TensorRef&, int64_t, int64_t, Coeffs<float>, std::uint64_t);

// The fused function of a kind and variant (null: not a fused kind).
template <class P, Rounding R, class B>
FusedFn fused_of(Form f, bool nesterov, Decay d, bool scale_grad) {
    return rules::pick_variant(f, nesterov, d, scale_grad, [](auto Fc, auto Nc, auto Dc, auto Sc) -> FusedFn {
        constexpr Form F = decltype(Fc)::value;
        constexpr bool N = decltype(Nc)::value, S = decltype(Sc)::value;
        constexpr Decay D = decltype(Dc)::value;
        // A kind with a buffer in a call without one (momentum 0), and the torch convention's
        // first step (once per parameter), are staged.
        if constexpr (std::is_same_v<B, NoBuffer> != (F == Form::plain) || F == Form::torch_first)
            return nullptr;
        else if constexpr (std::is_same_v<B, Quantized>) return &fused_quantized<P, R, F, N, D, S>;
        else return &fused_span<P, R, B, F, N, D, S>;
    });
}

// The fused kinds: float32 parameters with a bfloat16, float16 or 8-bit momentum buffer, and
// bfloat16 parameters and gradients, Kahan-compensated or stochastically rounded, with a
// bfloat16 or 8-bit buffer or none. Null for every other kind (the staged path).
FusedFn fused_kernel(const Kind& kind, Form f, bool nesterov, Decay d, bool scale_grad) {
    if (kind.param == Dtype::f32 && kind.grad == Dtype::f32) {
        switch (kind.buf) {
            case Dtype::bf16: return fused_of<float, Rounding::nearest, bf16>(f, nesterov, d, scale_grad);
            case Dtype::f16: return fused_of<float, Rounding::nearest, f16>(f, nesterov, d, scale_grad);
            case Dtype::i8: return fused_of<float, Rounding::nearest, Quantized>(f, nesterov, d, scale_grad);
            default: return nullptr;
        }
    }
    if (kind.param != Dtype::bf16 || kind.grad != Dtype::bf16 || kind.rounding == Rounding::nearest)
        return nullptr;
    const bool kahan = kind.rounding == Rounding::kahan;
    if (f == Form::plain)
        return kahan ? fused_of<bf16, Rounding::kahan, NoBuffer>(f, nesterov, d, scale_grad)
                     : fused_of<bf16, Rounding::stochastic, NoBuffer>(f, nesterov, d, scale_grad);
    switch (kind.buf) {
        case Dtype::bf16:
            return kahan ? fused_of<bf16, Rounding::kahan, bf16>(f, nesterov, d, scale_grad)
                         : fused_of<bf16, Rounding::stochastic, bf16>(f, nesterov, d, scale_grad);
        case Dtype::i8:
            return kahan ? fused_of<bf16, Rounding::kahan, Quantized>(f, nesterov, d, scale_grad)
                         : fused_of<bf16, Rounding::stochastic, Quantized>(f, nesterov, d, scale_grad);
        default: return nullptr;
    }
}

// ---------------------------------------------------------------------------------------------
// The staged path.

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

// Runs body(tensor, a, e) over the blocks [a, e) of each tensor, the tensors' blocks split as
// one concatenated range across the threads (partition.hpp).
template <class Body>
int for_each_block_range(const TensorRef* tensors, std::size_t count, const Kind& kind,
                         const Launch& launch, const Body& body) {
    int64_t total = 0;
    for (std::size_t i = 0; i < count; ++i) total += blocks_of(tensors[i].size);
    const int64_t block_bytes =
        kQuantBlock * (bytes_of(kind.param) + bytes_of(kind.grad) + bytes_of(kind.buf));
    return for_each_part(total, block_bytes, launch, [&](int64_t lo, int64_t hi) {
        int64_t start = 0;  // the first block of tensor i in the concatenated range of blocks
        for (std::size_t i = 0; i < count && start < hi; ++i) {
            const TensorRef& t = tensors[i];
            const int64_t blocks = blocks_of(t.size);
            const int64_t a = std::max(lo, start) - start, e = std::min(hi, start + blocks) - start;
            start += blocks;
            if (a < e) body(t, a, e);
        }
    });
}

// The stochastic rounding's key of a tensor (rules::rounding_key), 0 for the other roundings.
std::uint64_t key_of(const TensorRef& t, const Hyper& h, const Kind& kind) {
    return kind.rounding == Rounding::stochastic ? rules::rounding_key(h.seed, h.step, t.stream) : 0;
}

// Ranges of blocks end at multiples of kKeyBlocks, so none crosses an element index that is a
// multiple of 2^32 (the kernels take the stochastic rounding's key of the index's high bits once
// per range).
constexpr int64_t kKeyBlocks = (int64_t{1} << 32) / kQuantBlock;

// The staged path of one call: run(t, a, e) updates tensor t's blocks [a, e).
class Staged {
public:
    Staged(const Hyper& h, const Kind& kind, const Coeffs<float>& k, Decay decay, bool scale_grad)
        : h_(h),
          kind_(kind),
          k_(k),
          regular_(pick<float>(rules::form_of(h, false), h.nesterov, decay, scale_grad)),
          first_(pick<float>(rules::form_of(h, true), h.nesterov, decay, scale_grad)),
          // The torch convention's first step sets b <- g without reading b.
          first_reads_buf_(rules::form_of(h, true) != Form::torch_first),
          stages_(stages_of(kind)) {}

    void run(const TensorRef& t, int64_t a, int64_t e) const {
        Chunk param_block, grad_block, buf_block;
        const std::uint64_t key = key_of(t, h_, kind_);
        const SpanFn<float> span = t.first_step ? first_ : regular_;
        const bool reads_buf = t.buf != nullptr && (!t.first_step || first_reads_buf_);
        const Stages& s = stages_;
        // Chunks end at multiples of kChunkBlocks blocks, a divisor of kKeyBlocks.
        for (int64_t j = a, next; j < e; j = next) {
            next = std::min(e, (j / kChunkBlocks + 1) * kChunkBlocks);
            const int64_t off = j * kQuantBlock;
            const int64_t n = std::min((next - j) * kQuantBlock, t.size - off);
            float* p = s.param ? param_block : static_cast<float*>(t.param) + off;
            const float* g = s.grad ? grad_block : static_cast<const float*>(t.grad) + off;
            float* b = t.buf == nullptr ? nullptr : s.buf ? buf_block : static_cast<float*>(t.buf) + off;
            if (s.param) s.param(t, off, n, p);
            if (s.grad) s.grad(t, off, n, grad_block);
            if (b && s.buf && reads_buf) s.buf(t, off, n, buf_block);
            span(TensorRef{p, g, b, n, t.first_step}, 0, n, k_);
            if (s.param_back) s.param_back(t, off, n, p, key);
            if (b && s.buf_back) s.buf_back(t, off, n, b);
        }
    }

private:
    const Hyper& h_;
    const Kind& kind_;
    const Coeffs<float> k_;
    const SpanFn<float> regular_, first_;
    const bool first_reads_buf_;
    const Stages stages_;
};

// The fused function's run over tensor t's blocks [a, e), cut at multiples of kKeyBlocks.
void run_fused(FusedFn fn, const TensorRef& t, int64_t a, int64_t e, const Coeffs<float>& k,
               std::uint64_t key) {
    for (int64_t j = a, next; j < e; j = next) {
        next = std::min(e, (j / kKeyBlocks + 1) * kKeyBlocks);
        const int64_t off = j * kQuantBlock;
        fn(t, off, std::min(next * kQuantBlock, t.size) - off, k, key);
    }
}

}  // namespace

int sgd_lowp(const TensorRef* tensors, std::size_t count, const Hyper& h, const Kind& kind,
             const Launch& launch) {
    const Coeffs<float> k = rules::coeffs<float>(h);
    const Decay decay = rules::decay_of(h, k);
    const bool scale_grad = rules::scales_grad(k);
    const FusedFn regular = fused_kernel(kind, rules::form_of(h, false), h.nesterov, decay, scale_grad);
    const FusedFn first = fused_kernel(kind, rules::form_of(h, true), h.nesterov, decay, scale_grad);
    const Staged staged(h, kind, k, decay, scale_grad);
    return for_each_block_range(tensors, count, kind, launch, [&](const TensorRef& t, int64_t a, int64_t e) {
        const FusedFn fused = t.first_step ? first : regular;
        if (fused == nullptr) staged.run(t, a, e);
        else run_fused(fused, t, a, e, k, key_of(t, h, kind));
    });
}

}  // namespace fastmomentum::FM_ISA
