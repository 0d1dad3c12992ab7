// Activation kernels behind SwiGlu (activation.h); no torch headers.
#pragma once

#include <cstdint>

namespace internvl::act {

// out[r][i] = bf16(bf16(silu(gate[r][i])) * up[r][i]) over `rows` rows of
// `n` bf16 values (raw bits), rows `stride` apart in gate and up and
// contiguous in out: silu(x) = x / (1 + e^-x) computed in fp32 and rounded
// once to bf16, then the product rounded (as Torch 2.x rounds; libtorch
// 1.13's bf16 silu rounds each of its steps). Only on CPUs with AVX2 and FMA.
void SwiGluRowsBf16Avx2(const uint16_t* gate, const uint16_t* up, int64_t stride, uint16_t* out, int64_t rows,
                        int64_t n);

// The same in 16 lanes, the same bits, on CPUs with AVX-512F/BW/VL
// (CpuHasAvx512(), device.h).
void SwiGluRowsBf16Avx512(const uint16_t* gate, const uint16_t* up, int64_t stride, uint16_t* out, int64_t rows,
                          int64_t n);

}  // namespace internvl::act
