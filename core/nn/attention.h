// Fused bf16 attention on the CPU: softmax(q k^T) v per head without the
// score matrix in memory, on CPUs with AVX-512-BF16
// (attention_avx512bf16.cc): InternViT's attention and the serving engine's
// causal prefill. The same roundings as the op chain of bf16 products and
// softmax it replaces (attention_kernels.h). On a 2-core Zen 5 (2 threads,
// alternated runs): InternViT-300M's attention of 3 tiles with its q|k|v and
// output products 23.7 against 27.0 ms a tile (bench_vision; the encoder
// 1413-1445 against 1491-1495 ms a tile); InternVL2-1B's prefill of 2500
// tokens 3.70-3.76 against 4.39-4.50 s (bench_decode).
#pragma once

#include <ATen/core/Tensor.h>

namespace internvl {

// Which attention FusedAttentionRuns chooses on this CPU: "fused-avx512bf16"
// where the CPU has AVX-512-BF16 and no AMX-BF16 (there oneDNN's bf16
// products run on AMX tiles; not measured against this kernel), else "ops".
// INTERNVL_ATTENTION_KERNEL=ops keeps the op chain; =fused takes the kernel
// wherever the CPU has AVX-512-BF16, AMX included.
const char* AttentionKernelName();

// Whether FusedAttentionBf16 runs for these operands: bf16 CPU tensors, q
// [B, H, N, D], k and v [B, H, L, D], each with unit stride in its last dim
// and even strides otherwise (k's rows under 2^26 elements apart), D a
// multiple of 16 up to 128, no gradient
// recorded, the project's CPU kernels on (device.h) and the fused kernel
// chosen (AttentionKernelName).
bool FusedAttentionRuns(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// softmax(q k^T) v for q already scaled, as [B, N, H * D] (each row the heads
// side by side: the layout an output projection takes). Only where
// FusedAttentionRuns; (batch, head) pairs split among libtorch's threads.
at::Tensor FusedAttentionBf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Whether FusedCausalAttentionBf16 runs for these operands: as
// FusedAttentionRuns, for q [n, H, D], k and v [KV, L, D] with H a multiple
// of KV, and out [n, H * D] with unit stride in its last dim and an even row
// stride.
bool FusedCausalAttentionRuns(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out);

// Causal attention of one sequence's chunk of queries (the serving engine's
// prefill): query row i of q [n, H, D] at position start + i sees keys
// [0, start + i + 1) of k and v [KV, L, D] (L >= start + n); query head h
// reads key/value head h / (H / KV). Scores divided by `score_divisor` after
// their rounding, as a bf16 tensor's div_ by that scalar (already rounded to
// bf16; 1 where q comes scaled). Writes [n, H * D] into out; query heads
// split among libtorch's threads, each thread's heads of one key/value head
// sharing its packed keys and values.
void FusedCausalAttentionBf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start,
                              float score_divisor, const at::Tensor& out);

// For tests: 1 takes the fused kernel wherever the CPU has AVX-512-BF16, 0
// the op chain, -1 back to the default (the CPU and the environment).
void ForceFusedAttention(int mode);

}  // namespace internvl
