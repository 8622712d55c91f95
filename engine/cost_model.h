// The one place where the service's compute figures are defined: multiply-accumulates (MACs) of the
// BERT encoder and heads as a function of tokens entering and kept per layer. FLOPs = 2 x MACs.
// Everything the service reports (FLOPs used, unpruned FLOPs, their ratio) and everything the
// budget planner decides comes from these functions. training/cost.py implements the same formula
// and a test keeps them equal.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/model_config.h"

namespace topserve::engine {

// Where pruned tokens leave a layer.
enum class Placement {
  kAfterMha,  // layer l's attention scores decide; layer l's FFN already runs on the kept tokens
  kBetweenLayers,  // layer l's attention scores decide; the tokens leave after layer l's output
};

struct ModelShape {
  int64_t hidden = 0;  // d
  int64_t ffn = 0;     // f
  int64_t layers = 0;
  int64_t num_labels = 0;  // classification head width (0 for QA and feature extraction)
  bool qa = false;
  bool headless = false;  // feature extraction: the last hidden states are the output, no head

  static ModelShape FromConfig(const BertConfig& config);
};

// MACs of one encoder layer with n tokens in and n_kept tokens kept at its pruning point.
int64_t LayerMacs(const ModelShape& shape, int64_t n, int64_t n_kept, Placement placement);

// MACs of the heads: pooler + classifier on [CLS], or the QA projection on `tokens_out` tokens;
// 0 for a headless encoder.
int64_t HeadMacs(const ModelShape& shape, int64_t tokens_out);

// kept[l] = tokens remaining after layer l's pruning point (kept[l] <= tokens entering layer l).
// Embeddings are table look-ups and count 0 MACs.
int64_t EncoderMacs(const ModelShape& shape, int64_t n, std::span<const int32_t> kept,
                    Placement placement);

// The same model unpruned at length n.
int64_t UnprunedMacs(const ModelShape& shape, int64_t n);

// FLOPs = 2 x MACs (a multiply and an add), the one conversion every reported FLOPs figure uses.
inline int64_t FlopsFromMacs(int64_t macs) { return 2 * macs; }

}  // namespace topserve::engine
