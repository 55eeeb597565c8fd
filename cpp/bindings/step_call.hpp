#pragma once
// One validated update of a list of arrays (a "call"), and running validated calls. Shared by
// sgd_step, sgd_steps, the optimizer's plans and the bandwidth reference.

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "arrays.hpp"
#include "hyper_args.hpp"
#include "fastmomentum/hyper.hpp"
#include "fastmomentum/kernels.hpp"

namespace fastmomentum::bindings {

// One call's hyper-parameters and its tensors, by dtype.
struct Call {
    Hyper hyper;
    std::vector<TensorRef> f32, f64;

    // Appends one tensor (buffer may be null). A tensor whose param, grad and buffer each start
    // where the previous tensor's end (views into one flat storage) extends that tensor instead:
    // one long span costs the kernel less than many short ones, and the update is element-wise.
    void append(const CheckedArray& param, const CheckedArray& grad, const CheckedArray* buffer,
                bool first_step);
};

// Checks params, grads and (when not None) buffers as one call's lists, appends every checked
// array to `arrays` (for the overlap check across calls) and returns the call. `indices` numbers
// the arrays in messages (None: 0, 1, ...); `first_step` is one bool or one per array.
Call prepare(py::handle params, py::handle grads, py::handle buffers, py::handle first_step,
             const Hyper& h, py::handle indices, std::vector<CheckedArray>& arrays);

// Checks the coefficients for the dtypes the call has.
void check_call_coefficients(const Call& call);

// What running a step's calls did.
struct Outcome {
    bool applied = true;  // false: a gradient was not finite and nothing was written
    double norm = 0.0;    // the global 2-norm of the (unscaled) gradients, when clipping
    int threads = 0;      // the most threads any kernel ran
};

// The Python value of an outcome: (applied, norm or None, threads).
py::tuple to_python(const Outcome& outcome, const Guard& guard);

// Below this many elements in all, a kernel takes less time (< 1 us) than releasing the GIL and
// taking it back, so it runs holding the GIL (NumPy's ufuncs do the same below 500 elements).
inline constexpr std::int64_t kReleaseGilElements = 8192;

// Runs validated calls, with the GIL released unless they are tiny: the guard's statistics pass
// over every gradient first when it asks for one, then the updates unless that pass found a
// non-finite gradient. The calls' hypers must carry grad_scale = 1 / guard.loss_scale (checked
// with their coefficients).
Outcome run(const Call* calls, std::size_t count, const Guard& guard = Guard{});

}  // namespace fastmomentum::bindings
