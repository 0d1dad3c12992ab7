# Multi-process integration test of the preprocess and vision encoder
# services: real binaries, real redis-server, real gRPC on loopback.
if(TARGET internvl-preprocess AND TARGET internvl-vision-encoder)
  internvl_test(NAME services_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/services_test.cc
                LIBS internvl_service_testing internvl_vision internvl_preprocess internvl_video
                LABELS "services;integration")
  target_compile_definitions(services_test PRIVATE
    INTERNVL_PREPROCESS_BIN="$<TARGET_FILE:internvl-preprocess>"
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>")
  add_dependencies(services_test internvl-preprocess internvl-vision-encoder)
  set_tests_properties(services_test PROPERTIES TIMEOUT 300)
endif()
