// The order in which the decode kernels visit output rows (no libtorch, no
// intrinsics: included by kernel files compiled with their own flags).
//
// Inputs that fit one group of the kernel (the weights stream from memory
// once): one row from each half of [row_begin, row_end) at a time, i.e. two
// sequential streams far apart. Measured on the 2-core Zen 5 VM, streaming
// from memory on 2 threads: 64-78 GB/s (bf16) and 57 GB/s (int8), against
// 35-51 and 40 for 4 adjacent rows with software prefetch (4 interleaved
// streams one row apart) and 22 for 2 x 2 adjacent rows.
// More inputs re-read each row from L1 for every group of inputs, so the
// products dominate: 4 adjacent rows at a time keep the most in flight.
#pragma once

#include <cstdint>

namespace internvl::llm {

// Calls visit(rows, n) with n = 1, 2 or 4 row indexes for every row of
// [row_begin, row_end), each exactly once; n = 2 (far apart) and 1 when
// `streaming`, else 4 (adjacent) and 1.
template <typename Visit>
inline void VisitRows(int64_t row_begin, int64_t row_end, bool streaming, Visit visit) {
  if (!streaming) {
    int64_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) {
      const int64_t rows[4] = {r, r + 1, r + 2, r + 3};
      visit(rows, 4);
    }
    for (; r < row_end; ++r) visit(&r, 1);
    return;
  }
  const int64_t half = (row_end - row_begin) / 2;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t rows[2] = {row_begin + i, row_begin + half + i};
    visit(rows, 2);
  }
  if ((row_end - row_begin) % 2 != 0) {
    const int64_t last = row_end - 1;
    visit(&last, 1);
  }
}

// The streaming kernels (pairs of rows far apart, each of the two walking
// its rows in memory order) prefetch into L1 as they go:
// at the 64-byte step kb of a row's weight_bytes of weights, the same line
// kPrefetchRows rows further in its stream, and with the row's last step
// the lines past its weights (4-bit rows: the next row's scales and zero
// terms, quant.h's layout). The hardware's prefetchers alone left the loads
// waiting on memory at times: InternVL2-1B with 4-bit layers, a decode step
// at 2500 positions (alternated in one process, 2-core Zen 4 VM) 13.8 ->
// 12.0 ms while its memory was slow, alike (9.0, int8 11.3) while fast;
// 2, 4 and 8 KB ahead measured alike. bf16 rows (AVX-512-BF16): 30.3 ->
// 30.2 and 34.4 -> 33.9 ms; the AVX2 bf16 kernel gained nothing (27.5 ->
// 27.3, within its noise) and does without.
inline constexpr int64_t kPrefetchRows = 4;
inline void PrefetchAhead(const void* row, int64_t kb, int64_t weight_bytes, int64_t stride) {
  const char* next = static_cast<const char*>(row) + kPrefetchRows * stride;
  __builtin_prefetch(next + kb, 0, 3);
  if (kb + 64 >= weight_bytes) {
    for (int64_t t = weight_bytes; t < stride; t += 64) __builtin_prefetch(next + t, 0, 3);
  }
}

}  // namespace internvl::llm
