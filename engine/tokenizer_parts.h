// Internal to the tokenizer (engine/tokenizer.cc, engine/tokenizer_json.cc): the pieces both the
// vocab.txt tokenizer and the tokenizer.json pipeline are built from. Not part of the engine's API.
//
// A tokenizer turns one text into pieces through an implementation of TextTokenizer:
//   - BertVocabTokenizer (tokenizer.cc): vocab.txt, Hugging Face's slow BertTokenizer in one fused
//   pass;
//   - JsonPipeline (tokenizer_json.cc): a tokenizer.json as Hugging Face's tokenizers library runs
//   it:
//     added tokens split off the original text, then per remaining span a Normalizer, a
//     PreTokenizer and a Model (each an interface below, one class per component type of the file).
// Tokenizer (tokenizer.h) owns one TextTokenizer and a PostTemplate and builds the model input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace topserve::engine::tokenizer_internal {

// One character of a (normalised) text with the byte span [b, e) of the original text it came from.
// A character produced by a transformation (lower-casing, decomposition) keeps the span of the
// character it came from, so every piece maps back to the original bytes.
struct CharSpan {
  char32_t cp;
  int32_t b, e;
};

// Decodes the UTF-8 sequence at p[0..avail) strictly (no overlong forms, surrogates, or values
// above U+10FFFF). Returns its length (1-4), or 0 and a reason in *why.
int DecodeUtf8(const unsigned char* p, size_t avail, char32_t* cp, const char** why);
// INVALID_ARGUMENT "invalid UTF-8 at byte <pos> of <size>: <why> (byte 0x..)".
absl::Status InvalidUtf8(std::string_view text, size_t pos, const char* why);
// The code points of valid UTF-8 text; false on invalid UTF-8.
bool DecodeAll(std::string_view text, std::vector<char32_t>& out);

// Canonical decomposition (NFD) of in into out: full decomposition, then canonical ordering (a
// stable sort of each run of non-starters by combining class). Spans follow their characters.
void Nfd(const std::vector<CharSpan>& in, std::vector<CharSpan>& out);
int CombiningClass(char32_t cp);

// Greedy longest-match-first WordPiece over a code-point trie of the vocabulary (the algorithm of
// both BertTokenizer's WordpieceTokenizer and the tokenizers library's WordPiece model).
class WordPieceTrie {
 public:
  // entries: (token code points, id); when two entries spell the same token, the later one wins.
  // continuation: the prefix of word-internal pieces ("##").
  void Build(const std::vector<std::pair<std::vector<char32_t>, int32_t>>& entries,
             std::u32string_view continuation);
  // Id of a token, or -1.
  int32_t Find(std::string_view utf8) const;
  // Appends the pieces of the word w[begin, end): longest vocabulary match first, later pieces with
  // the continuation prefix. A word of more than max_chars characters, or one with a part no token
  // matches, becomes one `unk` piece spanning the whole word.
  void Greedy(const CharSpan* w, size_t begin, size_t end, int32_t unk, size_t max_chars,
              std::vector<Piece>& out) const;

 private:
  // Child of node for cp, or -1.
  int32_t Child(int32_t node, char32_t cp) const;

  struct Node {
    int32_t token = -1;  // id of the token ending here, -1 if none
    uint32_t first_edge =
        0;  // children: edge_cp_/edge_to_[first_edge, first_edge + num_edges), sorted
    uint32_t num_edges = 0;
    int32_t dense = -1;  // row of dense_ for ASCII children (nodes with many children), or -1
  };
  std::vector<Node> nodes_;  // nodes_[0] is the root
  std::vector<char32_t> edge_cp_;
  std::vector<int32_t> edge_to_;
  std::vector<int32_t> dense_;      // 128 entries per row
  int32_t continuation_node_ = -1;  // the node of the continuation prefix, or -1
};

// Text -> pieces with byte spans of the text. Implementations are immutable after loading and
// thread-safe.
class TextTokenizer {
 public:
  virtual ~TextTokenizer() = default;
  // Invalid UTF-8 -> INVALID_ARGUMENT naming the byte offset.
  virtual absl::StatusOr<std::vector<Piece>> Tokenize(std::string_view text) const = 0;
};

// What a loaded tokenizer consists of, handed to Tokenizer.
struct LoadedTokenizer {
  std::unique_ptr<const TextTokenizer> impl;
  std::vector<std::string> id_to_token;  // "" for ids no token has
  WordPieceTrie lookup;  // token -> id over every token (model vocabulary and added)
  PostTemplate post;
  int32_t unk_id = -1;
};

// Parses a tokenizer.json (see docs/models.md for what is honoured and what is refused). Errors are
// INVALID_ARGUMENT "<origin>: ..." naming the component or field.
absl::StatusOr<LoadedTokenizer> ParseTokenizerJson(const std::string& json_text,
                                                   const std::string& origin);

}  // namespace topserve::engine::tokenizer_internal
