# `internvl download` (core/hub).
if(NOT TARGET internvl_hub)  # core/hub left out (INTERNVL_SKIP)
  return()
endif()
target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_download.cc)
target_link_libraries(internvl PRIVATE internvl_hub)
