// Row softmax kernels behind SoftmaxLastDim (softmax.h); no torch headers.
#pragma once

#include <cstdint>

namespace internvl::softmax {

// In place, each of `rows` rows of `n` contiguous floats: x = exp(x - max) /
// sum, the sum's reciprocal multiplied in (as libtorch's CPU softmax). A row
// holding a NaN, or whose maximum is infinite (a row all -inf included),
// becomes all NaN, as the reference's does. Only on CPUs with AVX2 and FMA.
void SoftmaxRowsAvx2(float* x, int64_t rows, int64_t n);

// The same over rows of bf16 values (raw bits), in place: each row widened
// to fp32, computed as above, and rounded once to bf16 (nearest even), as
// libtorch's softmax of a bf16 tensor computes in fp32 and rounds.
void SoftmaxRowsBf16Avx2(uint16_t* x, int64_t rows, int64_t n);

// The same two in 16 lanes, on CPUs with AVX-512F/BW/VL (CpuHasAvx512(),
// device.h): the same exponentials (bits), the sums in another order.
void SoftmaxRowsAvx512(float* x, int64_t rows, int64_t n);
void SoftmaxRowsBf16Avx512(uint16_t* x, int64_t rows, int64_t n);

}  // namespace internvl::softmax
