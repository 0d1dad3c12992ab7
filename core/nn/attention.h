// Fused bf16 attention on the CPU: softmax(q k^T) v per (batch, head) without
// the [N, L] scores in memory, on CPUs with AVX-512-BF16
// (attention_avx512bf16.cc). The same roundings as the op chain of bf16
// products and softmax it replaces (attention_kernels.h). InternViT-300M in
// bf16 on a 2-core Zen 5 (bench_vision, 2 threads): the attention of 3
// tiles with its q|k|v and output products 23.7 against 27.0 ms a tile; the
// whole encoder 1413-1445 against 1491-1495 ms a tile, alternated runs.
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
// and even strides otherwise, D a multiple of 16 up to 128, no gradient
// recorded, the project's CPU kernels on (device.h) and the fused kernel
// chosen (AttentionKernelName).
bool FusedAttentionRuns(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// softmax(q k^T) v for q already scaled, as [B, N, H * D] (each row the heads
// side by side: the layout an output projection takes). Only where
// FusedAttentionRuns; (batch, head) pairs split among libtorch's threads.
at::Tensor FusedAttentionBf16(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// For tests: 1 takes the fused kernel wherever the CPU has AVX-512-BF16, 0
// the op chain, -1 back to the default (the CPU and the environment).
void ForceFusedAttention(int mode);

}  // namespace internvl
