# Faults and load on loopback: Redis, the vision encoder and the decoder
# killed and restarted under a load generator, SIGTERM of the gateway with
# streams open, RSS across 1000 requests (bounded: about a minute).
if(TARGET internvl-gateway AND TARGET internvl-llm-decoder AND TARGET internvl-preprocess
   AND TARGET internvl-vision-encoder)
  internvl_test(NAME fault_load_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/fault_load_test.cc
                LIBS internvl_gateway internvl_service_testing LABELS "services;integration;faults")
  target_compile_definitions(fault_load_test PRIVATE
    INTERNVL_PREPROCESS_BIN="$<TARGET_FILE:internvl-preprocess>"
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>"
    INTERNVL_LLM_DECODER_BIN="$<TARGET_FILE:internvl-llm-decoder>"
    INTERNVL_GATEWAY_BIN="$<TARGET_FILE:internvl-gateway>")
  add_dependencies(fault_load_test internvl-preprocess internvl-vision-encoder internvl-llm-decoder internvl-gateway)
  set_tests_properties(fault_load_test PROPERTIES TIMEOUT 600)
endif()
