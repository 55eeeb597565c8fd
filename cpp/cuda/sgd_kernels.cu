// The fused momentum-SGD kernels on CUDA devices. The per-element math is rules.hpp's `update`,
// the same function the CPU kernels call (CMake compiles this file with -DFM_ISA=gpu and
// --fmad=false, the CPU kernels' "no FMA contraction" contract), so a device step gives the same
// bits as a CPU step.
//
// Multi-tensor launches: a list of tensors goes to the device as one kernel argument (a Batch of
// up to kBatchTensors tensors, no host-to-device copy), cut into chunks of kChunk elements; CUDA
// block b updates chunk b. Each thread moves 16 bytes per load and store where a chunk's three
// arrays are 16-byte aligned (as every allocation is), element by element otherwise.

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastmomentum/rules.hpp"
#include "launch.hpp"

namespace fastmomentum::cuda {
namespace {

using std::int64_t;

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16 * 1024;  // elements per CUDA block
// Tensors per launch. The Batch (3 pointers and 2 counts per tensor) must fit the 4 KiB of kernel
// parameters that every architecture accepts.
constexpr int kBatchTensors = 48;

template <class T>
struct Batch {
    T* param[kBatchTensors];
    const T* grad[kBatchTensors];
    T* buf[kBatchTensors];  // null without momentum
    int64_t size[kBatchTensors];
    int64_t first_chunk[kBatchTensors + 1];  // chunk where tensor i starts; [count]: all chunks
    int count;
};
static_assert(sizeof(Batch<double>) + sizeof(Coeffs<double>) <= 4096, "kernel parameters");

// 16 bytes of elements: one vector load or store.
template <class T>
struct alignas(16) Pack {
    static constexpr int kSize = 16 / sizeof(T);
    T v[kSize];
};

__device__ inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <class T, Form F, bool Nesterov, Decay D, bool ScaleGrad>
__global__ void __launch_bounds__(kThreads) sgd_kernel(const Batch<T> batch, const Coeffs<T> k) {
    const int64_t chunk = blockIdx.x;
    int t = 0;  // the tensor of this chunk: at most kBatchTensors steps through the parameters
    while (t + 1 < batch.count && batch.first_chunk[t + 1] <= chunk) ++t;
    const int64_t lo = (chunk - batch.first_chunk[t]) * kChunk;
    const int64_t left = batch.size[t] - lo;
    const int n = static_cast<int>(left < kChunk ? left : kChunk);
    T* __restrict__ p = batch.param[t] + lo;
    const T* __restrict__ g = batch.grad[t] + lo;
    T* __restrict__ b = F == Form::plain ? nullptr : batch.buf[t] + lo;

    int scalar_from = 0;  // elements before it went through the vector loop
    constexpr int kPack = Pack<T>::kSize;
    if (aligned16(p) && aligned16(g) && (F == Form::plain || aligned16(b))) {
        const int packs = n / kPack;
        for (int i = threadIdx.x; i < packs; i += kThreads) {
            Pack<T> pp = reinterpret_cast<const Pack<T>*>(p)[i];
            const Pack<T> gg = reinterpret_cast<const Pack<T>*>(g)[i];
            Pack<T> bb{};
            if constexpr (F != Form::plain) bb = reinterpret_cast<const Pack<T>*>(b)[i];
#pragma unroll
            for (int j = 0; j < kPack; ++j)
                rules::update<T, F, Nesterov, D, ScaleGrad>(pp.v[j], bb.v[j], gg.v[j], k);
            reinterpret_cast<Pack<T>*>(p)[i] = pp;
            if constexpr (F != Form::plain) reinterpret_cast<Pack<T>*>(b)[i] = bb;
        }
        scalar_from = packs * kPack;
    }
    for (int i = scalar_from + static_cast<int>(threadIdx.x); i < n; i += kThreads) {
        T param = p[i], buffer{};
        if constexpr (F != Form::plain) buffer = b[i];
        rules::update<T, F, Nesterov, D, ScaleGrad>(param, buffer, g[i], k);
        p[i] = param;
        if constexpr (F != Form::plain) b[i] = buffer;
    }
}

template <class T>
using KernelPtr = void (*)(Batch<T>, Coeffs<T>);

template <class T>
KernelPtr<T> pick(Form f, bool nesterov, Decay d, bool scale_grad) {
    return rules::pick_variant(f, nesterov, d, scale_grad, [](auto F, auto N, auto D, auto S) {
        return &sgd_kernel<T, decltype(F)::value, decltype(N)::value, decltype(D)::value,
                           decltype(S)::value>;
    });
}

// Launches `kernel` over the tensors whose first_step flag is `first`, kBatchTensors at a time.
template <class T>
void launch_batches(KernelPtr<T> kernel, const TensorRef* tensors, std::size_t count, bool first,
                    const Coeffs<T>& k, cudaStream_t stream) {
    Batch<T> batch{};
    const auto flush = [&] {
        if (batch.count == 0) return;
        const int64_t chunks = batch.first_chunk[batch.count];
        if (chunks > 0) {
            kernel<<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(batch, k);
            check(cudaGetLastError(), "launching the update kernel");
        }
        batch = Batch<T>{};
    };
    for (std::size_t i = 0; i < count; ++i) {
        const TensorRef& t = tensors[i];
        if (t.first_step != first || t.size == 0) continue;
        const int64_t chunks = (t.size + kChunk - 1) / kChunk;
        // A grid has at most 2^31 - 1 blocks: a longer list of tensors goes in several launches.
        if (batch.count == kBatchTensors || batch.first_chunk[batch.count] + chunks > INT32_MAX)
            flush();
        const int j = batch.count++;
        batch.param[j] = static_cast<T*>(t.param);
        batch.grad[j] = static_cast<const T*>(t.grad);
        batch.buf[j] = static_cast<T*>(t.buf);
        batch.size[j] = t.size;
        batch.first_chunk[j + 1] = batch.first_chunk[j] + chunks;
    }
    flush();
}

// The guards' statistics. Norm block `nb` (kNormBlock elements of the concatenated range) is
// summed by 16 threads, lane j adding elements j, j + 16, ... in order, and the lanes combine
// pairwise (8, 4, 2, 1 apart): the summation order of the CPU kernels' BlockSum, so the block sums
// are the same bits. Every thread also notes a non-finite element in *nonfinite.
constexpr int kLanes = kNormLanes;
static_assert(kThreads % 32 == 0 && 32 % kLanes == 0, "a warp holds whole blocks' lanes");

template <class T>
struct GradSpan {
    const T* grad;
    int64_t start;  // in the concatenated range
    int64_t size;
};

template <class T, bool Norm>
__global__ void __launch_bounds__(kThreads)
grad_stats_kernel(const GradSpan<T>* spans, int count, int64_t total, double* block_sums,
                  int* nonfinite) {
    const int64_t nb = static_cast<int64_t>(blockIdx.x) * (kThreads / kLanes) + threadIdx.x / kLanes;
    const int lane = static_cast<int>(threadIdx.x % kLanes);
    const int64_t begin = nb * kNormBlock;
    const int64_t end = begin + kNormBlock < total ? begin + kNormBlock : total;
    // The span holding `begin` (the last one that starts at or before it).
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (spans[mid].start <= begin) lo = mid; else hi = mid - 1;
    }
    double sum = 0.0;
    bool finite = true;
    int s = lo;
    for (int64_t pos = begin + lane; pos < end; pos += kLanes) {
        while (pos >= spans[s].start + spans[s].size) ++s;
        // bfloat16 and float16 read widened: the statistics of float32 gradients of their values.
        const auto g = rules::widen(spans[s].grad[pos - spans[s].start]);
        if constexpr (Norm) sum += rules::square(g);
        finite = finite && rules::nonfinite_term(g) == decltype(g)(0);
    }
    if (!finite) atomicOr(nonfinite, 1);
    if constexpr (Norm) {
        // Every thread of the warp takes part (a lane past the end adds zeros it never writes).
        for (int width = kLanes / 2; width > 0; width /= 2)
            sum += __shfl_down_sync(0xffffffffu, sum, width, kLanes);
        if (lane == 0 && begin < total) block_sums[nb] = sum;
    }
}

// Device memory for the length of one host call, freed in stream order.
class StreamBuffer {
public:
    StreamBuffer(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
        check(cudaMallocAsync(&data_, bytes, stream), "allocating device memory for the guards");
    }
    ~StreamBuffer() { cudaFreeAsync(data_, stream_); }
    StreamBuffer(const StreamBuffer&) = delete;
    StreamBuffer& operator=(const StreamBuffer&) = delete;
    template <class U>
    U* as() const { return static_cast<U*>(data_); }

private:
    void* data_ = nullptr;
    cudaStream_t stream_;
};

}  // namespace

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

template <class T>
void sgd(const TensorRef* tensors, std::size_t count, const Hyper& h, cudaStream_t stream) {
    const Coeffs<T> k = rules::coeffs<T>(h);
    const Decay decay = rules::decay_of(h, k);
    const bool scale_grad = rules::scales_grad(k);
    for (const bool first : {false, true})
        launch_batches<T>(pick<T>(rules::form_of(h, first), h.nesterov, decay, scale_grad), tensors,
                          count, first, k, stream);
}

template <class T>
bool grad_stats(const TensorRef* tensors, std::size_t count, std::vector<double>* block_sums,
                cudaStream_t stream) {
    std::vector<GradSpan<T>> spans;
    int64_t total = 0;
    for (std::size_t i = 0; i < count; ++i) {
        if (tensors[i].size == 0) continue;
        spans.push_back(GradSpan<T>{static_cast<const T*>(tensors[i].grad), total, tensors[i].size});
        total += tensors[i].size;
    }
    if (total == 0) return true;
    const int64_t blocks = (total + kNormBlock - 1) / kNormBlock;
    const std::size_t span_bytes = spans.size() * sizeof(GradSpan<T>);
    const std::size_t sum_bytes = block_sums ? static_cast<std::size_t>(blocks) * sizeof(double) : 0;
    // One allocation: the flag, the block sums (8-byte aligned after the flag's 8 bytes), the spans.
    StreamBuffer device(8 + sum_bytes + span_bytes, stream);
    int* nonfinite = device.as<int>();
    double* sums = reinterpret_cast<double*>(device.as<char>() + 8);
    auto* device_spans = reinterpret_cast<GradSpan<T>*>(device.as<char>() + 8 + sum_bytes);
    check(cudaMemsetAsync(nonfinite, 0, sizeof(int), stream), "clearing the guards' flag");
    check(cudaMemcpyAsync(device_spans, spans.data(), span_bytes, cudaMemcpyHostToDevice, stream),
          "copying the gradients' list to the device");
    const int64_t grid = (blocks + kThreads / kLanes - 1) / (kThreads / kLanes);
    const int span_count = static_cast<int>(spans.size());
    if (block_sums)
        grad_stats_kernel<T, true><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
            device_spans, span_count, total, sums, nonfinite);
    else
        grad_stats_kernel<T, false><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
            device_spans, span_count, total, nullptr, nonfinite);
    check(cudaGetLastError(), "launching the guards' kernel");
    int flag = 0;
    check(cudaMemcpyAsync(&flag, nonfinite, sizeof(int), cudaMemcpyDeviceToHost, stream),
          "reading the guards' flag");
    if (block_sums) {
        block_sums->resize(static_cast<std::size_t>(blocks));
        check(cudaMemcpyAsync(block_sums->data(), sums, sum_bytes, cudaMemcpyDeviceToHost, stream),
              "reading the gradients' block sums");
    }
    check(cudaStreamSynchronize(stream), "waiting for the guards' kernel");
    return flag == 0;
}

template void sgd<float>(const TensorRef*, std::size_t, const Hyper&, cudaStream_t);
template void sgd<double>(const TensorRef*, std::size_t, const Hyper&, cudaStream_t);
template bool grad_stats<float>(const TensorRef*, std::size_t, std::vector<double>*, cudaStream_t);
template bool grad_stats<double>(const TensorRef*, std::size_t, std::vector<double>*, cudaStream_t);
template bool grad_stats<bf16>(const TensorRef*, std::size_t, std::vector<double>*, cudaStream_t);
template bool grad_stats<f16>(const TensorRef*, std::size_t, std::vector<double>*, cudaStream_t);

}  // namespace fastmomentum::cuda
