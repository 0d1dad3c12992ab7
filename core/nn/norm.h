// LayerNorm over the last dimension with this project's CPU kernel where it
// can run (one 448px tile's [1025, 1024] bf16 rows on 2 threads of a Zen 4:
// libtorch 1.13's op 3.8-6.0 ms, the kernel 0.19-0.25 ms).
#pragma once

#include <ATen/core/Tensor.h>

namespace internvl {

// at::layer_norm(x, {x.size(-1)}, weight, bias, eps). By the kernel when x,
// weight and bias are contiguous bf16 CPU tensors, no gradient is being
// recorded and the CPU runs the project's kernels (AVX2 + FMA, not
// INTERNVL_KERNELS=generic): computed in fp32 and rounded once, rows in
// parallel. Otherwise libtorch's op.
at::Tensor LayerNormLastDim(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

// Whether LayerNormLastDim would run the kernel.
bool LayerNormRunsKernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace internvl
