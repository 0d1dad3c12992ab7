# The internvl CLI on hostile input (huge sizes and ids, corrupt media): clear
# errors, never an abort.
if(TARGET internvl)
  internvl_test(NAME cli_hostile_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/cli_hostile_test.cc LABELS "integration")
  add_dependencies(cli_hostile_test internvl)
  set_property(TEST cli_hostile_test APPEND PROPERTY ENVIRONMENT "INTERNVL_CLI_BIN=$<TARGET_FILE:internvl>")
endif()
