// LayerNormLastDim: the bf16 kernel against libtorch's LayerNorm computed in
// fp32 and rounded once (what the kernel computes), on rows of every tail
// length and of large mean against their spread; where it may not run, the op.
#include "core/nn/norm.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/nn/device.h"

namespace internvl {
namespace {

// Elements of a and b (bf16) more than one bf16 step apart at b's magnitude,
// and those not equal. (Outputs of magnitude ~1 near 0 are a difference of
// large terms: the 1e-3 floor leaves room for fp32 roundings there.)
std::pair<int64_t, int64_t> Differences(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor af = a.to(at::kFloat), bf = b.to(at::kFloat);
  const at::Tensor step = (bf.abs() + 1e-3) * (1.0 / 128);
  return {(af - bf).abs().gt(step).sum().item<int64_t>(), af.ne(bf).sum().item<int64_t>()};
}

TEST(LayerNorm, Bf16KernelMatchesTheOpComputedInFp32) {
  at::InferenceMode inference;
  at::manual_seed(5);
  for (const int64_t n : {1, 7, 8, 9, 15, 16, 17, 33, 100, 1024, 1025}) {
    for (const double mean : {0.0, 40.0}) {
      SCOPED_TRACE(testing::Message() << "row length " << n << ", mean " << mean);
      const at::Tensor x = (at::randn({3, 5, n}) * 2 + mean).to(at::kBFloat16);
      const at::Tensor w = (at::randn({n}) * 0.5 + 1).to(at::kBFloat16);
      const at::Tensor b = (at::randn({n}) * 0.1).to(at::kBFloat16);
      // (The kernel runs wherever this project's CPU kernels may.)
      EXPECT_EQ(LayerNormRunsKernel(x, w, b), !GenericKernels() && CpuHasAvx2Fma());
      const at::Tensor ours = LayerNormLastDim(x, w, b, 1e-6);
      const at::Tensor reference =
          at::layer_norm(x.to(at::kFloat), {n}, w.to(at::kFloat), b.to(at::kFloat), 1e-6).to(at::kBFloat16);
      ASSERT_EQ(ours.sizes(), x.sizes());
      ASSERT_EQ(ours.scalar_type(), at::kBFloat16);
      const auto [far, unequal] = Differences(ours, reference);
      EXPECT_EQ(far, 0);
      // Only rounding ties of the fp32 result may differ (a few in a thousand).
      EXPECT_LE(unequal, std::max<int64_t>(1, x.numel() / 100)) << unequal << " of " << x.numel();
    }
  }
}

TEST(LayerNorm, KernelOnlyWhereAllowed) {
  at::InferenceMode inference;
  const at::Tensor x = at::randn({4, 64}).to(at::kBFloat16), w = at::ones({64}).to(at::kBFloat16);
  const at::Tensor b = at::zeros({64}).to(at::kBFloat16);
  // fp32, non-contiguous or fp32 weights: libtorch's op, same result.
  EXPECT_FALSE(LayerNormRunsKernel(x.to(at::kFloat), w.to(at::kFloat), b.to(at::kFloat)));
  EXPECT_FALSE(LayerNormRunsKernel(x.t().contiguous().t(), w, b));
  EXPECT_FALSE(LayerNormRunsKernel(x, w.to(at::kFloat), b));
  const at::Tensor strided = at::randn({64, 4}).to(at::kBFloat16).t();
  EXPECT_TRUE(at::equal(LayerNormLastDim(strided, w, b, 1e-6), at::layer_norm(strided, {64}, w, b, 1e-6)));
  ForceGenericKernels(true);
  EXPECT_FALSE(LayerNormRunsKernel(x, w, b));
  ForceGenericKernels(false);
}

}  // namespace
}  // namespace internvl
