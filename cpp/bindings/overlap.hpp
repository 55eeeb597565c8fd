#pragma once
// The aliasing rule of a step, for any array type A with `data`, `nbytes`, `access` and a
// `label(const A&)` found by name lookup (host arrays here, device arrays in the CUDA module):
// no array that is written may share memory with any other array (two reads may).

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "arrays.hpp"

namespace fastmomentum::bindings {

template <class A>
void check_disjoint(const std::vector<A>& arrays) {
    // Sweep the byte ranges in address order. A range overlaps an earlier-starting one iff it
    // starts before the furthest end seen so far; a conflict needs one of the two to be written.
    // Pointers to the non-empty arrays, on the stack for a small call (no allocation).
    const A* small[24];
    std::vector<const A*> large(arrays.size() > 24 ? arrays.size() : 0);
    const A** first = large.empty() ? small : large.data();
    const A** last = first;
    for (const A& a : arrays)
        if (a.nbytes > 0) *last++ = &a;
    const auto begin = [](const A* a) { return reinterpret_cast<std::uintptr_t>(a->data); };
    const auto end = [&](const A* a) { return begin(a) + a->nbytes; };
    std::sort(first, last,
              [&](const A* x, const A* y) { return begin(x) < begin(y); });

    const A* furthest_any = nullptr;      // of all earlier ranges
    const A* furthest_written = nullptr;  // of earlier written ranges
    for (const A** it = first; it != last; ++it) {
        const A* a = *it;
        const A* clash = nullptr;
        if (a->access == Access::write && furthest_any && end(furthest_any) > begin(a)) clash = furthest_any;
        else if (furthest_written && end(furthest_written) > begin(a)) clash = furthest_written;
        if (clash)
            throw py::value_error(label(*clash) + " and " + label(*a) + " share memory; every "
                                  "parameter and buffer of a call must be distinct memory, and no "
                                  "gradient may overlap one");
        if (!furthest_any || end(a) > end(furthest_any)) furthest_any = a;
        if (a->access == Access::write && (!furthest_written || end(a) > end(furthest_written)))
            furthest_written = a;
    }
}

}  // namespace fastmomentum::bindings
