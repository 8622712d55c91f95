// libFuzzer target: arbitrary bytes -> Tokenizer::Tokenize and Tokenizer::Encode with the real
// bert-base-uncased vocab (TOPSERVE_FUZZ_VOCAB, compile-time default or environment variable),
// loaded from vocab.txt and, as a tokenizer.json (BertNormalizer + BertPreTokenizer + WordPiece +
// template) written from the same vocab at start-up, through the tokenizer.json pipeline.
//
// Input layout (missing header bytes read as 0):
//   byte 0: bits 0-1 truncation (none, longest_first, only_first, only_second), bit 2 pair,
//           bits 3-7 tokenizer (index mod 24: 0-11 vocab.txt, 12-23 tokenizer.json; index mod 12:
//           do_lower_case x strip_accents x chinese chars, as the normalizer's options for
//           tokenizer.json)
//   byte 1: max_length (0..255)
//   bytes 2-3: split point (little-endian, mod text size + 1): a = text[:split], b = text[split:]
//   rest: the text
//
// Checked (besides no crash / ASan / UBSan):
//   Tokenize: succeeds iff the text is valid UTF-8 (an independent strict validator); otherwise
//     INVALID_ARGUMENT naming the first bad byte; each piece has an id in [0, vocab) and a
//     non-empty byte span inside the text that starts and ends on a character boundary;
//     deterministic.
//   Encode: succeeds exactly when the documented truncation rules allow it, else INVALID_ARGUMENT;
//     [CLS] a [SEP] (b [SEP]) with the pieces of Tokenize (truncated from the end, longest_first
//     one token at a time from the longer part, the second when equal), length <= max_length,
//     offsets in the text each token came from, (0, 0) for specials, type ids 0/1.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {

using topserve::engine::Encoding;
using topserve::engine::Piece;
using topserve::engine::Tokenizer;
using topserve::engine::TokenizerConfig;
using topserve::engine::Truncation;

constexpr int kNumVocabConfigs = 12;
constexpr int kNumConfigs = 2 * kNumVocabConfigs;  // vocab.txt, then tokenizer.json

TokenizerConfig ConfigAt(int index) {
  TokenizerConfig c;
  c.do_lower_case = (index & 1) == 0;
  const int strip = (index >> 1) % 3;
  if (strip == 1) c.strip_accents = true;
  if (strip == 2) c.strip_accents = false;
  c.tokenize_chinese_chars = index < 6;
  return c;
}

std::string VocabPath() {
  const char* env = std::getenv("TOPSERVE_FUZZ_VOCAB");
  return env != nullptr && *env != '\0' ? env : TOPSERVE_FUZZ_VOCAB;
}

// A BERT tokenizer.json over the vocab file with the normalizer options of `config`, written to a
// temporary file; its path.
std::string WriteTokenizerJson(const TokenizerConfig& config) {
  std::ifstream in(VocabPath(), std::ios::binary);
  nlohmann::json vocab = nlohmann::json::object();
  std::string line;
  for (int id = 0; std::getline(in, line); ++id) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    vocab[line] = id;
  }
  const auto id_of = [&](const char* token) { return vocab.value(token, 0); };
  nlohmann::json added = nlohmann::json::array();
  for (const char* token : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
    if (!vocab.contains(token)) continue;
    added.push_back({{"id", id_of(token)},
                     {"content", token},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const auto special = [](const char* name, int type) {
    return nlohmann::json{{"SpecialToken", {{"id", name}, {"type_id", type}}}};
  };
  const auto sequence = [](const char* name, int type) {
    return nlohmann::json{{"Sequence", {{"id", name}, {"type_id", type}}}};
  };
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer",
       {{"type", "BertNormalizer"},
        {"clean_text", true},
        {"handle_chinese_chars", config.tokenize_chinese_chars},
        {"strip_accents", config.strip_accents.has_value() ? nlohmann::json(*config.strip_accents)
                                                           : nlohmann::json()},
        {"lowercase", config.do_lower_case}}},
      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {special("[CLS]", 0), sequence("A", 0), special("[SEP]", 0)}},
        {"pair",
         {special("[CLS]", 0), sequence("A", 0), special("[SEP]", 0), sequence("B", 1),
          special("[SEP]", 1)}},
        {"special_tokens",
         {{"[CLS]", {{"id", "[CLS]"}, {"ids", {id_of("[CLS]")}}, {"tokens", {"[CLS]"}}}},
          {"[SEP]", {{"id", "[SEP]"}, {"ids", {id_of("[SEP]")}}, {"tokens", {"[SEP]"}}}}}}}},
      {"model",
       {{"type", "WordPiece"},
        {"unk_token", "[UNK]"},
        {"continuing_subword_prefix", "##"},
        {"max_input_chars_per_word", 100},
        {"vocab", vocab}}},
  };
  char path[] = "/tmp/fuzz_tokenizer_XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) {
    std::perror("fuzz_tokenizer: mkstemp");
    std::exit(2);
  }
  ::close(fd);
  std::ofstream(path, std::ios::binary) << j.dump();
  return path;
}

// Loaded on first use (all share the vocab file; each load takes a fraction of a second).
const Tokenizer& TokenizerAt(int index) {
  static std::unique_ptr<Tokenizer> tokenizers[kNumConfigs];
  auto& slot = tokenizers[index];
  if (!slot) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded;
    if (index < kNumVocabConfigs) {
      loaded = Tokenizer::Load(VocabPath(), ConfigAt(index));
    } else {
      const std::string path = WriteTokenizerJson(ConfigAt(index - kNumVocabConfigs));
      loaded = Tokenizer::LoadJson(path);
      std::remove(path.c_str());
    }
    if (!loaded.ok()) {
      std::fprintf(stderr, "fuzz_tokenizer: cannot load the vocab (set TOPSERVE_FUZZ_VOCAB): %s\n",
                   loaded.status().ToString().c_str());
      std::exit(2);
    }
    slot = *std::move(loaded);
  }
  return *slot;
}

// Position of the first byte that is not part of a well-formed UTF-8 sequence (Unicode Table 3-7:
// no overlong forms, no surrogates, nothing above U+10FFFF), or npos. Written independently of the
// tokenizer's decoder.
size_t FirstInvalidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c <= 0x7F) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

bool IsBoundary(std::string_view s, int32_t pos) {
  return pos == static_cast<int32_t>(s.size()) ||
         (static_cast<unsigned char>(s[static_cast<size_t>(pos)]) & 0xC0) != 0x80;
}

std::string Printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    }
  }
  return out;
}

// Tokenize + its invariants. nullopt when the text is (correctly) rejected as invalid UTF-8.
std::optional<std::vector<Piece>> CheckedTokenize(const Tokenizer& tok, std::string_view text) {
  const size_t bad = FirstInvalidUtf8(text);
  auto pieces = tok.Tokenize(text);
  if (bad != std::string_view::npos) {
    FUZZ_CHECK(!pieces.ok(), "invalid UTF-8 at byte %zu accepted: \"%s\"", bad,
               Printable(text).c_str());
    FUZZ_CHECK(pieces.status().code() == absl::StatusCode::kInvalidArgument, "wrong code: %s",
               pieces.status().ToString().c_str());
    FUZZ_CHECK(absl::StrContains(pieces.status().message(), absl::StrCat("at byte ", bad, " of")),
               "error does not name byte %zu: %s", bad, pieces.status().ToString().c_str());
    return std::nullopt;
  }
  FUZZ_CHECK(pieces.ok(), "valid UTF-8 rejected: %s: \"%s\"", pieces.status().ToString().c_str(),
             Printable(text).c_str());
  const auto vocab = static_cast<int32_t>(tok.vocab_size());
  const auto size = static_cast<int32_t>(text.size());
  for (size_t i = 0; i < pieces->size(); ++i) {
    const Piece& p = (*pieces)[i];
    FUZZ_CHECK(p.id >= 0 && p.id < vocab, "piece %zu: id %d outside [0, %d)", i, p.id, vocab);
    FUZZ_CHECK(0 <= p.begin && p.begin < p.end && p.end <= size,
               "piece %zu ('%s'): span [%d, %d) not a non-empty span of the %d-byte text \"%s\"", i,
               tok.token(p.id).c_str(), p.begin, p.end, size, Printable(text).c_str());
    FUZZ_CHECK(IsBoundary(text, p.begin) && IsBoundary(text, p.end),
               "piece %zu: span [%d, %d) cuts a UTF-8 character of \"%s\"", i, p.begin, p.end,
               Printable(text).c_str());
  }
  auto again = tok.Tokenize(text);
  FUZZ_CHECK(again.ok() && again->size() == pieces->size(), "Tokenize is not deterministic");
  for (size_t i = 0; i < pieces->size(); ++i) {
    const Piece &x = (*pieces)[i], &y = (*again)[i];
    FUZZ_CHECK(x.id == y.id && x.begin == y.begin && x.end == y.end,
               "Tokenize is not deterministic at %zu", i);
  }
  return *std::move(pieces);
}

// What Build must produce: the kept lengths of a and b, or nullopt for an error.
std::optional<std::pair<size_t, size_t>> ExpectedLengths(size_t la, size_t lb, bool pair,
                                                         size_t max_length, Truncation truncation) {
  const size_t specials = pair ? 3 : 2;
  if (max_length < specials) return std::nullopt;
  if (la + lb + specials <= max_length) return std::make_pair(la, lb);
  size_t remove = la + lb + specials - max_length;
  switch (truncation) {
    case Truncation::kNone: return std::nullopt;
    case Truncation::kLongestFirst:
      if (!pair) {
        if (la <= remove) return std::nullopt;
        return std::make_pair(la - remove, lb);
      }
      for (; remove > 0; --remove) {  // one token at a time, as Hugging Face does
        if (la > lb) {
          --la;
        } else {
          --lb;
        }
      }
      return std::make_pair(la, lb);
    case Truncation::kOnlyFirst:
      if (la <= remove) return std::nullopt;
      return std::make_pair(la - remove, lb);
    case Truncation::kOnlySecond:
      if (!pair || lb <= remove) return std::nullopt;
      return std::make_pair(la, lb - remove);
  }
  return std::nullopt;
}

void CheckEncode(const Tokenizer& tok, std::string_view a, std::optional<std::string_view> b,
                 size_t max_length, Truncation truncation,
                 const std::optional<std::vector<Piece>>& pa,
                 const std::optional<std::vector<Piece>>& pb) {
  auto enc = tok.Encode(a, b, max_length, truncation);
  const auto trunc = static_cast<int>(truncation);
  if (!pa || (b && !pb)) {
    FUZZ_CHECK(!enc.ok() && enc.status().code() == absl::StatusCode::kInvalidArgument,
               "invalid UTF-8 not rejected by Encode: %s", enc.status().ToString().c_str());
    FUZZ_CHECK(absl::StartsWith(enc.status().message(), !pa ? "first text: " : "second text: "),
               "Encode error does not say which text: %s", enc.status().ToString().c_str());
    return;
  }
  const size_t la_in = pa->size(), lb_in = b ? pb->size() : 0;
  const auto expected = ExpectedLengths(la_in, lb_in, b.has_value(), max_length, truncation);
  if (!expected) {
    FUZZ_CHECK(
        !enc.ok(),
        "Encode succeeded but must fail: %zu+%zu tokens, pair %d, max_length %zu, truncation %d",
        la_in, lb_in, b.has_value(), max_length, trunc);
    FUZZ_CHECK(enc.status().code() == absl::StatusCode::kInvalidArgument, "wrong code: %s",
               enc.status().ToString().c_str());
    return;
  }
  FUZZ_CHECK(enc.ok(), "Encode failed: %s (%zu+%zu tokens, pair %d, max_length %zu, truncation %d)",
             enc.status().ToString().c_str(), la_in, lb_in, b.has_value(), max_length, trunc);
  const auto [la, lb] = *expected;
  const Encoding& e = *enc;
  const size_t n = e.size();
  FUZZ_CHECK(n <= max_length, "%zu tokens > max_length %zu", n, max_length);
  FUZZ_CHECK(n == la + lb + (b ? 3 : 2),
             "%zu tokens, expected %zu + %zu + specials (truncation %d, max %zu)", n, la, lb, trunc,
             max_length);
  FUZZ_CHECK(
      e.type_ids.size() == n && e.begin.size() == n && e.end.size() == n && e.segment.size() == n,
      "Encoding vectors differ in length");
  const auto vocab = static_cast<int32_t>(tok.vocab_size());
  for (size_t i = 0; i < n; ++i) {
    FUZZ_CHECK(e.ids[i] >= 0 && e.ids[i] < vocab, "token %zu: id %d outside the vocab", i,
               e.ids[i]);
    FUZZ_CHECK(e.begin[i] <= e.end[i], "token %zu: begin %d > end %d", i, e.begin[i], e.end[i]);
  }
  const auto special = [&](size_t i, int32_t id, int32_t type) {
    FUZZ_CHECK(e.ids[i] == id && e.segment[i] == -1 && e.begin[i] == 0 && e.end[i] == 0 &&
                   e.type_ids[i] == type,
               "token %zu should be special %d (type %d): id %d segment %d span [%d, %d) type %d",
               i, id, type, e.ids[i], e.segment[i], e.begin[i], e.end[i], e.type_ids[i]);
  };
  const auto from = [&](size_t i, const Piece& p, int8_t segment, std::string_view text) {
    FUZZ_CHECK(e.ids[i] == p.id && e.begin[i] == p.begin && e.end[i] == p.end &&
                   e.segment[i] == segment && e.type_ids[i] == segment,
               "token %zu: (%d [%d, %d) seg %d type %d), expected (%d [%d, %d) seg %d)", i,
               e.ids[i], e.begin[i], e.end[i], e.segment[i], e.type_ids[i], p.id, p.begin, p.end,
               segment);
    FUZZ_CHECK(e.end[i] <= static_cast<int32_t>(text.size()),
               "token %zu: end %d past its %zu-byte text", i, e.end[i], text.size());
  };
  special(0, tok.cls_id(), 0);
  for (size_t i = 0; i < la; ++i) from(1 + i, (*pa)[i], 0, a);
  special(1 + la, tok.sep_id(), 0);
  if (b) {
    for (size_t i = 0; i < lb; ++i) from(2 + la + i, (*pb)[i], 1, *b);
    special(2 + la + lb, tok.sep_id(), 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  TokenizerAt(0);                 // fail fast on a missing vocab
  TokenizerAt(kNumVocabConfigs);  // and on a tokenizer.json the loader refuses
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint8_t header[4] = {0, 0, 0, 0};
  const size_t header_size = size < 4 ? size : 4;
  for (size_t i = 0; i < header_size; ++i) header[i] = data[i];
  const std::string_view text(reinterpret_cast<const char*>(data) + header_size,
                              size - header_size);

  const auto truncation = static_cast<Truncation>(header[0] & 3);
  const bool pair = (header[0] & 4) != 0;
  const int config = (header[0] >> 3) % kNumConfigs;
  const size_t max_length = header[1];
  const size_t split =
      (static_cast<size_t>(header[2]) | static_cast<size_t>(header[3]) << 8) % (text.size() + 1);

  const Tokenizer& tok = TokenizerAt(config);
  const auto whole = CheckedTokenize(tok, text);
  if (!pair) {
    CheckEncode(tok, text, std::nullopt, max_length, truncation, whole, std::nullopt);
    return 0;
  }
  const std::string_view a = text.substr(0, split), b = text.substr(split);
  const auto pa = CheckedTokenize(tok, a);
  const auto pb = CheckedTokenize(tok, b);
  CheckEncode(tok, a, b, max_length, truncation, pa, pb);
  return 0;
}
