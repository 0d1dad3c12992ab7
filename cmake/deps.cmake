# Third-party dependencies, all from Debian packages (scripts/install_deps.sh).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(absl REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(GTest REQUIRED)

# libtorch 1.13 (libtorch-dev). TorchConfig adds flags we do not want globally;
# we only take its imported targets.
find_package(Torch REQUIRED)

# OpenCV: Debian's split -dev packages ship headers and libraries but no CMake
# config, so the three modules we use are found directly.
find_path(OPENCV_INCLUDE_DIR opencv2/core.hpp PATH_SUFFIXES opencv4 REQUIRED)
foreach(m core imgproc imgcodecs)
  find_library(OPENCV_${m}_LIB opencv_${m} REQUIRED)
endforeach()
add_library(internvl_opencv INTERFACE)
target_include_directories(internvl_opencv SYSTEM INTERFACE ${OPENCV_INCLUDE_DIR})
target_link_libraries(internvl_opencv INTERFACE
  ${OPENCV_core_LIB} ${OPENCV_imgproc_LIB} ${OPENCV_imgcodecs_LIB})

pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
pkg_check_modules(FFMPEG REQUIRED IMPORTED_TARGET libavformat libavcodec libswscale libavutil)
