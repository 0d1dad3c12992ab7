// Seeded, reproducible random tensor contents for make-model, fast enough to
// write billions of parameters in seconds: a counter-based generator (each
// element's value depends only on (seed, tensor name, element index), so any
// chunking or thread split gives the same bytes) and an inverse-CDF table
// of the normal distribution at 16-bit resolution (bf16 keeps 8 bits of
// mantissa, so the table is finer than the stored precision).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "core/safetensors.h"

namespace internvl::modelgen {

class RandomFill {
 public:
  explicit RandomFill(uint64_t seed);

  // Per-tensor stream key: seed mixed with a hash of the tensor's name.
  uint64_t StreamKey(const std::string& name) const;

  // Writes elements [first, first + count) of a N(0, stddev) tensor in
  // `dtype` (kBF16 or kF32) to `out`, using up to `threads` threads.
  absl::Status Normal(uint64_t key, double stddev, DType dtype, int64_t first, int64_t count, uint8_t* out,
                      int threads) const;
  // Writes `count` copies of `value` in `dtype` (kBF16 or kF32).
  static absl::Status Constant(float value, DType dtype, int64_t count, uint8_t* out);

 private:
  uint64_t seed_;
};

}  // namespace internvl::modelgen
