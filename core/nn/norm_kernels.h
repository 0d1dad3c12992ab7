// Row normalisation kernels behind LayerNormLastDim (norm.h); no torch
// headers.
#pragma once

#include <cstdint>

namespace internvl::norm {

// LayerNorm of `rows` rows of `n` bf16 values (raw bits) into y: the mean and
// the (biased) variance in fp32, y = (x * rstd - mean * rstd) * w + b in fp32
// (rstd = 1 / sqrt(var + eps); libtorch's CPU formula), rounded once to bf16
// (nearest even), as Torch 2.x computes a bf16 LayerNorm (1.13 rounds its
// intermediates to bf16). x and y may not overlap. Only on CPUs with AVX2
// and FMA.
void LayerNormRowsBf16Avx2(const uint16_t* x, const uint16_t* w, const uint16_t* b, uint16_t* y, int64_t rows,
                           int64_t n, float eps);

}  // namespace internvl::norm
