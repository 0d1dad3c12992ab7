// How the preprocessing executes: how many threads one call uses and whether
// the CPU-specific (AVX2) kernels run. None of this changes a result: every
// setting gives the same bytes (the kernels are bit-exact with Pillow), which
// runtime_test.cc / resize_test.cc check.
//
// Process-wide, initialised on first use from the environment:
//   INTERNVL_PREPROCESS_THREADS  threads per call, caller included (default:
//                                min(hardware threads, kDefaultMaxPreprocessThreads));
//   INTERNVL_PREPROCESS_SIMD     "portable" forces the portable kernels.
// Services override them with SetPreprocessRuntime (from their option structs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace internvl::preprocess {

// One image's preprocessing has little parallelism beyond a few threads (the
// JPEG decode is serial); more threads help concurrent requests instead.
inline constexpr int kDefaultMaxPreprocessThreads = 4;

struct PreprocessRuntime {
  // Threads one call (DynamicPreprocess, ResizeBicubicPil, NormalizeTiles)
  // uses, the calling thread included; 1 runs everything on the caller.
  int threads = 1;
  // Use the AVX2 kernels when the CPU has AVX2 (checked at run time).
  bool allow_simd = true;
};

PreprocessRuntime GetPreprocessRuntime();
// Thread-safe; takes effect for calls that start afterwards.
void SetPreprocessRuntime(const PreprocessRuntime& runtime);

// The resize kernels calls take now: "avx2" or "portable".
const char* ResizeKernelName();
// True when the AVX2 kernels run (allowed and supported by this CPU).
bool UseAvx2Kernels();

// Runs fn(i) for every i in [0, n) on up to GetPreprocessRuntime().threads
// threads (the caller works too) and returns when all have finished. Work
// items are claimed dynamically, so uneven items balance. Safe to call from
// several threads at once (they share one pool); not reentrant from fn.
void ParallelFor(int n, const std::function<void(int)>& fn);

// Scratch memory for one call's intermediates (the resizes' horizontal
// passes: megabytes per image), taken from a small process-wide cache and
// given back on destruction. Fresh memory costs a page fault per 4 KiB page on
// first touch (the kernel zeroes it; on a VM each fault is tens of
// microseconds), which made a first request several times slower than the
// steady state; cached buffers are already faulted in. New buffers ask for
// transparent huge pages (512x fewer faults where THP is in madvise mode).
// Contents are uninitialised.
class ScratchBuffer {
 public:
  explicit ScratchBuffer(size_t bytes);
  ~ScratchBuffer();
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;

  uint8_t* data() const { return data_; }

 private:
  uint8_t* data_ = nullptr;
  size_t capacity_ = 0;
};

// Bytes of the scratch buffers kept for reuse (for tests and benchmarks).
size_t CachedScratchBytes();

// Megabyte buffers of the image path (Tiles::data, the vision batcher's
// normalised pixels) kept for reuse: fresh memory costs a page fault per 4 KiB
// page on first touch (~1500 for one 1920x1080 image's 10 uint8 tiles, ~5300
// for their float pixels). TakeImageBuffer gives a buffer of exactly `bytes`
// (contents unspecified), the smallest kept one that is large enough if any;
// callers done with one (e.g. once the tiles are encoded) may give it back
// with RecycleImageBuffer. At most 4 buffers of at most 64 MiB are kept.
std::vector<uint8_t> TakeImageBuffer(size_t bytes);
void RecycleImageBuffer(std::vector<uint8_t> buffer);

// Starts the worker threads and initialises the decoders (OpenCV's codec
// table, libjpeg), keeps one faulted-in tile buffer for 13 tiles of 448
// (max_num 12 + thumbnail), and leaves in the scratch cache what a 1920x1080
// image needs at the default options (its decoded pixels, both resizes'
// intermediates: ~14 MB), so that the first request does not pay for them.
// Optional: everything also initialises on first use.
void WarmUpPreprocess();

}  // namespace internvl::preprocess
