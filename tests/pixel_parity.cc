#include "tests/pixel_parity.h"

#include <algorithm>
#include <cstdlib>

#include "core/files.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl::testing {

preprocess::RgbImage LoadPng(const std::string& path) {
  auto bytes = ReadFile(FixtureImagePath(path));
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return {};
  auto image = preprocess::DecodeImage(*bytes);
  EXPECT_TRUE(image.ok()) << path << ": " << image.status();
  return image.ok() ? *std::move(image) : preprocess::RgbImage{};
}

U8Diff CompareU8(const uint8_t* a, const uint8_t* b, size_t n) {
  U8Diff d;
  for (size_t i = 0; i < n; ++i) {
    const int e = std::abs(int{a[i]} - int{b[i]});
    if (e > 0) ++d.differing;
    d.max = std::max(d.max, e);
  }
  return d;
}

std::vector<float> TensorOrDie(const SafetensorsFile& file, const char* name) {
  const TensorView* view = file.Find(name);
  EXPECT_NE(view, nullptr) << name << " missing in " << file.path();
  if (view == nullptr) return {};
  auto v = ToFloatVector(*view);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *std::move(v) : std::vector<float>{};
}

}  // namespace internvl::testing
