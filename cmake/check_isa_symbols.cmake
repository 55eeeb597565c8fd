# Fails the build if an ISA object defines a weak symbol outside its own namespace.
#
# The linker keeps ONE copy of each weak symbol (inline functions, templates). If an AVX-512 object
# emitted a weak helper that the baseline object also uses, the baseline path could end up running
# AVX-512 code and crash with SIGILL on older CPUs (an ODR hazard). Every kernel
# function must therefore live in fastmomentum::<isa> or fastmomentum::rules::<isa>, or have
# internal linkage.
#
# Usage: cmake -DNM=<nm> -DISA=<isa> -DOBJECT=<object files, a ;-list> -P check_isa_symbols.cmake

set(symbols "")
foreach(object IN LISTS OBJECT)
  execute_process(COMMAND "${NM}" -C --defined-only "${object}"
                  OUTPUT_VARIABLE found RESULT_VARIABLE status)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "${NM} failed on ${object}")
  endif()
  string(APPEND symbols "${found}")
endforeach()

string(REPLACE "\n" ";" symbols "${symbols}")
set(leaks "")
foreach(line IN LISTS symbols)
  # W/V: weak code/object, u: GNU unique, i: indirect function. DW.ref.__gxx_personality_v0 is the
  # C++ runtime's data reference, not code; __clang_call_terminate is Clang's two-call helper
  # (__cxa_begin_catch, then std::terminate) for an exception leaving an OpenMP region, the same
  # two instructions whatever the ISA flags.
  if(line MATCHES "^[0-9a-fA-F]* [WVui] (.*)$")
    set(symbol "${CMAKE_MATCH_1}")
    if(NOT symbol MATCHES "fastmomentum::(rules::)?${ISA}::" AND NOT symbol MATCHES "^DW\\.ref\\."
       AND NOT symbol STREQUAL "__clang_call_terminate")
      list(APPEND leaks "  ${symbol}")
    endif()
  endif()
endforeach()

if(leaks)
  list(JOIN leaks "\n" leaks)
  message(FATAL_ERROR "the ${ISA} kernel object defines weak symbols outside namespace "
                      "fastmomentum::${ISA} (the linker could run them on the wrong CPU):\n${leaks}")
endif()
