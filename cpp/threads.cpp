// The thread-count policy (see threads.hpp). Baseline-only; works with and without OpenMP.

#include "fastmomentum/threads.hpp"

#include <algorithm>
#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_OPENMP) && defined(__unix__)
#include <pthread.h>
#endif

namespace fastmomentum {
namespace {
std::atomic<int> g_cap{0};
std::atomic<std::int64_t> g_grain_bytes{kDefaultGrainBytes};
std::atomic<bool> g_forked{false};
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

int max_threads() {
#ifdef _OPENMP
    if (g_forked.load()) return 1;
    // The CALLING thread's limit (OMP_NUM_THREADS, threadpoolctl), and the process-wide one
    // (OpenMP 3.0, 200805; MSVC's runtime is 2.0 and has no thread limit).
#if _OPENMP >= 200805
    const int omp = std::min(omp_get_max_threads(), omp_get_thread_limit());
#else
    const int omp = omp_get_max_threads();
#endif
    const int cap = g_cap.load();
    return cap > 0 ? std::min(cap, omp) : omp;
#else
    return 1;
#endif
}

void install_fork_handler() {
#if defined(_OPENMP) && defined(__unix__)
    static const int installed =
        pthread_atfork(nullptr, nullptr, [] { g_forked.store(true); });
    (void)installed;
#endif
}

void set_grain_bytes(std::int64_t bytes) { g_grain_bytes.store(bytes); }
std::int64_t grain_bytes() { return g_grain_bytes.load(); }

Launch current_launch() { return Launch{max_threads(), grain_bytes()}; }

}  // namespace fastmomentum
