#include "core/nn/weights.h"

#include <dlfcn.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "core/nn/torch_util.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {

struct TinyImpl : torch::nn::Module {
  TinyImpl() { fc = register_module("fc", torch::nn::Linear(2, 3)); }
  torch::nn::Linear fc{nullptr};
};

std::unique_ptr<TensorStore> WriteStore(const std::string& dir, const std::map<std::string, at::Tensor>& tensors) {
  SafetensorsWriter w;
  for (const auto& [k, v] : tensors) w.Add(k, v);
  EXPECT_TRUE(w.Write(dir + "/model.safetensors").ok());
  return std::move(TensorStore::OpenDir(dir)).value();
}

TEST(LoadModuleWeights, LoadsByNameAndConvertsDtype) {
  auto dir = testing::TempDir();
  auto store = WriteStore(dir, {{"m.fc.weight", at::arange(6, at::kFloat).reshape({3, 2}).to(at::kBFloat16)},
                                {"m.fc.bias", at::ones({3}, at::kFloat)}});
  TinyImpl tiny;
  ASSERT_TRUE(LoadModuleWeights(tiny, *store, "m.", at::kFloat).ok());
  EXPECT_EQ(tiny.fc->weight.scalar_type(), at::kFloat);
  EXPECT_EQ(tiny.fc->weight[2][1].item<float>(), 5.0f);
  EXPECT_EQ(tiny.fc->bias[0].item<float>(), 1.0f);
}

TEST(LoadModuleWeights, ListsMissingUnexpectedAndMismatchedKeys) {
  auto dir = testing::TempDir();
  auto store = WriteStore(dir, {{"m.fc.weight", at::zeros({3, 5})}, {"m.extra", at::zeros({1})}});
  TinyImpl tiny;
  absl::Status s = LoadModuleWeights(tiny, *store, "m.", at::kFloat);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("missing keys: m.fc.bias"), std::string::npos) << s;
  EXPECT_NE(s.message().find("unexpected keys: m.extra"), std::string::npos) << s;
  EXPECT_NE(s.message().find("m.fc.weight (checkpoint [3,5], model [3,2])"), std::string::npos) << s;
}

TEST(TorchGuard, TurnsTorchErrorsIntoStatus) {
  absl::StatusOr<int> r = TorchGuard("multiplying", []() -> absl::StatusOr<int> {
    at::Tensor a = at::ones({2, 3}), b = at::ones({2, 3});
    return static_cast<int>(at::matmul(a, b).numel());
  });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("multiplying"), std::string::npos);
}

TEST(WeightsFingerprint, ChangesWithContent) {
  auto a = WriteStore(testing::TempDir(), {{"v.x", at::zeros({4})}});
  auto b = WriteStore(testing::TempDir(), {{"v.x", at::ones({4})}});
  EXPECT_NE(WeightsFingerprint(*a, "v."), WeightsFingerprint(*b, "v."));
  EXPECT_EQ(WeightsFingerprint(*a, "v."), WeightsFingerprint(*a, "v."));
}

// cmake/deps.cmake links executables so that libtorch's libblas.so.3 is
// OpenBLAS's OpenMP build when libopenblas0-openmp is installed (the pthread
// build halves fp32 matmul speed on 2 cores by fighting libtorch's threads).
TEST(BlasThreading, OpenMpBuildIsLoadedWhenConfigured) {
#if INTERNVL_EXPECT_OPENMP_BLAS
  EXPECT_EQ(BlasThreading(), "OpenBLAS, OpenMP");
#else
  GTEST_SKIP() << "built without libopenblas0-openmp: " << BlasThreading();
#endif
}

TEST(BlasThreading, SetTorchThreadsSetsOpenBlasThreads) {
  using GetThreads = int (*)();
  auto get_threads = reinterpret_cast<GetThreads>(::dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (get_threads == nullptr) GTEST_SKIP() << "libblas.so.3 is not OpenBLAS";
  const int before = TorchThreads();
  SetTorchThreads(1);
  EXPECT_EQ(get_threads(), 1);
  SetTorchThreads(2);
  EXPECT_EQ(get_threads(), 2);
  SetTorchThreads(before);
}

}  // namespace
}  // namespace internvl
