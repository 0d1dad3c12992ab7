# core/hub: downloads from a Hugging Face hub on loopback (core/hub/fake_hub_server).
if(NOT TARGET internvl_hub)
  return()
endif()
internvl_test(NAME hub_download_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/hub_download_test.cc
              LIBS internvl_hub internvl_hub_fake_server)
# `internvl download` as a user runs it (the real binary against the loopback hub).
internvl_test(NAME hub_cli_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/hub_cli_test.cc
              LIBS internvl_hub internvl_hub_fake_server)
add_dependencies(hub_cli_test internvl)  # the test runs the real binary
set_property(TEST hub_cli_test APPEND PROPERTY ENVIRONMENT "INTERNVL_CLI_BIN=$<TARGET_FILE:internvl>")
