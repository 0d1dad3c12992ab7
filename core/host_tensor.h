// A dense host tensor without libtorch: dtype, shape, little-endian row-major
// bytes. The currency between stages (gRPC messages, cache values, CLI files).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/safetensors.h"

namespace internvl {

struct HostTensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  HostTensor() = default;
  HostTensor(DType d, std::vector<int64_t> s) : dtype(d), shape(std::move(s)), bytes(numel() * DTypeSize(d)) {}

  // True for a default-constructed tensor (no shape: "no tensor") and for
  // one with a zero dimension. numel() of the former is 1 (an empty
  // product), so test presence with this, not numel().
  bool empty() const { return shape.empty() || numel() == 0; }

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t v : shape) n *= v;
    return n;
  }
  template <typename T>
  T* data() {
    return reinterpret_cast<T*>(bytes.data());
  }
  template <typename T>
  const T* data() const {
    return reinterpret_cast<const T*>(bytes.data());
  }
  TensorRef Ref(std::string name) const { return TensorRef{std::move(name), dtype, shape, bytes}; }
};

}  // namespace internvl
