# `internvl serve --all-in-one`: the public API with every stage in-process.
# gateway/ and services/ are added after cli/, so test for their directories.
internvl_skipped(${PROJECT_SOURCE_DIR}/gateway skip_gateway)
internvl_skipped(${PROJECT_SOURCE_DIR}/services skip_services)
if(EXISTS ${PROJECT_SOURCE_DIR}/gateway/CMakeLists.txt AND EXISTS ${PROJECT_SOURCE_DIR}/services/CMakeLists.txt
   AND NOT skip_gateway AND NOT skip_services AND INTERNVL_WITH_SERVICES)
  target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_serve.cc)
  target_link_libraries(internvl PRIVATE internvl_gateway_embedded internvl_hub)
endif()
