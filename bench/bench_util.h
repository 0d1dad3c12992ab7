// Shared helpers for benchmarks: timing, peak RSS, and same-run reference
// measurements (matmul peak, memory bandwidth) so that figures are reported
// as ratios on these shared, noisy machines.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

namespace internvl::bench {

inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best (minimum) wall time of `reps` runs after one warm-up: the least noisy
// estimate on a shared machine.
inline double BestOf(int reps, const std::function<void()>& fn) {
  fn();
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    double t0 = NowSeconds();
    fn();
    best = std::min(best, NowSeconds() - t0);
  }
  return best;
}

inline double PeakRssMiB() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// Minor page faults of this process so far: on a VM each costs
// microseconds (first touch of fresh memory, zeroed by the kernel), which
// wall time on a shared machine hides in noise but this count does not.
inline long MinorFaults() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

// Read bandwidth in GB/s: sums a buffer far larger than the caches.
inline double MeasureReadBandwidthGBs(size_t bytes = size_t{1} << 30) {
  std::vector<uint64_t> buf(bytes / 8, 1);
  volatile uint64_t sink = 0;
  double t = BestOf(3, [&] {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 3 < buf.size(); i += 4) {
      s0 += buf[i];
      s1 += buf[i + 1];
      s2 += buf[i + 2];
      s3 += buf[i + 3];
    }
    sink = s0 + s1 + s2 + s3;
  });
  (void)sink;
  return bytes / t / 1e9;
}

}  // namespace internvl::bench
