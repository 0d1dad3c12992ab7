// Fused attention kernels behind FusedAttentionBf16 (attention.h); no torch
// headers.
#pragma once

#include <cstdint>

namespace internvl::attention {

// One head of softmax(q k^T) v over bf16 values (raw bits): `rows` query rows
// of `dim` against `keys` key and value rows, each matrix's rows `*_stride`
// elements apart (even), the output rows likewise.
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
  // >= 0: causal, query row i at position causal_start + i sees keys
  // [0, causal_start + i + 1) (the others weigh exactly 0); < 0: all keys.
  int64_t causal_start = -1;
  // Scores divided by this after their rounding (and rounded again), as a
  // bf16 tensor's div_ by a scalar computes (the scalar rounded to bf16 by
  // the caller); 1: the queries come scaled.
  float score_divisor = 1.0f;
};

// Whether HeadBf16Avx512 takes heads of this dim: a multiple of 16 up to 128.
inline bool HeadDimSupported(int64_t dim) { return dim >= 16 && dim <= 128 && dim % 16 == 0; }

// Bytes of scratch HeadBf16Avx512 needs for heads of `keys` x `dim`.
int64_t HeadScratchBytes(int64_t keys, int64_t dim);

// The head computed as the op chain of bf16 products computes it (scores
// rounded to bf16, the softmax in fp32 rounded once to bf16, the output's sums
// in fp32 rounded to bf16), without the [rows, keys] scores in memory: query
// blocks of 48 rows at a time, their scores in `scratch` (HeadScratchBytes,
// 64-byte aligned), causal blocks skipped. `pack`: repack the keys and values
// into the scratch first; false reuses those of the previous call on this
// scratch (query heads sharing a key/value head: same k, v, keys, dim). On
// CPUs with AVX-512-BF16 (CpuHasAvx512Bf16, device.h) only.
void HeadBf16Avx512(const Head& head, void* scratch, bool pack = true);

}  // namespace internvl::attention
