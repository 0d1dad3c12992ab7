# End-to-end latency: services path vs `internvl serve --all-in-one`.
if(TARGET internvl-gateway AND TARGET internvl-llm-decoder AND TARGET internvl_gateway_embedded)
  add_executable(bench_gateway ${CMAKE_CURRENT_LIST_DIR}/bench_gateway.cc)
  internvl_target_defaults(bench_gateway)
  target_link_libraries(bench_gateway PRIVATE internvl_gateway internvl_service_testing internvl_testing)
  target_compile_definitions(bench_gateway PRIVATE
    INTERNVL_PREPROCESS_BIN="$<TARGET_FILE:internvl-preprocess>"
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>"
    INTERNVL_LLM_DECODER_BIN="$<TARGET_FILE:internvl-llm-decoder>"
    INTERNVL_GATEWAY_BIN="$<TARGET_FILE:internvl-gateway>"
    INTERNVL_CLI_BIN="$<TARGET_FILE:internvl>")
  add_dependencies(bench_gateway internvl-preprocess internvl-vision-encoder internvl-llm-decoder internvl-gateway internvl)
endif()
