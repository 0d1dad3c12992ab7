// Softmax over the last dimension in fp32, as the reference's attention
// computes it (softmax(scores, -1, dtype=float32)), with this project's CPU
// kernel where it can run.
#pragma once

#include <ATen/core/Tensor.h>

namespace internvl {

// softmax(t, -1) in fp32. In place, over t's own memory, when t is a
// contiguous fp32 CPU tensor, no gradient is being recorded, and the CPU runs
// the project's kernels (AVX2 + FMA, not INTERNVL_KERNELS=generic): rows in
// parallel, one pass for the maximum, one for exp and the sum, one for the
// reciprocal (~1.7x libtorch 1.13's per thread). Otherwise
// at::softmax(t, -1, kFloat), t untouched. Callers pass scores they own.
at::Tensor SoftmaxLastDimFp32(const at::Tensor& t);

// softmax(t, -1) of a bf16 t in bf16, as libtorch's op computes it (each row
// in fp32, rounded once): in place under the same conditions as above (a
// contiguous bf16 CPU tensor), otherwise at::softmax(t, -1).
at::Tensor SoftmaxLastDimBf16(const at::Tensor& t);

// softmax(t, -1, dtype=float32).to(dtype): attention probabilities as the
// reference computes them (fp32 softmax of the scores, cast to the
// activations' dtype). bf16 scores to bf16 run SoftmaxLastDimBf16's kernel in
// place where it runs (each row in fp32, rounded once: the same arithmetic,
// without the fp32 copy, libtorch's softmax and the cast back); otherwise
// SoftmaxLastDimFp32(t).to(dtype).
at::Tensor SoftmaxLastDimTo(const at::Tensor& t, at::ScalarType dtype);

// Whether SoftmaxLastDimFp32 would run the kernel in place on `t`.
bool SoftmaxRunsInPlace(const at::Tensor& t);

// Which row kernel the in-place softmax runs on this CPU: "avx512" (16
// lanes, AVX-512F/BW/VL), "avx2" (AVX2 + FMA) or "libtorch" (neither, or
// INTERNVL_KERNELS=generic). INTERNVL_SOFTMAX_KERNEL=avx2 keeps the AVX2
// kernel on an AVX-512 CPU.
const char* SoftmaxKernelName();

}  // namespace internvl
