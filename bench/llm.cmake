# LLM decode benchmark (prefill, ms/token, % of the memory-bandwidth bound).
add_executable(bench_decode ${CMAKE_CURRENT_LIST_DIR}/bench_decode.cc)
internvl_target_defaults(bench_decode)
target_link_libraries(bench_decode PRIVATE internvl_llm)
