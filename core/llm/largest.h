// The k largest of a row of values: the vocabulary head's candidates
// (RescoredLinear, quant.h) and the sampler's top-k.
#pragma once

#include <cstdint>

namespace internvl::llm {

// Indices of the k largest of values[0, n) (fp32, or bf16 bits as uint16_t
// where bf16), in no particular order; ties broken towards lower indices, NaN
// never chosen over a number. k <= n.
void LargestIndices(const void* values, bool bf16, int64_t n, int64_t k, int64_t* out);

}  // namespace internvl::llm
