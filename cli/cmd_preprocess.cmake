# `internvl preprocess`: image -> tiles -> pixel_values safetensors.
target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_preprocess.cc)
target_link_libraries(internvl PRIVATE internvl_preprocess)
