// Portable quantized kernels and the activation quantizer (quant_kernels.h).
#include "core/llm/quant_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace internvl::llm::quant {

void Activations::Prepare(const float* x, int64_t rows, int64_t in, int64_t padded, int64_t group_size, bool avx2) {
  m = rows;
  inp = padded;
  group = group_size;
  const int64_t span = SpanFor(group);
  const int64_t blocks = inp / kBlock, lanes = inp / 4;
  xq.assign(static_cast<size_t>(m * inp), 0);
  d.assign(static_cast<size_t>(m * blocks), 0.0f);
  corr.assign(static_cast<size_t>(m * lanes), 0);
  lane_d.assign(static_cast<size_t>(m * lanes), 0.0f);
  gsum.assign(group > 0 ? static_cast<size_t>(m * (inp / group)) : 0, 0.0f);
  span_d.assign(span == 128 ? static_cast<size_t>(m * (inp / span)) : 0, 0.0f);
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * in;
    int8_t* q = xq.data() + r * inp;
    for (int64_t s0 = 0; s0 < inp; s0 += span) {
      // The span's absolute maximum (exact in any order), its inputs beyond
      // `in` being zeros.
      const int64_t s1 = std::min(in, s0 + span);
      float amax = 0;
      if (avx2 && s1 - s0 == span) {
        amax = AbsMaxAvx2(xr + s0, span);
      } else {
        for (int64_t k = s0; k < s1; ++k) amax = std::max(amax, std::fabs(xr[k]));
      }
      const float scale = amax / 127.0f;
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      if (span == 128) span_d[r * (inp / span) + s0 / span] = scale;
      for (int64_t k0 = s0; k0 < s0 + span; k0 += kBlock) {
        const int64_t b = k0 / kBlock, k1 = std::clamp<int64_t>(in, k0, k0 + kBlock);
        d[r * blocks + b] = scale;
        int32_t sum = 0;
        if (avx2 && k1 - k0 == kBlock) {
          sum = QuantizeBlockAvx2(xr + k0, amax, q + k0, corr.data() + r * lanes + k0 / 4,
                                  lane_d.data() + r * lanes + k0 / 4);
        } else {
          for (int64_t k = k0; k < k1; ++k) {
            const int v = static_cast<int>(std::nearbyint(xr[k] * inv));
            q[k] = static_cast<int8_t>(std::clamp(v, -127, 127));
            sum += q[k];
          }
          for (int64_t l = k0 / 4; l < (k0 + kBlock) / 4; ++l) {
            int32_t lane = 0;
            for (int j = 0; j < 4; ++j) lane += q[4 * l + j];
            corr[r * lanes + l] = -128 * lane;
            lane_d[r * lanes + l] = scale;
          }
        }
        if (group > 0) gsum[r * (inp / group) + k0 / group] += scale * static_cast<float>(sum);
      }
    }
  }
}

void Int8RowsPortable(const Int8Problem& p, int64_t row_begin, int64_t row_end) {
  const Activations& a = *p.a;
  const int64_t blocks = a.inp / kBlock;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int8_t* w = p.w + r * a.inp;
    for (int64_t m = 0; m < a.m; ++m) {
      const int8_t* x = a.xq.data() + m * a.inp;
      float acc = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t dot = 0;
        for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k) dot += int32_t{w[k]} * x[k];
        acc += a.d[m * blocks + b] * static_cast<float>(dot);
      }
      float y = p.scale[r] * acc;
      if (p.bias != nullptr) y += p.bias[r];
      StoreY(p, m * p.out + r, y);
    }
  }
}

void Int4RowsPortable(const Int4Problem& p, int64_t row_begin, int64_t row_end) {
  const Activations& a = *p.a;
  const int64_t blocks = a.inp / kBlock, groups = a.inp / p.group;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* w = p.w + r * p.w_stride;
    for (int64_t m = 0; m < a.m; ++m) {
      const int8_t* x = a.xq.data() + m * a.inp;
      float acc = 0;
      for (int64_t g = 0; g < groups; ++g) {
        float gacc = 0;
        for (int64_t b = g * p.group / kBlock; b < (g + 1) * p.group / kBlock; ++b) {
          int32_t dot = 0;
          for (int64_t k = b * kBlock; k < (b + 1) * kBlock; ++k) {
            const int64_t c = k / kChunk4, j = k % kChunk4;
            const uint8_t byte = w[c * (kChunk4 / 2) + (j % 64)];
            const int32_t q = j < 64 ? (byte & 0xF) : (byte >> 4);
            dot += q * x[k];
          }
          gacc += a.d[m * blocks + b] * static_cast<float>(dot);
        }
        acc += p.scale[r * p.s_stride + g] * gacc + p.zmin[r * p.s_stride + g] * a.gsum[m * groups + g];
      }
      if (p.bias != nullptr) acc += p.bias[r];
      StoreY(p, m * p.out + r, acc);
    }
  }
}

void Int8WideRowsPortable(const Int8WideProblem& p, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t m = 0; m < p.m; ++m) {
      float acc = 0;
      for (int64_t k = 0; k < p.in; ++k) acc += Bf16BitsToFloat(p.x[m * p.in + k]) * p.w[r * p.inp + k];
      float y = acc * p.scale[r];
      if (p.bias != nullptr) y += p.bias[r];
      StoreY(p, m * p.out + r, y);
    }
  }
}

void DequantValuesPortable(const Dequant& p, int64_t r, int64_t k0, int64_t k1, int64_t offset) {
  for (int64_t k = k0; k < k1; ++k) {
    float v;
    if (p.group == 0) {
      v = static_cast<float>(p.w8[r * p.inp + k]) * p.scale[r];
    } else {
      const int64_t c = k / kChunk4, j = k % kChunk4, g = r * p.s_stride + k / p.group;
      const uint8_t byte = p.w4[r * p.w_stride + c * (kChunk4 / 2) + j % 64];
      // (This file is built without FMA on x86: the product and the sum are
      // rounded apart, as the reference's two ops.)
      const float product = static_cast<float>(j < 64 ? byte & 0xF : byte >> 4) * p.scale[g];
      v = product + p.zmin[g];
    }
    if (p.out16 != nullptr) {
      p.out16[offset + k] = FloatToBf16Bits(v);
    } else {
      p.out32[offset + k] = v;
    }
  }
}

void DequantRowsPortable(const Dequant& p, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) DequantValuesPortable(p, r, 0, p.in, (r - row_begin) * p.in);
}

#ifndef INTERNVL_HAVE_AVX2_GEMV
void DequantRowsAvx2(const Dequant& p, int64_t b, int64_t e) { DequantRowsPortable(p, b, e); }
int32_t QuantizeBlockAvx2(const float*, float, int8_t*, int32_t*, float*) { std::abort(); }
float AbsMaxAvx2(const float*, int64_t) { std::abort(); }
void Int8RowsAvx2(const Int8Problem& p, int64_t b, int64_t e) { Int8RowsPortable(p, b, e); }
void Int4RowsAvx2(const Int4Problem& p, int64_t b, int64_t e) { Int4RowsPortable(p, b, e); }
#endif
#ifndef INTERNVL_HAVE_AVX512BF16_QUANT
void Int8WideRowsAvx512Bf16(const Int8WideProblem& p, int64_t b, int64_t e) { Int8WideRowsPortable(p, b, e); }
#endif
#ifndef INTERNVL_HAVE_AVX512VNNI_QUANT
void DequantRowsAvx512(const Dequant& p, int64_t b, int64_t e) { DequantRowsPortable(p, b, e); }
void Int8RowsAvx512Vnni(const Int8Problem& p, int64_t b, int64_t e) { Int8RowsPortable(p, b, e); }
void Int4RowsAvx512Vnni(const Int4Problem& p, int64_t b, int64_t e) { Int4RowsPortable(p, b, e); }
bool CpuHasAvx512Vnni() { return false; }
#endif

}  // namespace internvl::llm::quant
