#include "core/llm/gemv.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/llm/chunk_pool.h"
#include "core/llm/gemv_kernels.h"
#include "core/llm/paged_kv.h"
#include "gtest/gtest.h"

namespace internvl::llm {
namespace {

// fp64 reference of y = x W^T + b from the values actually stored, and the
// fp32 accumulation error bound it is compared with: n * eps * sum |w x|.
std::pair<at::Tensor, at::Tensor> Reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble);
  at::Tensor y = at::matmul(xd, wd.t());
  if (b.defined()) y = y + b.to(at::kDouble);
  const at::Tensor magnitude = at::matmul(xd.abs(), wd.abs().t());
  const at::Tensor bound = magnitude * (w.size(1) * 1.2e-7) + 1e-6;
  return {y, bound};
}

void ExpectWithin(const at::Tensor& actual, const at::Tensor& expected, const at::Tensor& bound,
                  const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const at::Tensor excess = (actual.to(at::kDouble) - expected).abs() - bound;
  EXPECT_LE(excess.max().item<double>(), 0.0)
      << what << ": max error " << (actual.to(at::kDouble) - expected).abs().max().item<double>();
}

class FastLinearShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t>> {};

// Every row count up to the limit, fp32 and bf16 weights, inputs and biases,
// sizes that are and are not multiples of the 8/32-wide vectors and 4-row
// blocks, with every kernel this CPU runs.
TEST_P(FastLinearShapes, MatchesFp64Reference) {
  at::InferenceMode guard;
  const auto [out, in] = GetParam();
  at::manual_seed(out * 1000 + in);
  for (GemvKernel kernel : {GemvKernel::kPortable, GemvKernel::kAvx2, GemvKernel::kAvx512Bf16}) {
    if (!ForceGemvKernel(kernel)) continue;
    for (at::ScalarType wt : {at::kFloat, at::kBFloat16}) {
      for (at::ScalarType xt : {at::kFloat, at::kBFloat16}) {
        for (bool with_bias : {false, true}) {
          for (int64_t rows : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, int64_t{5}, int64_t{8}, int64_t{13},
                               int64_t{16}, int64_t{21}, kMaxFastLinearRows}) {
            const std::string what = absl::StrCat(GemvKernelName(kernel), " ", out, "x", in, " w ", c10::toString(wt),
                                                  " x ", c10::toString(xt), " bias ", with_bias, " rows ", rows);
            const at::Tensor w = at::randn({out, in}).to(wt);
            const at::Tensor x = at::randn({1, rows, in}).to(xt);
            const at::Tensor b = with_bias ? at::randn({out}).to(xt) : at::Tensor();
            const at::Tensor y = FastLinear(x, w, b);
            if (rows > FastLinearMaxRows(xt, wt)) {  // libtorch's GEMM is faster there
              EXPECT_FALSE(y.defined()) << what;
              continue;
            }
            ASSERT_TRUE(y.defined()) << what;
            EXPECT_EQ(y.scalar_type(), xt) << what;
            auto [expected, bound] = Reference(x, w, b);
            // A bf16 result is the fp32 one rounded once: half a bf16 ulp more.
            if (xt == at::kBFloat16) bound = bound + expected.abs() * (1.0 / 256);
            ExpectWithin(y, expected, bound, what);
          }
        }
      }
    }
  }
  ForceGemvKernel(std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(Sizes, FastLinearShapes,
                         ::testing::Values(std::make_tuple(1, 1), std::make_tuple(7, 13), std::make_tuple(33, 64),
                                           std::make_tuple(130, 896), std::make_tuple(4099, 40),
                                           std::make_tuple(64, 4864)));

// The AVX2 kernel (where the CPU has it) and the portable one compute the
// same sums, for every row range a thread may get.
TEST(GemvKernels, PortableAndVectorAgreeOnAnyRowRange) {
  at::InferenceMode guard;
  at::manual_seed(7);
  for (bool bf16 : {false, true}) {
    const at::Tensor w = at::randn({37, 45}).to(bf16 ? at::kBFloat16 : at::kFloat);
    const at::Tensor x = at::randn({7, 45});
    const at::Tensor bias = at::randn({37});
    at::Tensor y1 = at::full({7, 37}, -1.0f), y2 = at::full({7, 37}, -1.0f);
    gemv::Problem p;
    p.x = x.data_ptr<float>();
    p.m = 7;
    p.in = 45;
    p.out = 37;
    p.w = w.data_ptr();
    p.w_bf16 = bf16;
    p.bias = bias.data_ptr<float>();
    p.y = y1.data_ptr<float>();
    gemv::RowsPortable(p, 0, 37);
    p.y = y2.data_ptr<float>();
    std::vector<float> scratch(7 * 45);
    gemv::PrepareAvx2(p, scratch.data());
    gemv::RowsAvx2(p, 0, 5);  // falls back to the portable kernel without AVX2
    gemv::RowsAvx2(p, 5, 6);
    gemv::RowsAvx2(p, 6, 37);
    auto [expected, bound] = Reference(x, w, bias);
    ExpectWithin(y1, expected, bound, "portable");
    ExpectWithin(y2, expected, bound, "avx2");
    EXPECT_LT((y1 - y2).abs().max().item<float>(), 1e-4);
  }
}

// The AVX-512-BF16 kernel's batched blocks (4 adjacent weight rows x 4
// input rows, more than 4 input rows) end in vectors: their outputs are the
// bits of the scalar ending that a single row's block (one row of the
// matrix alone) gives, for fp32 and bf16 outputs, with an fp32, a bf16 or no
// bias, and input rows past a multiple of 4 (the last ones end as scalars).
TEST(GemvKernels, Avx512BatchedBlocksEndAsOneRowAlone) {
  if (!gemv::CpuHasAvx512Bf16()) GTEST_SKIP() << "no AVX-512-BF16 on this CPU";
  at::InferenceMode guard;
  at::manual_seed(11);
  for (int64_t in : {64, 896}) {
    for (int64_t m : {5, 8, 11, 16}) {
      for (int bias_kind : {0, 1, 2}) {  // none, fp32, bf16
        for (bool bf16_out : {false, true}) {
          const std::string what = absl::StrCat("in ", in, " inputs ", m, " bias ", bias_kind, " bf16 out ", bf16_out);
          const int64_t out = 12;
          const at::Tensor w = at::randn({out, in}).to(at::kBFloat16);
          const at::Tensor x = at::randn({m, in}).to(at::kBFloat16);
          const at::Tensor b32 = at::randn({out}) * 10, b16 = b32.to(at::kBFloat16);
          at::Tensor y =
              at::full({m, out}, std::numeric_limits<float>::quiet_NaN(), bf16_out ? at::kBFloat16 : at::kFloat);
          gemv::Problem p;
          p.m = m;
          p.in = in;
          p.out = out;
          p.w = w.data_ptr();
          p.w_bf16 = true;
          p.x_bf16 = reinterpret_cast<const uint16_t*>(x.data_ptr());
          if (bias_kind == 1) p.bias = b32.data_ptr<float>();
          if (bias_kind == 2) p.bias_bf16 = reinterpret_cast<const uint16_t*>(b16.data_ptr());
          auto target = [&](gemv::Problem& q, at::Tensor& t) {
            if (bf16_out) {
              q.y_bf16 = reinterpret_cast<uint16_t*>(t.data_ptr());
            } else {
              q.y = t.data_ptr<float>();
            }
          };
          target(p, y);
          gemv::RowsAvx512Bf16(p, 0, out);
          for (int64_t r = 0; r < out; ++r) {
            at::Tensor one = at::full({m, 1}, -1.0f, y.options());
            gemv::Problem q = p;
            q.out = 1;
            q.w = static_cast<const uint16_t*>(p.w) + r * in;
            if (p.bias != nullptr) q.bias = p.bias + r;
            if (p.bias_bf16 != nullptr) q.bias_bf16 = p.bias_bf16 + r;
            target(q, one);
            gemv::RowsAvx512Bf16(q, 0, 1);
            const at::Tensor column = y.narrow(1, r, 1).contiguous();
            const at::Tensor a = bf16_out ? column.view(at::kShort) : column.view(at::kInt);
            const at::Tensor e = bf16_out ? one.view(at::kShort) : one.view(at::kInt);
            EXPECT_TRUE(at::equal(a, e)) << what << " row " << r;
          }
        }
      }
    }
  }
}

TEST(SplitRows, CoversTheRowsOnceWithSmallerChunksLast) {
  for (int threads : {1, 2, 4, 16}) {
    for (int64_t rows : {1, 3, 4, 64, 896, 1152, 9728, 151655}) {
      for (int64_t inputs : {64, 896, 4864}) {
        for (int64_t row_bytes : {int64_t{0}, inputs / 2 + 64, inputs + 4}) {
          const RowChunks c = SplitRows(rows, inputs, threads, row_bytes);
          const std::string what =
              absl::StrCat("rows ", rows, " inputs ", inputs, " row bytes ", row_bytes, " threads ", threads);
          ASSERT_GE(c.count(), 1) << what;
          EXPECT_EQ(c.begin.front(), 0) << what;
          EXPECT_EQ(c.begin.back(), rows) << what;
          for (int64_t i = 0; i < c.count(); ++i) {
            const int64_t n = c.begin[i + 1] - c.begin[i];
            ASSERT_GT(n, 0) << what << " chunk " << i;
            if (i + 1 < c.count()) {
              EXPECT_EQ(n % 4, 0) << what << " chunk " << i;  // whole 4-row blocks
            }
            if (i > 0 && i + 1 < c.count()) {
              EXPECT_LE(n, c.begin[i] - c.begin[i - 1]) << what << " chunk " << i;  // never growing
            }
          }
          // At most ~4 full-size chunks per thread, then the tail's quarter-size
          // ones (all of them quarter-size where the tail takes every row).
          const int64_t first = c.begin[1] - c.begin[0];
          EXPECT_LE(rows / first, 4 * 4 * threads + 4) << what;
          const int64_t as_bf16 = row_bytes > 0 ? (rows * row_bytes + 2 * inputs - 1) / (2 * inputs) : rows;
          if (as_bf16 > 4096 && rows * inputs >= (int64_t{1} << 21) * threads) {
            EXPECT_LT(c.begin[c.count()] - c.begin[c.count() - 1], first) << what << ": no smaller chunks at the end";
          }
        }
      }
    }
  }
}

TEST(SplitRows, OneEqualChunkPerThreadUpTo4096Rows) {
  // Projections: each thread streams one run of rows.
  for (int threads : {2, 4}) {
    for (const auto& [rows, inputs] :
         std::vector<std::pair<int64_t, int64_t>>{{896, 896}, {1152, 896}, {896, 4864}, {2048, 2048}, {4096, 2048}}) {
      const RowChunks c = SplitRows(rows, inputs, threads);
      const std::string what = absl::StrCat("rows ", rows, " inputs ", inputs, " threads ", threads);
      ASSERT_EQ(c.count(), threads) << what;
      for (int64_t i = 0; i < c.count(); ++i) EXPECT_EQ(c.begin[i + 1] - c.begin[i], rows / threads) << what;
    }
  }
  // Never below ~64K weights a chunk: a small matrix stays on one thread.
  EXPECT_EQ(SplitRows(64, 64, 2).count(), 1);
  EXPECT_EQ(SplitRows(256, 128, 2).count(), 1);
  // The MLP's wide matrix and the head keep several chunks per thread.
  EXPECT_GT(SplitRows(9728, 896, 2).count(), 2 * 4);
  EXPECT_GT(SplitRows(151655, 896, 2).count(), 2 * 4);
  // Rows count as the bf16 rows of their bytes: the wide matrix in 4 bits
  // (512 bytes a row with its scales: 2780 bf16 rows) in one chunk per
  // thread, in int8 (900: 4887) and in fp32 (wider than bf16) as in bf16.
  for (int threads : {2, 4}) {
    const RowChunks c = SplitRows(9728, 896, threads, 512);
    ASSERT_EQ(c.count(), threads) << threads;
    for (int64_t i = 0; i < c.count(); ++i) EXPECT_EQ(c.begin[i + 1] - c.begin[i], 9728 / threads) << threads;
  }
  EXPECT_EQ(SplitRows(9728, 896, 2, 900).begin, SplitRows(9728, 896, 2).begin);
  EXPECT_EQ(SplitRows(9728, 896, 2, 4 * 896).begin, SplitRows(9728, 896, 2).begin);
  EXPECT_GT(SplitRows(151655, 896, 2, 512).count(), 2 * 4);  // the 4-bit head: 43331 bf16 rows
  EXPECT_EQ(SplitRowsCached(9728, 896, 2, 512).count(), 2);
  EXPECT_GT(SplitRowsCached(9728, 896, 2).count(), 2 * 4);
  // Remembered per thread: the same split, the same object while fewer than 8
  // new ones are made in between.
  const RowChunks& head = SplitRowsCached(151655, 896, 2);
  EXPECT_EQ(head.begin, SplitRows(151655, 896, 2).begin);
  for (int64_t rows = 1; rows <= 7; ++rows)
    EXPECT_EQ(SplitRowsCached(rows, 896, 2).begin, SplitRows(rows, 896, 2).begin);
  EXPECT_EQ(&SplitRowsCached(151655, 896, 2), &head);
  EXPECT_EQ(SplitRowsCached(151655, 896, 3).begin, SplitRows(151655, 896, 3).begin);
  EXPECT_EQ(SplitRowsCached(151655, 448, 2).begin, SplitRows(151655, 448, 2).begin);
}

TEST(ChunkPool, CountsTheCallersWaitForAHelpersChunk) {
  // The helper's chunk takes 20 ms and the caller's 1 ms (time for a helper
  // to claim the other): once a helper has run one, its caller waited ~19 ms
  // (until then the caller may have claimed both chunks itself, with nothing
  // to wait for).
  const ChunkWaits before = ChunkPoolWaits();
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<bool> helped{false};
  int calls = 0;
  for (; calls < 50 && !helped.load(); ++calls) {
    ParallelChunks(2, 2, [&](int64_t) {
      if (std::this_thread::get_id() == caller) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return;
      }
      helped.store(true);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    });
  }
  ASSERT_TRUE(helped.load()) << "no helper ran a chunk in 50 calls";
  const ChunkWaits after = ChunkPoolWaits();
  EXPECT_EQ(after.calls - before.calls, calls);
  EXPECT_GE(after.wait_ns - before.wait_ns, 15'000'000);
  EXPECT_LT(after.wait_ns - before.wait_ns, int64_t{calls} * 1'000'000'000);
  // Run on the caller alone (one chunk): neither a call nor a wait.
  ParallelChunks(1, 2, [](int64_t) {});
  EXPECT_EQ(ChunkPoolWaits().calls, after.calls);
}

TEST(GemvKernels, ScaleIsPowerOfTwoOnlyWhereTheReciprocalIsExact) {
  for (const float s : {8.0f, 4.0f, 16.0f, 0.5f, 1.0f}) {
    EXPECT_TRUE(gemv::ScaleIsPowerOfTwo(s)) << s;
    // Multiplying by the reciprocal gives the division's bits.
    at::manual_seed(2);
    const at::Tensor x = at::randn({4096}) * 100;
    EXPECT_TRUE(at::equal(x / s, x * (1.0f / s))) << s;
  }
  for (const float s : {std::sqrt(128.0f), std::sqrt(32.0f), 0.0f, -8.0f, 3.0f, std::numeric_limits<float>::infinity(),
                        std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min()}) {
    EXPECT_FALSE(gemv::ScaleIsPowerOfTwo(s)) << s;
  }
}

TEST(FastLinear, DeclinesWhatItDoesNotHandle) {
  const at::Tensor w = at::randn({8, 16});
  {
    at::InferenceMode guard;
    EXPECT_FALSE(FastLinear(at::randn({kMaxFastLinearRows + 1, 16}), w, {}).defined()) << "too many rows";
    EXPECT_FALSE(FastLinear(at::randn({1, 8}), w.t(), {}).defined()) << "non-contiguous weight";
    EXPECT_FALSE(FastLinear(at::randn({1, 16}).to(at::kDouble), w, {}).defined()) << "fp64";
    EXPECT_FALSE(FastLinear(at::randn({1, 15}), w, {}).defined()) << "size mismatch";
    SetFastLinearEnabled(false);
    EXPECT_FALSE(FastLinear(at::randn({1, 16}), w, {}).defined()) << "disabled";
    SetFastLinearEnabled(true);
    EXPECT_TRUE(FastLinear(at::randn({1, 16}), w, {}).defined());
    // A strided input (the last position of a sequence) is fine.
    const at::Tensor seq = at::randn({2, 3, 16});
    const at::Tensor last = seq.select(1, 2);
    EXPECT_LT((FastLinear(last, w, {}) - at::linear(last, w)).abs().max().item<float>(), 1e-5);
  }
  // Grad mode: never (the trainer's path stays at::linear).
  EXPECT_FALSE(FastLinear(at::randn({1, 16}), w, {}).defined());
}

TEST(Linear, GradModeIsPlainDifferentiableLinear) {
  const at::Tensor w = at::randn({6, 10}).requires_grad_();
  const at::Tensor b = at::randn({6}).requires_grad_();
  const at::Tensor x = at::randn({1, 1, 10});
  at::Tensor y = Linear(x, w, b);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_TRUE(at::equal(y, at::linear(x, w, b)));
  y.sum().backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_TRUE(at::allclose(w.grad(), x.view({1, 10}).expand({6, 10})));
  // Weights stored in bf16 under an fp32 input: cast differentiably.
  const at::Tensor wb = at::randn({6, 10}).to(at::kBFloat16).requires_grad_();
  at::Tensor yb = Linear(x, wb, {});
  EXPECT_EQ(yb.scalar_type(), at::kFloat);
  yb.sum().backward();
  EXPECT_TRUE(wb.grad().defined());
}

TEST(Linear, ManyRowsWithNarrowerWeightsComputeInFp32) {
  at::InferenceMode guard;
  const at::Tensor w = at::randn({24, 40}).to(at::kBFloat16);
  const at::Tensor b = at::randn({24});
  const at::Tensor x = at::randn({2, 9, 40});
  const at::Tensor y = Linear(x, w, b);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  EXPECT_LT((y - at::linear(x, w.to(at::kFloat), b)).abs().max().item<float>(), 1e-5);
  // bf16 activations and weights: fp32 accumulation, rounded once.
  const at::Tensor xb = x.to(at::kBFloat16);
  const at::Tensor yb = Linear(xb, w, b.to(at::kBFloat16));
  EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
  const at::Tensor ref = at::linear(xb.to(at::kFloat), w.to(at::kFloat), b.to(at::kBFloat16).to(at::kFloat));
  EXPECT_LE((yb.to(at::kFloat) - ref).abs().max().item<float>(), ref.abs().max().item<float>() / 128);
}

void ExpectPagedDecodeAttentionMatchesEager();

// Against the eager formula in fp64, over block tables scattered through a
// pool (partial last blocks, segments of several blocks), GQA, head sizes
// with and without the 8-float vectors, sequences of different lengths, with
// every kernel this CPU runs.
TEST(PagedDecodeAttention, MatchesEagerAttentionOverScatteredBlocks) {
  for (GemvKernel kernel : {GemvKernel::kPortable, GemvKernel::kAvx2, GemvKernel::kAvx512Bf16}) {
    if (!ForceGemvKernel(kernel)) continue;
    SCOPED_TRACE(GemvKernelName(kernel));
    ExpectPagedDecodeAttentionMatchesEager();
  }
  ForceGemvKernel(std::nullopt);
}

// The work is split among the threads in runs of consecutive (sequence, KV
// head, segment) chunks: every chunk computed once whatever the count of
// threads, so the same bits as one thread, with the buffers the runs write
// dirtied in between by another problem. (Segments are as long as 512 keys
// where each thread still gets 4 of them, else shorter, which sums in
// another order: these lengths keep them at 512 for the thread counts
// compared.)
TEST(PagedDecodeAttention, SameBitsOnAnyThreadCount) {
  at::InferenceMode guard;
  at::manual_seed(5);
  const int saved = at::get_num_threads();
  const int64_t heads = 14, kv = 2, dim = 64, bs = 16;
  const std::vector<int64_t> lens = {513, 1100, 37, 3100};
  for (GemvKernel kernel : {GemvKernel::kPortable, GemvKernel::kAvx2, GemvKernel::kAvx512Bf16}) {
    if (!ForceGemvKernel(kernel)) continue;
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      SCOPED_TRACE(absl::StrCat(GemvKernelName(kernel), " ", c10::toString(dtype)));
      // Each sequence's blocks in one run of the pool, the sequences in
      // another order than the batch's.
      std::vector<std::vector<int32_t>> tables(lens.size());
      int64_t blocks = 0;
      for (size_t i = lens.size(); i-- > 0;) {
        for (int64_t b = 0; b * bs < lens[i]; ++b) tables[i].push_back(static_cast<int32_t>(blocks++));
      }
      std::vector<const std::vector<int32_t>*> batch;
      for (const auto& t : tables) batch.push_back(&t);
      const at::Tensor k = at::randn({blocks, kv, bs, dim}).to(dtype), v = at::randn({blocks, kv, bs, dim}).to(dtype);
      const at::Tensor q = at::randn({4, heads, dim}).to(dtype), other = at::randn({4, heads, dim}).to(dtype);
      auto attend = [&](const at::Tensor& queries, int threads, std::vector<size_t> seqs) {
        at::set_num_threads(threads);
        std::vector<const std::vector<int32_t>*> t;
        std::vector<int64_t> l;
        for (size_t i : seqs) {
          t.push_back(batch[i]);
          l.push_back(lens[i]);
        }
        std::vector<int64_t> rows(seqs.begin(), seqs.end());
        const at::Tensor out = PagedDecodeAttention(queries.index_select(0, at::tensor(rows)), k, v, t, l);
        at::set_num_threads(saved);
        return out;
      };
      // The batch (4750 keys per head), the longest sequence alone (3100
      // keys) and the shortest (2 chunks: fewer than some thread counts).
      const std::vector<std::pair<std::vector<size_t>, std::vector<int>>> problems = {
          {{0, 1, 2, 3}, {2, 3, 4}}, {{3}, {2, 3}}, {{2}, {2, 3, 5}}};
      for (const auto& [seqs, thread_counts] : problems) {
        const at::Tensor one = attend(q, 1, seqs);
        ASSERT_TRUE(one.defined());
        for (int threads : thread_counts) {
          EXPECT_FALSE(at::equal(attend(other, threads, seqs), one));
          EXPECT_TRUE(at::equal(attend(q, threads, seqs), one))
              << seqs.size() << " sequences, " << threads << " threads";
        }
      }
    }
  }
  ForceGemvKernel(std::nullopt);
}

void ExpectPagedDecodeAttentionMatchesEager() {
  at::InferenceMode guard;
  at::manual_seed(11);
  // (A large query scale makes the softmax peaked: exps far below 1e-38.
  // Long contexts split the softmax in segments and recombine them.)
  using Case = std::tuple<int64_t, double, int64_t, int64_t, at::ScalarType>;
  const std::vector<Case> cases = {
      {64, 1.0, 33, 16, at::kFloat},     {64, 40.0, 33, 4, at::kFloat},    {12, 1.0, 33, 16, at::kFloat},
      {64, 1.0, 600, 16, at::kFloat},    {64, 40.0, 777, 32, at::kFloat},  {12, 1.0, 513, 8, at::kFloat},
      {64, 1.0, 600, 16, at::kBFloat16}, {64, 40.0, 77, 4, at::kBFloat16}, {12, 1.0, 513, 8, at::kBFloat16}};
  for (auto [dim, q_scale, len, bs, dtype] : cases) {
    const int64_t seqs = 2, heads = 6, kv = 2;
    const int64_t lens[2] = {len, len / 2 + 1};
    const int64_t per_seq = (len + bs - 1) / bs;
    const int64_t blocks = 2 * per_seq + 3;
    const at::Tensor pool_k = at::randn({blocks, kv, bs, dim}).to(dtype);
    const at::Tensor pool_v = at::randn({blocks, kv, bs, dim}).to(dtype);
    const at::Tensor perm = at::randperm(blocks);
    std::vector<std::vector<int32_t>> tables(seqs);
    for (int64_t s = 0; s < seqs; ++s)
      for (int64_t b = 0; b < per_seq; ++b)
        tables[s].push_back(static_cast<int32_t>(perm[s * per_seq + b].item<int64_t>()));
    // bf16 caches also take bf16 queries (a model computed in bf16): on
    // AVX-512-BF16 CPUs those run native bf16 dot products, the probabilities
    // rounded to bf16 before weighting the values (as the reference's bf16
    // attention): up to 2^-9 relative per weight.
    const bool bf16_q = dtype == at::kBFloat16 && dim % 32 == 0;
    at::Tensor q = at::randn({seqs, heads, dim}) * q_scale;
    if (bf16_q) q = q.to(at::kBFloat16);
    const double tolerance = bf16_q && ActiveGemvKernel() == GemvKernel::kAvx512Bf16 ? 1e-2 : 1e-5;
    const at::Tensor out = PagedDecodeAttention(q, pool_k, pool_v, {&tables[0], &tables[1]}, {lens[0], lens[1]});
    ASSERT_TRUE(out.defined());
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{seqs, heads * dim}));
    // The CPU pool's layout (KV-head-major storage: paged_kv.h): the same bits.
    const at::Tensor head_k = KVHeadMajor(at::empty({kv, blocks, bs, dim}, dtype)).copy_(pool_k);
    const at::Tensor head_v = KVHeadMajor(at::empty({kv, blocks, bs, dim}, dtype)).copy_(pool_v);
    ASSERT_FALSE(head_k.is_contiguous());
    EXPECT_TRUE(at::equal(PagedDecodeAttention(q, head_k, head_v, {&tables[0], &tables[1]}, {lens[0], lens[1]}), out))
        << "dim " << dim << " len " << len << " block " << bs << " " << c10::toString(dtype);
    EXPECT_EQ(out.scalar_type(), q.scalar_type());
    for (int64_t s = 0; s < seqs; ++s) {
      std::vector<int64_t> idx(tables[s].begin(), tables[s].end());
      const at::Tensor table = at::tensor(idx, at::kLong);
      auto gather = [&](const at::Tensor& pool) {  // [kv, len, d]
        return pool.index_select(0, table).permute({1, 0, 2, 3}).reshape({kv, per_seq * bs, dim}).narrow(1, 0, lens[s]);
      };
      // repeat_kv, then softmax(q k^T / sqrt(d)) v.
      const at::Tensor k = gather(pool_k).to(at::kDouble).repeat_interleave(heads / kv, 0);  // [H, L, d]
      const at::Tensor v = gather(pool_v).to(at::kDouble).repeat_interleave(heads / kv, 0);
      const at::Tensor qd = q[s].to(at::kDouble).unsqueeze(1);  // [H, 1, d]
      const at::Tensor probs = at::softmax(at::matmul(qd, k.transpose(-1, -2)) / std::sqrt(double(dim)), -1);
      const at::Tensor expected = at::matmul(probs, v).reshape({heads * dim});
      // (bf16 outputs are rounded once more: half a bf16 step of |out| <= 4.)
      EXPECT_LT((out[s].to(at::kDouble) - expected).abs().max().item<double>(),
                q.scalar_type() == at::kBFloat16 ? tolerance + 8e-3 : tolerance)
          << "dim " << dim << " q x" << q_scale << " len " << lens[s] << " block " << bs << " " << c10::toString(dtype);
    }
  }
  // Not for it: fp64, a table too short for the length.
  const at::Tensor k = at::randn({4, 2, 4, 8});
  std::vector<int32_t> table = {0, 1};
  EXPECT_FALSE(
      PagedDecodeAttention(at::randn({1, 4, 8}, at::kDouble), k.to(at::kDouble), k.to(at::kDouble), {&table}, {5})
          .defined());
  EXPECT_FALSE(PagedDecodeAttention(at::randn({1, 4, 8}), k, k, {&table}, {9}).defined());
  EXPECT_TRUE(PagedDecodeAttention(at::randn({1, 4, 8}), k, k, {&table}, {8}).defined());
  // Nor rows that are not contiguous, or keys and values laid out differently.
  const at::Tensor strided_rows = k.transpose(2, 3).contiguous().transpose(2, 3);
  EXPECT_FALSE(PagedDecodeAttention(at::randn({1, 4, 8}), strided_rows, strided_rows, {&table}, {8}).defined());
  const at::Tensor head_major = KVHeadMajor(k.transpose(0, 1).contiguous());
  EXPECT_TRUE(at::equal(head_major, k));
  EXPECT_FALSE(PagedDecodeAttention(at::randn({1, 4, 8}), k, head_major, {&table}, {8}).defined());
  EXPECT_TRUE(PagedDecodeAttention(at::randn({1, 4, 8}), head_major, head_major, {&table}, {8}).defined());
}

TEST(GemvKernels, GroupedValueKernelsMatchTheirDefinition) {
  // out[h][d] = sum_l bf16(p[h][l]) * v_l[d], value rows scattered over
  // blocks; any group size (9 = two passes), odd lengths, dims 32..128.
  at::manual_seed(5);
  for (auto [heads, len, dim, bs] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {1, 16, 32, 16}, {7, 128, 64, 16}, {9, 77, 128, 4}, {2, 255, 64, 2}, {8, 3, 32, 16}, {7, 512, 64, 16}}) {
    const int64_t nblocks = (len + bs - 1) / bs;
    const at::Tensor pool = at::randn({nblocks + 2, bs, dim}).to(at::kBFloat16);
    const at::Tensor probs = at::rand({heads, len + 5});  // rows of stride len + 5
    std::vector<const uint16_t*> rows;
    std::vector<int64_t> order;
    for (int64_t b = 0; b < nblocks; ++b) order.push_back((b * 5 + 1) % (nblocks + 2));
    for (int64_t b : order) rows.push_back(reinterpret_cast<const uint16_t*>(pool[b].data_ptr()));
    const at::Tensor v = pool.index_select(0, at::tensor(order, at::kLong)).reshape({-1, dim}).narrow(0, 0, len);
    // The AVX-512 kernel weights with bf16-rounded probabilities, the AVX2
    // ones (bf16 or fp32 values) with the fp32 ones.
    const at::Tensor pool_f = pool.to(at::kFloat);
    std::vector<const float*> rows_f;
    for (int64_t b : order) rows_f.push_back(pool_f[b].data_ptr<float>());
    for (int kernel = 0; kernel < 3; ++kernel) {
      if (kernel == 0 && !gemv::CpuHasAvx512Bf16()) continue;
      if (kernel > 0 && !gemv::CpuHasAvx2Fma()) continue;
      std::vector<float> out(heads * (dim + 3), -1.0f);
      const float* p_in = probs.data_ptr<float>();
      if (kernel == 0) {
        gemv::SegmentValuesGroupBf16Avx512(p_in, len + 5, heads, rows.data(), bs, len, dim, out.data(), dim + 3);
      } else if (kernel == 1) {
        gemv::SegmentValuesGroupBf16Avx2(p_in, len + 5, heads, rows.data(), bs, len, dim, out.data(), dim + 3);
      } else {
        gemv::SegmentValuesGroupAvx2(p_in, len + 5, heads, rows_f.data(), bs, len, dim, out.data(), dim + 3);
      }
      const at::Tensor p = kernel == 0 ? probs.narrow(1, 0, len).to(at::kBFloat16).to(at::kDouble)
                                       : probs.narrow(1, 0, len).to(at::kDouble);
      const at::Tensor expected = at::matmul(p, v.to(at::kDouble));
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t d = 0; d < dim; ++d) {
          ASSERT_NEAR(out[h * (dim + 3) + d], expected[h][d].item<double>(), 1e-4 * (1 + len / 16))
              << "kernel " << kernel << " heads " << heads << " len " << len << " dim " << dim << " h " << h << " d "
              << d;
        }
        EXPECT_EQ(out[h * (dim + 3) + dim], -1.0f) << "wrote past the row";
      }
    }
  }
}

TEST(GemvKernels, GroupedScoreKernelsAreThePerHeadKernelsBits) {
  // scores[h][l] = dot(q_h, k_l) / scale for a group of query heads at once,
  // key rows scattered over blocks: the same bits as the per-head kernel
  // called per block (full eights and partial ones), any group size (9 = two
  // passes), fp32 and bf16 keys.
  if (!gemv::CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  at::manual_seed(6);
  for (auto [heads, len, dim, bs] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{{1, 16, 32, 16},
                                                                                                {7, 128, 64, 16},
                                                                                                {9, 77, 128, 4},
                                                                                                {2, 255, 64, 2},
                                                                                                {8, 3, 8, 16},
                                                                                                {7, 45, 64, 12},
                                                                                                {3, 70, 96, 20},
                                                                                                {5, 50, 160, 24}}) {
    const int64_t nblocks = (len + bs - 1) / bs, stride = len + 5;
    const at::Tensor pool = at::randn({nblocks + 2, bs, dim}).to(at::kBFloat16);
    const at::Tensor pool_f = at::randn({nblocks + 2, bs, dim});
    const at::Tensor q = at::randn({heads, dim});
    const float scale = std::sqrt(static_cast<float>(dim));
    std::vector<const uint16_t*> rows;
    std::vector<const float*> rows_f;
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t at_block = (b * 5 + 1) % (nblocks + 2);
      rows.push_back(reinterpret_cast<const uint16_t*>(pool[at_block].data_ptr()));
      rows_f.push_back(pool_f[at_block].data_ptr<float>());
    }
    for (bool bf16 : {true, false}) {
      std::vector<float> got(heads * stride, -1.0f), want(heads * stride, -1.0f);
      const float* qp = q.data_ptr<float>();
      if (bf16) {
        // (With value blocks to prefetch: the same scores.)
        gemv::SegmentScoresGroupBf16Avx2(qp, heads, rows.data(), bs, len, dim, scale, got.data(), stride);
      } else {
        gemv::SegmentScoresGroupAvx2(qp, heads, rows_f.data(), bs, len, dim, scale, got.data(), stride);
      }
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t b = 0; b < nblocks; ++b) {
          const int64_t n = std::min(bs, len - b * bs);
          float* dst = want.data() + h * stride + b * bs;
          if (bf16) {
            gemv::SegmentScoresBf16Avx2(qp + h * dim, rows[b], n, dim, scale, dst);
          } else {
            gemv::SegmentScoresAvx2(qp + h * dim, rows_f[b], n, dim, scale, dst);
          }
        }
      }
      for (int64_t i = 0; i < heads * stride; ++i) {
        ASSERT_EQ(got[i], want[i]) << "heads " << heads << " len " << len << " dim " << dim << " bs " << bs
                                   << (bf16 ? " bf16" : " fp32") << " at " << i;
      }
    }
    if (gemv::CpuHasAvx512Bf16() && dim % 32 == 0) {
      // bf16 queries (AVX-512-BF16 dot products): the grouped kernel against
      // the per-head one per block.
      const at::Tensor qb = q.to(at::kBFloat16);
      const auto* qbp = reinterpret_cast<const uint16_t*>(qb.data_ptr());
      std::vector<float> got(heads * stride, -1.0f), want(heads * stride, -1.0f);
      gemv::SegmentScoresGroupBf16Avx512(qbp, heads, rows.data(), bs, len, dim, scale, got.data(), stride);
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t b = 0; b < nblocks; ++b) {
          gemv::SegmentScoresBf16Avx512(qbp + h * dim, rows[b], std::min(bs, len - b * bs), dim, scale,
                                        want.data() + h * stride + b * bs);
        }
      }
      for (int64_t i = 0; i < heads * stride; ++i) {
        ASSERT_EQ(got[i], want[i]) << "avx512bf16 heads " << heads << " len " << len << " dim " << dim << " bs " << bs
                                   << " at " << i;
      }
    }
  }
}

TEST(GemvKernels, Avx512ScoresAreTheDotProducts) {
  // The AVX-512-BF16 scorers against dot(q_h, k_l) / scale in double: the
  // products of bf16 values are exact, so only fp32 summation separates them.
  // Tiles of 16 keys (dims 32-128), full and partial, across blocks of 2-24
  // rows; groups of 1-9 heads; other dims by the per-key kernel; with and
  // without value blocks to prefetch (the same scores).
  if (!gemv::CpuHasAvx512Bf16()) GTEST_SKIP() << "no AVX-512-BF16 on this CPU";
  at::manual_seed(9);
  for (auto [heads, len, dim, bs] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {1, 16, 32, 16}, {7, 512, 64, 16}, {9, 77, 128, 4}, {8, 33, 128, 24}, {2, 255, 96, 2}, {4, 40, 160, 20}}) {
    const int64_t nblocks = (len + bs - 1) / bs, stride = len + 3;
    const at::Tensor pool = at::randn({nblocks + 1, bs, dim}).to(at::kBFloat16);
    const at::Tensor q = at::randn({heads, dim}).to(at::kBFloat16);
    const auto* qbp = reinterpret_cast<const uint16_t*>(q.data_ptr());
    const float scale = std::sqrt(static_cast<float>(dim));
    std::vector<const uint16_t*> rows;
    std::vector<int64_t> order;
    for (int64_t b = 0; b < nblocks; ++b) order.push_back((b * 3 + 1) % (nblocks + 1));
    for (int64_t b : order) rows.push_back(reinterpret_cast<const uint16_t*>(pool[b].data_ptr()));
    const at::Tensor k = pool.index_select(0, at::tensor(order, at::kLong)).reshape({-1, dim}).narrow(0, 0, len);
    const at::Tensor terms = q.to(at::kDouble).unsqueeze(1) * k.to(at::kDouble).unsqueeze(0);  // [heads, len, dim]
    const at::Tensor exact = terms.sum(-1) / scale, magnitude = terms.abs().sum(-1) / scale;
    for (bool with_values : {false, true}) {
      std::vector<float> got(heads * stride, -1.0f);
      gemv::SegmentScoresGroupBf16Avx512(qbp, heads, rows.data(), bs, len, dim, scale, got.data(), stride,
                                         with_values ? rows.data() : nullptr);
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t l = 0; l < len; ++l) {
          ASSERT_NEAR(got[h * stride + l], exact[h][l].item<double>(), 2e-6 * magnitude[h][l].item<double>() + 1e-30)
              << "heads " << heads << " len " << len << " dim " << dim << " bs " << bs << " h " << h << " l " << l;
        }
        for (int64_t l = len; l < stride; ++l) EXPECT_EQ(got[h * stride + l], -1.0f) << "wrote past the segment";
      }
    }
  }
}

TEST(GemvKernels, Avx512SoftmaxHasTheAvx2Exponentials) {
  // The same maximum and exponentials (bits) as the AVX2 kernel, any length
  // (16-lane tails), scores far below the max weighing exactly 0; the sum
  // within fp32 rounding of the exponentials' sum.
  if (!gemv::CpuHasAvx512Bf16() || !gemv::CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX-512-BF16 on this CPU";
  at::manual_seed(10);
  for (int64_t len : {1, 7, 15, 16, 17, 100, 512}) {
    at::Tensor s = at::randn({len + 4}) * 8;
    s[0] = -150.0f;  // e^(-150 - max) is 0
    std::vector<float> a(s.data_ptr<float>(), s.data_ptr<float>() + len + 4), b = a;
    const gemv::Segment sa = gemv::SegmentSoftmaxAvx512(a.data(), len);
    const gemv::Segment sb = gemv::SegmentSoftmaxAvx2(b.data(), len);
    EXPECT_EQ(sa.max, sb.max) << len;
    double sum = 0;
    for (int64_t l = 0; l < len + 4; ++l) {
      ASSERT_EQ(a[l], b[l]) << "len " << len << " at " << l;  // (past len: untouched by both)
      if (l < len) sum += a[l];
    }
    if (len > 1) {
      EXPECT_EQ(a[0], 0.0f);
    }
    EXPECT_NEAR(sa.sum, sum, 1e-6 * sum) << len;
  }
}

void ExpectCastFloatBf16IsLibtorchs(int64_t cols);

// With every kernel this CPU runs (the AVX2 one converts 8 values at a time),
// lengths with and without a tail of fewer than 8.
TEST(CastFloatBf16, SameBitsAsLibtorchBothWays) {
  for (GemvKernel kernel : {GemvKernel::kPortable, GemvKernel::kAvx2, GemvKernel::kAvx512Bf16}) {
    if (!ForceGemvKernel(kernel)) continue;
    for (int64_t cols : {int64_t{40000}, int64_t{40003}, int64_t{5}}) {
      SCOPED_TRACE(absl::StrCat(GemvKernelName(kernel), ", 3 x ", cols));
      ExpectCastFloatBf16IsLibtorchs(cols);
    }
  }
  ForceGemvKernel(std::nullopt);
}

void ExpectCastFloatBf16IsLibtorchs(int64_t cols) {
  at::InferenceMode guard;  // (under grad mode CastFloatBf16 is libtorch's cast)
  // Large enough for several chunks; ties, NaN, infinities, denormals and
  // values that round up into the next exponent included.
  at::Tensor f = at::randn({3, cols}) * 1e3;
  float* p = f.data_ptr<float>();
  const std::vector<float> special = {0.0f,    -0.0f,   INFINITY,    -INFINITY,   NAN,      1e-40f,
                                      -1e-40f, 3.4e38f, 1.00390625f, 1.01171875f, 65504.0f, 1.9999999f};
  for (size_t i = 0; i < special.size(); ++i) p[(i * 997) % f.numel()] = special[i];
  const at::Tensor ours = CastFloatBf16(f, at::kBFloat16);
  const at::Tensor theirs = f.to(at::kBFloat16);
  ASSERT_EQ(ours.scalar_type(), at::kBFloat16);
  ASSERT_EQ(ours.sizes(), f.sizes());
  const at::Tensor ours_bits = ours.view(at::kShort), theirs_bits = theirs.view(at::kShort);
  // NaN payloads aside, the same bits; NaN stays NaN.
  const at::Tensor nan = f.isnan();
  EXPECT_TRUE(ours.isnan().equal(nan));
  EXPECT_TRUE(ours_bits.masked_fill(nan, 0).equal(theirs_bits.masked_fill(nan, 0)));
  const at::Tensor back = CastFloatBf16(ours, at::kFloat);
  EXPECT_TRUE(back.masked_fill(nan, 0).equal(ours.to(at::kFloat).masked_fill(nan, 0)));
  // Not a float <-> bf16 cast, or not contiguous: libtorch's.
  const at::Tensor g = f.masked_fill(nan, 0).t();
  EXPECT_TRUE(CastFloatBf16(g, at::kBFloat16).equal(g.to(at::kBFloat16)));
  EXPECT_EQ(CastFloatBf16(f, at::kDouble).scalar_type(), at::kDouble);
}

TEST(MoveToHugePages, KeepsValuesAndSharingAcrossViews) {
  at::InferenceMode guard;
  const at::Tensor fused = at::randn({1024, 1024});  // 4 MiB
  const at::Tensor part = fused.narrow(0, 512, 256);
  const at::Tensor small = at::randn({16, 16});
  const at::Tensor before = fused.clone(), small_before = small.clone();
  const int64_t moved = MoveToHugePages({part, fused, small});
  EXPECT_TRUE(moved == 0 || moved == 4 << 20) << moved;  // once per storage; small ones (< 2 MiB in all) stay
  EXPECT_TRUE(at::equal(fused, before));
  EXPECT_TRUE(at::equal(small, small_before));
  EXPECT_EQ(part.data_ptr<float>(), fused.data_ptr<float>() + 512 * 1024);
  if (moved > 0) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(fused.data_ptr()) % (2 << 20), 0u);
  }
  part.fill_(2);
  EXPECT_EQ(fused[600][3].item<float>(), 2);
}

TEST(MoveToHugePages, PacksSmallStoragesIntoOneBlockFreedWithTheLast) {
  at::InferenceMode guard;
  std::vector<at::Tensor> small, before;
  for (int i = 0; i < 24; ++i) {
    small.push_back(at::randn({300 + i, 256}));  // ~300 KB each, ~7 MB in all
    before.push_back(small.back().clone());
  }
  const at::Tensor view = small[5].narrow(0, 10, 4);
  std::vector<at::Tensor> given = small;
  given.push_back(view);  // a view of a storage already given: moved once
  const int64_t moved = MoveToHugePages(given);
  int64_t bytes = 0;
  for (const at::Tensor& t : small) bytes += t.numel() * 4;
  EXPECT_TRUE(moved == 0 || moved == bytes) << moved << " of " << bytes;
  for (size_t i = 0; i < small.size(); ++i) EXPECT_TRUE(at::equal(small[i], before[i])) << i;
  EXPECT_EQ(view.data_ptr<float>(), small[5].data_ptr<float>() + 10 * 256);
  if (moved > 0) {
    // One after the other, 64-byte aligned, the first at a huge page.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(small[0].data_ptr()) % (2 << 20), 0u);
    for (size_t i = 1; i < small.size(); ++i) {
      const uintptr_t end = reinterpret_cast<uintptr_t>(small[i - 1].data_ptr<float>() + small[i - 1].numel());
      EXPECT_EQ(reinterpret_cast<uintptr_t>(small[i].data_ptr()), (end + 63) / 64 * 64) << i;
    }
  }
  // Writable without touching the neighbours; the block lives while any of
  // its tensors does.
  small[3].fill_(7);
  EXPECT_TRUE(at::equal(small[4], before[4]));
  for (size_t i = 0; i + 1 < small.size(); ++i) small[i] = at::Tensor();
  given.clear();
  EXPECT_TRUE(at::equal(small.back(), before.back()));
  EXPECT_EQ(view[0][0].item<float>(), before[5][10][0].item<float>());
}

TEST(EmptyOnHugePages, GivesAWritableTensorOfTheShapeAndDtype) {
  at::InferenceMode guard;
  const at::Tensor big = EmptyOnHugePages({3, 2, 16, 64 * 1024 + 3}, at::kBFloat16);  // ~12 MiB
  EXPECT_EQ(big.sizes(), (std::vector<int64_t>{3, 2, 16, 64 * 1024 + 3}));
  EXPECT_EQ(big.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(big.is_contiguous());
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  const std::string mode((std::istreambuf_iterator<char>(thp)), std::istreambuf_iterator<char>());
  if (!mode.empty() && mode.find("[never]") == std::string::npos) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data_ptr()) % (2 << 20), 0u);
  }
  big.fill_(1.5);
  big[2][1][15][64 * 1024 + 2] = 3;  // the last element is inside the memory
  EXPECT_EQ(big.sum(at::kDouble).item<double>(), 1.5 * (big.numel() - 1) + 3);
  const at::Tensor small = EmptyOnHugePages({4, 4}, at::kFloat);  // below 2 MiB: a plain tensor
  EXPECT_EQ(small.numel(), 16);
  small.fill_(2);
  EXPECT_EQ(small.sum().item<float>(), 32);
}

// The row kernels' AVX2 versions give the portable ones' bits (the portable
// ones are checked against libtorch's ops through RMSNorm and ApplyRope in
// causal_lm_test): lengths with tails, large and tiny values, ties of the
// bf16 rounding.
TEST(RowKernels, Avx2GivesThePortableBits) {
  if (!gemv::CpuHasAvx2Fma()) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  at::InferenceMode guard;
  auto bits16 = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr()); };
  for (int64_t n : {int64_t{896}, int64_t{8}, int64_t{13}, int64_t{4867}}) {
    SCOPED_TRACE(n);
    at::Tensor x = at::randn({n}) * 3;
    x[0] = 3e4;  // squares far apart in size
    x[n - 1] = 1e-3;
    const at::Tensor w = at::rand({n}) + 0.5;
    at::Tensor a = at::empty({n}), b = at::empty({n});
    gemv::RmsNormRowPortable(x.data_ptr<float>(), w.data_ptr<float>(), n, 1e-6f, a.data_ptr<float>());
    gemv::RmsNormRowAvx2(x.data_ptr<float>(), w.data_ptr<float>(), n, 1e-6f, b.data_ptr<float>());
    EXPECT_TRUE(at::equal(a, b));
    const at::Tensor xb = x.to(at::kBFloat16), wb = w.to(at::kBFloat16);
    at::Tensor ab = at::empty({n}, at::kBFloat16), bb = at::empty({n}, at::kBFloat16);
    gemv::RmsNormRowBf16Portable(bits16(xb), bits16(wb), n, 1e-6f, reinterpret_cast<uint16_t*>(ab.data_ptr()));
    gemv::RmsNormRowBf16Avx2(bits16(xb), bits16(wb), n, 1e-6f, reinterpret_cast<uint16_t*>(bb.data_ptr()));
    EXPECT_TRUE(at::equal(ab, bb));
  }
  for (int64_t d : {int64_t{64}, int64_t{128}, int64_t{16}}) {
    SCOPED_TRACE(d);
    const int64_t heads = 5;
    const at::Tensor x = at::randn({heads, d}) * 4;
    const at::Tensor angles = at::rand({d}) * 40;
    const at::Tensor cos = angles.cos(), sin = angles.sin();
    at::Tensor a = at::empty({heads, d}), b = at::empty({heads, d});
    gemv::RopeRowsPortable(x.data_ptr<float>(), heads, d, cos.data_ptr<float>(), sin.data_ptr<float>(),
                           a.data_ptr<float>());
    gemv::RopeRowsAvx2(x.data_ptr<float>(), heads, d, cos.data_ptr<float>(), sin.data_ptr<float>(),
                       b.data_ptr<float>());
    EXPECT_TRUE(at::equal(a, b));
    const at::Tensor xb = x.to(at::kBFloat16), cb = cos.to(at::kBFloat16), sb = sin.to(at::kBFloat16);
    at::Tensor ab = at::empty({heads, d}, at::kBFloat16), bb = at::empty({heads, d}, at::kBFloat16);
    gemv::RopeRowsBf16Portable(bits16(xb), heads, d, bits16(cb), bits16(sb),
                               reinterpret_cast<uint16_t*>(ab.data_ptr()));
    gemv::RopeRowsBf16Avx2(bits16(xb), heads, d, bits16(cb), bits16(sb), reinterpret_cast<uint16_t*>(bb.data_ptr()));
    EXPECT_TRUE(at::equal(ab, bb));
  }
}

}  // namespace
}  // namespace internvl::llm
