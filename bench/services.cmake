# Cache-hit vs cache-miss time through the vision encoder service (real
# binary, real redis-server, gRPC on loopback).
if(TARGET internvl-vision-encoder)
  add_executable(bench_cache ${CMAKE_CURRENT_LIST_DIR}/bench_cache.cc)
  internvl_target_defaults(bench_cache)
  target_link_libraries(bench_cache PRIVATE internvl_service_testing internvl_testing)
  target_compile_definitions(bench_cache PRIVATE
    INTERNVL_VISION_ENCODER_BIN="$<TARGET_FILE:internvl-vision-encoder>")
  add_dependencies(bench_cache internvl-vision-encoder)
endif()
