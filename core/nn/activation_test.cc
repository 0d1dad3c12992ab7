// SwiGlu: the bf16 kernel against silu computed in fp32 and rounded once to
// bf16, then the product rounded (as Torch 2.x rounds; libtorch 1.13 rounds
// each step of its bf16 silu), on rows of every tail length, the halves of a
// fused product, and extreme inputs; where it may not run, the ops.
#include "core/nn/activation.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/nn/activation_kernels.h"
#include "core/nn/device.h"

namespace internvl {
namespace {

bool KernelsHere() { return !GenericKernels() && CpuHasAvx2Fma(); }

TEST(SwiGlu, Bf16KernelRoundsAsTheOps) {
  at::InferenceMode inference;
  at::manual_seed(6);
  for (const int64_t n : {1, 7, 8, 9, 17, 100, 4864}) {
    SCOPED_TRACE(testing::Message() << "row length " << n);
    // The two halves of a fused [rows, 2n] product, as the MLP passes them.
    const at::Tensor gu = (at::randn({2, 3, 2 * n}) * 4).to(at::kBFloat16);
    const at::Tensor gate = gu.narrow(-1, 0, n), up = gu.narrow(-1, n, n);
    EXPECT_EQ(SwiGluRunsKernel(gate, up), KernelsHere());
    const at::Tensor ours = SwiGlu(gate, up);
    const at::Tensor reference = (at::silu(gate.to(at::kFloat)).to(at::kBFloat16) * up).to(at::kBFloat16);
    ASSERT_EQ(ours.sizes(), reference.sizes());
    ASSERT_EQ(ours.scalar_type(), at::kBFloat16);
    // silu's fp32 values differ from libtorch's by an ulp or two (another
    // exp): a bf16 step apart only at a rounding tie, at most one step.
    const at::Tensor o = ours.to(at::kFloat), r = reference.to(at::kFloat);
    const at::Tensor far = (o - r).abs() > (r.abs() + 1e-6) * (1.0 / 128);
    EXPECT_EQ(far.sum().item<int64_t>(), 0) << (o - r).abs().max().item<float>();
    EXPECT_LE(o.ne(r).sum().item<int64_t>(), std::max<int64_t>(1, o.numel() / 100));
  }
}

TEST(SwiGlu, ExtremeInputsAsTheOps) {
  at::InferenceMode inference;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const at::Tensor gate =
      at::tensor({0.0f, -0.0f, 100.0f, -100.0f, 88.0f, -88.0f, kInf, std::nanf(""), 1.0f, -1.0f}).to(at::kBFloat16);
  const at::Tensor up = at::full({10}, 3.0f).to(at::kBFloat16);
  const at::Tensor ours = SwiGlu(gate, up).to(at::kFloat);
  const at::Tensor reference = (at::silu(gate.to(at::kFloat)).to(at::kBFloat16) * up).to(at::kFloat);
  for (int64_t i = 0; i < 10; ++i) {
    SCOPED_TRACE(testing::Message() << "gate " << gate[i].item<float>());
    const float a = ours[i].item<float>(), b = reference[i].item<float>();
    if (std::isnan(b) || std::isinf(b)) {
      EXPECT_EQ(std::isnan(a), std::isnan(b)) << a;
      if (std::isinf(b)) {
        EXPECT_EQ(a, b);
      }
    } else {
      EXPECT_NEAR(a, b, std::abs(b) / 128 + 1e-30);
    }
  }
}

// The AVX-512 kernel (taken where the CPU has AVX-512) gives the AVX2
// kernel's bits: rows of every tail length, with infinities, NaNs, signed
// zeros, denormals and the exponential's cut-off around -87.3.
TEST(SwiGlu, Avx512KernelGivesTheAvx2Bits) {
  if (!CpuHasAvx2Fma() || !CpuHasAvx512()) GTEST_SKIP() << "no AVX-512 on this CPU";
  at::manual_seed(7);
  for (const int64_t n : {1, 7, 15, 16, 17, 33, 100, 4864}) {
    SCOPED_TRACE(testing::Message() << "row length " << n);
    at::Tensor gate = (at::randn({3, n}) * at::tensor({1.0f, 30.0f, 200.0f}).view({3, 1})).to(at::kBFloat16);
    const at::Tensor up = (at::randn({3, n}) * 3).to(at::kBFloat16);
    const float specials[] = {std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::quiet_NaN(),
                              -0.0f,
                              0.0f,
                              1e-39f,
                              -1e-39f,
                              -87.0f,
                              -87.5f,
                              -88.0f,
                              88.0f};
    for (int64_t i = 0; i < std::min<int64_t>(n, 11); ++i) gate[0][i] = specials[i];
    at::Tensor a = at::empty({3, n}, at::kBFloat16), b = at::empty({3, n}, at::kBFloat16);
    const auto* g = reinterpret_cast<const uint16_t*>(gate.data_ptr());
    const auto* u = reinterpret_cast<const uint16_t*>(up.data_ptr());
    act::SwiGluRowsBf16Avx2(g, u, n, reinterpret_cast<uint16_t*>(a.data_ptr()), 3, n);
    act::SwiGluRowsBf16Avx512(g, u, n, reinterpret_cast<uint16_t*>(b.data_ptr()), 3, n);
    EXPECT_TRUE(at::equal(a.view(at::kShort), b.view(at::kShort)));
  }
}

TEST(SwiGlu, KernelOnlyWhereAllowed) {
  at::InferenceMode inference;
  const at::Tensor g = at::randn({4, 64}).to(at::kBFloat16), u = at::randn({4, 64}).to(at::kBFloat16);
  EXPECT_FALSE(SwiGluRunsKernel(g.to(at::kFloat), u.to(at::kFloat)));
  EXPECT_FALSE(SwiGluRunsKernel(g.t(), u.t()));         // columns not contiguous
  EXPECT_FALSE(SwiGluRunsKernel(g, u.slice(0, 0, 2)));  // shapes differ
  const at::Tensor t = at::randn({64, 4}).to(at::kBFloat16).t();
  EXPECT_TRUE(at::equal(SwiGlu(t, t), at::silu(t) * t));  // libtorch's ops
  ForceGenericKernels(true);
  EXPECT_FALSE(SwiGluRunsKernel(g, u));
  ForceGenericKernels(false);
}

// Columns split between callers (a decode row split between threads): the
// pieces together give SwiGlu's bits, rows of the fused halves at a stride.
TEST(SwiGlu, ColumnsGiveTheWholeRowsBits) {
  if (!KernelsHere()) GTEST_SKIP() << "no SwiGLU kernel on this CPU";
  at::InferenceMode inference;
  for (const int64_t n : {4864, 100, 9}) {
    SCOPED_TRACE(testing::Message() << "row length " << n);
    const at::Tensor gu = (at::randn({1, 3, 2 * n}) * 4).to(at::kBFloat16);
    const at::Tensor gate = gu.narrow(-1, 0, n), up = gu.narrow(-1, n, n);
    ASSERT_TRUE(SwiGluRunsKernel(gate, up));
    const at::Tensor whole = SwiGlu(gate, up);
    at::Tensor pieces = at::empty(gate.sizes(), gate.options());
    const int64_t cuts[] = {0, std::min<int64_t>(n, 16), n / 2 + 3, n};  // not all on 8-column vectors
    for (int i = 0; i < 3; ++i) {
      if (cuts[i] < cuts[i + 1]) SwiGluColumns(gate, up, pieces, cuts[i], cuts[i + 1]);
    }
    EXPECT_TRUE(at::equal(pieces, whole));
  }
}

}  // namespace
}  // namespace internvl
