#include "engine/cost_model.h"

#include <cassert>

namespace topserve::engine {

ModelShape ModelShape::FromConfig(const BertConfig& config) {
  ModelShape s;
  s.hidden = config.hidden_size;
  s.ffn = config.intermediate_size;
  s.layers = config.num_layers;
  s.qa = config.task == Task::kQuestionAnswering;
  s.headless = config.task == Task::kFeatureExtraction;
  s.num_labels = s.qa || s.headless ? 0 : config.num_labels();
  return s;
}

int64_t LayerMacs(const ModelShape& shape, int64_t n, int64_t n_kept, Placement placement) {
  const int64_t d = shape.hidden;
  const int64_t f = shape.ffn;
  const int64_t ffn_tokens = placement == Placement::kAfterMha ? n_kept : n;
  return 3 * n * d * d              // Q, K, V projections
         + 2 * n * n * d            // scores (Q K^T) and context (P V)
         + n * d * d                // attention output projection
         + 2 * ffn_tokens * d * f;  // FFN up and down
}

int64_t HeadMacs(const ModelShape& shape, int64_t tokens_out) {
  const int64_t d = shape.hidden;
  if (shape.headless) return 0;
  if (shape.qa) return tokens_out * d * 2;
  return d * d + d * shape.num_labels;  // pooler + classifier on [CLS]
}

int64_t EncoderMacs(const ModelShape& shape, int64_t n, std::span<const int32_t> kept,
                    Placement placement) {
  int64_t total = 0;
  int64_t tokens = n;
  for (int64_t l = 0; l < shape.layers; ++l) {
    const int64_t k = l < static_cast<int64_t>(kept.size()) ? kept[l] : tokens;
    total += LayerMacs(shape, tokens, k, placement);
    tokens = k;
  }
  // QA heads produce logits for every token, dropped ones included (their carried states).
  total += HeadMacs(shape, shape.qa ? n : 1);
  return total;
}

int64_t UnprunedMacs(const ModelShape& shape, int64_t n) {
  return EncoderMacs(shape, n, {}, Placement::kAfterMha);
}

}  // namespace topserve::engine
