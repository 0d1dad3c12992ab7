# Third-party dependencies, all from Debian packages (scripts/install_deps.sh).
find_package(PkgConfig REQUIRED)
find_package(Threads REQUIRED)
find_package(absl REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(GTest REQUIRED)

# libtorch: Debian's CPU libtorch 1.13 (libtorch-dev), or a CUDA libtorch 2.x
# (CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)'),
# scripts/gpu_check.sh). TorchConfig adds flags we do not want globally; we only
# take its imported targets. Version differences: core/nn/torch_compat.h.
find_package(Torch REQUIRED)
if(TORCH_CUDA_LIBRARIES)
  set(INTERNVL_WITH_CUDA ON)
  if(NOT TARGET CUDA::cudart)
    find_package(CUDAToolkit)
  endif()
  message(STATUS "internvl: libtorch ${Torch_VERSION} with CUDA (--device cuda available)")
else()
  set(INTERNVL_WITH_CUDA OFF)
endif()

# OpenCV: Debian's split -dev packages ship headers and libraries but no CMake
# config, so the three modules we use are found directly.
if(INTERNVL_WITH_MEDIA)
  find_path(OPENCV_INCLUDE_DIR opencv2/core.hpp PATH_SUFFIXES opencv4 REQUIRED)
  foreach(m core imgproc imgcodecs)
    find_library(OPENCV_${m}_LIB opencv_${m} REQUIRED)
  endforeach()
  add_library(internvl_opencv INTERFACE)
  target_include_directories(internvl_opencv SYSTEM INTERFACE ${OPENCV_INCLUDE_DIR})
  target_link_libraries(internvl_opencv INTERFACE
    ${OPENCV_core_LIB} ${OPENCV_imgproc_LIB} ${OPENCV_imgcodecs_LIB})
endif()

pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
if(INTERNVL_WITH_MEDIA)
  pkg_check_modules(FFMPEG REQUIRED IMPORTED_TARGET libavformat libavcodec libswscale libavutil)
endif()
