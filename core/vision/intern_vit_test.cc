// InternViT layer: the CPU inference forward, which runs the attention a few
// tiles at a time (each tile's heads on the threads, their queries in
// blocks) and the MLP a few rows at a time, gives what the whole-batch
// forward (the one autograd runs) gives.
#include "core/vision/intern_vit.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

namespace internvl {
namespace {

VisionConfig TinyConfig(VisionConfig::Norm norm, bool qk_norm) {
  VisionConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.intermediate_size = 256;
  c.qk_normalization = qk_norm;
  c.qkv_bias = norm == VisionConfig::Norm::kLayerNorm;
  c.norm_type = norm;
  c.num_hidden_layers = 1;
  return c;
}

TEST(VisionLayer, PiecewiseInferenceMatchesTheWholeBatch) {
  // Two threads, so that (tile, head) pairs run on an OpenMP worker too,
  // which must take the caller's inference mode.
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  for (const VisionConfig::Norm norm : {VisionConfig::Norm::kLayerNorm, VisionConfig::Norm::kRmsNorm}) {
    for (const bool qk_norm : {false, true}) {
      SCOPED_TRACE(testing::Message() << "layer norm " << (norm == VisionConfig::Norm::kLayerNorm) << ", qk norm "
                                      << qk_norm);
      at::manual_seed(7);
      VisionLayer layer(TinyConfig(norm, qk_norm));
      {
        at::NoGradGuard no_grad;
        for (auto& p : layer->parameters()) p.copy_(at::randn_like(p) * 0.2);
      }
      const int64_t tiles = 3, tokens = 17, width = 64;
      const at::Tensor x = at::randn({tiles, tokens, width});
      // The whole batch at once (grad mode on: the training path).
      const at::Tensor whole = layer->forward(x).detach();
      // One tile per attention piece (its qkv is 3 * 17 * 64 floats) and 13
      // rows per MLP piece (hidden 256 floats): 3 and 4 pieces.
      layer->max_temp_bytes = 3 * tokens * width * 4 + 100;
      // Query blocks of 5 rows (17 = 5 + 5 + 5 + 2).
      layer->attn->query_block = 5;
      at::Tensor pieces;
      {
        at::InferenceMode inference;
        pieces = layer->forward(x);
      }
      ASSERT_EQ(pieces.sizes(), whole.sizes());
      EXPECT_TRUE(at::allclose(pieces, whole, 1e-5, 1e-5)) << (pieces - whole).abs().max().item<float>();
      // And the default budget (one piece each) the same, and the
      // reference's attention order.
      layer->max_temp_bytes = int64_t{24} << 20;
      layer->attn->query_block = 0;
      at::InferenceMode inference;
      EXPECT_TRUE(at::allclose(layer->forward(x), whole, 1e-5, 1e-5));
    }
  }
  at::set_num_threads(threads);
}

// LoadedLinear keeps torch::nn::Linear's parameter names and shapes (the
// checkpoint's keys) and its product.
TEST(LoadedLinear, HasLinearsParametersAndProduct) {
  for (const bool bias : {true, false}) {
    LoadedLinear mine(12, 5, bias);
    torch::nn::Linear theirs(torch::nn::LinearOptions(12, 5).bias(bias));
    const auto a = mine->named_parameters(), b = theirs->named_parameters();
    ASSERT_EQ(a.size(), b.size()) << bias;
    for (const auto& p : b) {
      ASSERT_TRUE(a.contains(p.key())) << p.key();
      EXPECT_EQ(a[p.key()].sizes(), p.value().sizes()) << p.key();
    }
    {
      at::NoGradGuard no_grad;
      for (const auto& p : b) a[p.key()].copy_(p.value());
    }
    const at::Tensor x = at::randn({3, 12});
    EXPECT_TRUE(at::equal(mine->forward(x), theirs->forward(x))) << bias;
  }
}

}  // namespace
}  // namespace internvl
