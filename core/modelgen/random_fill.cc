#include "core/modelgen/random_fill.h"

#include <array>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace internvl::modelgen {
namespace {

constexpr int kTableBits = 16;
constexpr int kTableSize = 1 << kTableBits;
constexpr int kSamplesPerWord = 64 / kTableBits;
// Below this many elements a chunk is filled on the calling thread.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 18;

// SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mix
// whose outputs over a counter pass BigCrush.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Standard normal quantiles at the midpoints of 2^16 equal-probability bins:
// Phi^-1((i + 0.5) / 2^16), found by bisection on erfc (done once, ~50 ms).
const std::array<float, kTableSize>& NormalQuantiles() {
  static const auto* table = [] {
    auto* t = new std::array<float, kTableSize>();
    for (int i = 0; i < kTableSize; ++i) {
      const double p = (i + 0.5) / kTableSize;
      double lo = -10, hi = 10;
      for (int it = 0; it < 60; ++it) {
        const double mid = 0.5 * (lo + hi);
        (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
      }
      (*t)[i] = static_cast<float>(0.5 * (lo + hi));
    }
    return t;
  }();
  return *table;
}

template <typename T>
void FillRange(const T* table, uint64_t key, int64_t first, int64_t count, T* out) {
  int64_t i = first;
  const int64_t end = first + count;
  while (i < end) {
    const uint64_t word = Mix(key ^ Mix(static_cast<uint64_t>(i / kSamplesPerWord)));
    for (int lane = static_cast<int>(i % kSamplesPerWord); lane < kSamplesPerWord && i < end; ++lane, ++i) {
      out[i - first] = table[(word >> (lane * kTableBits)) & (kTableSize - 1)];
    }
  }
}

template <typename T>
void FillParallel(const T* table, uint64_t key, int64_t first, int64_t count, T* out, int threads) {
  const int64_t max_threads = std::max<int64_t>(1, count / kMinElementsPerThread);
  const int n = static_cast<int>(std::min<int64_t>(std::max(threads, 1), max_threads));
  if (n == 1) {
    FillRange(table, key, first, count, out);
    return;
  }
  std::vector<std::thread> workers;
  const int64_t per = (count + n - 1) / n;
  for (int t = 0; t < n; ++t) {
    const int64_t begin = t * per;
    const int64_t len = std::min(per, count - begin);
    if (len <= 0) break;
    workers.emplace_back([=] { FillRange(table, key, first + begin, len, out + begin); });
  }
  for (std::thread& w : workers) w.join();
}

}  // namespace

RandomFill::RandomFill(uint64_t seed) : seed_(Mix(seed)) {}

uint64_t RandomFill::StreamKey(const std::string& name) const {
  // FNV-1a over the name, then mixed with the seed.
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return Mix(seed_ ^ Mix(h));
}

absl::Status RandomFill::Normal(uint64_t key, double stddev, DType dtype, int64_t first, int64_t count,
                                uint8_t* out, int threads) const {
  const auto& q = NormalQuantiles();
  if (dtype == DType::kBF16) {
    std::vector<uint16_t> table(kTableSize);
    for (int i = 0; i < kTableSize; ++i) table[i] = FloatToBf16(static_cast<float>(q[i] * stddev));
    // uint16_t output written through a byte pointer: the buffer comes from a
    // std::vector<uint8_t>, whose allocation is suitably aligned.
    FillParallel(table.data(), key, first, count, reinterpret_cast<uint16_t*>(out), threads);
    return absl::OkStatus();
  }
  if (dtype == DType::kF32) {
    std::vector<float> table(kTableSize);
    for (int i = 0; i < kTableSize; ++i) table[i] = static_cast<float>(q[i] * stddev);
    FillParallel(table.data(), key, first, count, reinterpret_cast<float*>(out), threads);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("random weights in ", DTypeName(dtype), " are not supported"));
}

absl::Status RandomFill::Constant(float value, DType dtype, int64_t count, uint8_t* out) {
  if (dtype == DType::kBF16) {
    const uint16_t v = FloatToBf16(value);
    for (int64_t i = 0; i < count; ++i) std::memcpy(out + 2 * i, &v, 2);
    return absl::OkStatus();
  }
  if (dtype == DType::kF32) {
    for (int64_t i = 0; i < count; ++i) std::memcpy(out + 4 * i, &value, 4);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("weights in ", DTypeName(dtype), " are not supported"));
}

}  // namespace internvl::modelgen
