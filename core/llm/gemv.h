// Linear layers of the LLM decoders, with a hand-written matrix-vector path
// for batch-1 (and small-batch) decoding.
//
// Decoding one token reads every weight once, so its speed is set by memory
// bandwidth. libtorch 1.13 runs y = x W^T for one row through a generic GEMM
// (fp32) or a scalar fallback (bf16 on CPUs without AVX-512: ~4 GFLOP/s),
// far from that bound. FastLinear streams W instead (AVX2 + FMA kernels in
// gemv_avx2.cc, a portable fallback elsewhere), parallel over output rows on
// libtorch's intra-op threads, accumulating in fp32 whatever the storage
// dtype of W (fp32 or bf16) and of x.
//
// Linear is what the modules call: under grad mode it is exactly at::linear
// (the trainer's differentiable path; weights stored in another dtype than x
// are cast, differentiably), and with grad mode off it takes FastLinear for
// up to FastLinearMaxRows rows, else at::linear in fp32 when the weights are
// stored narrower than x or the CPU lacks native bf16 matmuls.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace internvl::llm {

// The matrix-vector kernel families, chosen at run time from the CPU's flags:
// AVX-512-BF16 dot products (bf16 weights x bf16 inputs; other dtype pairs
// fall back to avx2), AVX2/FMA (fp32 accumulation, bf16 widened), portable C++.
enum class GemvKernel { kPortable, kAvx2, kAvx512Bf16 };
const char* GemvKernelName(GemvKernel kernel);  // "portable", "avx2", "avx512bf16"
bool GemvKernelSupported(GemvKernel kernel);
// The best this CPU supports, or what INTERNVL_GEMV_KERNEL names (among the
// supported ones), or what ForceGemvKernel set.
GemvKernel ActiveGemvKernel();
// Forces a kernel process-wide (tests, benchmarks); nullopt restores the
// default. False (and nothing changes) when this CPU does not run it.
bool ForceGemvKernel(std::optional<GemvKernel> kernel);

// Rows up to which FastLinear can run (decode steps of up to 32 sequences,
// the engine's default --max-num-seqs; short prompts): FastLinearMaxRows
// says how many each kernel takes on this CPU, beyond which libtorch's
// cache-blocked GEMMs are faster.
inline constexpr int64_t kMaxFastLinearRows = 32;

// y = x W^T + b for x [..., in] with at most FastLinearMaxRows rows, W
// [out, in] contiguous, b [out] or undefined; x, W and b each fp32 or bf16.
// The result has x's dtype (rounded once from the fp32 accumulator) and shape
// [..., out]. Returns an undefined tensor when grad mode is on or the
// arguments do not fit (callers then use at::linear).
at::Tensor FastLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

// Whether FastLinear runs for `rows` rows of dtype x_dtype through w and b
// (b may be undefined): its conditions without a tensor of inputs.
bool FastLinearApplies(at::ScalarType x_dtype, int64_t rows, const at::Tensor& w, const at::Tensor& b);
// FastLinear on raw rows, where FastLinearApplies: x [rows, in] and y [rows,
// out], both of dtype x_dtype (fp32, or bf16 as uint16_t bits), contiguous.
// No libtorch op: the fused decode layer (modules.h) chains these.
void FastLinearRows(const void* x, at::ScalarType x_dtype, int64_t rows, const at::Tensor& w, const at::Tensor& b,
                    void* y);

// The modules' linear layer (see the file comment). b may be undefined.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});

// t.to(dtype) for the fp32 <-> bf16 casts of the decode step (the lm_head's
// logits), on this library's threads: libtorch's cast of a large tensor runs
// on its OpenMP threads, which then spin for milliseconds against the GEMV
// threads of the next layer. Same values as libtorch's (round to nearest
// even, NaN kept as NaN); other dtypes or layouts go to t.to(dtype).
at::Tensor CastFloatBf16(const at::Tensor& t, at::ScalarType dtype);

// Attention of one new token per sequence over a paged KV pool (decoding;
// paged_kv.h), as the reference's eager attention in fp32: softmax(q k^T /
// sqrt(d)) v with GQA (query head h uses kv head h / (H / KV)), no mask.
// q [S, H, d]; key/value pools [blocks, KV, block_size, d]; row s attends over
// positions [0, lens[s]) held in blocks (*tables[s])[p / block_size].
// Returns [S, H * d], or undefined when grad mode is on, FastLinear is
// disabled, or the arguments do not fit (other dtypes, non-CPU): callers then
// use the general path. Pools and q may be fp32 or bf16 (bf16 is widened as
// read; scores, softmax and sums in fp32); the result has q's dtype.
at::Tensor PagedDecodeAttention(const at::Tensor& q, const at::Tensor& key_pool, const at::Tensor& value_pool,
                                const std::vector<const std::vector<int32_t>*>& tables,
                                const std::vector<int64_t>& lens);
// Whether PagedDecodeAttention runs for q of dtype q_dtype [seqs, heads, dim]
// (its conditions without a tensor of queries).
bool PagedDecodeAttentionApplies(at::ScalarType q_dtype, int64_t seqs, int64_t heads, int64_t dim,
                                 const at::Tensor& key_pool, const at::Tensor& value_pool,
                                 const std::vector<const std::vector<int32_t>*>& tables,
                                 const std::vector<int64_t>& lens);
// PagedDecodeAttention on raw rows, where it applies: q [seqs, heads, dim] and
// out [seqs, heads * dim], both of q_dtype and contiguous. No libtorch op.
void PagedDecodeAttentionRows(const void* q, at::ScalarType q_dtype, int64_t seqs, int64_t heads, int64_t dim,
                              const at::Tensor& key_pool, const at::Tensor& value_pool,
                              const std::vector<const std::vector<int32_t>*>& tables, const std::vector<int64_t>& lens,
                              void* out);

// Turns FastLinear (and PagedDecodeAttention) off (it then returns undefined) or back on, process-wide:
// for benchmarks that compare against libtorch. On by default.
void SetFastLinearEnabled(bool enabled);
bool FastLinearEnabled();

// Rows up to which FastLinear runs for these input and weight dtypes on this
// CPU (at most kMaxFastLinearRows, fewer where libtorch's GEMM is faster:
// bench_gemv --only=crossover).
int64_t FastLinearMaxRows(at::ScalarType x, at::ScalarType w);

// GemvKernelName(ActiveGemvKernel()): which kernel FastLinear runs.
const char* FastLinearKernel();

// Moves the storage of each tensor into memory advised for transparent huge
// pages (madvise MADV_HUGEPAGE; the tensors, and every view sharing their
// storage, keep their identity and values): each storage of at least 2 MiB
// on its own, the smaller ones packed in the order given into one block
// (freed with the last of them) where they add up to 2 MiB or more.
// Streaming weights through 2 MiB pages instead of 4 KiB ones spares TLB
// misses and lets the prefetchers run across what were page boundaries:
// measured +10-13% GB/s for the bf16 matrix-vector products; the packed
// small ones (a layer's attention projections, the quantized matrices'
// scales), alternated with heap copies in one process on the Zen 4 VM (THP
// "always"): 4-9% less time per product, e.g. bf16 1152 x 896 64.8 -> 60.2
// us, int4 22.5 -> 20.9. Does nothing where THP is disabled; returns the
// bytes moved.
int64_t MoveToHugePages(const std::vector<at::Tensor>& tensors);

// An uninitialised CPU tensor in memory advised for transparent huge pages
// (at::empty where THP is disabled or below 2 MiB). For the paged KV cache: a
// decode step reads every cached position, ~4 KiB blocks scattered over the
// pool, and with 4 KiB pages each block costs a TLB miss (a nested page walk
// in a VM); a plain 62 MB read here ran 1.5x faster from 2 MiB pages.
at::Tensor EmptyOnHugePages(at::IntArrayRef shape, at::ScalarType dtype);

// The values of a contiguous CPU tensor as fp32: its own data when fp32, else
// widened into `buffer` (bf16 exactly, in AVX2 vectors where `avx2`, only when
// the CPU has them; other dtypes through libtorch's cast). For the decode
// path's per-thread buffers: a fresh fp32 tensor per call cost ~1-2 us there.
const float* FloatValues(const at::Tensor& t, std::vector<float>& buffer, bool avx2);
// The same for n raw values of dtype fp32 or bf16.
const float* FloatValues(const void* data, at::ScalarType dtype, int64_t n, std::vector<float>& buffer, bool avx2);

}  // namespace internvl::llm
