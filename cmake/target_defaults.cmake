# Warnings as errors on the project's own code (third-party headers are
# included as SYSTEM so their warnings do not count).
function(internvl_target_defaults tgt)
  target_compile_options(${tgt} PRIVATE -Wall -Wextra -Werror -Wno-unused-parameter)
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
