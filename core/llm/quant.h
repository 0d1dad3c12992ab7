// Quantized weight matrices of the LLM: int8 made at load time from the
// checkpoint (`--quantize int8`), and 4-bit AWQ checkpoints (AutoAWQ / LMDeploy
// "gemm" layout) read as published.
//
// Decoding (up to QuantLinearMaxRows() rows) reads the packed weights directly
// through the integer kernels of quant_kernels.h, the input rows quantized on
// the fly to int8 in blocks of 32. Longer inputs (prefill) dequantize the
// weights in tiles of rows to the compute dtype and multiply with libtorch's
// GEMM, so prefill keeps the dense path's accuracy and speed.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace internvl::llm {

// What `--quantize` asks of the weights that the checkpoint stores in floating
// point: kNone keeps them; kInt8 rounds every LLM matrix (projections and the
// vocabulary head; not the embedding table) to int8 with one scale per output
// row; kInt4 to 4 bits with a scale and zero point per output row and group of
// 128 inputs (64 where 128 does not divide the row; int8 where neither does),
// rounded to nearest as AWQ's quantizer without its activation-aware search.
// AWQ matrices stay as published either way.
enum class Quantization { kNone, kInt8, kInt4 };
absl::StatusOr<Quantization> ParseQuantization(absl::string_view name);  // "none", "int8", "int4"
const char* QuantizationName(Quantization q);

// The kernel families, chosen at run time from the CPU's flags (the best
// supported), or forced by INTERNVL_QUANT_KERNEL=portable|avx2|avx512vnni|
// avx512bf16 or ForceQuantKernel (tests, benchmarks) among those this CPU
// runs. kAvx512Bf16 (CPUs with AVX-512 VNNI and BF16) is kAvx512Vnni but
// for int8 products of at least QuantWideMinRows() bf16 input rows (batched
// decode steps of a bf16 model), whose weights it widens to bf16 a few rows
// at a time for bf16 dot products (quant_kernels.h, Int8WideProblem).
enum class QuantKernel { kPortable, kAvx2, kAvx512Vnni, kAvx512Bf16 };
const char* QuantKernelName(QuantKernel kernel);
bool QuantKernelSupported(QuantKernel kernel);
QuantKernel ActiveQuantKernel();
bool ForceQuantKernel(std::optional<QuantKernel> kernel);
// The active family's name, with what avx512bf16 runs when ("avx512bf16
// (int8 x bf16 from 12 rows, else avx512vnni)"): what benchmarks print.
std::string ActiveQuantKernelDescription();

class QuantMatrix {
 public:
  enum class Kind { kInt8, kInt4 };

  // Per-output-row symmetric int8 of w [out, in] (any float dtype).
  static std::shared_ptr<QuantMatrix> Int8(const at::Tensor& w);
  // w quantized as `mode` asks (see Quantization; not kNone).
  static std::shared_ptr<QuantMatrix> Quantize(const at::Tensor& w, Quantization mode);
  // AWQ "gemm" tensors of one linear layer W [out, in]: qweight int32
  // [in, out / 8] and qzeros int32 [in / group, out / 8], 8 4-bit values per
  // int32 in the order 0, 2, 4, 6, 1, 3, 5, 7 of their 8 output columns;
  // scales [in / group, out] (fp16, bf16 or fp32). W[o][i] = (q - zero) *
  // scale of group i / group. INVALID_ARGUMENT for inconsistent shapes,
  // UNIMPLEMENTED for a group size that is not a multiple of 64.
  static absl::StatusOr<std::shared_ptr<QuantMatrix>> FromAwq(const at::Tensor& qweight, const at::Tensor& qzeros,
                                                              const at::Tensor& scales, int64_t group);
  // The inverse of FromAwq's unpacking, for writing AWQ checkpoints (tests,
  // make-model --awq): 4-bit asymmetric min/max quantization of w [out, in]
  // per group of `group` inputs, as AutoAWQ's pseudo-quantizer rounds (no
  // activation-aware scaling search: the weights are random anyway).
  struct AwqTensors {
    at::Tensor qweight, qzeros, scales;  // int32, int32, `scale_dtype`
  };
  static AwqTensors QuantizeAwq(const at::Tensor& w, int64_t group, at::ScalarType scale_dtype);

  // Stacks the rows of matrices of the same kind, input size and group into
  // one (a fused q|k|v or gate|up product); each part then becomes a row view
  // of it (no second copy).
  static std::shared_ptr<QuantMatrix> Fuse(const std::vector<std::shared_ptr<QuantMatrix>*>& parts);

  Kind kind() const { return kind_; }
  int64_t out() const { return out_; }
  int64_t in() const { return in_; }
  int64_t group() const { return group_; }
  // Rows [r0, r1) as a float matrix [r1 - r0, in] in `dtype`: q * scale
  // (+ zmin) in fp32, then cast (fp32 and bf16 on the CPU by one pass of the
  // quant_kernels.h kernels, the same bits as those libtorch ops).
  at::Tensor Dequantize(int64_t r0, int64_t r1, at::ScalarType dtype) const;
  // The same rows written into `out`, a contiguous CPU fp32 or bf16 tensor
  // of [r1 - r0, in] (prefill reuses one buffer for its tiles).
  void DequantizeInto(int64_t r0, int64_t r1, at::Tensor& out) const;
  // Bytes of packed weights, scales and zero terms (what one product reads).
  int64_t bytes() const;
  // The matrix of rows rows[0, n) of this one, in that order (a copy).
  std::shared_ptr<QuantMatrix> GatherRows(const int64_t* rows, int64_t n) const;

  // Packed data for the kernels (quant_kernels.h layouts): int8 data [out,
  // inp] and scale [out], contiguous; int4 data [out, inp / 2] bytes, scale
  // and zmin [out, inp / group] floats, views of one buffer in which each
  // row's scales and zero terms come before its weights (a row is one run of
  // memory, whole 64-byte lines but for short rows, read in memory order by
  // the kernels, which load a row's scales first): their row strides are the
  // kernels' w_stride (bytes) and s_stride (floats).
  int64_t padded_in() const { return inp_; }
  const at::Tensor& data() const { return data_; }
  const at::Tensor& scale() const { return scale_; }
  const at::Tensor& zmin() const { return zmin_; }

 private:
  QuantMatrix() = default;
  // int4: data_, scale_ and zmin_ as views of rows_ [out, row bytes].
  void ViewInt4Rows();
  Kind kind_ = Kind::kInt8;
  int64_t out_ = 0, in_ = 0, inp_ = 0, group_ = 0;
  at::Tensor data_, scale_, zmin_;
  at::Tensor rows_;  // int4: uint8 [out, row bytes], the storage of the three
};

// y = x W^T + b for x [..., in] (fp32 or bf16) through quantized W; the
// result has x's dtype. b may be undefined. Up to QuantLinearMaxRows() rows
// (decode) the kernels read the packed weights; more rows (prefill), or grad
// mode, take QuantLinearTiled.
at::Tensor QuantLinear(const at::Tensor& x, const QuantMatrix& w, const at::Tensor& b);
// Rows up to which QuantLinear runs the decode kernels on this CPU.
int64_t QuantLinearMaxRows();
// bf16 input rows from which the avx512bf16 family widens int8 weights
// (fewer rows, and 4-bit weights, run the VNNI kernels).
int64_t QuantWideMinRows();
// QuantLinear's path for many rows: W dequantized into the compute dtype
// (bf16 where the CPU multiplies it natively and x is bf16, else fp32)
// through libtorch's GEMM, in row tiles of at most kQuantPrefillTileBytes
// (InternVL2-1B: every matrix in one tile in bf16), dequantized into a
// buffer each calling thread keeps (fresh tiles under autograd).
at::Tensor QuantLinearTiled(const at::Tensor& x, const QuantMatrix& w, const at::Tensor& b);
inline constexpr int64_t kQuantPrefillTileBytes = int64_t{32} << 20;
// The row tiles' size for a matrix [out, in] dequantized to `element_bytes`
// per value: as few tiles as kQuantPrefillTileBytes allows, of equal rows
// (a multiple of 4 but for the last).
int64_t QuantPrefillTileRows(int64_t out, int64_t in, int64_t element_bytes);

// Rows rows[0, n) of the CPU matrix `from` (its rows contiguous, at any
// stride) as a new [n, cols] matrix: a copy per row (index_select took ~200
// us for 64 rows of an int8 vocabulary head). The rows must lie in `from`.
at::Tensor GatherMatrixRows(const at::Tensor& from, const int64_t* rows, int64_t n);
// QuantLinear's decode path on raw rows (any number; QuantLinear takes it up
// to QuantLinearMaxRows()): x [rows, in] and y [rows, out], both of dtype
// x_dtype (fp32, or bf16 as uint16_t bits), contiguous. No libtorch op: the
// fused decode layer (modules.h) chains these.
void QuantLinearRows(const void* x, at::ScalarType x_dtype, int64_t rows, const QuantMatrix& w, const at::Tensor& b,
                     void* y);

// The vocabulary head's decode product (at most QuantLinearMaxRows() rows, no
// grad) in two passes: every output of every row through `coarse`, a 4-bit
// copy of the head that reads about half the bytes of int8 and a quarter of
// bf16, then each row's `candidates` largest outputs recomputed through the
// head's own weights (`fine`, or the float `weight` where fine is null) and
// written over the coarse ones: the same values, bit for bit, as the head's
// own product gives them. The candidates are the outputs that greedy and
// top-k / top-p sampling choose among; the rest keep the 4-bit values.
// x [..., in] fp32 or bf16; the result has x's dtype, as QuantLinear's.
at::Tensor RescoredLinear(const at::Tensor& x, const QuantMatrix& coarse, int64_t candidates, const QuantMatrix* fine,
                          const at::Tensor& weight, const at::Tensor& b);

}  // namespace internvl::llm
