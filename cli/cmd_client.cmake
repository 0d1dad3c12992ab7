# `internvl client chat`: gRPC client of the public API (same flags as chat).
# gateway/ is added after cli/, so test for its directory, not its target.
internvl_skipped(${PROJECT_SOURCE_DIR}/gateway skip_gateway)
if(EXISTS ${PROJECT_SOURCE_DIR}/gateway/CMakeLists.txt AND NOT skip_gateway AND INTERNVL_WITH_SERVICES)
  target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_client.cc)
  target_link_libraries(internvl PRIVATE internvl_gateway internvl_chat)
endif()
