# Tokenizer and chat-template parity against shared/fixtures/tokenization and
# the tiny fixture models.
internvl_test(NAME tokenizer_parity_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer_parity_test.cc
  LIBS internvl_tokenizer)
