# Issue #16's device benchmark: make-model --like shapes with random weights on
# --device cpu|cuda (decode tokens/s at batch 1 and 32, prefill tokens/s,
# InternViT tiles/s) against the same run's memory bandwidth and matmul peak.
if(TARGET internvl_llm AND TARGET internvl_vision AND TARGET internvl_modelgen AND TARGET nlohmann_json::nlohmann_json)
  add_executable(bench_device ${CMAKE_CURRENT_LIST_DIR}/bench_device.cc)
  internvl_target_defaults(bench_device)
  target_link_libraries(bench_device PRIVATE internvl_llm internvl_vision internvl_modelgen nlohmann_json::nlohmann_json)
endif()
