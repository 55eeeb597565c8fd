#pragma once
// Which instruction sets this build compiled and this CPU runs, and which one is in use.

#include <optional>
#include <string_view>

#include "fastmomentum/kernels.hpp"

namespace fastmomentum {

enum class Isa { baseline, avx2, avx512 };
inline constexpr Isa kAllIsas[] = {Isa::baseline, Isa::avx2, Isa::avx512};

std::string_view isa_name(Isa isa);
std::optional<Isa> isa_from_name(std::string_view name);
bool isa_compiled(Isa isa);    // this build contains kernels for it
bool isa_supported(Isa isa);   // this CPU (and OS) can run it
Isa best_isa();                // the widest ISA that is both compiled and supported

// The kernels in use. select_isa throws std::invalid_argument when `isa` is not compiled or not
// supported, naming which.
Isa active_isa();
const KernelSet& active_kernels();
void select_isa(Isa isa);

// The environment variable that forces an ISA at import.
inline constexpr const char* kIsaEnvVar = "FASTMOMENTUM_ISA";

}  // namespace fastmomentum
