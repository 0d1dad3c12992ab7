# LLM decode benchmark (prefill, ms/token, % of the memory-bandwidth bound).
add_executable(bench_decode ${CMAKE_CURRENT_LIST_DIR}/bench_decode.cc)
internvl_target_defaults(bench_decode)
target_link_libraries(bench_decode PRIVATE internvl_llm)

# Whole-pipeline time to first token + decode speed for make-model --like
# InternVL2-1B (not a CTest test: minutes on 2 cores).
if(TARGET internvl_chat AND TARGET internvl_modelgen AND TARGET internvl_opencv)
  add_executable(bench_ttft ${CMAKE_CURRENT_LIST_DIR}/bench_ttft.cc)
  internvl_target_defaults(bench_ttft)
  target_link_libraries(bench_ttft PRIVATE internvl_chat internvl_modelgen internvl_llm internvl_opencv)
endif()

# The decode matrix-vector kernels alone (bf16, int8, int4), GB/s against the
# probed bandwidth.
add_executable(bench_gemv ${CMAKE_CURRENT_LIST_DIR}/bench_gemv.cc)
internvl_target_defaults(bench_gemv)
target_link_libraries(bench_gemv PRIVATE internvl_llm)
