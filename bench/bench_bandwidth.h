// Memory read bandwidth as a decode step sees it, for "decode at X% of the
// bandwidth bound" figures: the decode path's threads (llm::ParallelChunks,
// libtorch's thread count) read a buffer far larger than the caches in
// chunks, each chunk in 4 concurrent streams (a matrix-vector product streams
// 4 weight rows at once).
//
// On shared machines the bandwidth moves with the neighbours' load, so the
// benches probe it repeatedly, interleaved with (or just around) the steps
// they time, and set medians beside medians.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "core/llm/chunk_pool.h"

namespace internvl::bench {

class BandwidthProbe {
 public:
  explicit BandwidthProbe(size_t bytes = size_t{512} << 20) : buf_(bytes / sizeof(uint64_t), 1) {}

  // One pass over the buffer; GB/s.
  double Measure() {
    constexpr int64_t kChunks = 64;
    const int64_t n = static_cast<int64_t>(buf_.size());
    std::vector<uint64_t> sums(kChunks, 0);
    const auto t0 = std::chrono::steady_clock::now();
    llm::ParallelChunks(kChunks, at::get_num_threads(), [&](int64_t c) {
      const int64_t lo = n * c / kChunks, hi = n * (c + 1) / kChunks;
      const int64_t len = (hi - lo) / kStreams / 4 * 4;
      const uint64_t* base = buf_.data() + lo;
      uint64_t acc[kStreams][4] = {};
      for (int64_t i = 0; i < len; i += 4) {
#pragma GCC unroll 4
        for (int s = 0; s < kStreams; ++s) {
          const uint64_t* p = base + s * len + i;
          acc[s][0] += p[0];
          acc[s][1] += p[1];
          acc[s][2] += p[2];
          acc[s][3] += p[3];
        }
      }
      uint64_t total = 0;
      for (auto& a : acc) total += a[0] + a[1] + a[2] + a[3];
      sums[c] = total;
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    uint64_t total = 0;
    for (uint64_t s : sums) total += s;
    sink_ = total;
    return static_cast<double>(buf_.size() * sizeof(uint64_t)) / seconds / 1e9;
  }

  // Best of `passes` (after a warm-up pass).
  double Best(int passes) {
    Measure();
    double best = 0;
    for (int i = 0; i < passes; ++i) best = std::max(best, Measure());
    return best;
  }

 private:
  static constexpr int kStreams = 4;
  std::vector<uint64_t> buf_;
  volatile uint64_t sink_ = 0;
};

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace internvl::bench
