#include "core/llm/kv_cache.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "core/nn/torch_util.h"
#include "core/status.h"

namespace internvl::llm {

absl::StatusOr<std::unique_ptr<KVCache>> KVCache::Create(const LlmConfig& config, int64_t batch, int64_t max_len,
                                                         at::ScalarType dtype) {
  if (batch <= 0 || max_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache needs positive batch and length (got ", batch, ", ", max_len, ")"));
  }
  if (config.num_hidden_layers <= 0 || config.num_key_value_heads <= 0 || config.num_attention_heads <= 0) {
    return absl::InvalidArgumentError("KV cache: LLM config has no layers or heads");
  }
  std::unique_ptr<KVCache> cache(new KVCache());
  cache->batch_ = batch;
  cache->max_len_ = max_len;
  cache->dtype_ = dtype;
  INTERNVL_RETURN_IF_ERROR(TorchGuard("allocating KV cache", [&] {
    const auto opts = at::TensorOptions().dtype(dtype);
    const std::vector<int64_t> shape = {batch, config.num_key_value_heads, max_len, config.head_dim()};
    for (int l = 0; l < config.num_hidden_layers; ++l) {
      cache->keys_.push_back(at::empty(shape, opts));
      cache->values_.push_back(at::empty(shape, opts));
    }
    cache->slot_valid_ = at::zeros({batch, max_len}, at::TensorOptions().dtype(at::kBool));
  }));
  cache->real_tokens_.assign(batch, 0);
  return cache;
}

int64_t KVCache::nbytes() const {
  int64_t n = 0;
  for (const auto& t : keys_) n += t.numel() * t.element_size();
  for (const auto& t : values_) n += t.numel() * t.element_size();
  return n;
}

void KVCache::Reset() {
  length_ = 0;
  has_padding_ = false;
  real_tokens_.assign(batch_, 0);
}

void KVCache::Advance(int64_t t, const at::Tensor& mask) {
  at::Tensor slots = slot_valid_.narrow(1, length_, t);
  if (mask.defined()) {
    at::Tensor valid = mask.ne(0);
    slots.copy_(valid);
    at::Tensor counts = valid.sum(1).to(at::kLong).contiguous();
    const int64_t* c = counts.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch_; ++b) {
      real_tokens_[b] += c[b];
      if (c[b] != t) has_padding_ = true;
    }
  } else {
    slots.fill_(true);
    for (auto& n : real_tokens_) n += t;
  }
  length_ += t;
}

}  // namespace internvl::llm
