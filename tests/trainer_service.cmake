# The trainer service end to end: the real internvl-trainer running real
# `internvl train` jobs on loopback, their output served by the real
# internvl-llm-decoder; cancel, queue limits, restart, path confinement.
if(TARGET internvl-trainer AND TARGET internvl-llm-decoder AND TARGET internvl_train AND TARGET internvl_opencv)
  internvl_test(NAME trainer_service_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/trainer_service_test.cc
                LIBS internvl_service_testing internvl_prompt internvl_opencv nlohmann_json::nlohmann_json
                LABELS "services;integration")
  target_compile_definitions(trainer_service_test PRIVATE
    INTERNVL_TRAINER_BIN="$<TARGET_FILE:internvl-trainer>"
    INTERNVL_LLM_DECODER_BIN="$<TARGET_FILE:internvl-llm-decoder>"
    INTERNVL_CLI_BIN="$<TARGET_FILE:internvl>")
  add_dependencies(trainer_service_test internvl-trainer internvl-llm-decoder internvl)
  set_tests_properties(trainer_service_test PROPERTIES TIMEOUT 900)
endif()
