// Tokenizers identical to Hugging Face's, id for id, with byte offsets into the original UTF-8
// text: vocab.txt as BertTokenizer (BasicTokenizer + WordpieceTokenizer) runs it, and
// tokenizer.json as the tokenizers library runs it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace topserve::engine {
namespace tokenizer_internal {  // engine/tokenizer_parts.h
class TextTokenizer;
class WordPieceTrie;
}  // namespace tokenizer_internal

// One word piece with the byte span [begin, end) of the original text it came from.
struct Piece {
  int32_t id = 0;
  int32_t begin = 0;
  int32_t end = 0;
};

enum class Truncation {
  kNone,          // input longer than max_length is an error
  kLongestFirst,  // drop one token at a time from the end of the longer part (the second when
                  // equal)
  kOnlyFirst,
  kOnlySecond,
};

// Model input for one sequence or a pair, laid out by the post-processor (BERT: [CLS] a [SEP] (b
// [SEP])).
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

// The post-processor: the special tokens placed around one sequence (single) or two (pair), and the
// token type id of every part. vocab.txt: [CLS]:0 $A:0 [SEP]:0 (pair: ... $B:1 [SEP]:1).
struct PostTemplate {
  struct Item {
    int8_t sequence =
        -1;  // 0: the first text's pieces, 1: the second's, -1: the special tokens `ids`
    std::vector<int32_t> ids;  // special tokens (sequence == -1)
    int32_t type_id = 0;
  };
  std::vector<Item> single, pair;
  // Special tokens added around one sequence (pair = false) or two.
  size_t num_special_tokens(bool pair) const;
};

// Thread-safe after Load: all methods are const and keep no shared mutable state.
//
// Two kinds of tokenizer load: vocab.txt (Load) and tokenizer.json (LoadJson); LoadFromModelDir
// picks.
//
// vocab.txt behaviour (Hugging Face BertTokenizer, slow/Python version, Unicode 14.0 character data
// as in Python 3.11's unicodedata):
//  - a literal special token in the text ([UNK] [SEP] [PAD] [CLS] [MASK], those present in the
//  vocab,
//    case-sensitive, anywhere in the text) stays that token, with the byte span it occupies;
//  - U+0000, U+FFFD and control/format/unassigned/private-use characters (category C*) are dropped;
//    whitespace (space, \t, \n, \r, category Zs, and U+2028/U+2029) separates words;
//  - CJK ideographs (HF's _is_chinese_char ranges) become single-character words;
//  - do_lower_case: per-code-point full lower-casing (U+0130 -> "i" U+0307); strip_accents (unset =
//    follow do_lower_case): NFD, drop category Mn; otherwise NFC;
//  - punctuation (ASCII non-alphanumeric printable characters and category P*) splits words;
//  - greedy longest-match WordPiece with "##", words over 100 code points -> [UNK].
//
// tokenizer.json behaviour: the file's pipeline as Hugging Face's tokenizers library (Rust) runs
// it, id for id and offset for offset; which components and fields are supported is in
// docs/models.md. tokenizer_config.json's do_lower_case/strip_accents do not apply: the file's
// normalizer decides.
class Tokenizer {
 public:
  // Loads vocab.txt (one token per line, \n, \r\n or \r line ends, UTF-8; must contain [UNK],
  // [CLS], [SEP]; a duplicated token gets the id of its last line).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& vocab_path,
                                                         const TokenizerConfig& config);
  // Loads a tokenizer.json. Anything in the file that is not supported is an INVALID_ARGUMENT
  // naming it ("<path>: normalizer type \"Precompiled\" is not supported").
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadJson(const std::string& json_path);
  // dir/vocab.txt when it exists (as before tokenizer.json support, so existing directories
  // tokenize exactly as they did), otherwise dir/tokenizer.json; NOT_FOUND naming both when neither
  // exists.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFromModelDir(const std::string& dir,
                                                                     const TokenizerConfig& config);
  ~Tokenizer();

  // Pieces of one text (no special tokens added; a literal special token in the text is kept), with
  // byte offsets into `text`. Invalid UTF-8 -> INVALID_ARGUMENT naming the byte offset.
  absl::StatusOr<std::vector<Piece>> Tokenize(std::string_view text) const;

  // Builds the post-processor's layout (vocab.txt: [CLS] a [SEP] (b [SEP])) within max_length
  // tokens (including specials). Errors (INVALID_ARGUMENT): max_length below the number of special
  // tokens; too long with kNone; a truncation that would have to remove a whole sequence
  // (kOnlyFirst/ kOnlySecond, kLongestFirst on a single sequence: Hugging Face refuses these too);
  // kOnlySecond without a second sequence.
  absl::StatusOr<Encoding> Build(const std::vector<Piece>& a, const std::vector<Piece>* b,
                                 size_t max_length, Truncation truncation) const;

  // Tokenize + Build.
  absl::StatusOr<Encoding> Encode(std::string_view a, std::optional<std::string_view> b,
                                  size_t max_length, Truncation truncation) const;

  // The first and last special token of the single-sequence layout ([CLS] and [SEP] for BERT).
  int32_t cls_id() const { return cls_id_; }
  int32_t sep_id() const { return sep_id_; }
  int32_t unk_id() const { return unk_id_; }
  size_t vocab_size() const { return id_to_token_.size(); }
  const std::string& token(int32_t id) const { return id_to_token_.at(static_cast<size_t>(id)); }
  // Id of a vocab token, or -1.
  int32_t token_id(std::string_view token) const;
  size_t num_special_tokens(bool pair) const { return post_.num_special_tokens(pair); }

 private:
  Tokenizer();

  std::unique_ptr<const tokenizer_internal::TextTokenizer> impl_;
  std::vector<std::string> id_to_token_;
  std::unique_ptr<const tokenizer_internal::WordPieceTrie> lookup_;
  PostTemplate post_;
  int32_t cls_id_ = -1, sep_id_ = -1, unk_id_ = -1;
};

}  // namespace topserve::engine
