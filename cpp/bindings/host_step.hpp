#pragma once
// Steps on NumPy arrays: the host reader of phase 2, and the CPU kernels of phase 3 (call.hpp).

#include <pybind11/pybind11.h>

#include <cstdint>

#include "array_desc.hpp"
#include "call.hpp"
#include "host_arrays.hpp"

namespace fastmomentum::bindings {

// Phase 2's reader for NumPy arrays: C struct reads only (host_arrays.hpp).
struct HostReader {
    void operator()(Checked& out, PyObject* obj, Access access) const {
        if (!read_plain_host_array(out, obj, access)) read_host_array(out, obj, access);
    }
};

// Below this many elements in all, a kernel takes less time (< 1 us) than releasing the GIL and
// taking it back, so it runs holding the GIL (NumPy's ufuncs do the same below 500 elements).
inline constexpr std::int64_t kReleaseGilElements = 8192;

// Phase 3 on the active ISA's kernels, with the GIL released unless the step is tiny; `out` is
// written before the GIL is taken back (publish), so that a fork() by another thread, which needs
// the GIL, finds either no outcome or the whole one.
void run_on_host(const Step& step, const Guard& guard, Outcome& out);

// The guard's statistics pass over arrays checked as gradients: whether every element is finite,
// and the sum of their squares in the kernels' fixed order (float32 arrays in list order, then
// float64 ones), the GIL released unless they are tiny.
struct GradStats {
    bool finite;
    double sum_squares;
};
GradStats measure_on_host(const Step& step);

}  // namespace fastmomentum::bindings
