// Helper threads for the decode path's matrix-vector products (gemv.h).
//
// Why not at::parallel_for: libtorch 1.13 here runs it on OpenMP (GOMP),
// which splits the range statically, one piece per thread, and ends with a
// barrier. On a shared 2-core machine a third runnable process regularly
// deschedules one of the two threads, and every one of the ~100 products of a
// decode step then waits a scheduler time slice for it: measured 800 ms per
// token instead of 50. Here the calling thread never waits for a helper that
// has not started: chunks are claimed one at a time from a shared counter,
// the caller claims too, and it waits only for chunks a helper has already
// claimed (and is running). A helper that was not scheduled in time simply
// gets no chunks.
//
// Helpers spin briefly after each job (products of one decode step come every
// 0.1-1 ms), then sleep on a condition variable.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"

namespace internvl::llm {

// Runs fn(i) for every i in [0, chunks) on the calling thread and up to
// threads - 1 helper threads (created on first use, then reused), returning
// when all calls have returned. Runs everything on the calling thread when
// threads <= 1, chunks <= 1, from a helper thread, or while another
// ParallelChunks is in flight (one job at a time).
void ParallelChunks(int64_t chunks, int threads, absl::FunctionRef<void(int64_t)> fn);

// Process-wide totals since start of the ParallelChunks calls handed to
// helpers, and of the time their callers then waited, after running every
// chunk they could claim, for chunks a helper was still running: the cost
// of a split's imbalance, or of a helper that started late or ran slower
// (on the shared 2-core VM it moved from run to run, 3.7-22.7 us per call).
// bench_decode reports it per token.
struct ChunkWaits {
  int64_t calls = 0;
  int64_t wait_ns = 0;
};
ChunkWaits ChunkPoolWaits();

// The output rows of a matrix-vector product split into chunks for
// ParallelChunks: chunk i is rows [begin[i], begin[i + 1]). Whole 4-row
// blocks of at least ~64K weights (claiming one costs ~0.1 us, 64K bf16
// weights take ~5 us to stream). Up to 4096 rows, one equal chunk per thread
// (every chunk starts new memory streams, see row_order.h); beyond, at most
// ~4 per thread and the last 2 x threads chunks' rows in quarter-size
// chunks, so that the threads finish together (the caller waits, on
// average, half of the last chunk a helper claimed: ~15 us per product at
// full size, 1.5 ms per decoded token). The 4096 rows are bf16 rows:
// narrower ones (row_bytes, the bytes each row streams with its scales,
// under 2 x inputs) count as the bf16 rows of their bytes; 0 = bf16 or
// wider.
struct RowChunks {
  std::vector<int64_t> begin;  // chunks + 1 entries, the last = rows
  int64_t count() const { return static_cast<int64_t>(begin.size()) - 1; }
};
RowChunks SplitRows(int64_t rows, int64_t inputs, int threads, int64_t row_bytes = 0);

// SplitRows remembered on the calling thread (its 8 newest distinct splits: a
// reference stays valid until 8 splits not remembered are made on this thread):
// a decode step asks for the same few ~100 times, and a fresh vector each time
// cost ~1.3 us between two products (cold allocator).
const RowChunks& SplitRowsCached(int64_t rows, int64_t inputs, int threads, int64_t row_bytes = 0);

}  // namespace internvl::llm
