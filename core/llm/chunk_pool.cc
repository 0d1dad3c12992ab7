#include "core/llm/chunk_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace internvl::llm {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

thread_local bool t_is_helper = false;

class ChunkPool {
 public:
  // Leaked: helpers block forever once the program stops using them, and a
  // static destructor would have to join threads at exit.
  static ChunkPool& Get() {
    static ChunkPool* pool = new ChunkPool;
    return *pool;
  }

  void Run(int64_t chunks, int threads, absl::FunctionRef<void(int64_t)> fn) {
    std::unique_lock<std::mutex> job(run_mu_, std::try_to_lock);
    if (!job.owns_lock()) {
      for (int64_t i = 0; i < chunks; ++i) fn(i);
      return;
    }
    EnsureHelpers(threads - 1);
    allowed_.store(threads - 1, std::memory_order_relaxed);
    fn_.store(&fn, std::memory_order_relaxed);
    total_.store(chunks, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    generation_ = generation_ == 0xffffffffu ? 1 : generation_ + 1;  // 32 bits, never 0 (the initial one)
    const uint64_t gen = generation_;
    ticket_.store(gen << 32, std::memory_order_seq_cst);  // publishes fn_, total_, done_
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mu_);
      wake_.notify_all();
    }
    Claim(gen);
    // Only chunks a helper has claimed can be outstanding now.
    if (done_.load(std::memory_order_acquire) < chunks) {
      const auto waiting = std::chrono::steady_clock::now();
      while (done_.load(std::memory_order_acquire) < chunks) CpuRelax();
      wait_ns_.fetch_add(
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - waiting).count(),
          std::memory_order_relaxed);
    }
    calls_.fetch_add(1, std::memory_order_relaxed);
    fn_.store(nullptr, std::memory_order_relaxed);
  }

  ChunkWaits Waits() const {
    return {calls_.load(std::memory_order_relaxed), wait_ns_.load(std::memory_order_relaxed)};
  }

 private:
  ChunkPool() = default;

  // Claims and runs chunks of job `gen` until none is left.
  void Claim(uint64_t gen) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    for (;;) {
      if ((t >> 32) != gen) return;
      const int64_t index = static_cast<int64_t>(t & 0xffffffffu);
      if (index >= total_.load(std::memory_order_acquire)) return;
      if (ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        // The job cannot finish (nor fn_ change) before this chunk is done.
        (*fn_.load(std::memory_order_relaxed))(index);
        done_.fetch_add(1, std::memory_order_acq_rel);
        t = ticket_.load(std::memory_order_acquire);
      }
    }
  }

  void EnsureHelpers(int n) {
    while (static_cast<int>(helpers_.size()) < n) {
      const int index = static_cast<int>(helpers_.size());
      helpers_.emplace_back([this, index] { HelperLoop(index); });
      helpers_.back().detach();
    }
  }

  void HelperLoop(int index) {
    t_is_helper = true;
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = ticket_.load(std::memory_order_acquire) >> 32;
      if (gen == seen) {
        // Spin a little: the next product of a decode step is usually
        // < 200 us away; then sleep.
        const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
        int polls = 0;
        while ((gen = ticket_.load(std::memory_order_acquire) >> 32) == seen) {
          CpuRelax();
          if (++polls % 64 == 0 && std::chrono::steady_clock::now() > spin_until) break;
        }
        if (gen == seen) {
          std::unique_lock<std::mutex> lock(sleep_mu_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          wake_.wait(lock, [&] { return (ticket_.load(std::memory_order_seq_cst) >> 32) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
          continue;
        }
      }
      seen = gen;
      if (index < allowed_.load(std::memory_order_relaxed)) Claim(gen);
    }
  }

  std::mutex run_mu_;        // one job at a time
  uint64_t generation_ = 0;  // of the last job (guarded by run_mu_)
  // (job generation << 32) | next unclaimed chunk.
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int64_t> total_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> allowed_{0};  // helpers [0, allowed_) take part
  std::atomic<const absl::FunctionRef<void(int64_t)>*> fn_{nullptr};
  std::vector<std::thread> helpers_;
  std::mutex sleep_mu_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<int64_t> calls_{0};    // jobs run (ChunkPoolWaits)
  std::atomic<int64_t> wait_ns_{0};  // their callers' waits
};

}  // namespace

void ParallelChunks(int64_t chunks, int threads, absl::FunctionRef<void(int64_t)> fn) {
  if (threads <= 1 || chunks <= 1 || chunks >= (int64_t{1} << 31) || t_is_helper) {
    for (int64_t i = 0; i < chunks; ++i) fn(i);
    return;
  }
  ChunkPool::Get().Run(chunks, threads, fn);
}

ChunkWaits ChunkPoolWaits() { return ChunkPool::Get().Waits(); }

// Chunks of the first size per thread (the rest of the rows follow in
// quarter-size ones). Each chunk's rows start two new memory streams (see
// row_order.h), which take a while to reach full speed: alternated in one
// process on the 2-core Zen 4 (medians of 60 rounds of 24 matrices read
// from memory), 4 instead of 32 took int4 gate_up (9728 x 896) from 160 to
// 140 us, int4 down (896 x 4864) from 88 to 69 and int8 down from 158 to
// 142; bf16 matrices and the vocabulary head measured alike. (With 32, an
// int4 down chunk was 16 rows: 39 KB.)
constexpr int64_t kChunksPerThread = 4;

// Matrices of at most this many rows (a model's projections, not its MLP's
// wide gate/up nor its vocabulary head) go in one equal chunk per thread:
// there every chunk's new streams cost more than the balance the smaller
// chunks buy. Alternated in one process on the 2-core Zen 4 (medians of 40
// rounds, matrices read from memory), against the chunks above: int4 896 x
// 896 25.0 -> 16.0 us, 1152 x 896 28.9 -> 19.6, 896 x 4864 78.8 -> 61.7,
// int8 31.0 -> 22.3, 36.6 -> 27.9, 131 -> 118; 2048 x 2048 -9 to -12%,
// 4096 x 2048 -3%; but 9728 x 896 +4% (kept as above). bench_decode at 2500
// positions, old/new binaries alternated 3x (fast-memory regime): bf16
// 83-86% -> 89-90% of the bound, int8 15.0 -> 14.2-14.4 ms, int4 11.9 ->
// 11.2 ms per token.
// Counted in bf16 rows of the same bytes: on the 2-core Zen 5 VM, int4
// 9728 x 896 (5 MB, 2780 such rows) in one chunk per thread rather than 20
// made a whole decode step 4-5% faster (InternVL2-1B with 4-bit layers at
// 2500 positions, the two splits alternated step by step in one process,
// medians of 150 steps: 8.21 -> 7.83, 8.35 -> 8.02, 7.69 -> 7.35 ms), while
// bf16's 9728 x 896 (17 MB) measured alike in one chunk per thread.
constexpr int64_t kFewRows = 4096;

RowChunks SplitRows(int64_t rows, int64_t inputs, int threads, int64_t row_bytes) {
  threads = std::max(1, threads);
  auto blocks_of_4 = [](int64_t r) { return std::max<int64_t>(4, (r + 3) / 4 * 4); };
  const int64_t min_rows = (int64_t{1} << 16) / std::max<int64_t>(1, inputs);
  // The rows as bf16 rows of the same bytes (narrower formats count less).
  const int64_t bf16_row = 2 * std::max<int64_t>(1, inputs);
  const int64_t as_bf16 = row_bytes > 0 && row_bytes < bf16_row ? (rows * row_bytes + bf16_row - 1) / bf16_row : rows;
  if (as_bf16 <= kFewRows) {
    const int64_t chunk = blocks_of_4(std::max(min_rows, (rows + threads - 1) / threads));
    RowChunks c;
    for (int64_t r = 0; r < rows; r += chunk) c.begin.push_back(r);
    c.begin.push_back(rows);
    return c;
  }
  const int64_t per_pass = kChunksPerThread * threads;
  const int64_t chunk = blocks_of_4(std::max(min_rows, (rows + per_pass - 1) / per_pass));
  const int64_t small = blocks_of_4(chunk / 4);
  const int64_t tail_start = std::max<int64_t>(0, rows - 2 * threads * chunk);
  RowChunks c;
  int64_t r = 0;
  for (; r < tail_start; r += chunk) c.begin.push_back(r);
  for (; r < rows; r += small) c.begin.push_back(r);
  c.begin.push_back(rows);
  return c;
}

const RowChunks& SplitRowsCached(int64_t rows, int64_t inputs, int threads, int64_t row_bytes) {
  struct Entry {
    int64_t rows = -1, inputs = -1, row_bytes = -1;
    int threads = -1;
    RowChunks chunks;
  };
  constexpr int kEntries = 8;
  thread_local Entry entries[kEntries];
  thread_local int next = 0;
  for (const Entry& e : entries) {
    if (e.rows == rows && e.inputs == inputs && e.row_bytes == row_bytes && e.threads == threads) return e.chunks;
  }
  Entry& e = entries[next];
  next = (next + 1) % kEntries;
  e = {rows, inputs, row_bytes, threads, SplitRows(rows, inputs, threads, row_bytes)};
  return e.chunks;
}

}  // namespace internvl::llm
