#pragma once
// The thread-count policy. A call uses at most
//     min(set_num_threads cap, the calling thread's OpenMP max threads, OMP_THREAD_LIMIT)
// threads, so OMP_NUM_THREADS and threadpoolctl limits (which set the calling thread's OpenMP
// "nthreads-var") are honoured, and never more than one thread per `grain` elements. In a child
// created by fork(), calls run serially: libgomp's thread pool does not survive fork (its workers
// are gone, and the child's next parallel region would hang), as PyTorch also does.

#include <cstdint>

#include "fastmomentum/kernels.hpp"

namespace fastmomentum {

bool openmp_enabled();
int openmp_version();  // the _OPENMP date (e.g. 201511), 0 without OpenMP

void set_thread_cap(int n);  // n >= 1, or 0 for no cap
int max_threads();           // what a call from THIS thread may use
void install_fork_handler();  // once, at import

// Elements per thread below which a call stays serial (opening a parallel region costs ~1.5 us).
inline constexpr std::int64_t kDefaultGrain = 32768;
void set_grain(std::int64_t elements);  // elements >= 1
std::int64_t grain();

Launch current_launch();

}  // namespace fastmomentum
