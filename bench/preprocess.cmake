# bench_preprocess: decode + tile + normalise a 1920x1080 JPEG (not a CTest test).
if(TARGET internvl_opencv)
  add_executable(bench_preprocess ${CMAKE_CURRENT_SOURCE_DIR}/bench_preprocess.cc)
  internvl_target_defaults(bench_preprocess)
  target_link_libraries(bench_preprocess PRIVATE internvl_preprocess internvl_opencv)
endif()
