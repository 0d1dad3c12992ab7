// Matrix-vector kernels for batch-1 decoding (no libtorch here: the AVX2
// implementation is compiled with -mavx2 -mfma -mf16c, and torch's inline
// header code must not be compiled with other target flags than the rest of
// the program).
//
// Every kernel computes, for output rows r in [row_begin, row_end) and input
// rows m in [0, M):
//   y[m * out + r] = sum_k w[r * in + k] * x[m * in + k]  (+ bias[r])
// with fp32 accumulation. w is [out, in] row-major, fp32 or bf16 (bf16 ->
// fp32 is exact: the bf16 bits are the high half of the fp32 bits). x is
// fp32; bias fp32 or bf16 (or null); y fp32, or bf16 rounded to nearest even
// (y_bf16 set: what casting the fp32 result does, without the fp32 buffer).
// Any M >= 1 (the weights are read from memory once; the input rows should
// fit in L2).
#pragma once

#include <cstdint>

#include "core/llm/bf16_bits.h"

namespace internvl::llm::gemv {

struct Problem {
  const float* x = nullptr;  // [M, in]
  int64_t m = 1;
  int64_t in = 0;
  int64_t out = 0;
  const void* w = nullptr;  // [out, in], fp32 or bf16 (uint16_t bits)
  bool w_bf16 = false;
  const float* bias = nullptr;          // [out] or null
  const uint16_t* bias_bf16 = nullptr;  // [out] (bf16 bits), instead of bias
  float* y = nullptr;                   // [M, out]
  uint16_t* y_bf16 = nullptr;           // [M, out] (bf16 bits), instead of y
  // x in the layout the AVX2 bf16 kernel reads (set by PrepareAvx2).
  const float* x_perm = nullptr;
  // x rounded to bf16 [M, in] (uint16_t bits), for the AVX-512-BF16 kernel:
  // set when the inputs are bf16 already (exact).
  const uint16_t* x_bf16 = nullptr;
};

// The bias of output row r added (every kernel ends with this, then
// bf16_bits.h's StoreY; static: each kernel's file compiles its own copy).
static inline float AddBias(const Problem& p, int64_t r, float s) {
  if (p.bias != nullptr) return s + p.bias[r];
  if (p.bias_bf16 != nullptr) return s + Bf16BitsToFloat(p.bias_bf16[r]);
  return s;
}

// Portable reference implementation (any CPU).
void RowsPortable(const Problem& p, int64_t row_begin, int64_t row_end);

// AVX2 + FMA implementation; only call when CpuHasAvx2Fma(), after
// PrepareAvx2(p, scratch) with scratch of M * in floats (once per product).
void PrepareAvx2(Problem& p, float* scratch);
void RowsAvx2(const Problem& p, int64_t row_begin, int64_t row_end);

// Whether this CPU (and OS) runs AVX2 and FMA code.
bool CpuHasAvx2Fma();

// n bf16 values (bits) widened to fp32, and n fp32 values rounded to bf16
// bits (to nearest even, NaN -> 0x7FC0): FloatToBf16Bits / Bf16BitsToFloat
// (bf16_bits.h) bit for bit, 8 lanes at a time (only when CpuHasAvx2Fma()).
void Bf16ToFloatAvx2(const uint16_t* src, float* dst, int64_t n);
// The first position of the largest of x[0, n) ignoring NaNs (0 where every
// value is -inf or NaN), and whether a NaN occurs (*nan): the sampler's
// greedy choice (torch.argmax's, NaN counting as the largest, is then the
// first NaN). 1 <= n < 2^31 - 32.
int64_t ArgMaxAvx2(const float* x, int64_t n, bool* nan);
void FloatToBf16Avx2(const float* src, uint16_t* dst, int64_t n);

// A decode step's row operations, run on the calling thread between two
// products (each libtorch op there costs microseconds, and so did these
// loops one value at a time: ~0.3 ms per decoded token over 24 layers). The
// portable and AVX2 versions give the same bits.
//
// RMSNorm of one row of n: out = w * (x / sqrt(mean(x^2) + eps)), the squares
// summed in double in 8 interleaved partial sums (element i into sum i % 8,
// combined as ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))), the rest in
// fp32. In bf16 (bits), x / sqrt(...) is rounded to bf16 before the product
// with the weight, and the product rounded: as the reference's ops round.
void RmsNormRowPortable(const float* x, const float* w, int64_t n, float eps, float* out);
void RmsNormRowBf16Portable(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out);
void RmsNormRowAvx2(const float* x, const float* w, int64_t n, float eps, float* out);
void RmsNormRowBf16Avx2(const uint16_t* x, const uint16_t* w, int64_t n, float eps, uint16_t* out);
// out = a + b over n values, in bf16 the fp32 sum rounded (as libtorch's
// bf16 add); out may be a.
void AddRowPortable(const float* a, const float* b, int64_t n, float* out);
void AddRowBf16Portable(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out);
void AddRowAvx2(const float* a, const float* b, int64_t n, float* out);
void AddRowBf16Avx2(const uint16_t* a, const uint16_t* b, int64_t n, uint16_t* out);
// The rotary embedding of `heads` rows of d (row h at x + h * d) at one
// position (cos, sin [d]): out = x * cos + rotate_half(x) * sin, where
// rotate_half(x) = cat(-x[d/2:], x[:d/2]); both products are rounded, then
// their sum (in bf16 each product to bf16, then the sum: as the reference's
// ops). AVX2: d % 16 == 0.
void RopeRowsPortable(const float* x, int64_t heads, int64_t d, const float* cos, const float* sin, float* out);
void RopeRowsBf16Portable(const uint16_t* x, int64_t heads, int64_t d, const uint16_t* cos, const uint16_t* sin,
                          uint16_t* out);
void RopeRowsAvx2(const float* x, int64_t heads, int64_t d, const float* cos, const float* sin, float* out);
void RopeRowsBf16Avx2(const uint16_t* x, int64_t heads, int64_t d, const uint16_t* cos, const uint16_t* sin,
                      uint16_t* out);

// AVX-512-BF16 implementation for bf16 weights and bf16 inputs (p.x_bf16
// set); only call when CpuHasAvx512Bf16().
void RowsAvx512Bf16(const Problem& p, int64_t row_begin, int64_t row_end);
bool CpuHasAvx512Bf16();

// Decode attention of one query head over one segment of `len` cached keys
// and values (rows of `dim` floats; the AVX2 versions need dim % 8 == 0), the
// pieces of a softmax split over segments (combined by the caller):
//   SegmentScores:  scores[l] = dot(q, k[l]) / scale
//   SegmentSoftmax: max = max_l scores[l]; scores[l] = exp(scores[l] - max);
//                   sum = sum_l scores[l]
//   SegmentValues:  out[:] = sum_l scores[l] * v[l, :]   (not divided by sum)
struct Segment {
  float max = 0;
  float sum = 0;
};
void SegmentScoresPortable(const float* q, const float* k, int64_t len, int64_t dim, float scale, float* scores);
Segment SegmentSoftmaxPortable(float* scores, int64_t len);
void SegmentValuesPortable(const float* probs, const float* v, int64_t len, int64_t dim, float* out);
void SegmentScoresAvx2(const float* q, const float* k, int64_t len, int64_t dim, float scale, float* scores);
Segment SegmentSoftmaxAvx2(float* scores, int64_t len);
void SegmentValuesAvx2(const float* probs, const float* v, int64_t len, int64_t dim, float* out);
// The same over bf16 keys / values (uint16_t bits; widened exactly to fp32).
void SegmentScoresBf16Portable(const float* q, const uint16_t* k, int64_t len, int64_t dim, float scale, float* scores);
void SegmentValuesBf16Portable(const float* probs, const uint16_t* v, int64_t len, int64_t dim, float* out);
void SegmentScoresBf16Avx2(const float* q, const uint16_t* k, int64_t len, int64_t dim, float scale, float* scores);
void SegmentValuesBf16Avx2(const float* probs, const uint16_t* v, int64_t len, int64_t dim, float* out);
// The scores step for all `heads` query heads of a KV head at once (query
// rows q + h * dim), over a segment of `len` keys in blocks of `bs` rows of
// `dim` (% 8 == 0), row l at blocks[l / bs] + (l % bs) * dim:
// scores[h * stride + l] = dot(q_h, k_l) / scale, the same bits as
// SegmentScores*Avx2 per head and block; each key row is read (and widened)
// once for the group. `values` (the segment's value blocks, or null) are
// prefetched block by block, for the values step that follows.
void SegmentScoresGroupAvx2(const float* q, int64_t heads, const float* const* blocks, int64_t bs, int64_t len,
                            int64_t dim, float scale, float* scores, int64_t stride,
                            const float* const* values = nullptr);
void SegmentScoresGroupBf16Avx2(const float* q, int64_t heads, const uint16_t* const* blocks, int64_t bs, int64_t len,
                                int64_t dim, float scale, float* scores, int64_t stride,
                                const uint16_t* const* values = nullptr);
// The values step for all `heads` query heads of a KV head at once, over a
// segment of `len` keys in blocks of `bs` rows of `dim` (% 8 == 0):
// out[h * out_stride + d] = sum_l probs[h * probs_stride + l] * v_l[d], row l
// at blocks[l / bs] + (l % bs) * dim. Each value row is read (and widened)
// once for the group; fp32 arithmetic as SegmentValuesAvx2.
void SegmentValuesGroupAvx2(const float* probs, int64_t probs_stride, int64_t heads, const float* const* blocks,
                            int64_t bs, int64_t len, int64_t dim, float* out, int64_t out_stride);
void SegmentValuesGroupBf16Avx2(const float* probs, int64_t probs_stride, int64_t heads, const uint16_t* const* blocks,
                                int64_t bs, int64_t len, int64_t dim, float* out, int64_t out_stride);
// bf16 queries (exact: the model computes in bf16) over bf16 keys / values
// with AVX-512-BF16 dot products (dim % 32 == 0; only when
// CpuHasAvx512Bf16()): the products are exact and summed in fp32, as the
// other kernels; the values' weights (probabilities) are rounded to bf16 first,
// as the reference's bf16 attention does (softmax in fp32, cast to the
// activations' dtype, then probs @ V).
void SegmentScoresBf16Avx512(const uint16_t* q, const uint16_t* k, int64_t len, int64_t dim, float scale,
                             float* scores);
// Whether the scores' divisor `scale` (sqrt(head_dim), as the reference
// divides) is a power of two (head_dim 64): the SIMD score kernels then
// multiply by its reciprocal, the same bits without vdivps's latency.
inline bool ScaleIsPowerOfTwo(float scale) {
  uint32_t bits;
  __builtin_memcpy(&bits, &scale, sizeof(bits));
  const uint32_t exponent = (bits >> 23) & 0xFFu;
  return (bits & 0x807FFFFFu) == 0 && exponent != 0 && exponent != 0xFFu;  // positive, normal, mantissa 1.0
}
void SegmentValuesBf16Avx512(const float* probs, const uint16_t* v, int64_t len, int64_t dim, float* out);
// SegmentSoftmaxAvx2 in 16 lanes (AVX-512F; only when CpuHasAvx512Bf16()):
// the same max and the same exponentials (bits), the sum in another order.
Segment SegmentSoftmaxAvx512(float* scores, int64_t len);
// SegmentScoresBf16Avx512 for `heads` query heads (rows of q) over a
// segment of `len` keys stored in blocks of `bs` rows: the same bits as the
// per-head kernel called per block; keys are prefetched two blocks ahead,
// and `values` (the segment's value blocks, or null) into L2 block by block
// for the values step that follows.
void SegmentScoresGroupBf16Avx512(const uint16_t* q, int64_t heads, const uint16_t* const* blocks, int64_t bs,
                                  int64_t len, int64_t dim, float scale, float* scores, int64_t stride,
                                  const uint16_t* const* values = nullptr);
// The most keys SegmentValuesGroupBf16Avx512 takes in one call.
inline constexpr int64_t kMaxValuesGroupKeysBf16Avx512 = 512;
// The values step for all `heads` query heads of a KV head at once, over a
// segment of `len` <= kMaxValuesGroupKeysBf16Avx512 keys stored in blocks of `bs` (even) rows of `dim`
// (% 32 == 0): out[h * out_stride + d] = sum_l bf16(probs[h * probs_stride +
// l]) * v_l[d], where row l is blocks[l / bs] + (l % bs) * dim. Each value row
// is loaded once for the group (GQA), and each probability is rounded once.
// Same arithmetic as SegmentValuesBf16Avx512.
void SegmentValuesGroupBf16Avx512(const float* probs, int64_t probs_stride, int64_t heads,
                                  const uint16_t* const* blocks, int64_t bs, int64_t len, int64_t dim, float* out,
                                  int64_t out_stride);

}  // namespace internvl::llm::gemv
