// BERT WordPiece tokenizer, identical to the reference (Hugging Face BertTokenizer: BasicTokenizer +
// WordpieceTokenizer) id for id, with byte offsets into the original UTF-8 text.
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

// Thread-safe after Load: all methods are const and keep no shared mutable state.
//
// Behaviour (Hugging Face BertTokenizer, slow/Python version, Unicode 14.0 character data as in
// Python 3.11's unicodedata):
//  - a literal special token in the text ([UNK] [SEP] [PAD] [CLS] [MASK], those present in the vocab,
//    case-sensitive, anywhere in the text) stays that token, with the byte span it occupies;
//  - U+0000, U+FFFD and control/format/unassigned/private-use characters (category C*) are dropped;
//    whitespace (space, \t, \n, \r, category Zs, and U+2028/U+2029) separates words;
//  - CJK ideographs (HF's _is_chinese_char ranges) become single-character words;
//  - do_lower_case: per-code-point full lower-casing (U+0130 -> "i" U+0307); strip_accents (unset =
//    follow do_lower_case): NFD, drop category Mn; otherwise NFC;
//  - punctuation (ASCII non-alphanumeric printable characters and category P*) splits words;
//  - greedy longest-match WordPiece with "##", words over 100 code points -> [UNK].
class Tokenizer {
 public:
  // Loads vocab.txt (one token per line, \n, \r\n or \r line ends, UTF-8; must contain [UNK], [CLS],
  // [SEP]; a duplicated token gets the id of its last line).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& vocab_path,
                                                          const TokenizerConfig& config);

  // Word pieces of one text (no [CLS]/[SEP] added; a literal special token in the text is kept), with
  // byte offsets into `text`. Invalid UTF-8 -> INVALID_ARGUMENT naming the byte offset.
  absl::StatusOr<std::vector<Piece>> Tokenize(std::string_view text) const;

  // Builds [CLS] a [SEP] (b [SEP]) within max_length tokens (including specials). Errors
  // (INVALID_ARGUMENT): max_length below the number of special tokens; too long with kNone; a
  // truncation that would have to remove a whole sequence (kOnlyFirst/kOnlySecond, kLongestFirst on a
  // single sequence: Hugging Face refuses these too); kOnlySecond without a second sequence.
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
  // Id of a vocab token, or -1.
  int32_t token_id(std::string_view token) const;

 private:
  struct WordChar;
  struct Word;
  Tokenizer() = default;
  // Id of the special token spelled by chars, or -1.
  int32_t MatchSpecial(const std::vector<WordChar>& chars) const;
  // Appends the pieces of one whitespace-delimited word (see tokenizer.cc).
  void WordPieces(Word& word, std::vector<Piece>& out) const;
  void GreedyPieces(const Word& word, size_t begin, size_t end, std::vector<Piece>& out) const;
  // Trie over the code points of the vocab tokens; returns -1 when there is no such child.
  int32_t Child(int32_t node, char32_t cp) const;

  TokenizerConfig config_;
  bool strip_accents_ = true;
  std::vector<std::string> id_to_token_;
  int32_t cls_id_ = -1, sep_id_ = -1, unk_id_ = -1, pad_id_ = -1, mask_id_ = -1;
  // Special tokens present in the vocab, longest first: (text, id).
  std::vector<std::pair<std::string, int32_t>> specials_;

  struct TrieNode {
    int32_t token = -1;       // id of the token ending here, -1 if none
    uint32_t first_edge = 0;  // children: edge_cp_/edge_to_[first_edge, first_edge + num_edges), sorted
    uint32_t num_edges = 0;
    int32_t dense = -1;       // row of dense_ for ASCII children (nodes with many children), or -1
  };
  std::vector<TrieNode> nodes_;  // nodes_[0] is the root
  std::vector<char32_t> edge_cp_;
  std::vector<int32_t> edge_to_;
  std::vector<int32_t> dense_;  // 128 entries per row
  int32_t continuation_node_ = -1;  // the node of "##", or -1
};

}  // namespace topserve::engine
