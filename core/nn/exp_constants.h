// The constants of the SIMD e^x kernels for softmax (x <= 0), shared by the
// AVX2 (exp_avx2.h) and AVX-512 (exp_avx512.h) versions so that both
// compute the same bits: Cephes' expf (as avx_mathfun), within 2 ulp of expf.
#pragma once

namespace internvl::simd::exp_constants {

// Below this, expf is subnormal or 0: the kernels return exactly 0 (so masked
// -inf scores weigh nothing).
inline constexpr float kLowest = -87.3f;
inline constexpr float kLog2e = 1.44269504088896341f;
// ln 2 split in two for the range reduction x - n ln 2.
inline constexpr float kLn2High = 0.693359375f;
inline constexpr float kLn2Low = -2.12194440e-4f;
// The polynomial's coefficients, highest degree first (Horner's order).
inline constexpr float kPolynomial[6] = {1.9875691500E-4f, 1.3981999507E-3f, 8.3334519073E-3f,
                                         4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f};

}  // namespace internvl::simd::exp_constants
