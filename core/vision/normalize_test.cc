#include <ATen/ATen.h>

#include <cstring>
#include <random>

#include "core/preprocess/tiling.h"
#include "core/testing/test_device.h"
#include "core/vision/vision_model_torch.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {

TEST(NormalizeTiles, BitIdenticalToTheHostTable) {
  constexpr int kTiles = 3, kSize = 448;
  std::mt19937 rng(7);
  at::Tensor u8 = at::empty({kTiles, kSize, kSize, 3}, at::kByte);
  uint8_t* p = u8.data_ptr<uint8_t>();
  for (int64_t i = 0; i < u8.numel(); ++i) p[i] = static_cast<uint8_t>(rng());
  for (int v = 0; v < 256; ++v) p[v * 3] = static_cast<uint8_t>(v);  // every value in every channel
  for (int v = 0; v < 256; ++v) p[v * 3 + 1] = p[v * 3 + 2] = static_cast<uint8_t>(255 - v);
  at::Tensor host = at::empty({kTiles, 3, kSize, kSize}, at::kFloat);
  preprocess::NormalizeTilesU8(p, kTiles, kSize, host.data_ptr<float>());
  at::Tensor ours = NormalizeTiles(u8, testing::TestTorchDevice()).to(at::kCPU);
  ASSERT_EQ(ours.sizes(), host.sizes());
  ASSERT_EQ(ours.scalar_type(), at::kFloat);
  EXPECT_EQ(std::memcmp(ours.contiguous().data_ptr<float>(), host.data_ptr<float>(), host.nbytes()), 0);
}

}  // namespace
}  // namespace internvl
