# Warnings as errors on the project's own code (third-party headers are
# included as SYSTEM so their warnings do not count). INTERNVL_WERROR=OFF keeps
# the warnings but not the error, e.g. for a newer libtorch's deprecations.
function(internvl_target_defaults tgt)
  target_compile_options(${tgt} PRIVATE -Wall -Wextra $<$<BOOL:${INTERNVL_WERROR}>:-Werror> -Wno-unused-parameter)
endfunction()

# A gtest executable registered with CTest. Usage:
#   internvl_test(NAME foo_test SOURCES foo_test.cc LIBS internvl_base)
function(internvl_test)
  cmake_parse_arguments(T "" "NAME" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  internvl_target_defaults(${T_NAME})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} internvl_testing GTest::gmock GTest::gtest_main)
  add_test(NAME ${T_NAME} COMMAND ${T_NAME})
  set_tests_properties(${T_NAME} PROPERTIES
    ENVIRONMENT "INTERNVL_SOURCE_DIR=${PROJECT_SOURCE_DIR}"
    LABELS "${T_LABELS}")
endfunction()

# INTERNVL_SKIP: names of areas to leave out of this build tree (e.g.
# "tokenizer;llm" while work on them is in progress in a shared checkout).
# Matches core/<name>/, tests/<name>.cmake, bench/<name>.cmake and
# cli/cmd_<name>*.cmake.
set(INTERNVL_SKIP "" CACHE STRING "areas to leave out of the build")
function(internvl_skipped path out)
  get_filename_component(stem ${path} NAME_WE)
  string(REGEX REPLACE "^cmd_" "" stem ${stem})
  set(${out} FALSE PARENT_SCOPE)
  foreach(s ${INTERNVL_SKIP})
    if(stem MATCHES "^${s}")
      set(${out} TRUE PARENT_SCOPE)
    endif()
  endforeach()
endfunction()

# Kernel files for an instruction set the CPU is checked for at run time (the
# rest of the program stays at the baseline ISA). Usage:
#   internvl_simd_sources(TARGET t SOURCES k_avx2.cc FLAGS -mavx2 -mfma
#                         CALLERS k.cc DEFINE INTERNVL_HAVE_K_AVX2)
# adds SOURCES to TARGET compiled with FLAGS, outside the target's
# precompiled header (built with the baseline flags), and defines DEFINE=1 in
# the CALLERS, the files that check the CPU and dispatch to them.
function(internvl_simd_sources)
  cmake_parse_arguments(S "" "TARGET;DEFINE" "SOURCES;FLAGS;CALLERS" ${ARGN})
  target_sources(${S_TARGET} PRIVATE ${S_SOURCES})
  set_source_files_properties(${S_SOURCES} PROPERTIES COMPILE_OPTIONS "${S_FLAGS}" SKIP_PRECOMPILE_HEADERS ON)
  if(S_DEFINE)
    set_property(SOURCE ${S_CALLERS} APPEND PROPERTY COMPILE_DEFINITIONS ${S_DEFINE}=1)
  endif()
endfunction()
