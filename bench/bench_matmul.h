// The machine's matmul peak for a dtype, measured in the same run (libtorch's
// GEMM on n x n matrices, best of 3): the compute reference benchmarks report
// their figures against.
#pragma once

#include <ATen/ATen.h>

#include "bench/bench_util.h"

namespace internvl::bench {

// FLOP/s of an n x n x n matmul in `dtype`.
inline double MatmulPeak(at::ScalarType dtype, int64_t n = 2048) {
  at::Tensor a = at::randn({n, n}).to(dtype), b = at::randn({n, n}).to(dtype);
  const double t = BestOf(3, [&] { at::matmul(a, b); });
  return 2.0 * n * n * n / t;
}

}  // namespace internvl::bench
