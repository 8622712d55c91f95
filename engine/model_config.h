// config.json and tokenizer_config.json of a Hugging Face BERT model directory.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/safetensors.h"

namespace topserve::engine {

// kFeatureExtraction: a headless encoder (`BertModel`, as sentence-transformers and pretrained
// checkpoints ship it); the output is the last hidden state of every token.
enum class Task { kSequenceClassification, kQuestionAnswering, kFeatureExtraction };
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
//
// Rules (each failure is INVALID_ARGUMENT "<origin>: <field> ..."; a missing file is NOT_FOUND):
//   - model_type, when present, is "bert"; position_embedding_type, when present, is "absolute";
//   - architectures holds BertForSequenceClassification, BertForQuestionAnswering or BertModel (a
//     headless encoder: kFeatureExtraction, unless a head is also named) (the first known entry
//     decides; two different heads are an error; unknown ones are named in the error);
//   - vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size are
//   required
//     integers in [1, 2^31); max_position_embeddings (512) and type_vocab_size (2) are optional,
//     same range; hidden_size % num_attention_heads == 0;
//   - hidden_act (default "gelu"): gelu / gelu_python (erf) -> kGelu, gelu_new / gelu_pytorch_tanh
//   ->
//     kGeluTanh, relu -> kRelu; anything else is an error naming the value;
//   - layer_norm_eps (default 1e-12) is a number > 0; pad_token_id (default 0, null allowed) is in
//     [0, vocab_size);
//   - id2label: object with keys "0".."n-1" (each once, contiguous) and string values; num_labels,
//     when also present, equals n. Without id2label the labels are LABEL_0..LABEL_{num_labels-1}
//     (num_labels defaults to 2). Question answering needs exactly 2 labels (start, end), as
//     Hugging Face's qa_outputs has num_labels outputs. label2id is ignored (Hugging Face does not
//     keep it consistent either);
//   - other keys (transformers_version, torch_dtype, dropout probabilities, ...) are ignored.
absl::StatusOr<BertConfig> LoadBertConfig(const std::string& path);
absl::StatusOr<BertConfig> ParseBertConfig(const std::string& json_text, const std::string& origin);

// A missing file gives the defaults; a malformed one is an error naming the file and the field.
// Fields read: do_lower_case, strip_accents (bool or null), tokenize_chinese_chars (bools) and
// model_max_length (positive integer; Hugging Face's "no limit" placeholder, any value >= 1e18 or
// written as a float that large, keeps the default 512). Other keys (tokenizer_class, special
// tokens) are ignored.
absl::StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& path);
absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(const std::string& json_text,
                                                     const std::string& origin);

// One weight the forward needs: its Hugging Face name and shape.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every tensor a BertForSequenceClassification / BertForQuestionAnswering / BertModel checkpoint
// must hold for `config`, in the checkpoint's usual order (embeddings, layers, pooler for
// classification only, then classifier.* or qa_outputs.*; a BertModel's names have no "bert."
// prefix and no head, as Hugging Face saves them). Names:
// bert.embeddings.{word,position,token_type}_embeddings.weight,
// bert.embeddings.LayerNorm.{weight,bias}, bert.encoder.layer.N.attention.self.{query,key,value}.*,
// bert.encoder.layer.N.attention.output.{dense,LayerNorm}.*,
// bert.encoder.layer.N.intermediate.dense.*, bert.encoder.layer.N.output.{dense,LayerNorm}.*,
// bert.pooler.dense.*, classifier.* / qa_outputs.*.
std::vector<TensorSpec> ExpectedBertTensors(const BertConfig& config);

// Checks that `weights` holds every expected tensor with the expected shape and a float dtype,
// first (before building the list) that it holds at least as many tensors as the config's layer
// count needs, so absurd sizes fail at once and allocate nothing. The
// error lists up to 5 problems (and how many in all), each naming the file and the tensor. Extra
// tensors (e.g. bert.embeddings.position_ids, bert.pooler.* of a QA checkpoint) are allowed.
absl::Status ValidateBertTensors(const SafetensorsFile& weights, const BertConfig& config);
// Only the first check: the file holds about as many tensors as the layer count needs (cheap, and
// the guard against configs whose sizes nothing backs).
absl::Status CheckTensorCount(const SafetensorsFile& weights, const BertConfig& config);

// A Hugging Face BERT model directory, opened and validated.
struct ModelDir {
  std::string dir;
  std::string config_path;   // dir/config.json
  std::string weights_path;  // dir/model.safetensors
  std::string vocab_path;    // dir/vocab.txt
  // The tokenizer's file: dir/vocab.txt when it exists, otherwise dir/tokenizer.json (existence
  // checked, contents are the tokenizer's job; see Tokenizer::LoadFromModelDir).
  std::string tokenizer_path;
  std::string tokenizer_config_path;  // dir/tokenizer_config.json (may be absent)
  BertConfig config;
  TokenizerConfig tokenizer;
  std::unique_ptr<SafetensorsFile> weights;
};

// Loads config.json, tokenizer_config.json (defaults when absent), maps model.safetensors and
// validates every tensor against the config; checks that vocab.txt or, without it, tokenizer.json
// exists. The first failure is returned, naming the file.
absl::StatusOr<ModelDir> LoadModelDir(const std::string& dir);

}  // namespace topserve::engine
