#include "core/preprocess/runtime.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#ifndef INTERNVL_NO_MEDIA
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#endif

#include "core/preprocess/image.h"
#include "core/preprocess/tiling.h"

namespace internvl::preprocess {
namespace {

PreprocessRuntime FromEnvironment() {
  PreprocessRuntime r;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  r.threads = static_cast<int>(std::min<unsigned>(hw, kDefaultMaxPreprocessThreads));
  if (const char* t = std::getenv("INTERNVL_PREPROCESS_THREADS"); t != nullptr && std::atoi(t) > 0)
    r.threads = std::atoi(t);
  if (const char* s = std::getenv("INTERNVL_PREPROCESS_SIMD"); s != nullptr && std::strcmp(s, "portable") == 0)
    r.allow_simd = false;
  return r;
}

std::mutex& RuntimeMutex() {
  static std::mutex mu;
  return mu;
}
PreprocessRuntime& RuntimeLocked() {
  static PreprocessRuntime runtime = FromEnvironment();
  return runtime;
}

bool CpuHasAvx2() {
#if defined(INTERNVL_PREPROCESS_HAVE_AVX2)
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

// One ParallelFor call. Shared with the workers that help, so it outlives the
// caller's frame if a worker still holds it after the last item finished.
struct Job {
  const std::function<void(int)>* fn = nullptr;
  int n = 0;
  int max_helpers = 0;
  std::atomic<int> next{0};
  std::mutex mu;
  std::condition_variable done_cv;
  int done = 0;

  // Claims and runs items until none is left.
  void Work() {
    int finished = 0;
    for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      (*fn)(i);
      ++finished;
    }
    if (finished == 0) return;
    std::lock_guard<std::mutex> lock(mu);
    done += finished;
    if (done == n) done_cv.notify_all();
  }
};

// Workers started on demand (never more than the largest threads - 1 asked
// for) and kept for the process' lifetime: creating threads per call would
// put their start-up on every request.
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // never destroyed: workers run until exit
    return *pool;
  }

  void EnsureWorkers(int count) {
    std::lock_guard<std::mutex> lock(mu_);
    while (static_cast<int>(workers_.size()) < count) {
      workers_.emplace_back([this] { Loop(); });
      workers_.back().detach();
    }
  }

  void Submit(const std::shared_ptr<Job>& job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int i = 0; i < job->max_helpers; ++i) queue_.push_back(job);
    }
    if (job->max_helpers == 1)
      cv_.notify_one();
    else
      cv_.notify_all();
  }

 private:
  void Loop() {
    while (true) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->Work();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::thread> workers_;
};

// Buffers of finished calls, kept for the next ones. A few suffice: a call
// holds two (grid and thumbnail intermediates) and calls in flight are about
// as many as threads.
constexpr size_t kMaxCachedScratch = 2 * kDefaultMaxPreprocessThreads;
// Buffers are whole huge pages so that THP can back them.
constexpr size_t kHugePageBytes = size_t{2} << 20;

std::mutex& ScratchMutex() {
  static std::mutex mu;
  return mu;
}
std::vector<std::pair<uint8_t*, size_t>>& ScratchCache() {
  static auto* cache = new std::vector<std::pair<uint8_t*, size_t>>();
  return *cache;
}

}  // namespace

ScratchBuffer::ScratchBuffer(size_t bytes) {
  if (bytes == 0) return;
  {
    // The smallest cached buffer that fits.
    std::lock_guard<std::mutex> lock(ScratchMutex());
    auto& cache = ScratchCache();
    auto best = cache.end();
    for (auto it = cache.begin(); it != cache.end(); ++it)
      if (it->second >= bytes && (best == cache.end() || it->second < best->second)) best = it;
    if (best != cache.end()) {
      std::tie(data_, capacity_) = *best;
      cache.erase(best);
      return;
    }
  }
  capacity_ = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  void* p = mmap(nullptr, capacity_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  madvise(p, capacity_, MADV_HUGEPAGE);  // advice only: failure is harmless
  data_ = static_cast<uint8_t*>(p);
}

size_t CachedScratchBytes() {
  std::lock_guard<std::mutex> lock(ScratchMutex());
  size_t bytes = 0;
  for (const auto& [data, capacity] : ScratchCache()) bytes += capacity;
  return bytes;
}

ScratchBuffer::~ScratchBuffer() {
  if (data_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(ScratchMutex());
    auto& cache = ScratchCache();
    if (cache.size() < kMaxCachedScratch) {
      cache.emplace_back(data_, capacity_);
      return;
    }
  }
  munmap(data_, capacity_);
}

namespace {
constexpr size_t kMaxKeptImageBuffers = 4;
constexpr size_t kMaxKeptImageBytes = size_t{64} << 20;
std::mutex& ImageBufferMutex() {
  static std::mutex mu;
  return mu;
}
std::vector<std::vector<uint8_t>>& ImageBuffers() {
  static auto* kept = new std::vector<std::vector<uint8_t>>();
  return *kept;
}
}  // namespace

std::vector<uint8_t> TakeImageBuffer(size_t bytes) {
  std::vector<uint8_t> buffer;
  {
    std::lock_guard<std::mutex> lock(ImageBufferMutex());
    auto& kept = ImageBuffers();
    // The smallest kept buffer that holds `bytes`.
    auto best = kept.end();
    for (auto it = kept.begin(); it != kept.end(); ++it)
      if (it->capacity() >= bytes && (best == kept.end() || it->capacity() < best->capacity())) best = it;
    if (best != kept.end()) {
      buffer = std::move(*best);
      kept.erase(best);
    }
  }
  // Within the capacity: no allocation, only (re)zeroed bytes past the old
  // size on pages already faulted in.
  buffer.resize(bytes);
  return buffer;
}

void RecycleImageBuffer(std::vector<uint8_t> buffer) {
  if (buffer.capacity() == 0 || buffer.capacity() > kMaxKeptImageBytes) return;
  std::lock_guard<std::mutex> lock(ImageBufferMutex());
  auto& kept = ImageBuffers();
  if (kept.size() < kMaxKeptImageBuffers) {
    kept.push_back(std::move(buffer));
    return;
  }
  // Full: keep the larger ones (they serve any smaller request).
  auto smallest = std::min_element(kept.begin(), kept.end(),
                                   [](const auto& a, const auto& b) { return a.capacity() < b.capacity(); });
  if (smallest->capacity() < buffer.capacity()) *smallest = std::move(buffer);
}

PreprocessRuntime GetPreprocessRuntime() {
  std::lock_guard<std::mutex> lock(RuntimeMutex());
  return RuntimeLocked();
}

void SetPreprocessRuntime(const PreprocessRuntime& runtime) {
  std::lock_guard<std::mutex> lock(RuntimeMutex());
  RuntimeLocked() = runtime;
  RuntimeLocked().threads = std::max(1, runtime.threads);
}

bool UseAvx2Kernels() { return GetPreprocessRuntime().allow_simd && CpuHasAvx2(); }

const char* ResizeKernelName() { return UseAvx2Kernels() ? "avx2" : "portable"; }

void ParallelFor(int n, const std::function<void(int)>& fn) {
  const int helpers = std::min(GetPreprocessRuntime().threads, n) - 1;
  if (helpers <= 0) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  Pool& pool = Pool::Get();
  pool.EnsureWorkers(helpers);
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  job->max_helpers = helpers;
  pool.Submit(job);
  job->Work();
  std::unique_lock<std::mutex> lock(job->mu);
  job->done_cv.wait(lock, [&] { return job->done == job->n; });
}

namespace {

// An image of `width` x `height` (one colour) as the decoder receives it: a
// JPEG, or a PPM where there is no media library.
std::string WarmUpImage(int width, int height) {
#ifdef INTERNVL_NO_MEDIA
  std::string ppm = "P6\n" + std::to_string(width) + " " + std::to_string(height) + "\n255\n";
  const size_t header = ppm.size();
  ppm.resize(header + size_t{3} * width * height);
  for (size_t i = header; i < ppm.size(); i += 3) ppm.replace(i, 3, "\xE0\x80\x20");
  return ppm;
#else
  const cv::Mat bgr(height, width, CV_8UC3, cv::Scalar(32, 128, 224));
  std::vector<uchar> jpeg;
  if (!cv::imencode(".jpg", bgr, jpeg)) return std::string();
  return std::string(jpeg.begin(), jpeg.end());
#endif
}

}  // namespace

void WarmUpPreprocess() {
  Pool::Get().EnsureWorkers(GetPreprocessRuntime().threads - 1);
  // A small image through the whole pipeline: OpenCV's codec table, libjpeg,
  // the kernels' code pages (a PPM without media: no codecs to warm).
  constexpr int kSide = 64;
  TilingOptions small;
  small.image_size = kSide / 2;  // a 2x2 grid and a thumbnail: both passes
  auto tiles = LoadImageTiles(WarmUpImage(kSide, kSide), small);
  if (!tiles.ok()) return;
  std::vector<float> pixels(static_cast<size_t>(tiles->count) * kRgbChannels * tiles->size * tiles->size);
  NormalizeTiles(*tiles, pixels.data());
  // A tile buffer for the default max_num (12 + thumbnail at 448), faulted
  // in (zero-filled) now and kept.
  constexpr size_t kWarmTiles = 13, kWarmSide = 448;
  RecycleImageBuffer(std::vector<uint8_t>(kWarmTiles * kWarmSide * kWarmSide * kRgbChannels));
  // A 1920x1080 image at the default options (a 4x2 grid and a thumbnail),
  // its tiles in that buffer: the scratch cache then holds, faulted in, the
  // decoded pixels and both resizes' intermediates of a full-HD image (~14
  // MB; smaller images reuse them). Without it the first such request mapped
  // them fresh: 2 MiB pages zeroed (and compacted) on first touch, 3-4 ms
  // more than the next request (bench_preprocess, first call after the
  // warm-up).
  auto full_hd = LoadImageTiles(WarmUpImage(1920, 1080), TilingOptions());
  if (full_hd.ok()) RecycleImageBuffer(std::move(full_hd->data));
}

}  // namespace internvl::preprocess
