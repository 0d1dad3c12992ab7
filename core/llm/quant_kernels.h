// Matrix-vector kernels over quantized weights (no libtorch here: the SIMD
// versions are compiled with their own target flags, see gemv_kernels.h).
//
// Weights: int8 (one scale per output row, symmetric, values in [-127, 127])
// or int4 (unsigned 0..15 with a scale and a zero point per output row and
// group of `group` inputs, as AWQ stores them). Inputs: each input row is
// quantized on the fly to int8 in blocks of 32 values, so the inner products
// are integer (VNNI vpdpbusd, or AVX2 vpmaddubsw) and only each block's sum
// is scaled. The blocks of one span share their scale: spans of 32 inputs
// for int8 (llama.cpp's Q8_0), of 128 for int4 (64 where the group is not a
// multiple of 128; llama.cpp's Q8_K spans 256), so the AVX2 int4 kernel
// adds a span's 16-bit products (each at most 2 x 15 x 127, four of them
// within 16 bits) before widening and scaling them once:
//   int8: y[m][r] = scale[r] * sum_b d[m][b] * sum_{k in b} w[r][k] xq[m][k]
//   int4: y[m][r] = sum_g scale[r][g] * (sum_{b in g} d[m][b] * sum_{k in b} q[r][k] xq[m][k])
//                   + sum_g zmin[r][g] * gsum[m][g]      (zmin = -zero * scale,
//                                                          gsum = sum_{b in g} d[m][b] * sum_{k in b} xq[m][k])
// (+ bias[r]). Rows are padded to `inp` inputs (a multiple of 64 for int8,
// 128 for int4) with zero weights and zero inputs (and zero scales for whole
// padded groups).
//
// Layouts: int8 weights [out][inp] row-major. int4 weights inp / 2 bytes
// per row: each 128-input chunk c of a row is 64 bytes, byte j holding input
// 128c + j in its low nibble and input 128c + 64 + j in its high nibble (one
// 512-bit load, a shift and two masks give 2 x 64 values in order). The
// rows of int4 weights, scales and zero terms are at strides of their own
// (w_stride bytes, s_stride floats): QuantMatrix stores each row's scales
// and zero terms right before its weights, one run of memory per row.
#pragma once

#include <cstdint>
#include <vector>

#include "core/llm/bf16_bits.h"

namespace internvl::llm::quant {

inline constexpr int64_t kBlock = 32;    // inputs per activation block (one entry of `d`)
inline constexpr int64_t kChunk = 64;    // int8: inputs per kernel step (and padding unit)
inline constexpr int64_t kChunk4 = 128;  // int4: inputs per kernel step (and padding unit)

// M input rows quantized for one product.
struct Activations {
  int64_t m = 0;
  int64_t inp = 0;            // padded row length (multiple of the weights' chunk)
  int64_t group = 0;          // int4 group size (gsum), 0 for int8
  std::vector<int8_t> xq;     // [m][inp]
  std::vector<float> d;       // [m][inp / 32] block scales
  std::vector<int32_t> corr;  // [m][inp / 4]: -128 * sum of each 4-input lane (VNNI int8 kernel)
  std::vector<float> lane_d;  // [m][inp / 4]: block scale of each lane (VNNI int8 kernel)
  std::vector<float> gsum;    // [m][inp / group] (int4)
  std::vector<float> span_d;  // [m][inp / 128]: each span's scale where spans are 128 (int4), else empty

  // Quantizes x [m][in] (fp32, in <= inp); `avx2` (only when the CPU has it)
  // quantizes whole blocks with AVX2, the same bits as the portable code for
  // finite inputs (a NaN makes its block's scale NaN there, where the portable
  // maximum skips it).
  void Prepare(const float* x, int64_t m, int64_t in, int64_t inp, int64_t group, bool avx2 = false);
  // Inputs sharing one scale (the blocks of a span have equal `d`): kBlock
  // for int8 (group 0); 128 for int4 groups that are multiples of 128, else
  // 64 (int4 groups are multiples of 64).
  static int64_t SpanFor(int64_t group) { return group == 0 ? kBlock : group % 128 == 0 ? 128 : 64; }
};

struct Int8Problem {
  const Activations* a = nullptr;
  const int8_t* w = nullptr;     // [out][a->inp]
  const float* scale = nullptr;  // [out]
  const float* bias = nullptr;   // [out] or null
  float* y = nullptr;            // [m][out]
  int64_t out = 0;
  uint16_t* y_bf16 = nullptr;  // [m][out] bf16 bits, instead of y (rounded as libtorch's cast)
};

struct Int4Problem {
  const Activations* a = nullptr;
  const uint8_t* w = nullptr;    // row r: [a->inp / 2] bytes at w + r * w_stride
  const float* scale = nullptr;  // row r: [inp / group] at scale + r * s_stride
  const float* zmin = nullptr;   // row r: [inp / group] at zmin + r * s_stride
  int64_t group = 0;             // a multiple of 64 dividing inp
  const float* bias = nullptr;
  float* y = nullptr;
  int64_t out = 0;
  uint16_t* y_bf16 = nullptr;
  int64_t w_stride = 0;  // bytes, >= inp / 2
  int64_t s_stride = 0;  // floats, >= inp / group
};

// The weights (bytes), group scales and zero points of output row r of a
// 4-bit problem whose rows hold `groups` groups.
struct Int4Row {
  const uint8_t* w;
  const float* scale;
  const float* zmin;
};
inline Int4Row RowOf(const Int4Problem& p, int64_t r) {
  return {p.w + r * p.w_stride, p.scale + r * p.s_stride, p.zmin + r * p.s_stride};
}

// The streaming 4-bit kernels, as a row of at least kScaleAheadGroups groups
// starts, ask for the first line of the scales of the row kScaleRowsAhead
// rows further in its stream (the row's own first line, which it loads
// first, arrives late otherwise). Alternated call by call in one process
// (2-core Zen 5 VM, 60 calls each, matrices from memory): the MLP's down
// projection (4864 inputs, 38 groups) 0.92-0.96x of the time with the VNNI
// kernel in 5 runs, 0.96-0.99x with AVX2; for every matrix of 7 groups
// (896 inputs) it was 1.02-1.14x, hence the threshold.
inline constexpr int64_t kScaleAheadGroups = 16;
inline constexpr int64_t kScaleRowsAhead = 12;
// (Rows within kScaleRowsAhead of the matrix's end ask for nothing: past it
// lies memory that is not the matrix's.)
inline void PrefetchScalesAhead(const Int4Problem& p, int64_t r) {
  if (r + kScaleRowsAhead < p.out) __builtin_prefetch(p.scale + (r + kScaleRowsAhead) * p.s_stride);
}

// chunk(j, c) for c in [begin, end), j = 0 and 1 alternately (the kernels'
// two accumulator sets, so that consecutive chunks' FMAs do not wait on each
// other).
template <typename Chunk>
__attribute__((always_inline)) inline void EvenOddChunks(int64_t begin, int64_t end, int64_t step, Chunk&& chunk) {
  int64_t c = begin;
  for (; c + 2 * step <= end; c += 2 * step) {
    chunk(0, c);
    chunk(1, c + step);
  }
  if (c < end) chunk(0, c);
}

// One whole block of 32 inputs quantized as Activations::Prepare does with
// its span's absolute maximum `amax`: q[0, 32), each 4-input lane's corr and
// lane_d (amax / 127); returns the sum of q. AVX2; only when CpuHasAvx2Fma().
int32_t QuantizeBlockAvx2(const float* x, float amax, int8_t* q, int32_t* corr, float* lane_d);
// max |x[k]| over k < n (n a multiple of 8). AVX2; only when CpuHasAvx2Fma().
float AbsMaxAvx2(const float* x, int64_t n);

// Rows of a quantized matrix dequantized for the prefill's GEMM, as the
// reference ops compute them: int8 float(q) * scale[r]; int4 float(q) *
// scale[r][g] + zmin[r][g], a product then a sum, each rounded in fp32 (no
// FMA). Then kept in fp32 (out32) or rounded to bf16 (out16: to nearest even,
// NaN -> 0x7FC0, as libtorch's cast). Row r's first `in` values go to
// out + (r - row_begin) * in.
struct Dequant {
  const int8_t* w8 = nullptr;          // int8 [out][inp]
  const uint8_t* w4 = nullptr;         // int4: row r at w4 + r * w_stride, the kChunk4 layout
  const float* scale = nullptr;        // int8 [out]; int4: row r at scale + r * s_stride
  const float* zmin = nullptr;         // int4: row r at zmin + r * s_stride
  int64_t w_stride = 0, s_stride = 0;  // int4 (as Int4Problem's)
  int64_t inp = 0, in = 0;
  int64_t group = 0;  // int4: a multiple of 64 dividing inp
  float* out32 = nullptr;
  uint16_t* out16 = nullptr;
};
void DequantRowsPortable(const Dequant& p, int64_t row_begin, int64_t row_end);
// Values [k0, k1) of row r into out + offset + k (the SIMD kernels' tails).
void DequantValuesPortable(const Dequant& p, int64_t r, int64_t k0, int64_t k1, int64_t offset);
// AVX2, fp32 results only (p.out32); only when CpuHasAvx2Fma().
void DequantRowsAvx2(const Dequant& p, int64_t row_begin, int64_t row_end);
// AVX-512 (F, BW, VL); only when CpuHasAvx512Vnni().
void DequantRowsAvx512(const Dequant& p, int64_t row_begin, int64_t row_end);

// Batched int8 products of bf16 inputs (decode steps of several sequences
// of a model computed in bf16): each few weight rows widened to bf16 once
// (exact: |q| <= 127), then bf16 dot products with every input row, summed
// in fp32 as a bf16 GEMM sums them:
//   y[m][r] = scale[r] * sum_k bf16(x[m][k]) * q[r][k]  (+ bias[r])
// No activation quantization: the inputs keep their bf16 bits. (The VNNI
// kernel pays a conversion and an FMA per 64 weights and input row besides
// its vpdpbusd, since each 32-input activation block has its own scale; here
// an input row costs one vdpbf16ps per 32 weights, the widening 6
// instructions per 32 weights shared by all input rows.)
struct Int8WideProblem {
  const int8_t* w = nullptr;     // [out][inp]
  const float* scale = nullptr;  // [out]
  int64_t inp = 0, in = 0;       // padded and actual row length
  const uint16_t* x = nullptr;   // [m][in] bf16 bits
  int64_t m = 0;
  const float* bias = nullptr;  // [out] or null
  float* y = nullptr;           // [m][out]
  uint16_t* y_bf16 = nullptr;   // [m][out] bf16 bits, instead of y
  int64_t out = 0;
};
// The same arithmetic one value at a time (tests' reference; any CPU): each
// output's products summed in order of k, in fp32, then scaled.
void Int8WideRowsPortable(const Int8WideProblem& p, int64_t row_begin, int64_t row_end);
// AVX-512-BF16; only when gemv::CpuHasAvx512Bf16().
void Int8WideRowsAvx512Bf16(const Int8WideProblem& p, int64_t row_begin, int64_t row_end);

// Output rows [row_begin, row_end) for every input row.
void Int8RowsPortable(const Int8Problem& p, int64_t row_begin, int64_t row_end);
void Int4RowsPortable(const Int4Problem& p, int64_t row_begin, int64_t row_end);
// AVX2 (vpmaddubsw); only when CpuHasAvx2Fma() (gemv_kernels.h).
void Int8RowsAvx2(const Int8Problem& p, int64_t row_begin, int64_t row_end);
void Int4RowsAvx2(const Int4Problem& p, int64_t row_begin, int64_t row_end);
// AVX-512 VNNI (vpdpbusd); only when CpuHasAvx512Vnni().
void Int8RowsAvx512Vnni(const Int8Problem& p, int64_t row_begin, int64_t row_end);
void Int4RowsAvx512Vnni(const Int4Problem& p, int64_t row_begin, int64_t row_end);
bool CpuHasAvx512Vnni();

}  // namespace internvl::llm::quant
