#pragma once
// The thread-count policy. A call uses at most
//     min(set_num_threads cap, the calling thread's OpenMP max threads, OMP_THREAD_LIMIT)
// threads, so OMP_NUM_THREADS and threadpoolctl limits (which set the calling thread's OpenMP
// "nthreads-var") are honoured, and never more than one thread per `grain` bytes of parameters. In a child
// created by fork(), calls run serially: libgomp's thread pool does not survive fork (its workers
// are gone, and the child's next parallel region would hang), as PyTorch also does.

#include <cstdint>
#include <string>

#include "fastmomentum/kernels.hpp"

namespace fastmomentum {

bool openmp_enabled();
int openmp_version();  // the _OPENMP date (e.g. 201511), 0 without OpenMP
std::string openmp_runtime();  // the loaded runtime library's path; "" without OpenMP

void set_thread_cap(int n);  // n >= 1, or 0 for no cap
int max_threads();           // what a call from THIS thread may use
void install_fork_handler();  // once, at import

// Bytes of parameters per thread below which a call stays serial: opening a parallel region and
// waking a thread costs ~2 us. Measured with bench/grain_scan.py (2 cores, one array): a second
// thread broke even at 16 K float32 / 8-16 K float64 elements in all, and was 27% (float32) and
// 30% (float64) faster at 32 K / 16 K elements, i.e. 64 KiB per thread in both dtypes.
inline constexpr std::int64_t kDefaultGrainBytes = 65536;
void set_grain_bytes(std::int64_t bytes);  // bytes >= 1
std::int64_t grain_bytes();

Launch current_launch();

}  // namespace fastmomentum
