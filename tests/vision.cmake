internvl_test(NAME vision_parity_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/vision_parity_test.cc
              LIBS internvl_vision internvl_preprocess nlohmann_json::nlohmann_json LABELS parity)
