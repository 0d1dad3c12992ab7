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
# OpenMP, as libtorch's CPU build (GCC's libgomp): at::parallel_for is inline
# and splits work over libtorch's threads only in code compiled with it; in
# ours it otherwise ran its loop on the calling thread alone. Not with clang
# (the fuzz and sanitizer trees), whose OpenMP runtime is another one, nor
# against Python's CUDA libtorch, which bundles its own copy of libgomp.
set(INTERNVL_OPENMP OFF)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND NOT INTERNVL_WITH_CUDA)
  find_package(OpenMP COMPONENTS CXX)
  if(OpenMP_CXX_FOUND)
    set(INTERNVL_OPENMP ON)
  endif()
endif()

# BLAS: Debian's libtorch runs fp32 matmuls through libblas.so.3, which the
# alternatives system points at OpenBLAS's pthread build. That build keeps its
# own threads, spinning beside libtorch's OpenMP (GOMP) threads: on 2 cores the
# prefill and the vision encoder ran at 32% and 52% of the fp32 matmul peak
# instead of 69% and 74% (bench_decode, bench_vision). OpenBLAS's OpenMP build
# (libopenblas0-openmp) runs its matmuls on the same GOMP team. Executables
# load it through DT_RPATH (which, unlike RUNPATH, also serves libtorch's own
# libblas.so.3 / liblapack.so.3), whatever the alternatives say;
# SetTorchThreads warns at run time when the pthread build is loaded anyway.
option(INTERNVL_OPENMP_BLAS "load OpenBLAS's OpenMP build when installed" ON)
set(INTERNVL_OPENMP_BLAS_ACTIVE OFF)
set(INTERNVL_OPENMP_BLAS_DIR "/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp")
if(INTERNVL_OPENMP_BLAS AND NOT INTERNVL_WITH_CUDA AND EXISTS "${INTERNVL_OPENMP_BLAS_DIR}/libblas.so.3")
  add_link_options(LINKER:--disable-new-dtags "LINKER:-rpath,${INTERNVL_OPENMP_BLAS_DIR}")
  set(INTERNVL_OPENMP_BLAS_ACTIVE ON)
  message(STATUS "internvl: BLAS from ${INTERNVL_OPENMP_BLAS_DIR} (OpenBLAS on OpenMP threads)")
elseif(NOT INTERNVL_WITH_CUDA)
  message(STATUS "internvl: libopenblas0-openmp not installed: fp32 matmuls run on OpenBLAS's own threads (slower)")
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
