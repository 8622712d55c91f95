#include "engine/encoder_layer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "engine/kernels.h"
#include "engine/profile.h"
#include "engine/rows.h"

namespace topserve::engine {
namespace {

// Scores of one attention chunk are bounded to this many floats (64 MiB).
constexpr int64_t kMaxScoreFloats = int64_t{16} << 20;

Epilogue ActivationEpilogue(Activation a) {
  switch (a) {
    case Activation::kGelu: return Epilogue::kGeluErf;
    case Activation::kGeluTanh: return Epilogue::kGeluTanh;
    case Activation::kRelu: return Epilogue::kRelu;
  }
  return Epilogue::kGeluErf;
}

// Element `offset` of a float (fp32 attention) or bf16 buffer.
const void* Offset(const void* base, int64_t offset, bool bf16) {
  return static_cast<const char*>(base) + offset * (bf16 ? 2 : 4);
}

}  // namespace

absl::StatusOr<EncoderLayer> EncoderLayer::Create(const DnnlContext& ctx, const BertConfig& c,
                                                  LayerWeights w, Precision precision) {
  EncoderLayer layer;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  layer.hidden_ = d;
  layer.ffn_ = f;
  layer.shape_ = {c.num_heads, c.head_dim()};
  layer.scale_ = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim())));
  layer.eps_ = static_cast<float>(c.layer_norm_eps);
  layer.precision_ = precision;
  layer.bf16_attention_ = precision != Precision::kFloat32 && CpuHasNativeBf16();
  // The residual sums happen in LayerNormResidualRows, so the output projections write x W + b.
  auto make = [&](const std::vector<float>& weight, const std::vector<float>& bias, int64_t out,
                  int64_t in, Epilogue epilogue, Linear& dst) -> absl::Status {
    auto lin = Linear::Create(ctx, weight.data(), bias.data(), out, in, epilogue, false, precision);
    if (!lin.ok()) return lin.status();
    dst = std::move(*lin);
    return absl::OkStatus();
  };
  for (auto st : {make(w.wqkv, w.bqkv, 3 * d, d, Epilogue::kNone, layer.qkv_),
                  make(w.w_attn_out, w.b_attn_out, d, d, Epilogue::kNone, layer.attn_out_),
                  make(w.w_ffn_in, w.b_ffn_in, f, d, ActivationEpilogue(c.activation), layer.ffn_in_),
                  make(w.w_ffn_out, w.b_ffn_out, d, f, Epilogue::kNone, layer.ffn_out_)}) {
    if (!st.ok()) return st;
  }
  layer.ln1_gamma_ = std::move(w.ln1_gamma);
  layer.ln1_beta_ = std::move(w.ln1_beta);
  layer.ln2_gamma_ = std::move(w.ln2_gamma);
  layer.ln2_beta_ = std::move(w.ln2_beta);
  return layer;
}

void EncoderLayer::Attention(PrimitiveCache& cache, LayerScratch& scratch,
                             std::span<const LengthGroup> groups, const float* x, int64_t rows,
                             float* y, double* importance) const {
  OpProfile* prof = cache.profile();
  const int64_t d = hidden_, heads = shape_.heads;
  float* qkv = Grow(scratch.qkv, rows * 3 * d);
  float* ctx = Grow(scratch.ctx, rows * d);
  {
    ScopedOp timed(prof, Op::kQkvGemm);
    qkv_.Forward(cache, x, rows, qkv);
  }
  const void* qkv_in = qkv;
  if (bf16_attention_) {
    ScopedOp timed(prof, Op::kConvert);
    uint16_t* qb = Grow(scratch.qkv_bf16, rows * 3 * d);
    ConvertToBf16(qkv, rows * 3 * d, qb);
    qkv_in = qb;
  }
  for (const LengthGroup& grp : groups) {
    const int64_t len = grp.length;
    const int64_t per_seq = heads * len * len;
    const int64_t chunk = std::max<int64_t>(1, kMaxScoreFloats / per_seq);
    for (int64_t first = 0; first < grp.count; first += chunk) {
      const int64_t g = std::min(chunk, grp.count - first);
      const int64_t off = grp.offset + first * len;
      float* scores = Grow(scratch.scores, g * per_seq);
      const void* q = Offset(qkv_in, off * 3 * d, bf16_attention_);
      {
        ScopedOp timed(prof, Op::kAttnScores);
        AttentionScores(cache, shape_, q, bf16_attention_, g, len, scale_, scores);
      }
      {
        ScopedOp timed(prof, Op::kSoftmax);
        SoftmaxRows(cache, scores, g * heads * len, len);
      }
      if (importance != nullptr) {
        ScopedOp timed(prof, Op::kImportance);
        AttentionReceived(scores, g, heads, len, importance + off);
      }
      const void* probs = scores;
      if (bf16_attention_) {
        ScopedOp timed(prof, Op::kConvert);
        uint16_t* pb = Grow(scratch.probs_bf16, g * per_seq);
        ConvertToBf16(scores, g * per_seq, pb);
        probs = pb;
      }
      ScopedOp timed(prof, Op::kAttnContext);
      AttentionContext(cache, shape_, probs, q, bf16_attention_, g, len, ctx + off * d);
    }
  }
  {
    ScopedOp timed(prof, Op::kAttnOutGemm);
    attn_out_.Forward(cache, ctx, rows, y);
  }
  ScopedOp timed(prof, Op::kLayerNorm);
  LayerNormResidualRows(y, x, rows, d, ln1_gamma_.data(), ln1_beta_.data(), eps_);
}

void EncoderLayer::FeedForward(PrimitiveCache& cache, LayerScratch& scratch, const float* y,
                               int64_t rows, float* x) const {
  OpProfile* prof = cache.profile();
  const int64_t d = hidden_, f = ffn_;
  float* hid = Grow(scratch.hidden, rows * f);
  if (precision_ == Precision::kInt8) {
    // The hidden activations never exist in fp32 memory: the up projection's epilogue quantizes
    // them per token for the down projection in the same pass.
    float* scales = Grow(scratch.q_scales, 4 * rows);
    const QuantizedRows qy{Grow(scratch.q_in, rows * d), scales, scales + rows};
    const QuantizedRows qh{Grow(scratch.q_hidden, rows * f), scales + 2 * rows, scales + 3 * rows};
    {
      ScopedOp timed(prof, Op::kQuantize);
      QuantizeRows(y, rows, d, qy);
    }
    {
      ScopedOp timed(prof, Op::kFfnInGemm);
      ffn_in_.ForwardQuantized(cache, qy, rows, hid, nullptr, &qh);
    }
    ScopedOp timed(prof, Op::kFfnOutGemm);
    ffn_out_.ForwardQuantized(cache, qh, rows, nullptr, x, nullptr);
  } else {
    {
      ScopedOp timed(prof, Op::kFfnInGemm);
      ffn_in_.Forward(cache, y, rows, hid);
    }
    ScopedOp timed(prof, Op::kFfnOutGemm);
    ffn_out_.Forward(cache, hid, rows, x);
  }
  ScopedOp timed(prof, Op::kLayerNorm);
  LayerNormResidualRows(x, y, rows, d, ln2_gamma_.data(), ln2_beta_.data(), eps_);
}

}  // namespace topserve::engine
