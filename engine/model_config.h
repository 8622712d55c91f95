// config.json and tokenizer_config.json of a Hugging Face BERT model directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace topserve::engine {

enum class Task { kSequenceClassification, kQuestionAnswering };
enum class Activation { kGelu /* exact erf */, kGeluTanh /* gelu_new, gelu_pytorch_tanh */, kRelu };

struct BertConfig {
  Task task = Task::kSequenceClassification;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  Activation activation = Activation::kGelu;
  int64_t pad_token_id = 0;
  // Classification labels indexed by class id (from id2label; "LABEL_i" when absent).
  std::vector<std::string> labels;

  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t num_labels() const { return static_cast<int64_t>(labels.size()); }
};

struct TokenizerConfig {
  bool do_lower_case = true;
  // Unset: follows do_lower_case (the reference BERT tokenizer's behaviour).
  std::optional<bool> strip_accents;
  bool tokenize_chinese_chars = true;
  int64_t model_max_length = 512;
};

// Parses and validates config.json (positive sizes, hidden divisible by heads, known activation and
// architecture, ...). Errors name the file and the field.
absl::StatusOr<BertConfig> LoadBertConfig(const std::string& path);
absl::StatusOr<BertConfig> ParseBertConfig(const std::string& json_text, const std::string& origin);

// A missing file gives the defaults; a malformed one is an error naming the file and the field.
absl::StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& path);

}  // namespace topserve::engine
