#pragma once
// Running validated calls on a CUDA device: on which device and stream, ordered after the work the
// arrays' producers left on their own streams.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../bindings/call.hpp"
#include "device_arrays.hpp"

namespace fastmomentum::cuda {

// A stream in the __cuda_array_interface__ convention: 1 is the legacy default stream, 2 the
// per-thread default stream, any other value a cudaStream_t (0 is not allowed: it is ambiguous).
using StreamId = std::intptr_t;

// Runs the calls (checked, with `arrays` their arrays, all on `device`) on `stream`, after the
// pending work of every other stream that an array's __cuda_array_interface__ names, and before
// their later work. Releases the GIL. Only a guarded step waits for the device (for its verdict).
bindings::Outcome run_on_device(const std::vector<bindings::Call>& calls,
                                const bindings::Guard& guard, const std::vector<DeviceArray>& arrays,
                                int device, StreamId stream);

}  // namespace fastmomentum::cuda
