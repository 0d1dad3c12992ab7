// Helpers shared by the image and video parity tests: reading reference
// PNGs and tensors, comparing uint8 buffers, and the tolerances.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/preprocess/image.h"
#include "core/safetensors.h"

namespace internvl::testing {

// Pixel values within 0.02 max / 0.002 mean abs of the reference (the issue).
inline constexpr double kMaxAbsTolerance = 0.02;
inline constexpr double kMeanAbsTolerance = 0.002;

// A reference PNG (its PPM sidecar without media, FixtureImagePath) decoded as
// our pipeline decodes it (test failure if not).
preprocess::RgbImage LoadPng(const std::string& path);

struct U8Diff {
  int max = 0;
  size_t differing = 0;
};
U8Diff CompareU8(const uint8_t* a, const uint8_t* b, size_t n);

// `name` from a reference safetensors file as float32 (test failure if absent).
std::vector<float> TensorOrDie(const SafetensorsFile& file, const char* name);

}  // namespace internvl::testing
