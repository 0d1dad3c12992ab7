# End-to-end integration test of the public API: redis-server, the three
# stage services and the gateway as real processes on loopback, plus
# `internvl serve --all-in-one`; results are compared with the in-process
# ChatPipeline (exact token ids).
if(TARGET internvl-gateway AND TARGET internvl-llm-decoder AND TARGET internvl-preprocess
   AND TARGET internvl-vision-encoder AND TARGET internvl_gateway_embedded)
  internvl_test(NAME gateway_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/gateway_test.cc
                LIBS internvl_gateway internvl_chat internvl_service_testing LABELS "services;integration")
  target_compile_definitions(gateway_test PRIVATE
    INTERNVL_PREPROCESS_BIN="$<TARGET_FILE:internvl-preprocess>"
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>"
    INTERNVL_LLM_DECODER_BIN="$<TARGET_FILE:internvl-llm-decoder>"
    INTERNVL_GATEWAY_BIN="$<TARGET_FILE:internvl-gateway>"
    INTERNVL_CLI_BIN="$<TARGET_FILE:internvl>")
  add_dependencies(gateway_test internvl-preprocess internvl-vision-encoder internvl-llm-decoder internvl-gateway internvl)
  set_tests_properties(gateway_test PROPERTIES TIMEOUT 300)
endif()

# Many users at once: every fixture case of the three tiny models sent
# concurrently through the four-service path and the all-in-one server
# (exact reference ids), prefix reuse on a second turn, engine metrics.
if(TARGET internvl-gateway AND TARGET internvl-llm-decoder AND TARGET internvl-preprocess
   AND TARGET internvl-vision-encoder AND TARGET internvl_gateway_embedded)
  internvl_test(NAME serving_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/serving_test.cc
                LIBS internvl_gateway internvl_service_testing LABELS "services;integration")
  target_compile_definitions(serving_test PRIVATE
    INTERNVL_PREPROCESS_BIN="$<TARGET_FILE:internvl-preprocess>"
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>"
    INTERNVL_LLM_DECODER_BIN="$<TARGET_FILE:internvl-llm-decoder>"
    INTERNVL_GATEWAY_BIN="$<TARGET_FILE:internvl-gateway>"
    INTERNVL_CLI_BIN="$<TARGET_FILE:internvl>")
  add_dependencies(serving_test internvl-preprocess internvl-vision-encoder internvl-llm-decoder internvl-gateway internvl)
  set_tests_properties(serving_test PROPERTIES TIMEOUT 600)
endif()

# TLS, mTLS and bearer tokens end to end (openssl-made CA, real binaries).
if(TARGET internvl-gateway AND TARGET internvl-llm-decoder AND TARGET internvl-preprocess
   AND TARGET internvl-vision-encoder)
  internvl_test(NAME security_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/security_test.cc
                LIBS internvl_gateway internvl_service_testing LABELS "services;integration")
  target_compile_definitions(security_test PRIVATE
    INTERNVL_PREPROCESS_BIN="$<TARGET_FILE:internvl-preprocess>"
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>"
    INTERNVL_LLM_DECODER_BIN="$<TARGET_FILE:internvl-llm-decoder>"
    INTERNVL_GATEWAY_BIN="$<TARGET_FILE:internvl-gateway>")
  add_dependencies(security_test internvl-preprocess internvl-vision-encoder internvl-llm-decoder internvl-gateway)
  set_tests_properties(security_test PROPERTIES TIMEOUT 300)
endif()

# The OpenAI-compatible HTTP API of the gateway and of serve --all-in-one:
# answers equal to the gRPC API's, streaming, errors (real processes).
if(TARGET internvl-gateway AND TARGET internvl-llm-decoder AND TARGET internvl-preprocess
   AND TARGET internvl-vision-encoder AND TARGET internvl_gateway_embedded)
  internvl_test(NAME openai_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/openai_test.cc
                LIBS internvl_gateway internvl_service_testing PkgConfig::CPP_HTTPLIB LABELS "services;integration")
  target_compile_definitions(openai_test PRIVATE
    INTERNVL_PREPROCESS_BIN="$<TARGET_FILE:internvl-preprocess>"
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>"
    INTERNVL_LLM_DECODER_BIN="$<TARGET_FILE:internvl-llm-decoder>"
    INTERNVL_GATEWAY_BIN="$<TARGET_FILE:internvl-gateway>"
    INTERNVL_CLI_BIN="$<TARGET_FILE:internvl>")
  target_compile_definitions(openai_test PRIVATE INTERNVL_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  add_dependencies(openai_test internvl-preprocess internvl-vision-encoder internvl-llm-decoder internvl-gateway internvl)
  set_tests_properties(openai_test PROPERTIES TIMEOUT 300)
endif()
