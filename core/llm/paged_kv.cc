#include "core/llm/paged_kv.h"

#include <ATen/ATen.h>

#include <limits>

#include "absl/strings/str_cat.h"
#include "core/llm/gemv.h"
#include "core/nn/device.h"
#include "core/nn/torch_util.h"
#include "core/status.h"

namespace internvl::llm {

at::Tensor KVHeadMajor(const at::Tensor& storage) { return storage.permute({1, 0, 2, 3}); }

int64_t PagedKVPool::BytesPerBlock(const LlmConfig& config, int block_size, at::ScalarType dtype) {
  int64_t bytes = 2 * static_cast<int64_t>(c10::elementSize(dtype));
  for (int64_t factor : {int64_t{config.num_hidden_layers}, int64_t{config.num_key_value_heads}, int64_t{block_size},
                         int64_t{config.head_dim()}}) {
    if (__builtin_mul_overflow(bytes, factor, &bytes)) return std::numeric_limits<int64_t>::max();
  }
  return bytes;
}

absl::StatusOr<std::unique_ptr<PagedKVPool>> PagedKVPool::Create(const LlmConfig& config, int64_t num_blocks,
                                                                 int block_size, at::ScalarType dtype,
                                                                 c10::Device device) {
  if (num_blocks <= 0 || block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV pool needs positive sizes (", num_blocks, " blocks of ", block_size, ")"));
  }
  if (config.num_hidden_layers <= 0 || config.num_key_value_heads <= 0 || config.head_dim() <= 0) {
    return absl::InvalidArgumentError("KV pool: the LLM config has no layers or heads");
  }
  // (Refused before the one allocation of every layer, whose byte count
  // would otherwise wrap around.)
  const int64_t per_block = BytesPerBlock(config, block_size, dtype);
  if (num_blocks > std::numeric_limits<int64_t>::max() / per_block) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a KV pool of ", num_blocks, " blocks of ", per_block, " bytes is beyond any memory"));
  }
  std::unique_ptr<PagedKVPool> pool(new PagedKVPool());
  pool->num_blocks_ = num_blocks;
  pool->block_size_ = block_size;
  pool->dtype_ = dtype;
  absl::Status s = TorchGuard("allocating the KV pool", [&] {
    const auto opts = at::TensorOptions().dtype(dtype).device(device);
    const std::vector<int64_t> shape = {num_blocks, config.num_key_value_heads, block_size, config.head_dim()};
    // Zeroed where decoding reads whole blocks (paged_attention.cc's batched
    // path: a masked position's probability is 0, and 0 * NaN garbage would
    // be NaN); the CPU kernel reads only written positions.
    const bool zero = !UseCpuKernels(device);
    // On the CPU each head's blocks one after another (KV-head-major
    // storage, viewed in the pool's shape): a decode chunk reads one head's
    // blocks of a sequence, a single stream where the sequence's blocks are
    // consecutive. Block-major storage interleaved the heads' blocks, so that
    // each head read 2 KB of every 4 KB (InternVL2-1B, bf16), which the
    // hardware prefetcher follows poorly: one thread here read such a pattern
    // at 9.5 GB/s against 26 contiguous. Decode attention at 2500 positions
    // (24 layers, 2 threads, Zen 4, alternated in one process): bf16 AVX2 3.1
    // -> 2.6 ms, fp32 cache 5.2 -> 4.3. In 2 MiB pages (EmptyOnHugePages:
    // blocks are scattered over the pool): 5-7% less time in the decode
    // attention (bench_gemv --only=attention).
    // On the CPU, every layer's keys and values in one allocation
    // [layers, 2, kv_heads, num_blocks, ...], so that a pool of any size sits
    // in huge pages (EmptyOnHugePages takes 2 MiB and more): allocated per
    // layer, a small pool's layers (bench_decode's, InternVL2-1B at 2600
    // positions: 0.67 MB each) stayed in 4 KiB pages, and writing a decode
    // step's new keys and values into them took 4.8 us a layer against 0.9
    // (their pages' translations had been evicted by the attention's walk
    // over 31 MB of others). Whole 4-bit and int8 steps at 2500 positions,
    // the two pools' steps interleaved in one bench_decode: 2-3% faster.
    at::Tensor all;
    if (device.is_cpu()) {
      all = EmptyOnHugePages({config.num_hidden_layers, 2, shape[1], shape[0], shape[2], shape[3]}, dtype);
    }
    auto layer = [&](int l, int kv) {
      at::Tensor t = device.is_cpu() ? KVHeadMajor(all[l][kv]) : at::empty(shape, opts);
      return zero ? t.zero_() : t;
    };
    for (int l = 0; l < config.num_hidden_layers; ++l) {
      pool->keys_.push_back(layer(l, 0));
      pool->values_.push_back(layer(l, 1));
    }
  });
  if (!s.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("could not allocate the KV pool (", per_block * num_blocks, " bytes): ", s.message()));
  }
  return pool;
}

int64_t PagedKVPool::nbytes() const {
  int64_t n = 0;
  for (const auto& t : keys_) n += t.numel() * t.element_size();
  for (const auto& t : values_) n += t.numel() * t.element_size();
  return n;
}

}  // namespace internvl::llm
