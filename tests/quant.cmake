# Quantized LLM paths (int8, int4, AWQ) against the official fp32 reference.
internvl_test(NAME quant_parity_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/quant_parity_test.cc LIBS internvl_engine internvl_llm internvl_vision nlohmann_json::nlohmann_json
              LABELS parity)
