# `internvl download` (core/hub).
target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_download.cc)
target_link_libraries(internvl PRIVATE internvl_hub)
