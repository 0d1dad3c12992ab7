// bf16 <-> fp32 on raw bits, for the kernels that write or read bf16 tensors
// themselves (no libtorch here). Rounding is to nearest even, NaN -> 0x7FC0:
// what libtorch's cast does, so a kernel that stores bf16 directly equals
// "fp32 result, then .to(kBFloat16)" bit for bit. static: each kernel file
// compiles its own copy with its own target flags.
#pragma once

#include <cstdint>

namespace internvl::llm {

static inline uint16_t FloatToBf16Bits(float v) {
  uint32_t bits;
  __builtin_memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((bits & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

static inline float Bf16BitsToFloat(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof(f));
  return f;
}

// A kernel's store of output i: into y (fp32), or rounded into y_bf16 when
// the problem P asks for a bf16 result (the gemv and quant problems both).
template <typename P>
static inline void StoreY(const P& p, int64_t i, float v) {
  if (p.y_bf16 == nullptr) {
    p.y[i] = v;
  } else {
    p.y_bf16[i] = FloatToBf16Bits(v);
  }
}

}  // namespace internvl::llm
