#include "core/nn/device.h"

#include <ATen/ATen.h>

#include <fstream>
#include <string>

#include "core/nn/torch_util.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {

TEST(ParseDevice, CpuAndMalformedNames) {
  auto cpu = ParseDevice(" CPU ");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(cpu->is_cpu());
  for (const char* bad : {"", "gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:0:1", "tpu:0", "cuda:99999"}) {
    auto d = ParseDevice(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << bad << ": " << d.status();
  }
}

TEST(ParseDevice, CudaNeedsACudaBuildAndAVisibleGpu) {
  for (const char* name : {"cuda", "cuda:0", "cuda:7"}) {
    auto d = ParseDevice(name);
    if (BuiltWithCuda() && CudaDeviceCount() > (name == std::string("cuda:7") ? 7 : 0)) {
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_TRUE(d->is_cuda());
    } else {
      EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition) << name << ": " << d.status();
      EXPECT_NE(d.status().message().find(BuiltWithCuda() ? "visible" : "no CUDA"), std::string::npos) << d.status();
    }
  }
  if (!BuiltWithCuda()) {
    EXPECT_EQ(CudaDeviceCount(), 0);
  }
}

TEST(DeviceMemory, RefusedForTheCpu) {
  EXPECT_EQ(QueryDeviceMemory(c10::Device(c10::kCPU)).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(GenericKernels, ForcingTurnsTheCpuKernelsOff) {
  const bool before = GenericKernels();
  ForceGenericKernels(true);
  EXPECT_TRUE(GenericKernels());
  EXPECT_FALSE(UseCpuKernels(c10::Device(c10::kCPU)));
  EXPECT_EQ(DeviceDescription(c10::Device(c10::kCPU)), "cpu (generic kernels)");
  ForceGenericKernels(false);
  EXPECT_FALSE(GenericKernels());
  EXPECT_TRUE(UseCpuKernels(c10::Device(c10::kCPU)));
  EXPECT_FALSE(UseCpuKernels(c10::Device(c10::kCUDA, 0)));
  ForceGenericKernels(before);
}

TEST(EffectiveComputeDType, OtherDevicesComputeWhatIsAsked) {
  EXPECT_EQ(EffectiveComputeDType(at::kBFloat16, c10::Device(c10::kCUDA, 0)), at::kBFloat16);
  EXPECT_EQ(EffectiveComputeDType(at::kFloat, c10::Device(c10::kCUDA, 0)), at::kFloat);
  EXPECT_EQ(EffectiveComputeDType(at::kBFloat16, c10::Device(c10::kCPU)), EffectiveComputeDType(at::kBFloat16));
}

TEST(PrepareDevice, CpuIsANoOp) { EXPECT_TRUE(PrepareDevice(c10::Device(c10::kCPU)).ok()); }

}  // namespace
}  // namespace internvl

namespace internvl {
namespace {

// The CPU checks agree with the kernel's view of the CPU (/proc/cpuinfo's
// flags, where there is one).
TEST(CpuFeatures, AgreeWithProcCpuinfo) {
  std::ifstream f("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(f, line)) {
    if (line.rfind("flags", 0) == 0) {
      flags = " " + line.substr(line.find(':') + 1) + " ";
      break;
    }
  }
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags here";
  auto has = [&](const char* flag) { return flags.find(std::string(" ") + flag + " ") != std::string::npos; };
  EXPECT_EQ(CpuHasAvx2Fma(), has("avx2") && has("fma"));
  EXPECT_EQ(CpuHasAvx512(), has("avx512f") && has("avx512bw") && has("avx512vl"));
  EXPECT_EQ(CpuHasAvx512Bf16(), CpuHasAvx512() && has("avx512_bf16") && has("fma"));
  // (A kernel without AMX state support hides the flag that CPUID reports.)
  if (has("amx_bf16")) {
    EXPECT_TRUE(CpuHasAmxBf16());
  }
}

}  // namespace
}  // namespace internvl
