// The thread-count policy (see threads.hpp). Baseline-only; works with and without OpenMP.

#include "fastmomentum/threads.hpp"

#include <algorithm>
#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
#define FM_HAVE_PTHREAD_ATFORK
#include <pthread.h>
#endif
#if defined(_OPENMP) && defined(_WIN32)
#define NOMINMAX  // windows.h's min/max macros would break std::min below
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#elif defined(_OPENMP)
#include <dlfcn.h>
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

std::string openmp_runtime() {
#if defined(_OPENMP) && defined(_WIN32)
    // The wide API and UTF-8, so that no path is truncated at MAX_PATH or mangled by a code page.
    HMODULE module = nullptr;
    if (!GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS |
                                GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                            reinterpret_cast<LPCWSTR>(&omp_get_max_threads), &module))
        return "unknown";
    std::wstring wide(32768, L'\0');  // the longest path Windows allows
    const DWORD length = GetModuleFileNameW(module, wide.data(), static_cast<DWORD>(wide.size()));
    if (length == 0 || length >= wide.size()) return "unknown";
    const int bytes = WideCharToMultiByte(CP_UTF8, 0, wide.data(), static_cast<int>(length),
                                          nullptr, 0, nullptr, nullptr);
    if (bytes <= 0) return "unknown";
    std::string path(static_cast<std::size_t>(bytes), '\0');
    WideCharToMultiByte(CP_UTF8, 0, wide.data(), static_cast<int>(length), path.data(), bytes,
                        nullptr, nullptr);
    return path;
#elif defined(_OPENMP)
    // The library that defines the entry point we call: the one this module actually runs on
    // (after auditwheel, the vendored copy in fastmomentum.libs/).
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&omp_get_max_threads), &info) != 0 && info.dli_fname)
        return info.dli_fname;
    return "unknown";
#else
    return "";
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
#ifdef FM_HAVE_PTHREAD_ATFORK
    static const int installed =
        pthread_atfork(nullptr, nullptr, [] { g_forked.store(true); });
    (void)installed;
#endif
}

void set_grain_bytes(std::int64_t bytes) { g_grain_bytes.store(bytes); }
std::int64_t grain_bytes() { return g_grain_bytes.load(); }

Launch current_launch() { return Launch{max_threads(), grain_bytes()}; }

}  // namespace fastmomentum
