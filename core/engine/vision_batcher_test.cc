// The vision batcher on the tiny reference model: concurrent encodes share
// forwards (fewer batches than requests) and each gets exactly its own
// embeddings, as encoded alone; a failing batch fails its requests only.
#include "core/engine/vision_batcher.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "core/nn/torch_util.h"
#include "core/preprocess/runtime.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {

HostTensor RandomTiles(int n, int size, uint32_t seed) {
  HostTensor t(DType::kU8, {n, size, size, 3});
  std::mt19937 rng(seed);
  for (auto& b : t.bytes) b = static_cast<uint8_t>(rng());
  return t;
}

TEST(VisionBatcher, ConcurrentEncodesShareForwardsAndGetTheirOwnRows) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  SetTorchThreads(2);
  auto model = VisionModel::Load(fixtures + "/tiny-qwen2", VisionOptions{.dtype = "fp32", .tile_batch = 4});
  ASSERT_TRUE(model.ok()) << model.status();
  const int size = (*model)->config().image_size();
  VisionBatcherOptions options;
  options.max_batch_tiles = 8;
  options.max_wait = absl::Milliseconds(50);
  VisionBatcher batcher(model->get(), options);
  std::vector<HostTensor> inputs;
  std::vector<HostTensor> alone;
  for (int i = 0; i < 6; ++i) {
    inputs.push_back(RandomTiles(1 + i % 3, size, 100 + i));
    auto e = batcher.EncodeTiles(inputs.back());
    ASSERT_TRUE(e.ok()) << e.status();
    alone.push_back(*e);
  }
  const VisionBatcherStats solo = batcher.stats();
  EXPECT_EQ(solo.batches, 6);
  std::vector<absl::StatusOr<HostTensor>> together(inputs.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < inputs.size(); ++i)
    threads.emplace_back([&, i] { together[i] = batcher.EncodeTiles(inputs[i]); });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < inputs.size(); ++i) {
    ASSERT_TRUE(together[i].ok()) << together[i].status();
    ASSERT_EQ(together[i]->shape, alone[i].shape) << i;
    // A tile's embeddings do not depend on its neighbours in the batch (up to
    // the GEMM's blocking: matrices of another height sum in another order).
    ASSERT_EQ(together[i]->dtype, DType::kF32);
    const float* a = together[i]->data<float>();
    const float* b = alone[i].data<float>();
    float max_diff = 0, max_abs = 0;
    for (int64_t k = 0; k < alone[i].numel(); ++k) {
      max_diff = std::max(max_diff, std::abs(a[k] - b[k]));
      max_abs = std::max(max_abs, std::abs(b[k]));
    }
    EXPECT_LE(max_diff, 1e-5f * max_abs) << "request " << i;
  }
  const VisionBatcherStats s = batcher.stats();
  EXPECT_EQ(s.requests - solo.requests, 6);
  EXPECT_LT(s.batches - solo.batches, 6);
  EXPECT_GT(s.max_batch_requests, 1);
  // 12 tiles over batches of at most 8.
  EXPECT_GE(s.batches - solo.batches, 2);
  // Bad input is an error of its own call.
  HostTensor bad(DType::kU8, {1, size, size, 4});
  EXPECT_EQ(batcher.EncodeTiles(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

// EncodeTiles normalises into kept buffers: after a larger request, a smaller
// one reads none of the stale bytes (the same embeddings as from a fresh
// buffer).
TEST(VisionBatcher, ReusedPixelBuffersGiveTheSameEmbeddings) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  SetTorchThreads(2);
  auto model = VisionModel::Load(fixtures + "/tiny-qwen2", VisionOptions{.dtype = "fp32", .tile_batch = 4});
  ASSERT_TRUE(model.ok()) << model.status();
  const int size = (*model)->config().image_size();
  VisionBatcher batcher(model->get(), VisionBatcherOptions());
  const HostTensor small = RandomTiles(1, size, 7), big = RandomTiles(5, size, 8);
  auto first = batcher.EncodeTiles(small);
  ASSERT_TRUE(first.ok()) << first.status();
  // Every kept buffer now holds stale bytes (0xAB), as after other images.
  std::vector<std::vector<uint8_t>> taken;
  for (int i = 0; i < 4; ++i) {
    taken.push_back(preprocess::TakeImageBuffer(size_t{1} << 20));
    std::fill(taken.back().begin(), taken.back().end(), 0xAB);
  }
  for (auto& b : taken) preprocess::RecycleImageBuffer(std::move(b));
  ASSERT_TRUE(batcher.EncodeTiles(big).ok());
  auto again = batcher.EncodeTiles(small);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->bytes == first->bytes);
  VisionBatcherOptions bad;
  bad.prefault_tiles = -1;
  EXPECT_EQ(bad.Validate().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace internvl
