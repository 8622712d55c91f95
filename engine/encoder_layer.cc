#include "engine/encoder_layer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "base/status_macros.h"
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

// Slot `slot` of the int8 scratch: room for `rows` quantized rows of `width` values. Slot 0 holds
// the input of the projection about to run (Q|K|V's, written by the previous layer's FeedForward,
// then the attention output's), slot 1 Attention's output (the FFN's input), slot 2 the FFN's
// hidden rows.
QuantizedRows QuantizedSlot(LayerScratch& scratch, int slot, int64_t rows, int64_t width) {
  auto& codes = scratch.q_codes[static_cast<size_t>(slot)];
  auto& scales = scratch.q_scales[static_cast<size_t>(slot)];
  float* sc = Grow(scales, 2 * rows);
  return QuantizedRows{Grow(codes, rows * width), sc, sc + rows};
}

// Slot `slot` holding `rows` rows of x quantized: quantized here, unless an earlier pass already
// wrote exactly these rows there (`ready`).
QuantizedRows QuantizedInput(OpProfile* prof, LayerScratch& scratch, int slot, const float* x,
                             int64_t rows, int64_t width, bool ready) {
  const QuantizedRows q = QuantizedSlot(scratch, slot, rows, width);
  if (!ready) {
    ScopedOp timed(prof, Op::kQuantize);
    QuantizeRows(x, rows, width, q);
  }
  return q;
}

}  // namespace

absl::StatusOr<EncoderLayer> EncoderLayer::Create(const DnnlContext& ctx, const BertConfig& c,
                                                  LayerWeights w, Precision precision,
                                                  bool bf16_attention) {
  EncoderLayer layer;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  layer.hidden_ = d;
  layer.ffn_ = f;
  layer.shape_ = {c.num_heads, c.head_dim()};
  layer.eps_ = static_cast<float>(c.layer_norm_eps);
  layer.precision_ = precision;
  layer.bf16_attention_ = CpuHasNativeBf16() && (precision == Precision::kBfloat16 ||
                                                 (precision == Precision::kInt8 && bf16_attention));
  // Attention's 1/sqrt(dh) goes into Q's weights and bias, so the scores need no scaling pass
  // (exact when dh is a power of 4, as in every BERT: 64 gives 1/8).
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim())));
  for (int64_t i = 0; i < d * d; ++i) w.wqkv[static_cast<size_t>(i)] *= scale;
  for (int64_t i = 0; i < d; ++i) w.bqkv[static_cast<size_t>(i)] *= scale;
  // The residual sums happen in LayerNormResidualRows, so the output projections write x W + b.
  auto make = [&](const std::vector<float>& weight, const std::vector<float>& bias, int64_t out,
                  int64_t in, Epilogue epilogue, Linear& dst) -> absl::Status {
    ASSIGN_OR_RETURN(
        dst, Linear::Create(ctx, weight.data(), bias.data(), out, in, epilogue, false, precision));
    return absl::OkStatus();
  };
  for (auto st :
       {make(w.wqkv, w.bqkv, 3 * d, d, Epilogue::kNone, layer.qkv_),
        make(w.w_attn_out, w.b_attn_out, d, d, Epilogue::kNone, layer.attn_out_),
        make(w.w_ffn_in, w.b_ffn_in, f, d, ActivationEpilogue(c.activation), layer.ffn_in_),
        make(w.w_ffn_out, w.b_ffn_out, d, f, Epilogue::kNone, layer.ffn_out_)}) {
    RETURN_IF_ERROR(st);
  }
  layer.ln1_gamma_ = std::move(w.ln1_gamma);
  layer.ln1_beta_ = std::move(w.ln1_beta);
  layer.ln2_gamma_ = std::move(w.ln2_gamma);
  layer.ln2_beta_ = std::move(w.ln2_beta);
  return layer;
}

void EncoderLayer::Attention(PrimitiveCache& cache, LayerScratch& scratch,
                             std::span<const LengthGroup> groups, const float* x, int64_t rows,
                             float* y, double* importance, bool x_from_feed_forward) const {
  OpProfile* prof = cache.profile();
  const int64_t d = hidden_, heads = shape_.heads;
  const bool int8 = precision_ == Precision::kInt8;
  float* ctx = Grow(scratch.ctx, rows * d);
  // Q | K | V: fp32 rows [rows, 3d], or for bf16 attention three bf16 planes [rows, d] (dense
  // matrices, which oneDNN multiplies faster). int8 writes the planes straight from its output
  // pass; fp32 and bf16 layers write fp32 and convert.
  float* qkv = nullptr;
  uint16_t* qkv_bf16 = bf16_attention_ ? Grow(scratch.qkv_bf16, rows * 3 * d) : nullptr;
  if (int8) {
    const QuantizedRows qx = QuantizedInput(prof, scratch, 0, x, rows, d, x_from_feed_forward);
    float* f32 = Grow(scratch.qkv, rows * 3 * d);  // the output, or the pass's scratch
    if (!bf16_attention_) qkv = f32;
    ScopedOp timed(prof, Op::kQkvGemm);
    qkv_.ForwardQuantized(
        cache, qx, rows, f32,
        bf16_attention_ ? Int8Output{.bf16 = qkv_bf16, .bf16_planes = 3} : Int8Output{.y = qkv});
  } else {
    qkv = Grow(scratch.qkv, rows * 3 * d);
    {
      ScopedOp timed(prof, Op::kQkvGemm);
      qkv_.Forward(cache, x, rows, qkv);
    }
    if (bf16_attention_) {
      ScopedOp timed(prof, Op::kConvert);
      ConvertToBf16Planes(qkv, rows, 3 * d, 3, qkv_bf16);
    }
  }
  // Token t's Q, K and V rows.
  auto heads_at = [&](int64_t t) {
    if (bf16_attention_) {
      const uint16_t* q = qkv_bf16 + t * d;
      return HeadRows{q, q + rows * d, q + 2 * rows * d, d, true};
    }
    const float* q = qkv + t * 3 * d;
    return HeadRows{q, q + d, q + 2 * d, 3 * d, false};
  };
  for (const LengthGroup& grp : groups) {
    const int64_t len = grp.length;
    const int64_t per_seq = heads * len * len;
    const int64_t chunk = std::max<int64_t>(1, kMaxScoreFloats / per_seq);
    for (int64_t first = 0; first < grp.count; first += chunk) {
      const int64_t g = std::min(chunk, grp.count - first);
      const int64_t off = grp.offset + first * len;
      float* scores = Grow(scratch.scores, g * per_seq);
      const HeadRows qkv_rows = heads_at(off);
      {
        ScopedOp timed(prof, Op::kAttnScores);
        AttentionScores(cache, shape_, qkv_rows, g, len, scores);
      }
      {
        ScopedOp timed(prof, Op::kSoftmax);
        SoftmaxRows(cache, scores, g * heads * len, len);
      }
      if (importance != nullptr) {
        ScopedOp timed(prof, Op::kImportance);
        AttentionReceived(scores, g, heads, len, importance + off);
      }
      // fp32 softmax, then rounding to nearest even: oneDNN 2.6's softmax_v2 with a bf16 output
      // saves this pass but moved int8 logits ~35% further from the reference (cls-relu fixture).
      const void* probs = scores;
      if (bf16_attention_) {
        ScopedOp timed(prof, Op::kConvert);
        uint16_t* pb = Grow(scratch.probs_bf16, g * per_seq);
        ConvertToBf16(scores, g * per_seq, pb);
        probs = pb;
      }
      ScopedOp timed(prof, Op::kAttnContext);
      AttentionContext(cache, shape_, probs, qkv_rows, g, len, ctx + off * d);
    }
  }
  const ResidualNorm ln1{x, ln1_gamma_.data(), ln1_beta_.data(), eps_};
  if (int8) {
    // y = LayerNorm(x + ctx W + b) in the output projection's own pass; y is also quantized there
    // for the FFN's first projection.
    const QuantizedRows qc = QuantizedInput(prof, scratch, 0, ctx, rows, d, false);
    const QuantizedRows qy = QuantizedSlot(scratch, 1, rows, d);
    ScopedOp timed(prof, Op::kAttnOutGemm);
    attn_out_.ForwardQuantized(cache, qc, rows, nullptr,
                               Int8Output{.y = y, .quantized = &qy, .norm = &ln1});
    return;
  }
  {
    ScopedOp timed(prof, Op::kAttnOutGemm);
    attn_out_.Forward(cache, ctx, rows, y);
  }
  ScopedOp timed(prof, Op::kLayerNorm);
  LayerNormResidualRows(y, x, rows, d, ln1.gamma, ln1.beta, eps_);
}

void EncoderLayer::FeedForward(PrimitiveCache& cache, LayerScratch& scratch, const float* y,
                               int64_t rows, float* x, bool y_from_attention) const {
  OpProfile* prof = cache.profile();
  const int64_t d = hidden_, f = ffn_;
  float* hid = Grow(scratch.hidden, rows * f);
  const ResidualNorm ln2{y, ln2_gamma_.data(), ln2_beta_.data(), eps_};
  if (precision_ == Precision::kInt8) {
    // y arrives quantized from Attention's last pass unless rows were removed since; the hidden
    // activations never exist in fp32 memory (the up projection's pass quantizes them for the down
    // projection), and the down projection's pass adds the residual, norms, and quantizes x for
    // the next layer's Q|K|V.
    const QuantizedRows qy = QuantizedInput(prof, scratch, 1, y, rows, d, y_from_attention);
    const QuantizedRows qh = QuantizedSlot(scratch, 2, rows, f);
    {
      ScopedOp timed(prof, Op::kFfnInGemm);
      ffn_in_.ForwardQuantized(cache, qy, rows, hid, Int8Output{.quantized = &qh});
    }
    ScopedOp timed(prof, Op::kFfnOutGemm);
    const QuantizedRows qx = QuantizedSlot(scratch, 0, rows, d);
    ffn_out_.ForwardQuantized(cache, qh, rows, nullptr,
                              Int8Output{.y = x, .quantized = &qx, .norm = &ln2});
    return;
  }
  {
    ScopedOp timed(prof, Op::kFfnInGemm);
    ffn_in_.Forward(cache, y, rows, hid);
  }
  {
    ScopedOp timed(prof, Op::kFfnOutGemm);
    ffn_out_.Forward(cache, hid, rows, x);
  }
  ScopedOp timed(prof, Op::kLayerNorm);
  LayerNormResidualRows(x, y, rows, d, ln2.gamma, ln2.beta, eps_);
}

}  // namespace topserve::engine
