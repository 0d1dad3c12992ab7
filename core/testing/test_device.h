// The device the parity and engine tests run their models on:
// INTERNVL_TEST_DEVICE ("cpu" when unset; scripts/gpu_check.sh sets "cuda").
#pragma once

#include <c10/core/Device.h>

#include <cstdlib>
#include <string>

namespace internvl::testing {

inline std::string TestDevice() {
  const char* v = std::getenv("INTERNVL_TEST_DEVICE");
  return v != nullptr && *v != '\0' ? v : "cpu";
}

inline c10::Device TestTorchDevice() { return c10::Device(TestDevice()); }

// `p` (an llm::Precision) placed on the test device.
template <typename P>
P OnTestDevice(P p) {
  p.device = TestTorchDevice();
  return p;
}

}  // namespace internvl::testing
