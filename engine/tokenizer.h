// BERT WordPiece tokenizer, identical to the reference (Hugging Face BertTokenizer: BasicTokenizer +
// WordpieceTokenizer) id for id, with byte offsets into the original UTF-8 text.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace topserve::engine {

// One word piece with the byte span [begin, end) of the original text it came from.
struct Piece {
  int32_t id = 0;
  int32_t begin = 0;
  int32_t end = 0;
};

enum class Truncation {
  kNone,          // input longer than max_length is an error
  kLongestFirst,  // drop one token at a time from the end of the longer part (the second when equal)
  kOnlyFirst,
  kOnlySecond,
};

// Model input for one sequence: [CLS] a [SEP] (b [SEP]).
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<int32_t> type_ids;
  // Byte offsets into the text each token came from; (0, 0) for special tokens.
  std::vector<int32_t> begin;
  std::vector<int32_t> end;
  // Which text each token came from: 0 = first, 1 = second, -1 = special token.
  std::vector<int8_t> segment;
  size_t size() const { return ids.size(); }
};

class Tokenizer {
 public:
  // Loads vocab.txt (one token per line; must contain [UNK], [CLS], [SEP]).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& vocab_path,
                                                          const TokenizerConfig& config);

  // Word pieces of one text, no special tokens. Invalid UTF-8 -> INVALID_ARGUMENT.
  absl::StatusOr<std::vector<Piece>> Tokenize(std::string_view text) const;

  // Builds [CLS] a [SEP] (b [SEP]) within max_length tokens (including specials).
  absl::StatusOr<Encoding> Build(const std::vector<Piece>& a, const std::vector<Piece>* b,
                                 size_t max_length, Truncation truncation) const;

  // Tokenize + Build.
  absl::StatusOr<Encoding> Encode(std::string_view a, std::optional<std::string_view> b,
                                  size_t max_length, Truncation truncation) const;

  int32_t cls_id() const { return cls_id_; }
  int32_t sep_id() const { return sep_id_; }
  int32_t unk_id() const { return unk_id_; }
  size_t vocab_size() const { return id_to_token_.size(); }
  const std::string& token(int32_t id) const { return id_to_token_.at(static_cast<size_t>(id)); }

 private:
  Tokenizer() = default;
  TokenizerConfig config_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  int32_t cls_id_ = -1, sep_id_ = -1, unk_id_ = -1, pad_id_ = -1, mask_id_ = -1;
};

}  // namespace topserve::engine
