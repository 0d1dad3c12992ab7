# The fine-tuning data pipeline: parity with the official preprocessing
# (shared/fixtures/training) and behaviour on generated data.
# Its generated datasets are BMPs: needs the media build's codecs.
if(TARGET internvl_train_data AND TARGET internvl_modelgen AND INTERNVL_WITH_MEDIA)
  internvl_test(NAME train_data_test
    SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/train_data_test.cc
    LIBS internvl_train_data internvl_tokenizer internvl_modelgen nlohmann_json::nlohmann_json
    LABELS parity train)
endif()
