#pragma once
// Zero-copy validation of device arrays, the CUDA module's counterpart of bindings/arrays.hpp:
// any object with `__cuda_array_interface__` (v2/v3: CuPy, Numba, PyTorch without grad) or, failing
// that, `__dlpack__` on a CUDA device (PyTorch, JAX, ...). The same rules and messages as for host
// arrays: float32/float64, C-contiguous, aligned, writeable when written, matching shapes. Only
// check_devices calls CUDA (where the memory lives), so every other rule is checked, and
// testable, without a GPU.

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../bindings/arrays.hpp"

namespace fastmomentum::cuda {

namespace py = pybind11;
using bindings::Access;
using bindings::Dtype;

struct DeviceArray {
    py::object owner;  // the array, or its DLPack capsule: keeps the memory alive for the call
    void* data;
    std::int64_t size;
    std::size_t nbytes;
    Dtype dtype;
    Access access;
    std::vector<std::int64_t> shape;
    // The producer's stream from __cuda_array_interface__ (1: legacy default, 2: per-thread
    // default, else a cudaStream_t), or 0 when it names none or the array came through DLPack
    // (which synchronises with the consumer's stream itself).
    std::intptr_t stream;
    const char* list;
    std::size_t index;
};

std::string label(const DeviceArray& a);  // e.g. "grads[3]"

// Checks `obj` as sgd_step checks a host array. `stream` is the stream the call will run on (the
// __cuda_array_interface__ convention), passed to `__dlpack__` so that the producer orders its
// pending work before it.
DeviceArray check_device_array(py::handle obj, const char* list, std::size_t index, Access access,
                               std::intptr_t stream);

// `other` must have the dtype and shape of `ref`.
void check_matches(const DeviceArray& other, const DeviceArray& ref);

// Every non-empty array must be memory of one CUDA device (device or managed memory, not host
// memory); returns that device (0 when every array is empty).
int check_devices(const std::vector<DeviceArray>& arrays);

}  // namespace fastmomentum::cuda
