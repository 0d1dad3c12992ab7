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

}  // namespace internvl::llm
