#include "core/llm/paged_attention.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/llm/gemv.h"
#include "core/llm/gemv_kernels.h"
#include "core/nn/attention.h"
#include "core/nn/device.h"
#include "core/nn/softmax.h"
#include "core/nn/torch_compat.h"
#include "core/nn/torch_util.h"

namespace internvl::llm {
namespace {

// Scores of one query tile stay under this many elements (8 MB in fp32):
// well below glibc's mmap threshold, so no fresh zeroed pages per tile.
constexpr int64_t kTileScoreElements = int64_t{2} << 20;

// Keys or values [0, len) of one sequence, gathered from its blocks:
// [KV, len, d] contiguous.
at::Tensor Gather(const at::Tensor& pool, const std::vector<int32_t>& blocks, int64_t len) {
  const int64_t bs = pool.size(2);
  const int64_t nb = (len + bs - 1) / bs;
  at::Tensor idx = at::from_blob(const_cast<int32_t*>(blocks.data()), {nb}, at::kInt).to(pool.device(), at::kLong);
  const at::Tensor by_head = pool.transpose(0, 1);
  at::Tensor g;  // [KV, nb, bs, d]
  if (by_head.is_contiguous()) {
    // KV-head-major storage (paged_kv.h): each head's blocks selected into
    // its slice, one copy (index_select over dim 1 ran 1.6x slower).
    g = at::empty({pool.size(1), nb, bs, pool.size(3)}, pool.options());
    for (int64_t j = 0; j < pool.size(1); ++j) {
      at::Tensor head = g[j];
      at::index_select_out(head, by_head[j], 0, idx);
    }
  } else {
    g = pool.index_select(0, idx).permute({1, 0, 2, 3});  // (copied again by the reshape)
  }
  return g.reshape({pool.size(1), nb * bs, pool.size(3)}).narrow(1, 0, len);
}

// The causal mask of one query tile in place: scores [KV, G * t, len]
// (contiguous, fp32 or bf16, on the CPU), len = first + t, row r of each
// block of t rows (position first + r) gets -inf at keys first + r + 1 on.
// Only the tile's last t keys hold masked entries, so this writes t(t-1)/2
// per block where masked_fill_ with a broadcast [t, len] mask read and
// compared every score (1.2 ms per 59-row tile at 2500 keys here, against
// 0.6 for the softmax). False (nothing written) for other tensors.
bool MaskCausalTileInPlace(const at::Tensor& scores, int64_t t, int64_t first) {
  if (!scores.device().is_cpu() || !scores.is_contiguous() || scores.dim() != 3) return false;
  const int64_t len = scores.size(2), rows = scores.size(0) * scores.size(1);
  if (len != first + t || rows % t != 0) return false;
  auto mask = [&](auto* p, auto neg_inf) {
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t r = row % t;
      std::fill(p + row * len + first + r + 1, p + (row + 1) * len, neg_inf);
    }
  };
  const float inf = std::numeric_limits<float>::infinity();
  if (scores.scalar_type() == at::kFloat) {
    mask(scores.data_ptr<float>(), -inf);
  } else if (scores.scalar_type() == at::kBFloat16) {
    mask(scores.data_ptr<at::BFloat16>(), at::BFloat16(-inf));
  } else {
    return false;
  }
  return true;
}

// The reference's eager attention for `n` queries at positions [start,
// start + n) over keys/values [KV, start + n, d], in query tiles; writes
// [n, H*d] into `out`.
void PrefillAttention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t start,
                      int64_t heads, int64_t kv_heads, int64_t head_dim, at::Tensor out) {
  const int64_t n = q.size(0);
  const int64_t groups = heads / kv_heads;
  const int64_t total = start + n;
  const int64_t tile = std::clamp<int64_t>(kTileScoreElements / std::max<int64_t>(1, heads * total), 1, n);
  const double scale = std::sqrt(static_cast<double>(head_dim));
  const bool scale_pow2 = gemv::ScaleIsPowerOfTwo(static_cast<float>(scale));
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(q.device());
#if INTERNVL_TORCH_HAS_SDPA
  if (!q.device().is_cpu()) {
    // Off the CPU (Torch 2.x): the whole chunk in one fused attention kernel
    // (no score matrix in memory); query head j*G+g reads kv head j.
    at::Tensor qh = q.reshape({n, heads, head_dim}).transpose(0, 1).unsqueeze(0);  // [1, H, n, d]
    at::Tensor kh = keys.narrow(1, 0, total).repeat_interleave(groups, 0).unsqueeze(0);
    at::Tensor vh = values.narrow(1, 0, total).repeat_interleave(groups, 0).unsqueeze(0);
    at::Tensor allowed = at::arange(total, long_opts).view({1, total}) <=
                         (at::arange(n, long_opts) + start).view({n, 1});  // [n, total], true = attend
    at::Tensor o = at::scaled_dot_product_attention(qh, kh, vh, allowed);  // [1, H, n, d]
    out.copy_(o[0].transpose(0, 1).reshape({n, heads * head_dim}));
    return;
  }
#endif
  if (FusedCausalAttentionRuns(q, keys, values, out)) {
    // bf16 on a CPU with AVX-512-BF16 (core/nn/attention.h): each query head
    // in one kernel, the arithmetic below (the queries divided first by a
    // power-of-two scale, else the rounded scores by the scale as a bf16
    // scalar, as div_ takes it), no scores in memory, causal blocks skipped.
    const float divisor = scale_pow2 ? 1.0f : static_cast<float>(c10::BFloat16(static_cast<float>(scale)));
    FusedCausalAttentionBf16(scale_pow2 ? q.div(scale) : q, keys, values, start, divisor, out);
    return;
  }
  for (int64_t i0 = 0; i0 < n; i0 += tile) {
    const int64_t t = std::min(tile, n - i0);
    const int64_t len = start + i0 + t;  // keys the tile's last query sees
    at::Tensor qt = q.narrow(0, i0, t)
                        .view({t, kv_heads, groups, head_dim})
                        .permute({1, 2, 0, 3})
                        .reshape({kv_heads, groups * t, head_dim});
    // A power-of-two scale (head_dim 64: 8) divides the queries instead of
    // the scores: exact either way, so the same bits, on t x d values instead
    // of t x len (0.25 ms of bf16 division per 59-row tile at 2500 keys).
    if (scale_pow2) qt = qt.div(scale);
    at::Tensor scores = MatmulFp32Accumulate(qt, keys.narrow(1, 0, len).transpose(1, 2));  // [KV, G*t, len]
    if (!scale_pow2) scores.div_(scale);
    if (t > 1 && !MaskCausalTileInPlace(scores, t, start + i0)) {
      // Query r (position start+i0+r) sees keys j <= start+i0+r.
      at::Tensor key_pos = at::arange(len, long_opts).view({1, len});
      at::Tensor query_pos = (at::arange(t, long_opts) + (start + i0)).view({t, 1});
      at::Tensor masked = key_pos > query_pos;  // [t, len]
      scores.view({kv_heads, groups, t, len}).masked_fill_(masked, -std::numeric_limits<double>::infinity());
    }
    at::Tensor probs = SoftmaxLastDimTo(scores, q.scalar_type());
    at::Tensor o = MatmulFp32Accumulate(probs, values.narrow(1, 0, len));  // [KV, G*t, d]
    out.narrow(0, i0, t).copy_(
        o.view({kv_heads, groups, t, head_dim}).permute({2, 0, 1, 3}).reshape({t, heads * head_dim}));
  }
}

// One group of decoding sequences at once (PagedContext::DecodeGroup): q
// [D, H, d] -> [D, H*d], as PrefillAttention's arithmetic for one query.
at::Tensor BatchedDecodeAttention(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                                  const PagedContext::DecodeGroup& group, int64_t heads, int64_t kv_heads,
                                  int64_t head_dim) {
  const int64_t d = q.size(0), nb = group.blocks.size(1), bs = kc.size(2), len = nb * bs;
  const int64_t groups = heads / kv_heads;
  auto gather = [&](const at::Tensor& pool) {
    return pool.index_select(0, group.blocks.reshape({-1}))
        .view({d, nb, kv_heads, bs, head_dim})
        .permute({0, 2, 1, 3, 4})
        .reshape({d, kv_heads, len, head_dim});
  };
  // (A bf16 cache under fp32 compute: widened, exactly.)
  at::Tensor keys = gather(kc).to(q.scalar_type()), values = gather(vc).to(q.scalar_type());
  // Masked positions (a block's slots past the sequence, whole padding blocks
  // of the table) hold other sequences' or stale rows: zeroed, since their
  // zero weight times a NaN there would still poison this sequence.
  values.masked_fill_(group.masked.transpose(-1, -2), 0);
  at::Tensor qg = q.reshape({d, kv_heads, groups, head_dim});
  at::Tensor scores = MatmulFp32Accumulate(qg, keys.transpose(-1, -2));  // [D, KV, G, len]
  scores.div_(std::sqrt(static_cast<double>(head_dim)));
  scores.masked_fill_(group.masked, -std::numeric_limits<double>::infinity());
  at::Tensor probs = SoftmaxLastDimTo(scores, q.scalar_type());
  return MatmulFp32Accumulate(probs, values).reshape({d, heads * head_dim});
}

// Stores the fed tokens' rows [N, KV, d] (in the pool's dtype) at their
// (block, slot) positions of a [blocks, KV, bs, d] pool. On the CPU, a copy
// per token and kv head: index_put_ on the permuted view cost ~55 us per
// call, 2 per layer and step (~2.6 ms per token, 4% of the decoding thread
// in a perf profile of bench_decode). Elsewhere one index_put_. (The slots
// are inside the pool: PagedContext::SlotElement.)
void WriteSlots(at::Tensor& pool, const at::Tensor& rows, const PagedContext& ctx) {
  at::Tensor src = rows.to(pool.scalar_type());
  const int64_t n = static_cast<int64_t>(ctx.slot_block_host.size());
  const int64_t kv_heads = pool.size(1), d = pool.size(3);
  // (Rows of d contiguous; blocks and heads at the pool's strides: paged_kv.h.)
  const bool direct = pool.device().is_cpu() && src.device().is_cpu() && pool.stride(3) == 1 && pool.stride(2) == d &&
                      src.dim() == 3 && src.size(0) == n && src.size(1) == kv_heads && src.size(2) == d;
  if (!direct) {
    // [blocks, bs, KV, d] view: the (block, slot) pairs index one token's
    // rows of every kv head (on the CPU made here from the host vectors).
    const auto long_opts = at::TensorOptions().dtype(at::kLong);
    const at::Tensor blocks =
        ctx.slot_block.defined() ? ctx.slot_block : at::tensor(ctx.slot_block_host, long_opts).to(pool.device());
    const at::Tensor offsets =
        ctx.slot_offset.defined() ? ctx.slot_offset : at::tensor(ctx.slot_offset_host, long_opts).to(pool.device());
    pool.permute({0, 2, 1, 3}).index_put_({blocks, offsets}, src);
    return;
  }
  src = src.contiguous();
  const int64_t elem = static_cast<int64_t>(pool.element_size());
  const char* from = static_cast<const char*>(src.data_ptr());
  char* to = static_cast<char*>(pool.data_ptr());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < kv_heads; ++j) {
      std::memcpy(to + ctx.SlotElement(pool, i, j) * elem, from + (i * kv_heads + j) * d * elem,
                  static_cast<size_t>(d * elem));
    }
  }
}

}  // namespace

PagedContext MakePagedContext(PagedKVPool& pool, const std::vector<PagedSeq>& seqs) {
  PagedContext ctx;
  ctx.pool = &pool;
  ctx.seqs = &seqs;
  int64_t rows = 0;
  for (const PagedSeq& s : seqs) rows += s.num_new;
  std::vector<int64_t> block(rows), offset(rows);
  const int bs = pool.block_size();
  int64_t r = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const PagedSeq& s = seqs[i];
    ctx.row_begin.push_back(r);
    (s.num_new == 1 ? ctx.decode_seqs : ctx.prefill_seqs).push_back(static_cast<int64_t>(i));
    for (int64_t p = s.start; p < s.start + s.num_new; ++p, ++r) {
      block[r] = s.blocks[p / bs];
      offset[r] = p % bs;
    }
  }
  const auto device = pool.key(0).device();
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  if (!device.is_cpu()) {
    // (On the CPU, WriteSlots copies row by row from the host vectors: two
    // tensors made here per step were ~4 libtorch calls, each ~10-20 us when
    // a decode step's weights have just streamed through the caches.)
    ctx.slot_block = at::tensor(block, long_opts).to(device);
    ctx.slot_offset = at::tensor(offset, long_opts).to(device);
  }
  ctx.slot_block_host = std::move(block);
  ctx.slot_offset_host = std::move(offset);
  if (!ctx.decode_seqs.empty() && !UseCpuKernels(device)) {
    std::vector<int64_t> order = ctx.decode_seqs;  // longest first
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return seqs[a].start > seqs[b].start; });
    for (size_t first = 0; first < order.size();) {
      const int64_t longest = seqs[order[first]].start + 1;
      size_t end = first + 1;
      while (end < order.size() && 2 * (seqs[order[end]].start + 1) >= longest) ++end;
      PagedContext::DecodeGroup g;
      g.seqs.assign(order.begin() + first, order.begin() + end);
      const int64_t dn = static_cast<int64_t>(g.seqs.size()), nb = (longest + bs - 1) / bs;
      std::vector<int64_t> rows, tables(dn * nb, 0);
      at::Tensor masked = at::ones({dn, 1, 1, nb * bs}, at::TensorOptions().dtype(at::kBool));
      for (int64_t j = 0; j < dn; ++j) {
        const PagedSeq& s = seqs[g.seqs[j]];
        const int64_t len = s.start + 1;
        rows.push_back(ctx.row_begin[g.seqs[j]]);
        for (int64_t b = 0; b < (len + bs - 1) / bs; ++b) tables[j * nb + b] = s.blocks[b];
        masked[j].narrow(-1, 0, len).fill_(false);
      }
      g.rows = at::tensor(rows, long_opts).to(device);
      g.blocks = at::tensor(tables, long_opts).view({dn, nb}).to(device);
      g.masked = masked.to(device);
      ctx.decode_groups.push_back(std::move(g));
      first = end;
    }
  }
  return ctx;
}

at::Tensor PagedAttend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const PagedContext& ctx,
                       int layer, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  at::Tensor& kc = ctx.pool->key(layer);
  at::Tensor& vc = ctx.pool->value(layer);
  WriteSlots(kc, k[0], ctx);
  WriteSlots(vc, v[0], ctx);

  const std::vector<PagedSeq>& seqs = *ctx.seqs;
  const int64_t n = q.size(1);
  at::Tensor qr = q[0];  // [N, H, d]
  // (Allocated only where rows are written piecewise: a step of decodes
  // alone takes the decode attention's own result, one op less per layer.)
  at::Tensor out;
  auto output = [&]() -> at::Tensor& {
    if (!out.defined()) out = at::empty({n, heads * head_dim}, q.options());
    return out;
  };
  std::vector<int64_t> general = ctx.prefill_seqs;
  for (const PagedContext::DecodeGroup& g : ctx.decode_groups) {
    output().index_copy_(0, g.rows,
                         BatchedDecodeAttention(qr.index_select(0, g.rows), kc, vc, g, heads, kv_heads, head_dim));
  }
  if (!ctx.decode_seqs.empty() && ctx.decode_groups.empty()) {
    std::vector<const std::vector<int32_t>*> tables;
    std::vector<int64_t> lens;
    std::vector<int64_t> rows;
    for (int64_t i : ctx.decode_seqs) {
      tables.push_back(&seqs[i].blocks);
      lens.push_back(seqs[i].start + 1);
      rows.push_back(ctx.row_begin[i]);
    }
    const bool all_rows = ctx.decode_seqs.size() == static_cast<size_t>(n);
    at::Tensor index = all_rows ? at::Tensor() : at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(q.device());
    at::Tensor dq = all_rows ? qr : qr.index_select(0, index);
    at::Tensor d = PagedDecodeAttention(dq, kc, vc, tables, lens);  // [S, H*d] or undefined
    if (d.defined()) {
      if (all_rows) {
        out = d;
      } else {
        output().index_copy_(0, index, d);
      }
    } else {
      general.insert(general.end(), ctx.decode_seqs.begin(), ctx.decode_seqs.end());
    }
  }
  output();
  for (int64_t i : general) {
    const PagedSeq& s = seqs[i];
    const int64_t len = s.start + s.num_new;
    at::Tensor keys = Gather(kc, s.blocks, len).to(qr.scalar_type());
    at::Tensor values = Gather(vc, s.blocks, len).to(qr.scalar_type());
    PrefillAttention(qr.narrow(0, ctx.row_begin[i], s.num_new), keys, values, s.start, heads, kv_heads, head_dim,
                     out.narrow(0, ctx.row_begin[i], s.num_new));
  }
  return out.unsqueeze(0);
}

}  // namespace internvl::llm
