#pragma once
// The benchmarks' bandwidth probe. Not an update: it moves what the update moves (read p, g, b;
// write p, b) with the least arithmetic, p += s*g and b += s*g, threaded like the kernels, so its
// time is the floor the update's time is measured against (README, "Performance"). Compiled per
// ISA beside the kernels (cpp/kernels/probe_kernels.cpp), in a table of its own.

#include <cstddef>

#include "fastmomentum/kernels.hpp"

namespace fastmomentum {

// Runs the probe over every tensor (each has a buffer); returns the number of threads that ran.
using ProbeFn = int (*)(const TensorRef* tensors, std::size_t count, double scale,
                        const Launch& launch);

struct ProbeSet {
    const char* isa;  // set by the ISA object itself
    ProbeFn f32;
    ProbeFn f64;
};

// Declares one ISA object's probe entry point, e.g. FM_DECLARE_PROBE_SET(avx2).
#define FM_DECLARE_PROBE_SET(isa) \
    namespace isa {               \
    ProbeSet probe_set();         \
    }

// The probes of the ISA in use (dispatch.cpp).
const ProbeSet& active_probes();

}  // namespace fastmomentum
