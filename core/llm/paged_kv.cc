#include "core/llm/paged_kv.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "core/llm/gemv.h"
#include "core/nn/device.h"
#include "core/nn/torch_util.h"
#include "core/status.h"

namespace internvl::llm {

int64_t PagedKVPool::BytesPerBlock(const LlmConfig& config, int block_size, at::ScalarType dtype) {
  return 2 * int64_t{config.num_hidden_layers} * config.num_key_value_heads * block_size * config.head_dim() *
         static_cast<int64_t>(c10::elementSize(dtype));
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
    // On the CPU, in 2 MiB pages (EmptyOnHugePages: a decode step reads
    // blocks scattered over the pool): measured 5-7% less time in the decode
    // attention (bench_gemv --only=attention).
    auto layer = [&] {
      at::Tensor t = device.is_cpu() ? EmptyOnHugePages(shape, dtype) : at::empty(shape, opts);
      return zero ? t.zero_() : t;
    };
    for (int l = 0; l < config.num_hidden_layers; ++l) {
      pool->keys_.push_back(layer());
      pool->values_.push_back(layer());
    }
  });
  if (!s.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("could not allocate the KV pool (",
                                                     BytesPerBlock(config, block_size, dtype) * num_blocks,
                                                     " bytes): ", s.message()));
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
