# Tokenizer throughput (MB/s) beside memcpy / byte-scan references.
add_executable(bench_tokenizer ${CMAKE_CURRENT_SOURCE_DIR}/bench_tokenizer.cc)
internvl_target_defaults(bench_tokenizer)
target_link_libraries(bench_tokenizer PRIVATE internvl_tokenizer)
