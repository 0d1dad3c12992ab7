# Preprocessing parity against the official Python pipeline's fixtures.
internvl_test(NAME preprocess_parity_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/preprocess_parity_test.cc
  LIBS internvl_preprocess nlohmann_json::nlohmann_json internvl_pixel_parity
  LABELS parity)
# MiniMonkey's multi-scale cropping against its official code's fixtures.
internvl_test(NAME minimonkey_preprocess_parity_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/minimonkey_preprocess_parity_test.cc
  LIBS internvl_preprocess internvl_hub nlohmann_json::nlohmann_json internvl_pixel_parity
  LABELS parity)
