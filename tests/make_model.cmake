# internvl make-model (core/modelgen). Two binaries: one binary linking both
# libtorch and sentencepiece crashes at start-up on Debian 12 (see
# make_model_load_test.cc).
internvl_test(NAME make_model_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/make_model_test.cc
              LIBS internvl_modelgen internvl_tokenizer)
internvl_test(NAME make_model_load_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/make_model_load_test.cc
              LIBS internvl_modelgen internvl_vision internvl_llm)
