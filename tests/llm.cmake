# LLM decoder parity against the official implementation's outputs.
internvl_test(NAME llm_parity_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/llm_parity_test.cc LIBS internvl_engine internvl_llm internvl_vision nlohmann_json::nlohmann_json
              LABELS parity)
