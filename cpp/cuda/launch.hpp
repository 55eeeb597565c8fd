#pragma once
// The host-side interface of the CUDA kernels (sgd_kernels.cu): the same TensorRef lists and
// Hyper as the CPU kernels (kernels.hpp), with device pointers, run on a CUDA stream. Every
// function only enqueues work on `stream`, except grad_stats, which waits for its result.
// Errors throw std::runtime_error naming the CUDA call.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <vector>

#include "fastmomentum/hyper.hpp"
#include "fastmomentum/kernels.hpp"

namespace fastmomentum::cuda {

// Updates every tensor (float32 or float64 elements, as T) in place: one fused pass, the
// per-element math of rules.hpp, with hyper-parameters rounded exactly as the CPU kernels round
// them, so both give the same bits.
template <class T>
void sgd(const TensorRef* tensors, std::size_t count, const Hyper& hyper, cudaStream_t stream);

// Updates every tensor of one low-precision kind (storage.hpp) in place, as the CPU's sgd_lowp
// does: each element widened to float32, updated by the float32 formula with the float32
// coefficients, narrowed back; an 8-bit buffer's block scaled by the largest of its new values.
// (lowp_kernels.cu)
void sgd_lowp(const TensorRef* tensors, std::size_t count, const Hyper& hyper, const Kind& kind,
              cudaStream_t stream);

// The statistics of a step's guards over the gradients' concatenated range, as the CPU's
// GradStatsFn defines them (T: float, double, or bf16 / f16 read widened to float32): returns whether every element is finite; with block_sums, also
// each kNormBlock block's sum of g*g in the CPU kernels' exact summation order (so the norm, and
// the clipped update, are the same bits as on the CPU). Synchronises with `stream`.
template <class T>
bool grad_stats(const TensorRef* tensors, std::size_t count, std::vector<double>* block_sums,
                cudaStream_t stream);

// Throws std::runtime_error("<what>: <CUDA's message>") unless `status` is cudaSuccess.
void check(cudaError_t status, const char* what);

}  // namespace fastmomentum::cuda
