#pragma once
// Running checked steps on a CUDA device: on which device and stream, ordered after the work the
// arrays' producers left on their own streams.

#include <vector>

#include "../bindings/call.hpp"
#include "device_arrays.hpp"

namespace fastmomentum::cuda {

// Runs phase 3 of `step` (checked, its arrays all on `device`) on `stream`, after the pending
// work of the `producers` streams (those the arrays' __cuda_array_interface__ name), and before
// their later work. Releases the GIL. Only a guarded step waits for the device (for its verdict).
bindings::Outcome run_on_device(const bindings::Step& step, const bindings::Guard& guard,
                                int device, StreamId stream,
                                const std::vector<StreamId>& producers);

}  // namespace fastmomentum::cuda
