// The thread-count policy (see threads.hpp). Baseline-only; works with and without OpenMP.

#include "fastmomentum/threads.hpp"

#include <algorithm>
#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastmomentum {
namespace {
std::atomic<int> g_cap{0};
std::atomic<std::int64_t> g_grain{kDefaultGrain};
}  // namespace

bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

int openmp_version() {
#ifdef _OPENMP
    return _OPENMP;
#else
    return 0;
#endif
}

void set_thread_cap(int n) { g_cap.store(n); }
int thread_cap() { return g_cap.load(); }

int max_threads() {
#ifdef _OPENMP
    const int omp = omp_get_max_threads();  // the CALLING thread's limit: OMP_NUM_THREADS, threadpoolctl
    const int cap = g_cap.load();
    return cap > 0 ? std::min(cap, omp) : omp;
#else
    return 1;
#endif
}

void set_grain(std::int64_t elements) { g_grain.store(elements); }
std::int64_t grain() { return g_grain.load(); }

Launch current_launch() { return Launch{max_threads(), grain()}; }

}  // namespace fastmomentum
