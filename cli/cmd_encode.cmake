# `internvl encode`: image -> tiles -> vit_embeds safetensors.
target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_encode.cc)
target_link_libraries(internvl PRIVATE internvl_preprocess internvl_vision)
