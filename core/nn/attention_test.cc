// FusedAttentionBf16 against the attention it replaces: the same roundings
// (scores to bf16, softmax in fp32 rounded once, output to bf16) computed by
// libtorch's ops, over head dims 16-128, row and key counts around the
// kernel's blocks (6 rows, 48-row blocks, 16 / 64 keys, odd key counts),
// strided views as InternViT's q|k|v product gives them, sharp softmaxes and
// rows turned NaN. Skipped on CPUs without AVX-512-BF16 (the kernel does not
// run there).
#include "core/nn/attention.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/nn/device.h"
#include "core/nn/softmax.h"
#include "core/nn/torch_util.h"

namespace internvl {
namespace {

class FusedAttention : public testing::Test {
 protected:
  void SetUp() override {
    if (!CpuHasAvx512Bf16()) GTEST_SKIP() << "this CPU has no AVX-512-BF16: the fused attention does not run here";
    ForceFusedAttention(1);
  }
  void TearDown() override { ForceFusedAttention(-1); }
};

// The op chain in fp32 from the bf16 operands: scores rounded to bf16, the
// softmax of those in fp32 rounded to bf16, the output's sums rounded to bf16.
at::Tensor Reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-1, -2)).to(at::kBFloat16);
  const at::Tensor probs = at::softmax(scores.to(at::kFloat), -1).to(at::kBFloat16);
  const at::Tensor out = at::matmul(probs.to(at::kFloat), v.to(at::kFloat)).to(at::kBFloat16);  // [B, H, N, D]
  return out.transpose(1, 2).reshape({q.size(0), q.size(2), q.size(1) * q.size(3)});
}

// Most values bit-equal (the sums' order differs: a score or an output whose
// fp32 sum lies within that difference of a bf16 rounding boundary may round
// the other way), the rest within a few bf16 steps of the output's scale.
void ExpectClose(const at::Tensor& ours, const at::Tensor& reference) {
  ASSERT_EQ(ours.sizes(), reference.sizes());
  const at::Tensor a = ours.to(at::kFloat), b = reference.to(at::kFloat);
  const double equal = a.eq(b).to(at::kDouble).mean().item<double>();
  const double scale = b.abs().max().item<double>();
  const double worst = (a - b).abs().max().item<double>();
  EXPECT_GE(equal, 0.98) << "bit-equal fraction";
  EXPECT_LE(worst, 0.03 * scale + 1e-30) << "max difference, output scale " << scale;
}

TEST_F(FusedAttention, MatchesTheOpChainAcrossShapes) {
  at::InferenceMode inference;
  at::manual_seed(11);
  struct Shape {
    int64_t rows, keys;
  };
  const std::vector<Shape> shapes = {{1, 1},   {1, 2},   {6, 16},    {7, 17}, {13, 2},
                                     {48, 64}, {49, 65}, {101, 130}, {5, 63}};
  for (const int64_t dim : {16, 32, 48, 64, 96, 128}) {
    for (const Shape& s : shapes) {
      for (const float sharpness : {1.0f, 6.0f}) {
        SCOPED_TRACE(testing::Message() << "dim " << dim << ", rows " << s.rows << ", keys " << s.keys << ", sharpness "
                                        << sharpness);
        const at::Tensor q = (at::randn({2, 3, s.rows, dim}) * sharpness / std::sqrt(double(dim))).to(at::kBFloat16);
        const at::Tensor k = at::randn({2, 3, s.keys, dim}).to(at::kBFloat16);
        const at::Tensor v = at::randn({2, 3, s.keys, dim}).to(at::kBFloat16);
        ASSERT_TRUE(FusedAttentionRuns(q, k, v));
        ExpectClose(FusedAttentionBf16(q, k, v), Reference(q, k, v));
      }
    }
  }
}

// q, k and v as views of one [B, N, 3, H, D] product (InternViT's layout):
// rows 3 * H * D apart; also against the op chain the vision model ran
// before (bf16 products, the project's softmax).
TEST_F(FusedAttention, StridedViewsAsTheVisionModelPassesThem) {
  at::InferenceMode inference;
  at::manual_seed(5);
  const int64_t B = 2, N = 70, H = 4, D = 64;
  const at::Tensor qkv = (at::randn({B, N, 3, H, D}) * 0.7).to(at::kBFloat16);
  const at::Tensor q = (qkv.select(2, 0).transpose(1, 2) * 0.125);
  const at::Tensor k = qkv.select(2, 1).transpose(1, 2), v = qkv.select(2, 2).transpose(1, 2);
  ASSERT_FALSE(k.is_contiguous());
  ASSERT_TRUE(FusedAttentionRuns(q, k, v));
  const at::Tensor ours = FusedAttentionBf16(q, k, v);
  ExpectClose(ours, Reference(q, k, v));
  const at::Tensor probs = SoftmaxLastDimBf16(MatmulFp32Accumulate(q, k.transpose(-2, -1)));
  ExpectClose(ours, MatmulFp32Accumulate(probs, v).transpose(1, 2).reshape({B, N, H * D}));
}

// A NaN in a query turns its row's output NaN, an infinite score likewise
// (the softmax of a row whose maximum is infinite is NaN, as libtorch's); the
// other rows are unaffected.
TEST_F(FusedAttention, NonFiniteRowsBecomeNaNAndStayTheirOwn) {
  at::InferenceMode inference;
  at::manual_seed(7);
  const int64_t N = 20, L = 33, D = 64;
  at::Tensor q = (at::randn({1, 2, N, D}) * 0.2).to(at::kBFloat16);
  at::Tensor k = at::randn({1, 2, L, D}).to(at::kBFloat16);
  const at::Tensor v = at::randn({1, 2, L, D}).to(at::kBFloat16);
  const at::Tensor clean = FusedAttentionBf16(q, k, v);
  q[0][0][3][10] = std::numeric_limits<float>::quiet_NaN();
  q[0][1][17][0] = std::numeric_limits<float>::infinity();  // scores of +-inf (or NaN where a key's value is 0)
  const at::Tensor ours = FusedAttentionBf16(q, k, v).view({N, 2, D});
  EXPECT_TRUE(ours[3][0].isnan().all().item<bool>());
  EXPECT_TRUE(ours[17][1].isnan().all().item<bool>());
  at::Tensor finite = at::ones({N, 2}, at::kBool);
  finite[3][0] = false;
  finite[17][1] = false;
  EXPECT_TRUE(ours.isfinite().all(-1).eq(finite).all().item<bool>());
  EXPECT_TRUE(
      at::equal(ours.masked_select(finite.unsqueeze(-1)), clean.view({N, 2, D}).masked_select(finite.unsqueeze(-1))));
}

// A NaN key makes every score of its head NaN in one lane: each of the head's
// rows is NaN (wherever the key falls: in the kernel's 32-key steps or in its
// tail), the other heads unaffected.
TEST_F(FusedAttention, ANaNKeyTurnsItsHeadNaN) {
  at::InferenceMode inference;
  at::manual_seed(8);
  const int64_t N = 9, L = 45, D = 64;
  const at::Tensor q = (at::randn({1, 3, N, D}) * 0.2).to(at::kBFloat16);
  at::Tensor k = at::randn({1, 3, L, D}).to(at::kBFloat16);
  const at::Tensor v = at::randn({1, 3, L, D}).to(at::kBFloat16);
  k[0][0][5][3] = std::numeric_limits<float>::quiet_NaN();
  k[0][1][40][60] = std::numeric_limits<float>::quiet_NaN();
  const at::Tensor ours = FusedAttentionBf16(q, k, v).view({N, 3, D});
  EXPECT_TRUE(ours.select(1, 0).isnan().all().item<bool>());
  EXPECT_TRUE(ours.select(1, 1).isnan().all().item<bool>());
  EXPECT_TRUE(ours.select(1, 2).isfinite().all().item<bool>());
}

// Scores all far below 0 (~-320): the maximum is the row's own, not the zero
// scores of the padding keys past the last 16 (exp(-320) would leave a zero
// sum).
TEST_F(FusedAttention, VeryNegativeScoresKeepTheirOwnMaximum) {
  at::InferenceMode inference;
  at::manual_seed(9);
  const int64_t D = 64;
  for (const int64_t L : {17, 45, 64, 70}) {
    SCOPED_TRACE(testing::Message() << L << " keys");
    const at::Tensor k = (1.0 + 0.01 * at::randn({1, 1, L, D})).to(at::kBFloat16);
    const at::Tensor q = at::full({1, 1, 7, D}, -5.0).to(at::kBFloat16);
    const at::Tensor v = at::randn({1, 1, L, D}).to(at::kBFloat16);
    const at::Tensor ours = FusedAttentionBf16(q, k, v);
    ASSERT_TRUE(ours.isfinite().all().item<bool>());
    ExpectClose(ours, Reference(q, k, v));
  }
}

// The causal chunk of the engine's prefill through the op chain: query head h
// reads kv head h / (H / KV); row i (position start + i) sees keys
// [0, start + i]; scores divided by `divisor` after rounding (and rounded
// again) unless it is 1. -> [n, H * D].
at::Tensor CausalReference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start,
                           float divisor) {
  const int64_t n = q.size(0), H = q.size(1), D = q.size(2), KV = k.size(0), keys = start + n;
  const at::Tensor kk = k.narrow(1, 0, keys).repeat_interleave(H / KV, 0).to(at::kFloat);  // [H, keys, D]
  const at::Tensor vv = v.narrow(1, 0, keys).repeat_interleave(H / KV, 0).to(at::kFloat);
  at::Tensor scores = at::matmul(q.transpose(0, 1).to(at::kFloat), kk.transpose(1, 2)).to(at::kBFloat16);
  if (divisor != 1.0f) scores = (scores.to(at::kFloat) / divisor).to(at::kBFloat16);
  const at::Tensor masked = at::arange(keys).view({1, keys}) > (at::arange(n) + start).view({n, 1});
  const at::Tensor probs =
      at::softmax(scores.to(at::kFloat).masked_fill(masked, -std::numeric_limits<float>::infinity()), -1)
          .to(at::kBFloat16);
  return at::matmul(probs.to(at::kFloat), vv).to(at::kBFloat16).transpose(0, 1).reshape({n, H * D});
}

TEST_F(FusedAttention, CausalChunksMatchTheOpChain) {
  at::InferenceMode inference;
  at::manual_seed(12);
  struct Case {
    int64_t n, start, keys, heads, kv_heads, dim;
    float divisor;
  };
  const float bf16_sqrt128 = static_cast<float>(c10::BFloat16(static_cast<float>(std::sqrt(128.0))));
  const std::vector<Case> cases = {{1, 0, 1, 2, 1, 64, 1.0f},       {7, 0, 7, 14, 2, 64, 1.0f},
                                   {1, 40, 41, 4, 2, 64, 1.0f},     {50, 13, 70, 4, 2, 128, bf16_sqrt128},
                                   {100, 200, 300, 3, 1, 64, 1.0f}, {33, 0, 33, 2, 2, 16, 4.0f},
                                   {97, 5, 102, 6, 3, 96, 1.0f}};
  for (const Case& c : cases) {
    // (60: scores in the hundreds, where subtracting the wrong maximum
    // underflows every exponential.)
    for (const float sharpness : {1.0f, 8.0f, 60.0f}) {
      SCOPED_TRACE(testing::Message() << c.n << " queries from " << c.start << ", " << c.keys << " keys, " << c.heads
                                      << "/" << c.kv_heads << " heads of " << c.dim << ", divisor " << c.divisor
                                      << ", sharpness " << sharpness);
      const at::Tensor q = (at::randn({c.n, c.heads, c.dim}) * sharpness / std::sqrt(double(c.dim))).to(at::kBFloat16);
      at::Tensor k = at::randn({c.kv_heads, c.keys, c.dim}).to(at::kBFloat16);
      at::Tensor v = at::randn({c.kv_heads, c.keys, c.dim}).to(at::kBFloat16);
      // Keys past the chunk's last position are never read.
      if (c.keys > c.start + c.n) {
        k.narrow(1, c.start + c.n, c.keys - c.start - c.n).fill_(std::numeric_limits<float>::quiet_NaN());
        v.narrow(1, c.start + c.n, c.keys - c.start - c.n).fill_(std::numeric_limits<float>::quiet_NaN());
      }
      const at::Tensor out = at::full({c.n, c.heads * c.dim}, 7.0).to(at::kBFloat16);
      ASSERT_TRUE(FusedCausalAttentionRuns(q, k, v, out));
      FusedCausalAttentionBf16(q, k, v, c.start, c.divisor, out);
      ASSERT_TRUE(out.isfinite().all().item<bool>());
      ExpectClose(out, CausalReference(q, k, v, c.start, c.divisor));
    }
  }
}

// The output rows may be a strided view (a chunk's rows in the engine's step
// output): only they are written.
TEST_F(FusedAttention, CausalWritesOnlyItsOutputRows) {
  at::InferenceMode inference;
  const int64_t n = 9, H = 2, D = 32;
  const at::Tensor q = at::randn({n, H, D}).to(at::kBFloat16), k = at::randn({1, n, D}).to(at::kBFloat16);
  at::Tensor wide = at::zeros({n, 3 * H * D}, at::kBFloat16);
  const at::Tensor out = wide.narrow(1, H * D, H * D);
  ASSERT_TRUE(FusedCausalAttentionRuns(q, k, k, out));
  FusedCausalAttentionBf16(q, k, k, 0, 1.0f, out);
  EXPECT_TRUE(wide.narrow(1, 0, H * D).eq(0).all().item<bool>());
  EXPECT_TRUE(wide.narrow(1, 2 * H * D, H * D).eq(0).all().item<bool>());
  ExpectClose(out, CausalReference(q, k, k, 0, 1.0f));
  EXPECT_FALSE(FusedCausalAttentionRuns(q, k, k, wide.narrow(1, 0, H * D - 1)));              // width
  EXPECT_FALSE(FusedCausalAttentionRuns(q, at::randn({3, n, D}).to(at::kBFloat16), k, out));  // 2 heads over 3
}

// A chunk over a long context (30k keys of dim 128: ~18 MB of scratch, past
// what a thread keeps between calls, so made for the call), then a short one
// on the same threads.
TEST_F(FusedAttention, LongContextTakesScratchForTheCall) {
  at::InferenceMode inference;
  at::manual_seed(13);
  for (const int64_t keys : {30000, 40}) {
    SCOPED_TRACE(testing::Message() << keys << " keys");
    const int64_t n = 3, D = 128;
    const at::Tensor q = (at::randn({n, 2, D}) * 0.3).to(at::kBFloat16);
    const at::Tensor k = at::randn({1, keys, D}).to(at::kBFloat16), v = at::randn({1, keys, D}).to(at::kBFloat16);
    const at::Tensor out = at::empty({n, 2 * D}, at::kBFloat16);
    ASSERT_TRUE(FusedCausalAttentionRuns(q, k, v, out));
    FusedCausalAttentionBf16(q, k, v, keys - n, 1.0f, out);
    ExpectClose(out, CausalReference(q, k, v, keys - n, 1.0f));
  }
}

TEST_F(FusedAttention, RunsOnlyWhereTheKernelTakesTheOperands) {
  at::InferenceMode inference;
  const at::Tensor q = at::randn({1, 2, 5, 64}).to(at::kBFloat16), k = at::randn({1, 2, 7, 64}).to(at::kBFloat16);
  EXPECT_TRUE(FusedAttentionRuns(q, k, k));
  EXPECT_STREQ(AttentionKernelName(), "fused-avx512bf16");
  EXPECT_FALSE(FusedAttentionRuns(q.to(at::kFloat), k.to(at::kFloat), k.to(at::kFloat)));  // fp32
  const at::Tensor q40 = at::randn({1, 2, 5, 40}).to(at::kBFloat16), k40 = at::randn({1, 2, 7, 40}).to(at::kBFloat16);
  EXPECT_FALSE(FusedAttentionRuns(q40, k40, k40));  // dim not a multiple of 16
  const at::Tensor q144 = at::randn({1, 2, 5, 144}).to(at::kBFloat16);
  EXPECT_FALSE(FusedAttentionRuns(q144, q144, q144));  // dim over 128
  const at::Tensor wide = at::randn({1, 2, 7, 65}).to(at::kBFloat16).narrow(3, 0, 64);
  EXPECT_FALSE(FusedAttentionRuns(q, wide, wide));                              // odd row stride
  EXPECT_FALSE(FusedAttentionRuns(q, k.narrow(3, 0, 32), k.narrow(3, 0, 32)));  // dims differ
  EXPECT_FALSE(FusedAttentionRuns(q, k, k.narrow(2, 0, 6)));                    // keys differ
  // Key rows 2^26 elements apart, past the gather's 32-bit offsets (only the
  // view's shape is looked at: nothing is read).
  std::vector<uint16_t> cell(64);
  const at::Tensor far = at::from_blob(cell.data(), {1, 2, 7, 64},
                                       {int64_t{7} << 27, int64_t{7} << 26, int64_t{1} << 26, 1}, at::kBFloat16);
  EXPECT_FALSE(FusedAttentionRuns(q, far, k));
  ForceFusedAttention(0);
  EXPECT_FALSE(FusedAttentionRuns(q, k, k));
  EXPECT_STREQ(AttentionKernelName(), "ops");
  ForceFusedAttention(1);
  ForceGenericKernels(true);
  EXPECT_FALSE(FusedAttentionRuns(q, k, k));
  ForceGenericKernels(false);
  {
    c10::InferenceMode off(false);
    at::AutoGradMode grad(true);
    EXPECT_FALSE(FusedAttentionRuns(q, k, k));
  }
}

}  // namespace
}  // namespace internvl
