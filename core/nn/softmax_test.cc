// SoftmaxLastDimFp32: the in-place kernel against libtorch's softmax on rows
// of every tail length, with masked (-inf) and large scores, and on the rows
// the reference turns to NaN; where it may not run in place, libtorch's own.
#include "core/nn/softmax.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "core/nn/device.h"
#include "core/nn/softmax_kernels.h"

namespace internvl {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(Softmax, MatchesLibtorchOnEveryRowLength) {
  at::InferenceMode inference;
  at::manual_seed(3);
  for (const int64_t n : {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1025}) {
    SCOPED_TRACE(testing::Message() << "row length " << n);
    // Scores of several scales, some masked to -inf (never a whole row).
    at::Tensor x =
        at::randn({37, n}) * at::tensor({0.1f, 3.0f, 30.0f, 300.0f}).repeat({10}).slice(0, 0, 37).view({37, 1});
    if (n > 1) {
      x.masked_fill_(at::rand({37, n}) < 0.3, -kInf).select(1, 0).fill_(1.0f);
      x[0].slice(0, 1).fill_(-kInf);  // one score left: the others' exact 0 shows even under flush-to-zero
    }
    const at::Tensor reference = at::softmax(x, -1);
    const at::Tensor ours = SoftmaxLastDimFp32(x.clone());
    ASSERT_EQ(ours.sizes(), reference.sizes());
    EXPECT_TRUE(at::allclose(ours, reference, 2e-6, 1e-7)) << (ours - reference).abs().max().item<float>();
    // Masked positions weigh exactly nothing; each row sums to 1.
    EXPECT_TRUE(ours.masked_select(x == -kInf).eq(0).all().item<bool>())
        << ours.masked_select(x == -kInf).max().item<float>();
    EXPECT_TRUE(at::allclose(ours.sum(-1), at::ones({37}), 1e-5, 1e-5));
  }
}

TEST(Softmax, NonFiniteRowsBecomeNaNAsInTheReference) {
  at::InferenceMode inference;
  at::Tensor x = at::randn({4, 19});
  x[0][5] = std::nanf("");
  x[1][18] = kInf;
  x[2].fill_(-kInf);
  const at::Tensor reference = at::softmax(x, -1);
  const at::Tensor ours = SoftmaxLastDimFp32(x.clone());
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(reference[r].isnan().any().item<bool>()) << r;
    EXPECT_TRUE(ours[r].isnan().all().item<bool>()) << r;
  }
  EXPECT_TRUE(at::allclose(ours[3], reference[3], 2e-6, 1e-7));
}

TEST(Softmax, Bf16RowsAsTheOpInFp32RoundedOnce) {
  at::InferenceMode inference;
  at::manual_seed(4);
  for (const int64_t n : {1, 7, 8, 9, 17, 100, 1025}) {
    SCOPED_TRACE(testing::Message() << "row length " << n);
    at::Tensor x = (at::randn({21, n}) * at::tensor({0.1f, 3.0f, 30.0f}).repeat({7}).view({21, 1})).to(at::kBFloat16);
    if (n > 1) x.masked_fill_(at::rand({21, n}) < 0.3, -kInf).select(1, 0).fill_(1.0f);
    x[20][0] = std::nanf("");  // a NaN row: all NaN, as the op's
    const at::Tensor reference = at::softmax(x.to(at::kFloat), -1).to(at::kBFloat16);
    const at::Tensor copy = x.clone();
    const at::Tensor ours = SoftmaxLastDimBf16(copy);
    ASSERT_EQ(ours.scalar_type(), at::kBFloat16);
    if (!GenericKernels() && CpuHasAvx2Fma()) {
      EXPECT_EQ(ours.data_ptr(), copy.data_ptr());
    }
    EXPECT_TRUE(ours[20].isnan().all().item<bool>());
    // The fp32 results differ by a few ulp at most (exp polynomials): a bf16
    // step apart only where one sits at a rounding tie.
    const at::Tensor o = ours.slice(0, 0, 20).to(at::kFloat), r = reference.slice(0, 0, 20).to(at::kFloat);
    const at::Tensor far = (o - r).abs() > r.abs() * (1.0 / 128) + 1e-30;
    EXPECT_EQ(far.sum().item<int64_t>(), 0) << (o - r).abs().max().item<float>();
    EXPECT_LE(o.ne(r).sum().item<int64_t>(), std::max<int64_t>(1, o.numel() / 50));
    EXPECT_TRUE(o.masked_select(x.slice(0, 0, 20) == -kInf).eq(0).all().item<bool>());
  }
}

TEST(Softmax, InPlaceOnlyWhereAllowed) {
  const at::Tensor x = at::randn({3, 40});
  {
    // Recording gradients: libtorch's op, the input untouched.
    const at::Tensor before = x.clone();
    const at::Tensor y = SoftmaxLastDimFp32(x);
    EXPECT_TRUE(at::equal(x, before));
    EXPECT_TRUE(at::allclose(y, at::softmax(before, -1)));
  }
  at::InferenceMode inference;
  // Not contiguous, or not fp32: libtorch's op (fp32 out).
  const at::Tensor t = x.t();
  EXPECT_FALSE(SoftmaxRunsInPlace(t));
  EXPECT_TRUE(at::allclose(SoftmaxLastDimFp32(t), at::softmax(t, -1), 2e-6, 1e-7));
  const at::Tensor h = x.to(at::kBFloat16);
  EXPECT_FALSE(SoftmaxRunsInPlace(h));
  EXPECT_EQ(SoftmaxLastDimFp32(h).scalar_type(), at::kFloat);
  // Generic kernels (INTERNVL_KERNELS=generic): libtorch's op.
  ForceGenericKernels(true);
  EXPECT_FALSE(SoftmaxRunsInPlace(x.clone()));
  ForceGenericKernels(false);
  at::Tensor own = x.clone();
  if (SoftmaxRunsInPlace(own)) {
    const at::Tensor y = SoftmaxLastDimFp32(own);
    EXPECT_EQ(y.data_ptr(), own.data_ptr());
    EXPECT_TRUE(at::allclose(own, at::softmax(x, -1), 2e-6, 1e-7));
  } else {
    GTEST_LOG_(INFO) << "this CPU has no AVX2/FMA: the kernel does not run";
  }
}

TEST(Softmax, ToTheActivationsDtypeAsFp32SoftmaxThenCast) {
  // Attention probabilities: softmax(scores, -1, float32).to(dtype). bf16
  // scores to bf16 run the bf16 kernel in place (a bf16 step from the fp32
  // softmax cast only at rounding ties); anything else is the fp32 softmax
  // and the cast, the scores untouched where libtorch's op runs.
  at::manual_seed(5);
  const at::Tensor x = (at::randn({9, 70}) * 4).masked_fill(at::rand({9, 70}) < 0.2, -kInf);
  x.select(1, 3).fill_(1);  // (no row all -inf)
  const at::Tensor scores = at::randn({9, 70}).mul(4).to(at::kBFloat16);
  const at::Tensor reference = at::softmax(scores.to(at::kFloat), -1).to(at::kBFloat16).to(at::kFloat);
  {
    at::InferenceMode inference;
    const at::Tensor own = scores.clone();
    const at::Tensor p = SoftmaxLastDimTo(own, at::kBFloat16);
    ASSERT_EQ(p.scalar_type(), at::kBFloat16);
    if (!GenericKernels() && CpuHasAvx2Fma()) {
      EXPECT_EQ(p.data_ptr(), own.data_ptr());
    }
    const at::Tensor o = p.to(at::kFloat);
    EXPECT_EQ(((o - reference).abs() > reference.abs() * (1.0 / 128) + 1e-30).sum().item<int64_t>(), 0);
    EXPECT_LE(o.ne(reference).sum().item<int64_t>(), std::max<int64_t>(1, o.numel() / 50));
    // fp32 scores to fp32, and bf16 scores to fp32: the fp32 softmax.
    EXPECT_TRUE(at::allclose(SoftmaxLastDimTo(x.clone(), at::kFloat), at::softmax(x, -1), 2e-6, 1e-7));
    const at::Tensor wide = SoftmaxLastDimTo(scores.clone(), at::kFloat);
    ASSERT_EQ(wide.scalar_type(), at::kFloat);
    EXPECT_TRUE(at::allclose(wide, at::softmax(scores.to(at::kFloat), -1), 2e-6, 1e-7));
  }
  // Recording gradients: libtorch's op and the cast, the scores untouched.
  const at::Tensor before = scores.clone();
  const at::Tensor p = SoftmaxLastDimTo(scores, at::kBFloat16);
  EXPECT_TRUE(at::equal(scores, before));
  EXPECT_TRUE(at::equal(p, at::softmax(before, -1, at::kFloat).to(at::kBFloat16)));
}

TEST(Softmax, Avx512KernelsAgreeWithTheAvx2Ones) {
  // The 16-lane kernels against the 8-lane ones on every tail length: the
  // same exponentials, the sums in another order (fp32: a few ulp; bf16: a
  // step apart only at rounding ties); NaN rows and masked scores alike.
  if (!CpuHasAvx512() || !CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX-512 on this CPU";
  at::manual_seed(6);
  for (const int64_t n : {1, 2, 15, 16, 17, 31, 32, 33, 100, 1025}) {
    SCOPED_TRACE(testing::Message() << "row length " << n);
    at::Tensor x = at::randn({11, n}) * 6;
    if (n > 1) x.masked_fill_(at::rand({11, n}) < 0.3, -kInf).select(1, 0).fill_(1.0f);
    x[10][n - 1] = std::nanf("");
    at::Tensor a = x.clone(), b = x.clone();
    softmax::SoftmaxRowsAvx2(a.data_ptr<float>(), 11, n);
    softmax::SoftmaxRowsAvx512(b.data_ptr<float>(), 11, n);
    EXPECT_TRUE(b[10].isnan().all().item<bool>());
    EXPECT_TRUE(at::allclose(b.slice(0, 0, 10), a.slice(0, 0, 10), 1e-6, 0)) << (b - a).abs().max().item<float>();
    EXPECT_TRUE(b.slice(0, 0, 10).masked_select(x.slice(0, 0, 10) == -kInf).eq(0).all().item<bool>());
    at::Tensor h = x.to(at::kBFloat16), g = h.clone();
    softmax::SoftmaxRowsBf16Avx2(reinterpret_cast<uint16_t*>(h.data_ptr()), 11, n);
    softmax::SoftmaxRowsBf16Avx512(reinterpret_cast<uint16_t*>(g.data_ptr()), 11, n);
    const at::Tensor hf = h.slice(0, 0, 10).to(at::kFloat), gf = g.slice(0, 0, 10).to(at::kFloat);
    EXPECT_TRUE(g[10].isnan().all().item<bool>());
    EXPECT_EQ(((gf - hf).abs() > hf.abs() * (1.0 / 128) + 1e-30).sum().item<int64_t>(), 0);
    EXPECT_LE(gf.ne(hf).sum().item<int64_t>(), std::max<int64_t>(1, gf.numel() / 50));
  }
  const char* env = std::getenv("INTERNVL_SOFTMAX_KERNEL");
  const bool avx2 = env != nullptr && std::string(env) == "avx2";
  EXPECT_STREQ(SoftmaxKernelName(), GenericKernels() ? "libtorch" : avx2 ? "avx2" : "avx512");
}

}  // namespace
}  // namespace internvl
