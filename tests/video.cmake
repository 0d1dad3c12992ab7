# Video decoding + load_video parity against the official pipeline's fixtures.
if(NOT TARGET internvl_video)  # INTERNVL_WITH_MEDIA=OFF
  return()
endif()
internvl_test(NAME video_parity_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/video_parity_test.cc
  LIBS internvl_video nlohmann_json::nlohmann_json internvl_pixel_parity
  LABELS parity)
