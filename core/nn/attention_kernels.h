// Fused attention kernels behind FusedAttentionBf16 (attention.h); no torch
// headers.
#pragma once

#include <cstdint>

namespace internvl::attention {

// One head of softmax(q k^T) v over bf16 values (raw bits): `rows` query rows
// of `dim` (already scaled) against `keys` key and value rows, each matrix's
// rows `*_stride` elements apart, the output rows likewise.
struct Head {
  const uint16_t* q;
  int64_t q_stride;
  const uint16_t* k;
  int64_t k_stride;
  const uint16_t* v;
  int64_t v_stride;
  uint16_t* out;
  int64_t out_stride;
  int64_t rows, keys, dim;
};

// Whether HeadBf16Avx512 takes heads of this dim: a multiple of 16 up to 128.
inline bool HeadDimSupported(int64_t dim) { return dim >= 16 && dim <= 128 && dim % 16 == 0; }

// Bytes of scratch HeadBf16Avx512 needs for heads of `keys` x `dim`.
int64_t HeadScratchBytes(int64_t keys, int64_t dim);

// The head computed as the op chain of bf16 products computes it (scores
// rounded to bf16, the softmax in fp32 rounded once to bf16, the output's sums
// in fp32 rounded to bf16), without the [rows, keys] scores in memory: query
// blocks of 48 rows at a time, their scores in `scratch` (HeadScratchBytes,
// 64-byte aligned; keys and values repacked there once per head). On CPUs with
// AVX-512-BF16 (CpuHasAvx512Bf16Kernels, attention.h) only.
void HeadBf16Avx512(const Head& head, void* scratch);

}  // namespace internvl::attention
