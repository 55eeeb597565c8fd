#pragma once
// Host arrays as calls (call.hpp), and running validated calls on the CPU kernels. Shared by
// sgd_step, sgd_steps, the optimizer's plans and the bandwidth reference.

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "arrays.hpp"
#include "call.hpp"
#include "hyper_args.hpp"
#include "fastmomentum/hyper.hpp"
#include "fastmomentum/kernels.hpp"

namespace fastmomentum::bindings {

// Checks params, grads and (when not None) buffers as one call's lists, appends every checked
// array to `arrays` (for the overlap check across calls) and returns the call. `indices` numbers
// the arrays in messages (None: 0, 1, ...); `first_step` is one bool or one per array.
Call prepare(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             const Hyper& h, py::handle indices, std::vector<CheckedArray>& arrays);

// Below this many elements in all, a kernel takes less time (< 1 us) than releasing the GIL and
// taking it back, so it runs holding the GIL (NumPy's ufuncs do the same below 500 elements).
inline constexpr std::int64_t kReleaseGilElements = 8192;

// Runs validated calls, with the GIL released unless they are tiny: the guard's statistics pass
// over every gradient first when it asks for one, then the updates unless that pass found a
// non-finite gradient. The calls' hypers must carry grad_scale = 1 / guard.loss_scale (checked
// with their coefficients).
Outcome run(const Call* calls, std::size_t count, const Guard& guard = Guard{});

}  // namespace fastmomentum::bindings
