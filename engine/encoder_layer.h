// One BERT encoder layer, for every precision: the two sublayers (self-attention, feed-forward)
// with their residual connections and LayerNorms, on the rows of a packed batch. The precision is
// the layer's own business (its Linears pack and run their weights, and the layer chains int8
// activations or switches attention to bf16 where that pays), so BertModel::Run has no branch per
// precision.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dnnl_ops.h"
#include "engine/model_config.h"

namespace topserve::engine {

// `count` sequences of `length` tokens each, stored back to back from row `offset`.
struct LengthGroup {
  int64_t offset = 0, length = 0, count = 0;
};

// Scratch of the layer ops, owned by a Workspace and grown to the largest batch it has run.
struct LayerScratch {
  std::vector<float> qkv, ctx, hidden, scores;
  std::vector<uint16_t> qkv_bf16, probs_bf16;  // bf16 attention
  // int8: per-row quantized activations and their scales (slots: see encoder_layer.cc)
  std::array<std::vector<uint8_t>, 3> q_codes;
  std::array<std::vector<float>, 3> q_scales;
};

// The weights of one layer as the checkpoint holds them ([out, in] row-major, fp32).
struct LayerWeights {
  std::vector<float> wqkv, bqkv;  // Q, K, V stacked: [3d, d], [3d]
  std::vector<float> w_attn_out, b_attn_out, w_ffn_in, b_ffn_in, w_ffn_out, b_ffn_out;
  std::vector<float> ln1_gamma, ln1_beta, ln2_gamma, ln2_beta;
};

class EncoderLayer {
 public:
  EncoderLayer() = default;
  // `bf16_attention`: int8 runs the attention products in bf16 (where the CPU has it natively and
  // BertModel::Load measured it faster); kBfloat16 always does.
  static absl::StatusOr<EncoderLayer> Create(const DnnlContext& ctx, const BertConfig& config,
                                             LayerWeights weights, Precision precision,
                                             bool bf16_attention);

  // y = LayerNorm(x + SelfAttention(x)) over `rows` rows, attention within each group. With
  // `importance` set, also importance[r] = the attention row r's token receives (mean over heads
  // and query rows of its sequence), which pruning ranks tokens by. `x_from_feed_forward`: x is
  // exactly what the previous layer's FeedForward wrote (no rows removed since), so int8 reuses the
  // quantized form that FeedForward's last pass made.
  void Attention(PrimitiveCache& cache, LayerScratch& scratch, std::span<const LengthGroup> groups,
                 const float* x, int64_t rows, float* y, double* importance,
                 bool x_from_feed_forward) const;

  // x = LayerNorm(y + W_2 act(W_1 y + b_1) + b_2) over `rows` rows.
  // `y_from_attention`: y is exactly what this layer's Attention just wrote (no rows removed
  // since), so int8 reuses the quantized form that Attention's last pass made.
  void FeedForward(PrimitiveCache& cache, LayerScratch& scratch, const float* y, int64_t rows,
                   float* x, bool y_from_attention) const;

 private:
  int64_t hidden_ = 0, ffn_ = 0;
  AttentionShape shape_;
  float eps_ = 1e-12f;
  Precision precision_ = Precision::kFloat32;
  bool bf16_attention_ = false;  // Q K^T and P V in bf16: reduced precisions on native-bf16 CPUs
  Linear qkv_, attn_out_, ffn_in_, ffn_out_;
  std::vector<float> ln1_gamma_, ln1_beta_, ln2_gamma_, ln2_beta_;
};

}  // namespace topserve::engine
