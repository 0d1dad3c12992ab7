# Many concurrent clients through the all-in-one server and the four-service
# path (make-model --like InternVL2-1B): aggregate tokens/s, TTFT / ITL
# percentiles, second-turn prefix reuse, peak RSS. Minutes on 2 cores: not a
# CTest test.
if(TARGET internvl-gateway AND TARGET internvl-llm-decoder AND TARGET internvl_gateway_embedded
   AND TARGET internvl_modelgen)
  add_executable(bench_serving ${CMAKE_CURRENT_LIST_DIR}/bench_serving.cc)
  internvl_target_defaults(bench_serving)
  target_link_libraries(bench_serving PRIVATE internvl_gateway internvl_service_testing internvl_modelgen
                        internvl_opencv)
  target_compile_definitions(bench_serving PRIVATE
    INTERNVL_PREPROCESS_BIN="$<TARGET_FILE:internvl-preprocess>"
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>"
    INTERNVL_LLM_DECODER_BIN="$<TARGET_FILE:internvl-llm-decoder>"
    INTERNVL_GATEWAY_BIN="$<TARGET_FILE:internvl-gateway>"
    INTERNVL_CLI_BIN="$<TARGET_FILE:internvl>")
  add_dependencies(bench_serving internvl-preprocess internvl-vision-encoder internvl-llm-decoder internvl-gateway
                   internvl)
endif()
