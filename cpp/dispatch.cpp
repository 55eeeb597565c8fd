// Baseline-only: CPU detection, the table of compiled kernel sets, and the ISA in use. Never
// compiled with ISA flags, so nothing here can execute an instruction the CPU lacks.

#include <array>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastmomentum/cpu_features.hpp"
#include "fastmomentum/probe.hpp"

#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <intrin.h>
#define FM_MSVC_CPUID 1
#endif

FM_DECLARE_KERNEL_SET(fastmomentum::baseline)
FM_DECLARE_PROBE_SET(fastmomentum::baseline)
#ifdef FM_HAVE_AVX2
FM_DECLARE_KERNEL_SET(fastmomentum::avx2)
FM_DECLARE_PROBE_SET(fastmomentum::avx2)
#endif
#ifdef FM_HAVE_AVX512
FM_DECLARE_KERNEL_SET(fastmomentum::avx512)
FM_DECLARE_PROBE_SET(fastmomentum::avx512)
#endif

namespace fastmomentum {
namespace {

// What one ISA object provides: the update's kernels, and (apart) the benchmarks' probe.
struct Compiled {
    KernelSet kernels;
    ProbeSet probes;
};

// Indexed by Isa; an ISA that was not compiled, or that this CPU lacks, keeps null sets. An ISA
// object's kernel_set() and probe_set() are compiled with that ISA's flags, so the compiler may
// use its instructions even to fill the returned struct (GCC 16 fills AVX-512's with
// vinserti64x2): they are called only on a CPU that runs them.
const std::array<Compiled, 3>& table() {
    static const std::array<Compiled, 3> sets = [] {
        std::array<Compiled, 3> s{};
        s[static_cast<int>(Isa::baseline)] = Compiled{baseline::kernel_set(), baseline::probe_set()};
#ifdef FM_HAVE_AVX2
        if (isa_supported(Isa::avx2))
            s[static_cast<int>(Isa::avx2)] = Compiled{avx2::kernel_set(), avx2::probe_set()};
#endif
#ifdef FM_HAVE_AVX512
        if (isa_supported(Isa::avx512))
            s[static_cast<int>(Isa::avx512)] = Compiled{avx512::kernel_set(), avx512::probe_set()};
#endif
        return s;
    }();
    return sets;
}

std::atomic<int> g_active{-1};  // an Isa, or -1 before the first use

#ifdef FM_MSVC_CPUID
// What libgcc's __builtin_cpu_supports checks, from CPUID and XCR0: the CPU has the instructions
// AND the OS saves the registers they use (OSXSAVE, then XCR0's SSE+YMM state for AVX2, and its
// opmask+ZMM state for AVX-512); an OS that did not would lose them on every context switch.
bool msvc_supports(Isa isa) {
    const auto has = [](int reg, std::uint32_t bits) {
        return (static_cast<std::uint32_t>(reg) & bits) == bits;
    };
    int r[4];  // eax, ebx, ecx, edx
    __cpuid(r, 0);
    if (r[0] < 7) return false;
    __cpuid(r, 1);
    const std::uint32_t fma = 1u << 12, osxsave = 1u << 27, avx = 1u << 28, f16c = 1u << 29;
    if (!has(r[2], fma | osxsave | avx | f16c)) return false;
    const unsigned long long xcr0 = _xgetbv(0);
    const unsigned long long sse_ymm = 0x6, opmask_zmm = 0xe0;
    __cpuidex(r, 7, 0);
    const std::uint32_t avx2 = 1u << 5;
    const std::uint32_t avx512f = 1u << 16, avx512dq = 1u << 17, avx512bw = 1u << 30,
                        avx512vl = 1u << 31;
    if ((xcr0 & sse_ymm) != sse_ymm || !has(r[1], avx2)) return false;
    if (isa == Isa::avx2) return true;
    return (xcr0 & opmask_zmm) == opmask_zmm && has(r[1], avx512f | avx512dq | avx512bw | avx512vl);
}
#endif

}  // namespace

std::string_view isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
        case Isa::baseline: break;
    }
    return "baseline";
}

std::optional<Isa> isa_from_name(std::string_view name) {
    for (Isa isa : kAllIsas)
        if (isa_name(isa) == name) return isa;
    return std::nullopt;
}

bool isa_compiled(Isa isa) {
    switch (isa) {
        case Isa::avx2:
#ifdef FM_HAVE_AVX2
            return true;
#else
            return false;
#endif
        case Isa::avx512:
#ifdef FM_HAVE_AVX512
            return true;
#else
            return false;
#endif
        case Isa::baseline: break;
    }
    return true;
}

bool isa_supported(Isa isa) {
    if (isa == Isa::baseline) return true;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    // libgcc's checks include the OS's XSAVE support for the wide registers.
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    if (isa == Isa::avx2) return avx2;
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#elif defined(FM_MSVC_CPUID)
    return msvc_supports(isa);
#else
    return false;
#endif
}

Isa best_isa() {
    for (Isa isa : {Isa::avx512, Isa::avx2})
        if (isa_compiled(isa) && isa_supported(isa)) return isa;
    return Isa::baseline;
}

void select_isa(Isa isa) {
    const std::string name(isa_name(isa));
    if (!isa_compiled(isa))
        throw std::invalid_argument("ISA '" + name + "' was not compiled into this build of fastmomentum");
    if (!isa_supported(isa))
        throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU");
    g_active.store(static_cast<int>(isa));
}

Isa active_isa() {
    int active = g_active.load();
    if (active < 0) {
        // First use without an explicit choice: the best ISA, unless another thread chose first.
        int unset = -1;
        g_active.compare_exchange_strong(unset, static_cast<int>(best_isa()));
        active = g_active.load();
    }
    return static_cast<Isa>(active);
}

const KernelSet& active_kernels() { return table()[static_cast<int>(active_isa())].kernels; }

const ProbeSet& active_probes() { return table()[static_cast<int>(active_isa())].probes; }

}  // namespace fastmomentum
