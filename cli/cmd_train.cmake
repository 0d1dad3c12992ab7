# `internvl train` (core/train: fine-tuning).
if(NOT TARGET internvl_train)  # core/train not built (INTERNVL_SKIP, or its library not there yet)
  return()
endif()
target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_train.cc)
target_link_libraries(internvl PRIVATE internvl_train)
