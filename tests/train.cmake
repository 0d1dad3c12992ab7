# Fine-tuning: parity of four optimizer steps with the official trainer, the
# trainer's options, and `internvl train` end to end. train_test_data.cc
# writes its images with OpenCV, so without media (INTERNVL_WITH_MEDIA=OFF)
# only the parity test is built; it then reads the dataset's PPM sidecars
# (scripts/fixture_ppm.py --rewrite-jsonl).
if(TARGET internvl_train)
  internvl_test(NAME train_parity_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/train_parity_test.cc
                LIBS internvl_train internvl_nn nlohmann_json::nlohmann_json LABELS parity)
endif()
if(TARGET internvl_train AND TARGET internvl_opencv)
  add_library(internvl_train_testing STATIC ${CMAKE_CURRENT_LIST_DIR}/train_test_data.cc)
  internvl_target_defaults(internvl_train_testing)
  target_link_libraries(internvl_train_testing PUBLIC internvl_base PRIVATE internvl_opencv nlohmann_json::nlohmann_json)

  internvl_test(NAME train_options_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/train_options_test.cc
                LIBS internvl_train internvl_train_testing LABELS train)
endif()

# `internvl train` end to end: fine-tune then chat, Gloo data parallel, resume.
if(TARGET internvl_train_testing AND TARGET internvl)
  internvl_test(NAME train_cli_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/train_cli_test.cc
                LIBS internvl_base internvl_train_testing nlohmann_json::nlohmann_json LABELS integration)
  add_dependencies(train_cli_test internvl)
  set_property(TEST train_cli_test APPEND PROPERTY ENVIRONMENT "INTERNVL_CLI_BIN=$<TARGET_FILE:internvl>")
endif()
