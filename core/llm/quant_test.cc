#include "core/llm/quant.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/llm/gemv.h"
#include "core/llm/gemv_kernels.h"
#include "core/llm/largest.h"
#include "core/llm/quant_kernels.h"
#include "core/nn/torch_util.h"
#include "gtest/gtest.h"

namespace internvl::llm {
namespace {

const std::vector<QuantKernel> kKernels = {QuantKernel::kPortable, QuantKernel::kAvx2, QuantKernel::kAvx512Vnni,
                                           QuantKernel::kAvx512Bf16};

// max |a - b| / max |b|.
double RelErr(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() /
         b.to(at::kDouble).abs().max().item<double>();
}

// dense as int8 (group 0) or as a 4-bit AWQ layer in groups of `group`.
std::shared_ptr<QuantMatrix> Quantized(const at::Tensor& dense, int64_t group) {
  if (group == 0) return QuantMatrix::Int8(dense);
  const auto t = QuantMatrix::QuantizeAwq(dense, group, at::kHalf);
  return *QuantMatrix::FromAwq(t.qweight, t.qzeros, t.scales, group);
}

class QuantTest : public ::testing::Test {
 protected:
  void TearDown() override { ForceQuantKernel(std::nullopt); }
};

TEST_F(QuantTest, Int8RoundsEachRowToItsScale) {
  at::manual_seed(1);
  const at::Tensor w = at::randn({37, 200});
  auto q = QuantMatrix::Int8(w);
  EXPECT_EQ(q->padded_in(), 256);
  const at::Tensor scale = w.abs().amax(1) / 127.0;
  const at::Tensor err = (q->Dequantize(0, 37, at::kFloat) - w).abs();
  // Rounding: at most half a step per row.
  EXPECT_TRUE((err <= scale.unsqueeze(1) * 0.5001).all().item<bool>());
  // One byte per weight (+ the padding to 64) and one scale per row.
  EXPECT_EQ(q->bytes(), 37 * 256 + 37 * 4);
}

// A hand-packed AWQ layer: every 4-bit value and zero at a known column, so
// the unpacking order (0, 2, 4, 6, 1, 3, 5, 7) is checked against the
// definition, not against our own packer.
TEST_F(QuantTest, AwqUnpacksTheAutoAwqOrder) {
  const int64_t in = 128, out = 16, group = 64;
  auto value = [](int64_t i, int64_t o) { return (i * 3 + o * 5) % 16; };
  auto zero = [](int64_t g, int64_t o) { return (g + 2 * o) % 16; };
  at::Tensor qweight = at::zeros({in, out / 8}, at::kInt);
  at::Tensor qzeros = at::zeros({in / group, out / 8}, at::kInt);
  const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  for (int64_t r = 0; r < in; ++r) {
    for (int64_t j = 0; j < out / 8; ++j) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) word |= static_cast<uint32_t>(value(r, 8 * j + order[i])) << (4 * i);
      qweight[r][j] = static_cast<int32_t>(word);
    }
  }
  for (int64_t g = 0; g < in / group; ++g) {
    for (int64_t j = 0; j < out / 8; ++j) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) word |= static_cast<uint32_t>(zero(g, 8 * j + order[i])) << (4 * i);
      qzeros[g][j] = static_cast<int32_t>(word);
    }
  }
  const at::Tensor scales = (at::arange(in / group * out).view({in / group, out}) * 0.01 + 0.5).to(at::kHalf);
  auto q = QuantMatrix::FromAwq(qweight, qzeros, scales, group);
  ASSERT_TRUE(q.ok()) << q.status();
  const at::Tensor w = (*q)->Dequantize(0, out, at::kFloat);
  ASSERT_EQ(w.sizes(), (std::vector<int64_t>{out, in}));
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i) {
      const float s = scales[i / group][o].item<float>();
      ASSERT_FLOAT_EQ(w[o][i].item<float>(), (value(i, o) - zero(i / group, o)) * s) << o << "," << i;
    }
  }
  // Our packer writes what the unpacker reads.
  const at::Tensor dense = at::randn({out, in});
  const auto t = QuantMatrix::QuantizeAwq(dense, group, at::kHalf);
  auto back = QuantMatrix::FromAwq(t.qweight, t.qzeros, t.scales, group);
  ASSERT_TRUE(back.ok());
  // 4 bits over each group's range: at most half a step (range / 15 / 2) off.
  const at::Tensor range = dense.view({out, in / group, group}).amax(2) - dense.view({out, in / group, group}).amin(2);
  const at::Tensor err = ((*back)->Dequantize(0, out, at::kFloat) - dense).abs().view({out, in / group, group});
  EXPECT_TRUE((err <= (range / 15.0 * 0.51 + 1e-3).unsqueeze(2)).all().item<bool>());
}

TEST_F(QuantTest, AwqRejectsInconsistentTensors) {
  const at::Tensor qw = at::zeros({128, 2}, at::kInt), qz = at::zeros({1, 2}, at::kInt);
  EXPECT_FALSE(QuantMatrix::FromAwq(qw, qz, at::zeros({2, 16}), 128).ok());
  EXPECT_FALSE(QuantMatrix::FromAwq(qw.to(at::kFloat), qz, at::zeros({1, 16}), 128).ok());
  auto small_group = QuantMatrix::FromAwq(at::zeros({32, 2}, at::kInt), qz, at::zeros({1, 16}), 32);
  EXPECT_EQ(small_group.status().code(), absl::StatusCode::kUnimplemented);
}

// Decode rows through every kernel this CPU runs against the dequantized
// weights in fp64: the only error is the inputs' int8 rounding (~0.4% of the
// largest value of each span: 32 inputs for int8, 64 or 128 for int4), and
// the kernels agree with each other to fp32 summation order.
TEST_F(QuantTest, KernelsMatchTheDequantizedProduct) {
  at::InferenceMode guard;
  at::manual_seed(2);
  // int8; int4 in groups of 64 (192 inputs, padded to the 128-input chunks:
  // the halves of a chunk in different groups), 128 (AWQ's; 19 groups are
  // more than one 16-group window of the VNNI kernel), 192 (groups ending
  // mid-chunk) and 256 (two chunks per group).
  for (auto [group, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {0, 200, 45}, {64, 192, 40}, {128, 384, 40}, {128, 19 * 128, 40}, {192, 384, 40}, {256, 512, 40}}) {
    const bool int4 = group > 0;
    const at::Tensor dense = at::randn({out, in});
    const std::shared_ptr<QuantMatrix> q = Quantized(dense, group);
    const at::Tensor w = q->Dequantize(0, out, at::kFloat);
    const at::Tensor b = at::randn({out});
    for (int64_t rows : {1, 2, 3, 4, 5, 9, 16, 23, 32}) {
      const at::Tensor x = at::randn({1, rows, in});
      const at::Tensor expected = at::linear(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble));
      at::Tensor first;
      for (QuantKernel k : kKernels) {
        if (!ForceQuantKernel(k)) continue;
        const std::string what =
            absl::StrCat(QuantKernelName(k), int4 ? " int4 group " : " int8", int4 ? group : 0, " rows ", rows);
        const at::Tensor y = QuantLinear(x, *q, b);
        ASSERT_EQ(y.sizes(), expected.sizes()) << what;
        EXPECT_LT(RelErr(y, expected), 0.02) << what;
        if (!first.defined()) {
          first = y;
        } else {
          EXPECT_LT(RelErr(y, first), 1e-5) << what << " against portable";
        }
        // bf16 inputs give a bf16 result of the same product.
        const at::Tensor yb = QuantLinear(x.to(at::kBFloat16), *q, b);
        EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
        EXPECT_LT(RelErr(yb, expected), 0.03) << what << " bf16";
        // Other dtypes: computed in fp32, returned in theirs.
        const at::Tensor yh = QuantLinear(x.to(at::kHalf), *q, b);
        EXPECT_EQ(yh.scalar_type(), at::kHalf);
        EXPECT_LT(RelErr(yh, expected), 0.03) << what << " fp16";
      }
    }
    // Prefill: tiles of dequantized rows through libtorch, no input rounding.
    const at::Tensor x = at::randn({2, 40, in});
    const at::Tensor expected = at::linear(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble));
    EXPECT_LT(RelErr(QuantLinear(x, *q, b), expected), 1e-5);
  }
}

// Prefill's row tiles: as few as kQuantPrefillTileBytes allows, of equal
// rows, covering the matrix.
TEST_F(QuantTest, PrefillTilesAreFewAndEqual) {
  EXPECT_EQ(QuantPrefillTileRows(9728, 896, 2), 9728);    // InternVL2-1B's gate|up in bf16: one tile
  EXPECT_EQ(QuantPrefillTileRows(9728, 896, 4), 4864);    // in fp32: two of 17 MB
  EXPECT_EQ(QuantPrefillTileRows(28672, 4096, 2), 4096);  // InternVL2-8B's gate|up: 7 tiles of 32 MB
  for (auto [out, in, bytes] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 1, 4}, {7, 3, 2}, {8200, 1024, 4}, {151655, 896, 2}, {3, int64_t{1} << 24, 4}, {28672, 4096, 4}}) {
    const int64_t rows = QuantPrefillTileRows(out, in, bytes);
    const int64_t tiles = (out + rows - 1) / rows;
    EXPECT_GE(rows, 1);
    EXPECT_TRUE(rows * in * bytes <= kQuantPrefillTileBytes || rows <= 4) << out << "x" << in;
    EXPECT_TRUE(rows >= out || rows % 4 == 0) << out << "x" << in;
    // No fewer tiles fit: one tile less would exceed the limit.
    if (tiles > 1) {
      EXPECT_GT((out + tiles - 2) / (tiles - 1) * in * bytes, kQuantPrefillTileBytes) << out << "x" << in;
    }
  }
}

// A prefill product over several tiles (its fp32 weights past
// kQuantPrefillTileBytes; in bf16 one tile), the tile buffer reused from
// call to call, and under autograd (fresh tiles: the backward pass keeps
// them): the product of the dequantized matrix, and x's gradient.
TEST_F(QuantTest, PrefillAcrossTilesIsTheDequantizedProduct) {
  at::manual_seed(6);
  const int64_t out = 8200, in = 1024;
  ASSERT_GT(out * in * 4, kQuantPrefillTileBytes);
  ASSERT_LT(QuantPrefillTileRows(out, in, 4), out);
  const std::shared_ptr<QuantMatrix> q = Quantized(at::randn({out, in}), 128);
  const at::Tensor w = q->Dequantize(0, out, at::kFloat).to(at::kDouble);
  const at::Tensor b = at::randn({out});
  const at::Tensor x = at::randn({2, 20, in});
  const at::Tensor expected = at::linear(x.to(at::kDouble), w, b.to(at::kDouble));
  {
    at::InferenceMode guard;
    EXPECT_LT(RelErr(QuantLinear(x, *q, b), expected), 1e-5);
    // Another matrix between two calls: each call dequantizes its own rows.
    const std::shared_ptr<QuantMatrix> other = Quantized(at::randn({40, in}), 128);
    const at::Tensor y_other = QuantLinear(x, *other, {});
    EXPECT_LT(RelErr(y_other, at::linear(x.to(at::kDouble), other->Dequantize(0, 40, at::kFloat).to(at::kDouble))),
              1e-5);
    EXPECT_LT(RelErr(QuantLinear(x, *q, b), expected), 1e-5);
    if (CpuHasNativeBf16Matmul()) {
      const at::Tensor yb = QuantLinear(x.to(at::kBFloat16), *q, b);
      EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
      EXPECT_LT(RelErr(yb, expected), 0.03);
    }
  }
  const at::Tensor xg = x.clone().requires_grad_(true);
  const at::Tensor y = QuantLinear(xg, *q, b);
  // A second product with other weights before the backward pass.
  QuantLinear(xg.detach(), *Quantized(at::randn({out, in}), 128), {});
  const at::Tensor g = at::randn(y.sizes());
  y.backward(g);
  EXPECT_LT(RelErr(y.detach(), expected), 1e-5);
  EXPECT_LT(RelErr(xg.grad(), at::matmul(g.to(at::kDouble), w)), 1e-5);
}

// The dequantized rows the prefill multiplies: each kernel's bits equal the
// reference's ops (int8 q * scale; int4 q * scale + zmin, two roundings in
// fp32; then cast), for fp32 and bf16, row ranges off the start, inputs not
// a multiple of the vector width, and rows whose scale is NaN or infinite.
TEST_F(QuantTest, DequantizedRowsAreTheReferenceOpsBitForBit) {
  at::InferenceMode guard;
  at::manual_seed(4);
  auto reference = [](const QuantMatrix& q, int64_t r0, int64_t r1, at::ScalarType dtype) {
    const int64_t n = r1 - r0;
    if (q.kind() == QuantMatrix::Kind::kInt8) {
      return (q.data().narrow(0, r0, n).narrow(1, 0, q.in()).to(at::kFloat) * q.scale().narrow(0, r0, n).unsqueeze(1))
          .to(dtype);
    }
    const int64_t inp = q.padded_in(), groups = inp / q.group();
    const at::Tensor bytes = q.data().narrow(0, r0, n).view({n, inp / 128, 1, 64});
    const at::Tensor values =
        at::cat({bytes.bitwise_and(0xF), bytes.__rshift__(4)}, 2).view({n, groups, q.group()}).to(at::kFloat);
    const at::Tensor product = values * q.scale().narrow(0, r0, n).unsqueeze(2);
    return (product + q.zmin().narrow(0, r0, n).unsqueeze(2)).view({n, inp}).narrow(1, 0, q.in()).to(dtype);
  };
  auto bits = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t.view(at::kInt) : t.view(at::kShort); };
  for (auto [group, in] : std::vector<std::pair<int64_t, int64_t>>{
           {0, 200}, {0, 901}, {64, 192}, {64, 320}, {128, 384}, {192, 384}, {128, 896}}) {
    const int64_t out = group > 0 ? 40 : 37;  // (AWQ: multiples of 8)
    const at::Tensor dense = at::randn({out, in});
    const std::shared_ptr<QuantMatrix> q = Quantized(dense, group);
    // Scales off the fp16 grid (AWQ's are fp16, whose products with 4-bit
    // values are exact, so a fused multiply-add would go unseen).
    q->scale().mul_(1 + 1e-3 * at::rand(q->scale().sizes()));
    q->scale().select(0, 7).fill_(std::numeric_limits<float>::quiet_NaN());
    q->scale().select(0, 9).fill_(std::numeric_limits<float>::infinity());
    for (QuantKernel k : kKernels) {
      if (!ForceQuantKernel(k)) continue;
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
        for (auto [r0, r1] : std::vector<std::pair<int64_t, int64_t>>{{0, out}, {5, 23}, {36, 37}}) {
          const std::string what = absl::StrCat(QuantKernelName(k), " group ", group, " in ", in, " ",
                                                c10::toString(dtype), " rows ", r0, "-", r1);
          const at::Tensor ours = q->Dequantize(r0, r1, dtype);
          const at::Tensor theirs = reference(*q, r0, r1, dtype);
          ASSERT_EQ(ours.sizes(), theirs.sizes()) << what;
          // NaN payloads aside (libtorch's vectorized cast gives 0xFFFF, its
          // scalar one 0x7FC0): the same bits, NaN where it has NaN.
          const at::Tensor nan = theirs.isnan();
          EXPECT_TRUE(at::equal(ours.isnan(), nan)) << what;
          EXPECT_TRUE(at::equal(bits(ours).masked_fill(nan, 0), bits(theirs).masked_fill(nan, 0))) << what;
        }
      }
    }
  }
}

// Each kernel called directly on row ranges that start off a pair and hold
// an odd number of rows (QuantLinear's chunks are multiples of 4 rows, and
// AWQ matrices have multiples of 8): the same outputs as the portable kernel.
TEST_F(QuantTest, KernelsCoverOddRowRanges) {
  at::manual_seed(3);
  for (int64_t group : {0, 128}) {
    const int64_t out = 40, in = 19 * 128;
    const at::Tensor dense = at::randn({out, in});
    const std::shared_ptr<QuantMatrix> q = Quantized(dense, group);
    for (int64_t rows : {1, 2, 3}) {
      const at::Tensor x = at::randn({rows, in}).contiguous();
      quant::Activations a;
      a.Prepare(x.data_ptr<float>(), rows, in, q->padded_in(), group, gemv::CpuHasAvx2Fma());
      std::vector<float> want(rows * out, -1.0f), got(rows * out, -1.0f);
      auto run = [&](int kernel, std::vector<float>& y, int64_t begin, int64_t end) {
        if (group == 0) {
          const quant::Int8Problem p{
              &a, q->data().data_ptr<int8_t>(), q->scale().data_ptr<float>(), nullptr, y.data(), out, nullptr};
          kernel == 0   ? quant::Int8RowsPortable(p, begin, end)
          : kernel == 1 ? quant::Int8RowsAvx2(p, begin, end)
                        : quant::Int8RowsAvx512Vnni(p, begin, end);
        } else {
          const quant::Int4Problem p{&a,
                                     q->data().data_ptr<uint8_t>(),
                                     q->scale().data_ptr<float>(),
                                     q->zmin().data_ptr<float>(),
                                     group,
                                     nullptr,
                                     y.data(),
                                     out,
                                     nullptr,
                                     q->data().stride(0),
                                     q->scale().stride(0)};
          kernel == 0   ? quant::Int4RowsPortable(p, begin, end)
          : kernel == 1 ? quant::Int4RowsAvx2(p, begin, end)
                        : quant::Int4RowsAvx512Vnni(p, begin, end);
        }
      };
      run(0, want, 0, out);
      float scale = 0;  // (as RelErr: the outputs' largest magnitude)
      for (float v : want) scale = std::max(scale, std::fabs(v));
      for (int kernel : {1, 2}) {
        if (kernel == 1 && !gemv::CpuHasAvx2Fma()) continue;
        if (kernel == 2 && !quant::CpuHasAvx512Vnni()) continue;
        for (auto [begin, end] : std::vector<std::pair<int64_t, int64_t>>{{1, 40}, {3, 10}, {7, 8}, {0, 40}}) {
          std::fill(got.begin(), got.end(), -1.0f);
          run(kernel, got, begin, end);
          for (int64_t m = 0; m < rows; ++m)
            for (int64_t r = 0; r < out; ++r) {
              const float g = got[m * out + r], w = want[m * out + r];
              const std::string what = absl::StrCat("kernel ", kernel, " group ", group, " rows ", rows, " range [",
                                                    begin, ", ", end, ") m ", m, " r ", r);
              if (r < begin || r >= end) {
                ASSERT_EQ(g, -1.0f) << what << " written outside its range";
              } else {
                ASSERT_NEAR(g, w, 1e-5 * scale) << what;
              }
            }
        }
      }
    }
  }
}

// The widened int8 kernel for batched bf16 inputs (Int8WideProblem): the
// portable arithmetic is the product of the bf16 inputs with the integer
// weights, scaled per row; the AVX-512-BF16 kernel matches it to fp32
// rounding over odd row ranges (4-row groups and single rows), input rows
// not a multiple of 4, inputs not a multiple of 32, with and without a bias,
// fp32 and bf16 results, and writes nothing outside its rows.
TEST_F(QuantTest, WidenedInt8KernelIsTheBf16ProductOfTheIntegers) {
  at::InferenceMode guard;
  at::manual_seed(9);
  for (int64_t in : {130, 200, 896}) {
    const int64_t out = 40;
    const std::shared_ptr<QuantMatrix> q = QuantMatrix::Int8(at::randn({out, in}));
    const at::Tensor bias = at::randn({out});
    const at::Tensor ints = q->data().narrow(1, 0, in).to(at::kDouble);
    for (int64_t m : {1, 3, 4, 5, 8, 13, 32}) {
      const at::Tensor x = at::randn({m, in}).to(at::kBFloat16).contiguous();
      const at::Tensor expected = at::linear(x.to(at::kDouble), ints).mul_(q->scale().to(at::kDouble));
      for (bool with_bias : {false, true}) {
        const at::Tensor want_t = (with_bias ? expected + bias.to(at::kDouble) : expected).contiguous();
        const double scale = want_t.abs().max().item<double>();
        const std::vector<double> want(want_t.data_ptr<double>(), want_t.data_ptr<double>() + m * out);
        for (bool bf16_out : {false, true}) {
          std::vector<float> y32(static_cast<size_t>(m * out));
          std::vector<uint16_t> y16(static_cast<size_t>(m * out));
          quant::Int8WideProblem p;
          p.w = q->data().data_ptr<int8_t>();
          p.scale = q->scale().data_ptr<float>();
          p.inp = q->padded_in();
          p.in = in;
          p.x = reinterpret_cast<const uint16_t*>(x.data_ptr());
          p.m = m;
          p.bias = with_bias ? bias.data_ptr<float>() : nullptr;
          p.out = out;
          if (bf16_out) {
            p.y_bf16 = y16.data();
          } else {
            p.y = y32.data();
          }
          auto value = [&](int64_t i) { return bf16_out ? Bf16BitsToFloat(y16[i]) : y32[i]; };
          for (int kernel : {0, 1}) {
            if (kernel == 1 && !gemv::CpuHasAvx512Bf16()) continue;
            for (auto [begin, end] : std::vector<std::pair<int64_t, int64_t>>{{1, 40}, {3, 10}, {7, 8}, {0, 40}}) {
              std::fill(y32.begin(), y32.end(), -1.0f);
              std::fill(y16.begin(), y16.end(), FloatToBf16Bits(-1.0f));
              kernel == 0 ? quant::Int8WideRowsPortable(p, begin, end) : quant::Int8WideRowsAvx512Bf16(p, begin, end);
              const double tol = (bf16_out ? 1.0 / 128 : 1e-5) * scale;
              for (int64_t i = 0; i < m; ++i)
                for (int64_t r = 0; r < out; ++r) {
                  const std::string what = absl::StrCat(kernel == 0 ? "portable" : "avx512bf16", " in ", in, " m ", m,
                                                        with_bias ? " bias" : "", bf16_out ? " bf16" : " fp32", " [",
                                                        begin, ", ", end, ") row ", i, " out ", r);
                  if (r < begin || r >= end) {
                    ASSERT_EQ(value(i * out + r), -1.0f) << what << " written outside its range";
                  } else {
                    ASSERT_NEAR(value(i * out + r), want[i * out + r], tol) << what;
                  }
                }
            }
          }
        }
      }
    }
  }
}

TEST_F(QuantTest, FusedRowsEqualTheParts) {
  at::InferenceMode guard;
  at::manual_seed(3);
  std::shared_ptr<QuantMatrix> a = QuantMatrix::Int8(at::randn({24, 128})), b = QuantMatrix::Int8(at::randn({8, 128}));
  const at::Tensor x = at::randn({1, 128});
  const at::Tensor ya = QuantLinear(x, *a, {}), yb = QuantLinear(x, *b, {});
  auto fused = QuantMatrix::Fuse({&a, &b});
  EXPECT_EQ(fused->out(), 32);
  EXPECT_TRUE(at::equal(QuantLinear(x, *fused, {}), at::cat({ya, yb}, -1)));
  // The parts are views of the fused rows now, with the same products.
  EXPECT_EQ(a->data().data_ptr(), fused->data().data_ptr());
  EXPECT_TRUE(at::equal(QuantLinear(x, *b, {}), yb));
}

// 4-bit rows are one run of memory each: the row's scales, its zero terms,
// then its weights on a line boundary, in whole 64-byte lines (one stream per
// row for the decode kernels, read in memory order); fusing keeps that
// layout, the parts views of the fused rows.
TEST_F(QuantTest, Int4RowsHoldTheirScalesAndZeroTermsWhenFused) {
  at::InferenceMode guard;
  at::manual_seed(8);
  for (int64_t group : {64, 128}) {
    SCOPED_TRACE(absl::StrCat("group ", group));
    const int64_t in = 5 * group;  // padded to whole 128-input chunks where group is 64
    std::shared_ptr<QuantMatrix> a = Quantized(at::randn({24, in}), group);
    std::shared_ptr<QuantMatrix> b = Quantized(at::randn({8, in}), group);
    const int64_t half = a->padded_in() / 2, groups = a->padded_in() / group;
    const at::Tensor x = at::randn({1, in});
    std::vector<at::Tensor> ya, yb;
    for (QuantKernel kernel : kKernels) {
      if (!ForceQuantKernel(kernel)) continue;
      ya.push_back(QuantLinear(x, *a, {}));
      yb.push_back(QuantLinear(x, *b, {}));
    }
    const at::Tensor da = a->Dequantize(0, 24, at::kFloat), db = b->Dequantize(0, 8, at::kFloat);
    const std::shared_ptr<QuantMatrix> fused = QuantMatrix::Fuse({&a, &b});
    for (const QuantMatrix* q : {fused.get(), a.get(), b.get()}) {
      const int64_t row_bytes = q->data().stride(0);
      EXPECT_EQ(row_bytes % 64, 0);
      EXPECT_GE(row_bytes, half + 8 * groups);
      EXPECT_EQ(q->scale().stride(0) * 4, row_bytes);
      EXPECT_EQ(q->zmin().stride(0) * 4, row_bytes);
      EXPECT_EQ(q->bytes(), q->out() * row_bytes);
      for (int64_t r : {int64_t{0}, q->out() - 1}) {
        const char* row = static_cast<const char*>(q->scale()[r].data_ptr());
        EXPECT_EQ(static_cast<const char*>(q->zmin()[r].data_ptr()), row + 4 * groups);
        EXPECT_EQ(static_cast<const char*>(q->data()[r].data_ptr()), row + row_bytes - half);  // the row's last bytes
        EXPECT_EQ(reinterpret_cast<uintptr_t>(q->data()[r].data_ptr()) % 64, 0u);  // (the storage is aligned)
      }
      EXPECT_EQ(q->data().data_ptr<uint8_t>() - fused->data().data_ptr<uint8_t>(),
                (q == b.get() ? 24 : 0) * row_bytes);  // the parts: views of the fused rows
    }
    EXPECT_TRUE(at::equal(fused->Dequantize(0, 32, at::kFloat), at::cat({da, db}, 0)));
    EXPECT_TRUE(at::equal(b->Dequantize(0, 8, at::kFloat), db));
    size_t i = 0;
    for (QuantKernel kernel : kKernels) {
      if (!ForceQuantKernel(kernel)) continue;
      SCOPED_TRACE(QuantKernelName(kernel));
      EXPECT_TRUE(at::equal(QuantLinear(x, *fused, {}), at::cat({ya[i], yb[i]}, -1)));
      EXPECT_TRUE(at::equal(QuantLinear(x, *a, {}), ya[i]));
      EXPECT_TRUE(at::equal(QuantLinear(x, *b, {}), yb[i]));
      ++i;
    }
  }
  // Short rows are not padded to whole lines (64 inputs, one 128-input chunk:
  // 64 bytes of weights after 2 + 2 floats, 80 bytes, not 128), their
  // weights still last.
  const std::shared_ptr<QuantMatrix> short_rows = Quantized(at::randn({8, 64}), 64);
  EXPECT_EQ(short_rows->data().stride(0), 80);
  EXPECT_EQ(static_cast<const char*>(short_rows->data()[1].data_ptr()) -
                static_cast<const char*>(short_rows->scale()[1].data_ptr()),
            16);
}

TEST_F(QuantTest, VectorActivationQuantizerIsThePortableBits) {
  // Whole blocks through AVX2, partial ones and padding through the portable
  // code: every output the same bits, on inputs with exact .5 ties after
  // scaling (round half to even), zero blocks, tiny and huge magnitudes.
  if (!gemv::CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  at::manual_seed(8);
  for (auto [rows, in, inp, group] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {1, 896, 896, 128}, {3, 200, 256, 64}, {2, 4864, 4864, 0}, {1, 96, 128, 0}, {4, 330, 384, 192}}) {
    at::Tensor x = at::randn({rows, in});
    x.narrow(1, 0, std::min<int64_t>(in, 32)).zero_();  // a zero block
    if (in >= 96) {
      x.narrow(1, 32, 32).mul_(1e-30);
      x.narrow(1, 64, 32).mul_(1e30);
    }
    if (in >= 160) {  // multiples of amax / 254: products on .5 ties
      x.narrow(1, 128, 32).copy_(at::arange(-16, 16).to(at::kFloat) * (3.0f / 254.0f));
      x[0][128] = 3.0f;
    }
    x = x.contiguous();
    quant::Activations a, b;
    a.Prepare(x.data_ptr<float>(), rows, in, inp, group, /*avx2=*/false);
    b.Prepare(x.data_ptr<float>(), rows, in, inp, group, /*avx2=*/true);
    const std::string what = absl::StrCat("rows ", rows, " in ", in, " inp ", inp, " group ", group);
    EXPECT_EQ(a.xq, b.xq) << what;
    EXPECT_EQ(a.corr, b.corr) << what;
    ASSERT_EQ(a.d.size(), b.d.size());
    for (size_t i = 0; i < a.d.size(); ++i) EXPECT_EQ(a.d[i], b.d[i]) << what << " d " << i;
    ASSERT_EQ(a.lane_d.size(), b.lane_d.size());
    for (size_t i = 0; i < a.lane_d.size(); ++i) ASSERT_EQ(a.lane_d[i], b.lane_d[i]) << what << " lane " << i;
    ASSERT_EQ(a.gsum.size(), b.gsum.size());
    for (size_t i = 0; i < a.gsum.size(); ++i) EXPECT_EQ(a.gsum[i], b.gsum[i]) << what << " gsum " << i;
    EXPECT_EQ(a.span_d, b.span_d) << what;
    // span_d: each 128-input span's scale, as d holds it for the span's blocks.
    if (quant::Activations::SpanFor(group) == 128) {
      ASSERT_EQ(a.span_d.size(), static_cast<size_t>(rows * inp / 128)) << what;
      for (int64_t i = 0; i < rows * inp / 128; ++i) EXPECT_EQ(a.span_d[i], a.d[4 * i]) << what << " span " << i;
    } else {
      EXPECT_TRUE(a.span_d.empty()) << what;
    }
  }
}

// --quantize int4 of a matrix whose rows are not a multiple of 8 (a
// vocabulary head of 151655 rows): 4-bit still, each weight within a step of
// its group's range (half for the rounding, half for the rounded zero point),
// and the rows past the last eight all there.
TEST_F(QuantTest, Int4TakesRowCountsShortOfEights) {
  at::InferenceMode guard;
  at::manual_seed(5);
  const at::Tensor w = at::randn({1003, 256});
  const auto q = QuantMatrix::Quantize(w, Quantization::kInt4);
  ASSERT_EQ(q->kind(), QuantMatrix::Kind::kInt4);
  EXPECT_EQ(q->out(), 1003);
  const at::Tensor g = w.view({1003, 2, 128});
  const at::Tensor step = (std::get<0>(g.max(2)) - std::get<0>(g.min(2))) / 15.0;  // [out, groups]
  const at::Tensor err = (q->Dequantize(0, 1003, at::kFloat) - w).view({1003, 2, 128}).abs();
  EXPECT_TRUE((err <= step.unsqueeze(2) * 1.0001).all().item<bool>());
  // (The last row is the matrix's own, not a padding row's zeros.)
  EXPECT_GT(q->Dequantize(1002, 1003, at::kFloat).abs().max().item<float>(), 0.5f);
  const at::Tensor x = at::randn({1, 256});
  // (The product quantizes its input to int8: within its rounding.)
  EXPECT_LT(RelErr(QuantLinear(x, *q, {}), at::linear(x, q->Dequantize(0, 1003, at::kFloat))), 0.02);
}

// LargestIndices against a full sort: fp32 and bf16 values with ties and
// NaN, k from 1 to n, n on and off the 16-value blocks.
TEST_F(QuantTest, LargestIndicesAreTheSortsFirst) {
  at::manual_seed(6);
  for (int64_t n : {1, 7, 16, 65, 1000, 4099}) {
    for (int64_t k : {int64_t{1}, int64_t{5}, int64_t{64}, n}) {
      if (k > n) continue;
      for (bool bf16 : {false, true}) {
        // Few distinct values (many ties), a NaN every 97.
        at::Tensor v = at::randint(-20, 20, {n}).to(at::kFloat).div_(4);
        for (int64_t i = 3; i < n; i += 97) v[i] = std::numeric_limits<float>::quiet_NaN();
        if (bf16) v = v.to(at::kBFloat16);
        const at::Tensor f = v.to(at::kFloat);
        std::vector<int64_t> order(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) order[i] = i;
        const float* fp = f.data_ptr<float>();
        auto rank = [&](int64_t i) { return std::isnan(fp[i]) ? -std::numeric_limits<float>::infinity() : fp[i]; };
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rank(a) > rank(b); });
        std::vector<int64_t> got(static_cast<size_t>(k));
        LargestIndices(v.data_ptr(), bf16, n, k, got.data());
        std::sort(got.begin(), got.end());
        std::vector<int64_t> want(order.begin(), order.begin() + k);
        std::sort(want.begin(), want.end());
        EXPECT_EQ(got, want) << "n " << n << " k " << k << (bf16 ? " bf16" : " fp32");
      }
    }
  }
}

// The rescored head: each row's k largest coarse outputs replaced by the
// fine weights' own outputs (bit for bit, as their full product gives
// them), every other output the coarse pass's; over int8 and float fine
// weights, fp32 and bf16 inputs, one and several rows, every kernel.
TEST_F(QuantTest, RescoredHeadIsTheFineProductAtTheCoarseLeaders) {
  at::InferenceMode guard;
  at::manual_seed(7);
  const int64_t vocab = 1003, in = 256, k = 16;
  const at::Tensor w = at::randn({vocab, in}).mul_(0.05);
  const auto coarse = QuantMatrix::Quantize(w, Quantization::kInt4);
  const auto fine8 = QuantMatrix::Int8(w);
  for (QuantKernel kernel : kKernels) {
    if (!ForceQuantKernel(kernel)) continue;
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      const at::Tensor wd = w.to(dtype);
      for (int64_t rows : {1, 3}) {
        const at::Tensor x = at::randn({rows, in}).to(dtype);
        const at::Tensor y0 = QuantLinear(x, *coarse, {});
        for (bool int8 : {true, false}) {
          const std::string what = absl::StrCat(QuantKernelName(kernel), " ", c10::toString(dtype), " rows ", rows,
                                                int8 ? " int8" : " float");
          const at::Tensor full = int8 ? QuantLinear(x, *fine8, {}) : Linear(x, wd, {});
          const at::Tensor y = RescoredLinear(x, *coarse, k, int8 ? fine8.get() : nullptr, wd, {});
          ASSERT_EQ(y.sizes(), y0.sizes()) << what;
          ASSERT_EQ(y.scalar_type(), dtype) << what;
          for (int64_t r = 0; r < rows; ++r) {
            std::vector<int64_t> lead(static_cast<size_t>(k));
            LargestIndices(y0[r].data_ptr(), dtype == at::kBFloat16, vocab, k, lead.data());
            at::Tensor expected = y0[r].clone();
            for (int64_t i : lead) expected[i] = full[r][i];
            EXPECT_TRUE(at::equal(y[r], expected)) << what << " row " << r;
            // The fine argmax is among the leaders here (4-bit error well
            // below the gaps of 16 leaders of 1003): greedy picks it.
            EXPECT_EQ(y[r].argmax().item<int64_t>(), full[r].argmax().item<int64_t>()) << what << " row " << r;
          }
        }
      }
    }
  }
}

TEST_F(QuantTest, ParsesTheFlag) {
  EXPECT_EQ(*ParseQuantization("int8"), Quantization::kInt8);
  EXPECT_EQ(*ParseQuantization("none"), Quantization::kNone);
  EXPECT_FALSE(ParseQuantization("int3").ok());
}

}  // namespace
}  // namespace internvl::llm
