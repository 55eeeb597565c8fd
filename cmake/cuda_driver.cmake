# Whether this machine has a CUDA driver, for FASTMOMENTUM_CUDA=AUTO (CMakeLists.txt).
#
# "A driver" is the file the CUDA runtime opens at its first call: libcuda.so.1 (nvcuda.dll on
# Windows), looked up as the dynamic loader looks it up: LD_LIBRARY_PATH, then ldconfig's cache,
# where the NVIDIA driver, the NVIDIA container toolkit and WSL register it. Not the toolkit's
# stubs/libcuda.so, nor a libcuda.so.1 link made to it so that programs link in a driverless
# image: a stub fails every call at run time. A GPU is not required at build time (the module
# reports a missing device itself), only what would let one be used; a machine without a driver
# can still build the module with FASTMOMENTUM_CUDA=ON (for another machine, or a wheel).

# Sets <out> to the first libcuda.so.1 among the folders of <ld_library_path> (':'-separated)
# and the paths listed in <ldconfig_output> (`ldconfig -p`'s text) that exists and is no stub,
# or to "" when there is none. Kept apart from the probing so that it can be tested on any input
# (tests/test_cuda_build.py).
function(fm_pick_cuda_driver out ld_library_path ldconfig_output)
  set(candidates "")
  string(REPLACE ":" ";" folders "${ld_library_path}")
  foreach(folder IN LISTS folders)
    if(folder)
      list(APPEND candidates "${folder}/libcuda.so.1")
    endif()
  endforeach()
  # Every architecture's entry counts: a driver installs its 32-bit and 64-bit libraries together.
  string(REGEX MATCHALL "libcuda\\.so\\.1 [^\n]*=> [^\n]+" entries "${ldconfig_output}")
  foreach(entry IN LISTS entries)
    string(REGEX REPLACE ".*=> *" "" path "${entry}")
    list(APPEND candidates "${path}")
  endforeach()
  foreach(candidate IN LISTS candidates)
    if(EXISTS "${candidate}" AND NOT IS_DIRECTORY "${candidate}")
      get_filename_component(real "${candidate}" REALPATH)
      if(NOT candidate MATCHES "/stubs/" AND NOT real MATCHES "/stubs/")
        set(${out} "${candidate}" PARENT_SCOPE)
        return()
      endif()
    endif()
  endforeach()
  set(${out} "" PARENT_SCOPE)
endfunction()

# Sets <out> to the path of this machine's CUDA driver, or to "" when it has none.
function(fm_find_cuda_driver out)
  if(WIN32)
    set(driver "$ENV{SystemRoot}/System32/nvcuda.dll")
    if(NOT EXISTS "${driver}")
      set(driver "")
    endif()
  else()
    set(ldconfig_output "")
    find_program(FM_LDCONFIG ldconfig PATHS /sbin /usr/sbin)
    if(FM_LDCONFIG)
      execute_process(COMMAND "${FM_LDCONFIG}" -p OUTPUT_VARIABLE ldconfig_output ERROR_QUIET)
    endif()
    fm_pick_cuda_driver(driver "$ENV{LD_LIBRARY_PATH}" "${ldconfig_output}")
  endif()
  set(${out} "${driver}" PARENT_SCOPE)
endfunction()
