#include "core/llm/quant.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/llm/chunk_pool.h"
#include "core/llm/gemv.h"
#include "core/llm/gemv_kernels.h"
#include "core/llm/largest.h"
#include "core/llm/quant_kernels.h"
#include "core/nn/torch_util.h"

namespace internvl::llm {
namespace {

// AutoAWQ packs output columns 8j + kAwqOrder[i] into bits 4i of int32 j.
constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

std::atomic<int> g_forced{-1};

QuantKernel BestKernel() {
  if (QuantKernelSupported(QuantKernel::kAvx512Bf16)) return QuantKernel::kAvx512Bf16;
  if (quant::CpuHasAvx512Vnni()) return QuantKernel::kAvx512Vnni;
  if (gemv::CpuHasAvx2Fma()) return QuantKernel::kAvx2;
  return QuantKernel::kPortable;
}

QuantKernel EnvKernel() {
  static const QuantKernel k = [] {
    const char* env = std::getenv("INTERNVL_QUANT_KERNEL");
    if (env != nullptr) {
      for (QuantKernel c :
           {QuantKernel::kPortable, QuantKernel::kAvx2, QuantKernel::kAvx512Vnni, QuantKernel::kAvx512Bf16}) {
        if (std::string(env) == QuantKernelName(c) && QuantKernelSupported(c)) return c;
      }
      if (*env != 0) std::fprintf(stderr, "INTERNVL_QUANT_KERNEL=%s is unknown or unsupported here: ignored\n", env);
    }
    return BestKernel();
  }();
  return k;
}

// Unpacks AWQ int32 [rows, cols / 8] to uint8 [rows, cols] in column order.
at::Tensor UnpackAwq(const at::Tensor& packed) {
  const at::Tensor p = packed.contiguous();
  const int64_t rows = p.size(0), words = p.size(1);
  at::Tensor out = at::empty({rows, words * 8}, at::TensorOptions().dtype(at::kByte));
  const int32_t* src = p.data_ptr<int32_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < words; ++j) {
        const uint32_t v = static_cast<uint32_t>(src[r * words + j]);
        for (int i = 0; i < 8; ++i) dst[r * words * 8 + j * 8 + kAwqOrder[i]] = (v >> (4 * i)) & 0xF;
      }
    }
  });
  return out;
}

// Packs uint8 values 0..15 [rows, cols] into AWQ int32 [rows, cols / 8].
at::Tensor PackAwq(const at::Tensor& values) {
  const at::Tensor v = values.to(at::kByte).contiguous();
  const int64_t rows = v.size(0), words = v.size(1) / 8;
  at::Tensor out = at::zeros({rows, words}, at::TensorOptions().dtype(at::kInt));
  const uint8_t* src = v.data_ptr<uint8_t>();
  int32_t* dst = out.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < words; ++j) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i)
        word |= static_cast<uint32_t>(src[r * words * 8 + j * 8 + kAwqOrder[i]] & 0xF) << (4 * i);
      dst[r * words + j] = static_cast<int32_t>(word);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<Quantization> ParseQuantization(absl::string_view name) {
  if (name.empty() || name == "none") return Quantization::kNone;
  if (name == "int8") return Quantization::kInt8;
  if (name == "int4") return Quantization::kInt4;
  return absl::InvalidArgumentError(absl::StrCat("unknown quantization '", name, "' (none, int8 or int4)"));
}

const char* QuantizationName(Quantization q) {
  switch (q) {
    case Quantization::kNone:
      return "none";
    case Quantization::kInt8:
      return "int8";
    case Quantization::kInt4:
      return "int4";
  }
  return "?";
}

std::shared_ptr<QuantMatrix> QuantMatrix::Quantize(const at::Tensor& w, Quantization mode) {
  const int64_t in = w.size(1), out = w.size(0);
  const int64_t group = in % 128 == 0 ? 128 : in % 64 == 0 ? 64 : 0;
  if (mode != Quantization::kInt4 || group == 0) return Int8(w);
  // In slices of rows (the AWQ packing holds a few fp32 copies of a slice).
  const int64_t step = std::max<int64_t>(8, (int64_t{8} << 20) / std::max<int64_t>(1, in * 4)) / 8 * 8;
  std::vector<std::shared_ptr<QuantMatrix>> parts;
  for (int64_t r0 = 0; r0 < out; r0 += step) {
    const int64_t n = std::min(step, out - r0);
    // AWQ's packing takes rows in eights: a last slice short of that (a
    // vocabulary of 151655 rows) is padded with zero rows, then cut back.
    at::Tensor rows = w.narrow(0, r0, n);
    if (n % 8 != 0) rows = at::cat({rows, at::zeros({8 - n % 8, in}, rows.options())});
    const AwqTensors t = QuantizeAwq(rows, group, at::kFloat);
    std::shared_ptr<QuantMatrix> part = *FromAwq(t.qweight, t.qzeros, t.scales, group);
    if (n % 8 != 0) {
      part->out_ = n;
      part->rows_ = part->rows_.narrow(0, 0, n);
      part->ViewInt4Rows();
    }
    parts.push_back(part);
  }
  if (parts.size() == 1) return parts[0];
  std::vector<std::shared_ptr<QuantMatrix>*> ptrs;
  for (auto& p : parts) ptrs.push_back(&p);
  return Fuse(ptrs);
}

const char* QuantKernelName(QuantKernel k) {
  switch (k) {
    case QuantKernel::kPortable:
      return "portable";
    case QuantKernel::kAvx2:
      return "avx2";
    case QuantKernel::kAvx512Vnni:
      return "avx512vnni";
    case QuantKernel::kAvx512Bf16:
      return "avx512bf16";
  }
  return "?";
}

bool QuantKernelSupported(QuantKernel k) {
  switch (k) {
    case QuantKernel::kPortable:
      return true;
    case QuantKernel::kAvx2:
      return gemv::CpuHasAvx2Fma();
    case QuantKernel::kAvx512Vnni:
      return quant::CpuHasAvx512Vnni();
    case QuantKernel::kAvx512Bf16:
      return quant::CpuHasAvx512Vnni() && gemv::CpuHasAvx512Bf16();
  }
  return false;
}

QuantKernel ActiveQuantKernel() {
  const int forced = g_forced.load(std::memory_order_relaxed);
  return forced >= 0 ? static_cast<QuantKernel>(forced) : EnvKernel();
}

std::string ActiveQuantKernelDescription() {
  const QuantKernel kernel = ActiveQuantKernel();
  if (kernel != QuantKernel::kAvx512Bf16) return QuantKernelName(kernel);
  return absl::StrCat(QuantKernelName(kernel), " (int8 x bf16 from ", QuantWideMinRows(), " rows, else ",
                      QuantKernelName(QuantKernel::kAvx512Vnni), ")");
}

bool ForceQuantKernel(std::optional<QuantKernel> kernel) {
  if (kernel && !QuantKernelSupported(*kernel)) return false;
  g_forced.store(kernel ? static_cast<int>(*kernel) : -1);
  return true;
}

// Every kernel: at 32 input rows the products read from memory were 1.5-3.3x
// (avx512vnni) and 3.1-6.7x (avx2) faster than the dequantized tiles through
// libtorch's GEMM (bench_gemv --only=crossover, InternVL2-1B's q|k|v, gate|up
// and down, 2-core Zen 5).
int64_t QuantLinearMaxRows() { return kMaxFastLinearRows; }

// From 12 bf16 input rows the avx512bf16 family widens int8 weights to bf16
// (Int8WideProblem). bench_gemv --only=wide (2-core Zen 5 VM, InternVL2-1B's
// int8 q|k|v, gate|up and down read from memory, calls alternated, two runs),
// VNNI time / widened time: 4 rows 0.58-0.89, 8 rows 0.96-1.14, 12 rows
// 1.02-1.26, 16 1.06-1.49, 32 1.19-1.50 (the bf16 matrix's own product:
// 0.84-1.16x the widened one from 16 rows). Whole steps, bench_decode
// --batch=N --prompt=300 alternated 3 times: 32 sequences 96-116 -> 84-102
// ms (int8 / bf16 step time 1.16-1.27 -> 1.05-1.08), 24 sequences 74-79 ->
// 71-73 (1.04-1.21 -> 0.99-1.08), 16 alike (0.92-0.93 and 0.91-0.99).
constexpr int64_t kQuantWideMinRows = 12;

int64_t QuantWideMinRows() {
  static const int64_t rows = [] {
    const char* env = std::getenv("INTERNVL_QUANT_WIDE_MIN_ROWS");
    int64_t v = 0;
    return env != nullptr && absl::SimpleAtoi(env, &v) && v >= 1 ? v : kQuantWideMinRows;
  }();
  return rows;
}

std::shared_ptr<QuantMatrix> QuantMatrix::Int8(const at::Tensor& w) {
  at::NoGradGuard no_grad;
  std::shared_ptr<QuantMatrix> q(new QuantMatrix());
  q->kind_ = Kind::kInt8;
  q->out_ = w.size(0);
  q->in_ = w.size(1);
  q->inp_ = RoundUp(q->in_, quant::kChunk);
  q->data_ = at::zeros({q->out_, q->inp_}, at::TensorOptions().dtype(at::kChar));
  q->scale_ = at::empty({q->out_}, at::TensorOptions().dtype(at::kFloat));
  // In slices of rows: a whole fp32 copy of a vocabulary head is ~0.5 GB.
  const int64_t step = std::max<int64_t>(1, (int64_t{8} << 20) / std::max<int64_t>(1, q->in_ * 4));
  for (int64_t r0 = 0; r0 < q->out_; r0 += step) {
    const int64_t n = std::min(step, q->out_ - r0);
    const at::Tensor rows = w.narrow(0, r0, n).to(at::kFloat);
    const at::Tensor amax = rows.abs().amax(1);
    const at::Tensor scale = amax / 127.0;
    const at::Tensor inv = at::where(amax > 0, 127.0 / amax, at::zeros_like(amax));
    const at::Tensor values = (rows * inv.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar);
    q->data_.narrow(0, r0, n).narrow(1, 0, q->in_).copy_(values);
    q->scale_.narrow(0, r0, n).copy_(scale);
  }
  return q;
}

absl::StatusOr<std::shared_ptr<QuantMatrix>> QuantMatrix::FromAwq(const at::Tensor& qweight, const at::Tensor& qzeros,
                                                                  const at::Tensor& scales, int64_t group) {
  if (qweight.dim() != 2 || qzeros.dim() != 2 || scales.dim() != 2 || qweight.scalar_type() != at::kInt ||
      qzeros.scalar_type() != at::kInt) {
    return absl::InvalidArgumentError("AWQ tensors: qweight and qzeros must be 2-D int32, scales 2-D");
  }
  const int64_t in = qweight.size(0), out = qweight.size(1) * 8;
  if (group <= 0 || in % group != 0 || qzeros.size(0) != in / group || qzeros.size(1) * 8 != out ||
      scales.size(0) != in / group || scales.size(1) != out) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AWQ tensors: inconsistent shapes for group_size ", group, ": qweight [", in, ",", out / 8, "], qzeros [",
        qzeros.size(0), ",", qzeros.size(1), "], scales [", scales.size(0), ",", scales.size(1), "]"));
  }
  if (group % 64 != 0) {
    return absl::UnimplementedError(absl::StrCat("AWQ group_size ", group, " is not supported (a multiple of 64 is)"));
  }
  at::NoGradGuard no_grad;
  std::shared_ptr<QuantMatrix> q(new QuantMatrix());
  q->kind_ = Kind::kInt4;
  q->out_ = out;
  q->in_ = in;
  q->inp_ = RoundUp(in, quant::kChunk4);
  q->group_ = group;
  const int64_t groups = in / group, padded_groups = q->inp_ / group;
  // Each row: its scales and its zero terms, padded to whole 64-byte lines
  // (to 16 bytes where lines would add more than an eighth: rows of a few
  // hundred inputs), then inp / 2 bytes of weights (a multiple of 64).
  // Padding: zero values, and whole padded groups with zero scales.
  const int64_t used = q->inp_ / 2 + 8 * padded_groups;
  const int64_t row_bytes = RoundUp(used, 64) - used <= used / 8 ? RoundUp(used, 64) : RoundUp(used, 16);
  q->rows_ = at::zeros({out, row_bytes}, at::TensorOptions().dtype(at::kByte));
  q->ViewInt4Rows();
  at::Tensor values = at::zeros({out, q->inp_}, at::TensorOptions().dtype(at::kByte));
  values.narrow(1, 0, in).copy_(UnpackAwq(qweight).t());          // 0..15
  const at::Tensor zeros = UnpackAwq(qzeros).t().to(at::kFloat);  // [out, groups]
  q->scale_.narrow(1, 0, groups).copy_(scales.t());
  q->zmin_.narrow(1, 0, groups).copy_(-zeros * q->scale_.narrow(1, 0, groups));
  // Pack: per 128-input chunk, byte j = value j | value 64 + j << 4.
  const at::Tensor v = values.view({out, q->inp_ / quant::kChunk4, 2, quant::kChunk4 / 2});
  q->data_.copy_((v.select(2, 0) | v.select(2, 1).__lshift__(4)).reshape({out, q->inp_ / 2}));
  return q;
}

void QuantMatrix::ViewInt4Rows() {
  const int64_t bytes = inp_ / 2, groups = inp_ / group_;
  // The scales and zero terms first, the weights in the row's last bytes
  // (whole lines where the row is: inp / 2 is a multiple of 64): the kernels
  // read a row's scales before its weights, so memory order is read order.
  // With the weights first, the scales' loads (the row's last line, not yet
  // streamed in) took ~40% of the 4-bit streaming kernel's samples in a
  // decode profile; scales first, products called alternately in one process
  // (2-core Zen 5 VM, 60 calls each, matrices from memory): down 0.68-0.97x,
  // gate|up 0.90-1.00x, o 0.93-1.00x, the head 0.95-1.01x of the old time
  // (q|k|v 0.94-1.08x); whole 4-bit decode steps 6-10% faster (two models'
  // steps interleaved, both orders).
  scale_ = rows_.narrow(1, 0, 4 * groups).view(at::kFloat);
  zmin_ = rows_.narrow(1, 4 * groups, 4 * groups).view(at::kFloat);
  data_ = rows_.narrow(1, rows_.size(1) - bytes, bytes);
}

QuantMatrix::AwqTensors QuantMatrix::QuantizeAwq(const at::Tensor& w, int64_t group, at::ScalarType scale_dtype) {
  at::NoGradGuard no_grad;
  const int64_t out = w.size(0), in = w.size(1), groups = in / group;
  const at::Tensor g = w.to(at::kFloat).reshape({out, groups, group});
  const at::Tensor hi = std::get<0>(g.max(2)), lo = std::get<0>(g.min(2));
  // Scales are stored in scale_dtype: quantize against the rounded ones.
  const at::Tensor scales = ((hi - lo).clamp_min(1e-5) / 15.0).to(scale_dtype).to(at::kFloat);  // [out, groups]
  const at::Tensor zeros = (-(lo / scales).round()).clamp(0, 15);
  const at::Tensor values = ((g / scales.unsqueeze(2)).round() + zeros.unsqueeze(2)).clamp(0, 15).reshape({out, in});
  AwqTensors t;
  t.qweight = PackAwq(values.t().contiguous());
  t.qzeros = PackAwq(zeros.t().contiguous());
  t.scales = scales.t().contiguous().to(scale_dtype);
  return t;
}

std::shared_ptr<QuantMatrix> QuantMatrix::Fuse(const std::vector<std::shared_ptr<QuantMatrix>*>& parts) {
  at::NoGradGuard no_grad;
  std::shared_ptr<QuantMatrix> f(new QuantMatrix());
  const QuantMatrix& first = **parts[0];
  f->kind_ = first.kind_;
  f->in_ = first.in_;
  f->inp_ = first.inp_;
  f->group_ = first.group_;
  const bool int4 = f->kind_ == Kind::kInt4;
  std::vector<at::Tensor> data, scale;  // int4: the parts' rows_ in data
  for (auto* p : parts) {
    data.push_back(int4 ? (*p)->rows_ : (*p)->data_);
    if (!int4) scale.push_back((*p)->scale_);
    f->out_ += (*p)->out_;
  }
  if (int4) {
    f->rows_ = at::cat(data, 0);
    f->ViewInt4Rows();
  } else {
    f->data_ = at::cat(data, 0);
    f->scale_ = at::cat(scale, 0);
  }
  int64_t offset = 0;
  for (auto* p : parts) {
    std::shared_ptr<QuantMatrix> view(new QuantMatrix(**p));
    if (int4) {
      view->rows_ = f->rows_.narrow(0, offset, view->out_);
      view->ViewInt4Rows();
    } else {
      view->data_ = f->data_.narrow(0, offset, view->out_);
      view->scale_ = f->scale_.narrow(0, offset, view->out_);
    }
    offset += view->out_;
    *p = view;
  }
  return f;
}

at::Tensor QuantMatrix::Dequantize(int64_t r0, int64_t r1, at::ScalarType dtype) const {
  const int64_t n = r1 - r0;
  if ((dtype == at::kFloat || dtype == at::kBFloat16) && data_.device().is_cpu() && n > 0) {
    // Our kernels, in one pass: the ops below take 7 passes over fp32
    // temporaries (int4 9728 x 896, 512 prefill rows: the product 23 ms,
    // the dequantization 10 ms more).
    at::Tensor out = at::empty({n, in_}, at::TensorOptions().dtype(dtype));
    DequantizeInto(r0, r1, out);
    return out;
  }
  if (kind_ == Kind::kInt8) {
    return (data_.narrow(0, r0, n).narrow(1, 0, in_).to(at::kFloat) * scale_.narrow(0, r0, n).unsqueeze(1)).to(dtype);
  }
  const int64_t groups = inp_ / group_;
  const at::Tensor bytes = data_.narrow(0, r0, n).view({n, inp_ / quant::kChunk4, 1, quant::kChunk4 / 2});
  const at::Tensor values =
      at::cat({bytes.bitwise_and(0xF), bytes.__rshift__(4)}, 2).view({n, groups, group_}).to(at::kFloat);
  const at::Tensor w = values * scale_.narrow(0, r0, n).unsqueeze(2) + zmin_.narrow(0, r0, n).unsqueeze(2);
  return w.view({n, inp_}).narrow(1, 0, in_).to(dtype);
}

void QuantMatrix::DequantizeInto(int64_t r0, int64_t r1, at::Tensor& out) const {
  const int64_t n = r1 - r0;
  const at::ScalarType dtype = out.scalar_type();
  TORCH_CHECK(r0 >= 0 && r0 <= r1 && r1 <= out_, "dequantize: rows [", r0, ", ", r1, ") of ", out_);
  TORCH_CHECK((dtype == at::kFloat || dtype == at::kBFloat16) && out.device().is_cpu() && data_.device().is_cpu() &&
                  out.is_contiguous() && out.dim() == 2 && out.size(0) == n && out.size(1) == in_,
              "dequantize: the destination must be a contiguous CPU fp32 or bf16 [", n, ", ", in_, "] tensor");
  if (n == 0) return;
  quant::Dequant p;
  if (kind_ == Kind::kInt8) {
    p.w8 = data_.data_ptr<int8_t>() + r0 * inp_;
    p.scale = scale_.data_ptr<float>() + r0;
  } else {
    p.w_stride = data_.stride(0);
    p.s_stride = scale_.stride(0);
    p.w4 = data_.data_ptr<uint8_t>() + r0 * p.w_stride;
    p.scale = scale_.data_ptr<float>() + r0 * p.s_stride;
    p.zmin = zmin_.data_ptr<float>() + r0 * p.s_stride;
    p.group = group_;
  }
  p.inp = inp_;
  p.in = in_;
  if (dtype == at::kFloat) {
    p.out32 = out.data_ptr<float>();
  } else {
    p.out16 = reinterpret_cast<uint16_t*>(out.data_ptr());
  }
  const QuantKernel kernel = ActiveQuantKernel();
  const bool avx512 = kernel == QuantKernel::kAvx512Vnni || kernel == QuantKernel::kAvx512Bf16;
  auto rows = avx512                                                ? &quant::DequantRowsAvx512
              : kernel == QuantKernel::kAvx2 && dtype == at::kFloat ? &quant::DequantRowsAvx2
                                                                    : &quant::DequantRowsPortable;
  // On libtorch's threads (the GEMM that follows runs on them).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, in_));
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    quant::Dequant part = p;
    if (part.out32 != nullptr) part.out32 += b * in_;
    if (part.out16 != nullptr) part.out16 += b * in_;
    rows(part, b, e);
  });
}

int64_t QuantMatrix::bytes() const {
  if (rows_.defined()) return rows_.numel();
  return data_.numel() * data_.element_size() + scale_.numel() * scale_.element_size();
}

at::Tensor GatherMatrixRows(const at::Tensor& from, const int64_t* rows, int64_t n) {
  TORCH_CHECK(from.dim() == 2 && from.stride(1) == 1 && from.device().is_cpu(), "GatherMatrixRows: a CPU matrix");
  at::Tensor to = at::empty({n, from.size(1)}, from.options());
  const int64_t row = from.size(1) * from.element_size(), stride = from.stride(0) * from.element_size();
  const char* src = static_cast<const char*>(from.data_ptr());
  char* dst = static_cast<char*>(to.data_ptr());
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * row, src + rows[i] * stride, static_cast<size_t>(row));
  return to;
}

std::shared_ptr<QuantMatrix> QuantMatrix::GatherRows(const int64_t* rows, int64_t n) const {
  at::NoGradGuard no_grad;
  std::shared_ptr<QuantMatrix> q(new QuantMatrix(*this));
  q->out_ = n;
  auto gather = [&](const at::Tensor& from) { return GatherMatrixRows(from, rows, n); };
  if (kind_ == Kind::kInt4) {
    q->rows_ = gather(rows_);
    q->ViewInt4Rows();
  } else {
    q->data_ = gather(data_);
    q->scale_ = gather(scale_.view({-1, 1})).view({-1});
  }
  return q;
}

at::Tensor RescoredLinear(const at::Tensor& x, const QuantMatrix& coarse, int64_t candidates, const QuantMatrix* fine,
                          const at::Tensor& weight, const at::Tensor& b) {
  const int64_t in = coarse.in(), out = coarse.out();
  const int64_t rows = x.numel() / in, k = std::min(candidates, out);
  TORCH_CHECK(rows <= QuantLinearMaxRows() && !at::GradMode::is_enabled(), "rescored head: decode rows only");
  at::Tensor y = QuantLinear(x, coarse, b);
  if (k <= 0 || rows == 0) return y;
  at::Tensor y2 = y.view({rows, out});
  const bool bf16 = y.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || y.scalar_type() == at::kFloat, "rescored head: fp32 or bf16 inputs");
  // Each row's k largest: of each of its parts (one a thread), then of the
  // parts' together.
  const int64_t size = y.element_size();
  const int threads = at::get_num_threads();
  const int64_t parts = std::clamp<int64_t>(out / (k * 64), 1, threads);
  std::vector<int64_t> part_best(static_cast<size_t>(rows * parts * k)), picked(static_cast<size_t>(rows * k));
  const char* yp = static_cast<const char*>(y2.data_ptr());
  ParallelChunks(rows * parts, threads, [&](int64_t c) {
    const int64_t r = c / parts, p = c % parts, begin = out * p / parts, end = out * (p + 1) / parts;
    int64_t* best = part_best.data() + c * k;
    LargestIndices(yp + (r * out + begin) * size, bf16, end - begin, k, best);
    for (int64_t j = 0; j < k; ++j) best[j] += begin;
  });
  std::vector<uint16_t> v16;
  std::vector<float> v32;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* best = part_best.data() + r * parts * k;
    if (parts == 1) {
      std::copy(best, best + k, picked.data() + r * k);
      continue;
    }
    // (The union in index order, so that ties still go to lower indices.)
    std::vector<int64_t> cand(best, best + parts * k);
    std::sort(cand.begin(), cand.end());
    for (size_t j = 0; j < cand.size(); ++j) {
      bf16 ? v16.push_back(reinterpret_cast<const uint16_t*>(yp)[r * out + cand[j]])
           : v32.push_back(reinterpret_cast<const float*>(yp)[r * out + cand[j]]);
    }
    std::vector<int64_t> at(static_cast<size_t>(k));
    LargestIndices(bf16 ? static_cast<const void*>(v16.data()) : v32.data(), bf16, parts * k, k, at.data());
    for (int64_t j = 0; j < k; ++j) picked[static_cast<size_t>(r * k + j)] = cand[static_cast<size_t>(at[j])];
    v16.clear();
    v32.clear();
  }
  // Their union in index order: one product of every row by the union's
  // rows through the fine weights.
  std::vector<int64_t> ids(picked);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  const int64_t u = static_cast<int64_t>(ids.size());
  const at::Tensor bias = b.defined() ? GatherMatrixRows(b.view({-1, 1}), ids.data(), u).view({-1}) : at::Tensor();
  const at::Tensor x2 = x.reshape({rows, in});
  const at::Tensor exact = (fine != nullptr ? QuantLinear(x2, *fine->GatherRows(ids.data(), u), bias)
                                            : Linear(x2, GatherMatrixRows(weight, ids.data(), u), bias))
                               .contiguous();
  TORCH_CHECK(exact.scalar_type() == y.scalar_type(), "rescored head: the two passes' dtypes differ");
  const char* src = static_cast<const char*>(exact.data_ptr());
  char* dst = static_cast<char*>(y2.data_ptr());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t id = picked[static_cast<size_t>(r * k + j)];
      const int64_t at = std::lower_bound(ids.begin(), ids.end(), id) - ids.begin();
      std::memcpy(dst + (r * out + id) * size, src + (r * u + at) * size, static_cast<size_t>(size));
    }
  }
  return y;
}

int64_t QuantPrefillTileRows(int64_t out, int64_t in, int64_t element_bytes) {
  if (out <= 0) return 1;
  const int64_t row_bytes = std::max<int64_t>(1, in) * std::max<int64_t>(1, element_bytes);
  const int64_t max_rows = std::max<int64_t>(4, kQuantPrefillTileBytes / row_bytes / 4 * 4);
  const int64_t tiles = (out + max_rows - 1) / max_rows;
  const int64_t rows = ((out + tiles - 1) / tiles + 3) / 4 * 4;
  return std::min(rows, max_rows);
}

at::Tensor QuantLinearTiled(const at::Tensor& x, const QuantMatrix& w, const at::Tensor& b) {
  const int64_t in = w.in(), out = w.out();
  TORCH_CHECK(x.size(-1) == in, "quantized linear: input has ", x.size(-1), " features, the weights ", in);
  const int64_t rows = x.numel() / in;
  c10::SmallVector<int64_t, 5> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  const at::Tensor x2 = x.reshape({rows, in});
  // Dequantized tiles of rows through libtorch's GEMM in the compute dtype
  // (fp32 where bf16 matmuls are not native).
  const at::ScalarType dtype =
      x.scalar_type() == at::kBFloat16 && CpuHasNativeBf16Matmul() ? at::kBFloat16 : at::kFloat;
  // Large tiles: with tiles of 4 MB of fp32 (InternVL2-1B's gate|up in 9,
  // its down in 5 of 212 rows) a 512-row chunk's gate|up took 1.16-1.21x
  // the dense bf16 product's time and its down 1.19-1.28x, against
  // 1.04-1.10x and 1.08-1.12x in one tile (calls alternated, 2-core Zen
  // 5; a 2500-token 4-bit prefill 1.09-1.35x -> 1.03-1.14x bf16's time).
  // The buffer is reused: a fresh one of 16-32 MB per product would be
  // fresh pages each time. Not under autograd, which keeps each tile for
  // the backward pass.
  const at::Tensor xc = x2.to(dtype);
  const int64_t tile = QuantPrefillTileRows(out, in, static_cast<int64_t>(c10::elementSize(dtype)));
  const bool reuse = !at::GradMode::is_enabled();
  thread_local at::Tensor t_tile;
  if (reuse && (!t_tile.defined() || t_tile.scalar_type() != dtype || t_tile.numel() < tile * in)) {
    t_tile = at::Tensor();  // (the old one freed first)
    t_tile = at::empty({tile * in}, xc.options());
  }
  auto product = [&](int64_t r0, int64_t n) {
    at::Tensor wt = reuse ? t_tile.narrow(0, 0, n * in).view({n, in}) : at::empty({n, in}, xc.options());
    w.DequantizeInto(r0, r0 + n, wt);
    return at::linear(xc, wt, b.defined() ? b.narrow(0, r0, n).to(dtype) : at::Tensor());
  };
  if (tile >= out) return product(0, out).to(x.scalar_type()).view(shape);
  at::Tensor y = at::empty({rows, out}, xc.options());
  for (int64_t r0 = 0; r0 < out; r0 += tile) {
    const int64_t n = std::min(tile, out - r0);
    y.narrow(1, r0, n).copy_(product(r0, n));
  }
  return y.to(x.scalar_type()).view(shape);
}

at::Tensor QuantLinear(const at::Tensor& x, const QuantMatrix& w, const at::Tensor& b) {
  const int64_t in = w.in(), out = w.out();
  TORCH_CHECK(x.size(-1) == in, "quantized linear: input has ", x.size(-1), " features, the weights ", in);
  const int64_t rows = x.numel() / in;
  if (rows > QuantLinearMaxRows() || at::GradMode::is_enabled()) return QuantLinearTiled(x, w, b);
  c10::SmallVector<int64_t, 5> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  // Few libtorch ops between two products (see FastLinear): bf16 results
  // stored by the kernels; any other dtype computed in fp32 and cast at the
  // end.
  const at::Tensor xc = x.is_contiguous() ? x : x.contiguous();
  const bool bf16_out = x.scalar_type() == at::kBFloat16;
  at::Tensor y = at::empty(shape, x.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
  if (bf16_out || x.scalar_type() == at::kFloat) {
    QuantLinearRows(xc.data_ptr(), x.scalar_type(), rows, w, b, y.data_ptr());
  } else {
    const at::Tensor xf = xc.to(at::kFloat);
    QuantLinearRows(xf.data_ptr(), at::kFloat, rows, w, b, y.data_ptr());
  }
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

void QuantLinearRows(const void* x, at::ScalarType x_dtype, int64_t rows, const QuantMatrix& w, const at::Tensor& b,
                     void* y) {
  const int64_t in = w.in(), out = w.out();
  // The input and the bias widened into buffers reused per thread (an fp32
  // tensor per call cost ~1-2 us each from cold caches).
  const QuantKernel kernel = ActiveQuantKernel();
  const bool avx2 = kernel != QuantKernel::kPortable && gemv::CpuHasAvx2Fma();
  thread_local std::vector<float> t_x, t_b;
  const float* bf = b.defined() ? FloatValues(b.contiguous(), t_b, avx2) : nullptr;
  float* y32 = x_dtype == at::kBFloat16 ? nullptr : static_cast<float*>(y);
  uint16_t* y16 = x_dtype == at::kBFloat16 ? static_cast<uint16_t*>(y) : nullptr;
  const int threads = at::get_num_threads();
  const RowChunks& chunks = SplitRowsCached(out, in, threads, w.bytes() / std::max<int64_t>(1, out));
  // Batched steps of a bf16 model: int8 weights widened to bf16 (Int8WideProblem).
  if (kernel == QuantKernel::kAvx512Bf16 && w.kind() == QuantMatrix::Kind::kInt8 && x_dtype == at::kBFloat16 &&
      rows >= QuantWideMinRows()) {
    const quant::Int8WideProblem p{w.data().data_ptr<int8_t>(),
                                   w.scale().data_ptr<float>(),
                                   w.padded_in(),
                                   in,
                                   static_cast<const uint16_t*>(x),
                                   rows,
                                   bf,
                                   nullptr,
                                   y16,
                                   out};
    ParallelChunks(chunks.count(), threads, [&](int64_t chunk) {
      quant::Int8WideRowsAvx512Bf16(p, chunks.begin[chunk], chunks.begin[chunk + 1]);
    });
    return;
  }
  const float* xf = FloatValues(x, x_dtype, rows * in, t_x, avx2);
  // Reused per thread (its vectors keep their capacity between calls).
  thread_local quant::Activations acts;
  acts.Prepare(xf, rows, in, w.padded_in(), w.kind() == QuantMatrix::Kind::kInt4 ? w.group() : 0, avx2);
  quant::Int8Problem p8;
  quant::Int4Problem p4;
  if (w.kind() == QuantMatrix::Kind::kInt8) {
    p8 = {&acts, w.data().data_ptr<int8_t>(), w.scale().data_ptr<float>(), bf, y32, out, y16};
  } else {
    p4 = {&acts,
          w.data().data_ptr<uint8_t>(),
          w.scale().data_ptr<float>(),
          w.zmin().data_ptr<float>(),
          w.group(),
          bf,
          y32,
          out,
          y16,
          w.data().stride(0),
          w.scale().stride(0)};
  }
  // (The smallest chunk by rows of `in` weights whatever their width: by
  // bytes, 128 KB made int4 matrices of ~1000 rows 4-5 chunks, and one
  // thread took 3 of 5. Whether to split beyond one chunk per thread goes
  // by bytes: SplitRows.)
  const bool int8 = w.kind() == QuantMatrix::Kind::kInt8;
  ParallelChunks(chunks.count(), threads, [&](int64_t chunk) {
    const int64_t r0 = chunks.begin[chunk], r1 = chunks.begin[chunk + 1];
    switch (kernel) {
      case QuantKernel::kAvx512Vnni:
      case QuantKernel::kAvx512Bf16:
        return int8 ? quant::Int8RowsAvx512Vnni(p8, r0, r1) : quant::Int4RowsAvx512Vnni(p4, r0, r1);
      case QuantKernel::kAvx2:
        return int8 ? quant::Int8RowsAvx2(p8, r0, r1) : quant::Int4RowsAvx2(p4, r0, r1);
      case QuantKernel::kPortable:
        return int8 ? quant::Int8RowsPortable(p8, r0, r1) : quant::Int4RowsPortable(p4, r0, r1);
    }
  });
}

}  // namespace internvl::llm
