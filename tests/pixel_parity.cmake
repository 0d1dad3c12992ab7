# Helpers shared by the image and video parity tests.
add_library(internvl_pixel_parity STATIC ${CMAKE_CURRENT_LIST_DIR}/pixel_parity.cc)
internvl_target_defaults(internvl_pixel_parity)
target_link_libraries(internvl_pixel_parity PUBLIC internvl_preprocess internvl_testing GTest::gtest)
