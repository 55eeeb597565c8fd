#include "device_step.hpp"

#include <cuda_runtime_api.h>

#include "launch.hpp"

namespace fastmomentum::cuda {
namespace {

cudaStream_t to_stream(StreamId id) {
    if (id == 1) return cudaStreamLegacy;
    if (id == 2) return cudaStreamPerThread;
    return reinterpret_cast<cudaStream_t>(id);
}

// Makes `device` current for its lifetime (CUDA calls act on the calling thread's device).
class CurrentDevice {
public:
    explicit CurrentDevice(int device) {
        check(cudaGetDevice(&previous_), "cudaGetDevice");
        if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
    }
    ~CurrentDevice() { cudaSetDevice(previous_); }
    CurrentDevice(const CurrentDevice&) = delete;
    CurrentDevice& operator=(const CurrentDevice&) = delete;

private:
    int previous_ = 0;
};

// `waiter` waits for the work enqueued on `stream` so far.
void wait_for(cudaStream_t waiter, cudaStream_t stream) {
    cudaEvent_t event;
    check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    cudaError_t status = cudaEventRecord(event, stream);
    if (status == cudaSuccess) status = cudaStreamWaitEvent(waiter, event, 0);
    cudaEventDestroy(event);  // released once the wait has happened
    check(status, "ordering the step's stream after an array's stream");
}

}  // namespace

bindings::Outcome run_on_device(const bindings::Step& step, const bindings::Guard& guard,
                                int device, StreamId stream_id,
                                const std::vector<StreamId>& producers) {
    const cudaStream_t stream = to_stream(stream_id);
    py::gil_scoped_release release;
    const CurrentDevice current(device);
    for (StreamId p : producers) wait_for(stream, to_stream(p));
    const bindings::Outcome outcome = bindings::run_updates(
        step.updates, guard,
        [&](const std::vector<TensorRef>& list, Dtype dtype, double* sum_squares) {
            std::vector<double> sums;
            std::vector<double>* want = sum_squares ? &sums : nullptr;
            const TensorRef* data = list.data();
            const std::size_t n = list.size();
            const bool finite = dtype == Dtype::f64    ? grad_stats<double>(data, n, want, stream)
                                : dtype == Dtype::bf16 ? grad_stats<bf16>(data, n, want, stream)
                                : dtype == Dtype::f16  ? grad_stats<f16>(data, n, want, stream)
                                                       : grad_stats<float>(data, n, want, stream);
            for (double s : sums) *sum_squares += s;  // block after block, as on the CPU
            return finite;
        },
        [&](const bindings::Update& u, const Hyper& h) {
            if (!u.f32.empty()) sgd<float>(u.f32.data(), u.f32.size(), h, stream);
            if (!u.f64.empty()) sgd<double>(u.f64.data(), u.f64.size(), h, stream);
            for (const bindings::LowpList& l : u.lowp)
                sgd_lowp(l.tensors.data(), l.tensors.size(), h, l.kind, stream);
            return 0;  // no host threads
        });
    for (StreamId p : producers) wait_for(to_stream(p), stream);
    return outcome;
}

}  // namespace fastmomentum::cuda
