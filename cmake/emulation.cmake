# Test-only SIMT emulation builds (csrc/emu): the product's csrc/cuda/*.cu compiled by the host
# C++ compiler against csrc/emu/include, linked with the CPU kernels, dispatch and bindings (csrc/{cpu,dispatch,bindings}) into
# two pybind11 modules that are never installed:
#   _C_emu_race  kernels instrumented (-fsanitize=thread ABI) for the emulation's own race and
#                shared-memory bounds detector (csrc/emu/race_detector.cpp)
#   _C_emu_asan  everything under AddressSanitizer + UBSan (load with libasan preloaded)
# Configure with -DFLOWFAST_EMULATION=ON in a build dir of its own (make emu does this).
set(PYBIND11_FINDPYTHON ON)
find_package(pybind11 CONFIG REQUIRED)

set(FF_ROOT ${CMAKE_CURRENT_SOURCE_DIR})
file(GLOB FF_EMU_CPU_SOURCES CONFIGURE_DEPENDS ${FF_ROOT}/csrc/cpu/*.cpp ${FF_ROOT}/csrc/dispatch/*.cpp
     ${FF_ROOT}/csrc/bindings/*.cpp)
file(GLOB FF_EMU_KERNEL_SOURCES CONFIGURE_DEPENDS ${FF_ROOT}/csrc/cuda/*.cu)
list(APPEND FF_EMU_KERNEL_SOURCES ${FF_ROOT}/csrc/emu/selftest_kernels.cpp)
set_source_files_properties(${FF_EMU_KERNEL_SOURCES} PROPERTIES LANGUAGE CXX)
set(FF_EMU_RUNTIME ${FF_ROOT}/csrc/emu/fiber.cpp ${FF_ROOT}/csrc/emu/scheduler.cpp
    ${FF_ROOT}/csrc/emu/symbols.cpp ${FF_ROOT}/csrc/emu/host_api.cpp)

set(FF_ASAN_FLAGS -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined)

function(flowfast_emulation_module NAME MODE)
  add_library(${NAME}_kernels OBJECT ${FF_EMU_KERNEL_SOURCES})
  add_library(${NAME}_host OBJECT ${FF_EMU_CPU_SOURCES} ${FF_EMU_RUNTIME} ${ARGN})
  foreach(part ${NAME}_kernels ${NAME}_host)
    target_include_directories(${part} PRIVATE ${FF_ROOT}/csrc/emu/include ${FF_ROOT}/csrc/emu ${FF_ROOT}/csrc/include
                                               ${FF_ROOT}/csrc ${FF_ROOT}/csrc/cuda)
    target_compile_definitions(${part} PRIVATE FLOWFAST_WITH_CUDA=1 FLOWFAST_CUDA_ARCH_LIST="emulated"
                                               FLOWFAST_MODULE_NAME=${NAME})
    target_link_libraries(${part} PRIVATE pybind11::module)
    set_target_properties(${part} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  endforeach()
  # .cu files are C++ for the host compiler.
  target_compile_options(${NAME}_kernels PRIVATE -x c++)
  if(MODE STREQUAL "race")
    target_compile_options(${NAME}_kernels PRIVATE -O1 -g -fsanitize=thread --param=tsan-instrument-func-entry-exit=0
                                                   --param=tsan-distinguish-volatile=1)
    target_compile_options(${NAME}_host PRIVATE -O2 -g)
  else()
    target_compile_options(${NAME}_kernels PRIVATE ${FF_ASAN_FLAGS})
    target_compile_options(${NAME}_host PRIVATE ${FF_ASAN_FLAGS})
  endif()
  pybind11_add_module(${NAME} MODULE NO_EXTRAS $<TARGET_OBJECTS:${NAME}_kernels> $<TARGET_OBJECTS:${NAME}_host>)
  if(NOT MODE STREQUAL "race")
    target_link_options(${NAME} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

flowfast_emulation_module(_C_emu_race race ${FF_ROOT}/csrc/emu/race_detector.cpp)
flowfast_emulation_module(_C_emu_asan asan ${FF_ROOT}/csrc/emu/no_race_detector.cpp)
