#pragma once
// Software prefetch for the guards' read-only passes over the gradients (the norm's sum of squares
// and the finiteness check). One read stream per thread is limited by how many cache misses a core
// keeps in flight, not by the memory: measured on one thread over 25.6 M float32 gradients, the
// norm pass ran at 11 GB/s, while the update (three read streams, two written) moved 35 GB/s.
// Asking for the line kPrefetchBytes ahead keeps enough misses in flight. The update passes need
// none: their several streams already do. Included inside fastmomentum::<FM_ISA> with internal
// linkage, as partition.hpp.

#include <cstdint>

#ifdef _MSC_VER
#include <immintrin.h>
#endif

#ifndef FM_ISA
#error "Define FM_ISA (the instruction-set namespace) first."
#endif

namespace fastmomentum::FM_ISA {
namespace {

// Swept on one thread (2, 4, 8, 16 and 32 KiB ahead): from 8 KiB on, the same.
constexpr std::uintptr_t kPrefetchBytes = 8192;

// Hints that the line kPrefetchBytes past `p` will be read. The address is computed as an integer:
// it may lie past the array's end, where a pointer may not point; a prefetch never faults.
inline void prefetch_ahead(const void* p) {
    const std::uintptr_t ahead = reinterpret_cast<std::uintptr_t>(p) + kPrefetchBytes;
#ifdef _MSC_VER
    _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
#else
    __builtin_prefetch(reinterpret_cast<const void*>(ahead));
#endif
}

}  // namespace
}  // namespace fastmomentum::FM_ISA
