# `internvl tokenize` and `internvl prompt` (core/tokenizer).
target_sources(internvl PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/cmd_tokenize.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/cmd_prompt.cc)
target_link_libraries(internvl PRIVATE internvl_tokenizer)
