// SwiGLU (silu(gate) * up) with this project's CPU kernel where it can run:
// in a bf16 decode step libtorch's two ops (silu, then mul) cost more in
// dispatch than the arithmetic.
#pragma once

#include <ATen/core/Tensor.h>

namespace internvl {

// at::silu(gate) * up; in bf16, silu computed in fp32 and rounded once, then
// the product rounded (activation_kernels.h). By the kernel when gate and up are bf16 CPU
// tensors of one shape whose rows (the last dimension) are contiguous and
// evenly spaced (e.g. the two halves of a fused gate/up product), no
// gradient is recorded and the CPU runs the project's kernels (AVX2 + FMA,
// not INTERNVL_KERNELS=generic); otherwise libtorch's ops. A new tensor.
at::Tensor SwiGlu(const at::Tensor& gate, const at::Tensor& up);

// Whether SwiGlu would run the kernel.
bool SwiGluRunsKernel(const at::Tensor& gate, const at::Tensor& up);

// SwiGlu's kernel over columns [begin, end) of every row, written into `out`
// (contiguous, of gate's shape and dtype); only where SwiGluRunsKernel(gate,
// up). For a caller splitting a few wide rows between threads: elementwise,
// so the same bits as SwiGlu, and threads may write disjoint columns of one
// `out` at once.
void SwiGluColumns(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& out, int64_t begin, int64_t end);

// Whether SwiGluBf16Rows runs here: the kernel is built, the CPU runs AVX2 +
// FMA and the project's kernels are not turned off (INTERNVL_KERNELS=generic).
bool SwiGluBf16RowsAvailable();
// SwiGlu's kernel on raw bf16 rows (uint16_t bits), columns [begin, end) of
// each: row r's gate at gate + r * stride, its up at up + r * stride, its
// result at out + r * out_stride. Only where SwiGluBf16RowsAvailable(); the
// same bits as SwiGlu.
void SwiGluBf16Rows(const uint16_t* gate, const uint16_t* up, int64_t stride, uint16_t* out, int64_t out_stride,
                    int64_t rows, int64_t begin, int64_t end);

}  // namespace internvl
