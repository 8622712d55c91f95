// tokenizer.json (Hugging Face tokenizers) -> a JsonPipeline: added tokens, Normalizer,
// PreTokenizer, Model (one class per supported component type), and the post-processor as a
// PostTemplate.
//
// The behaviour follows the tokenizers library (Rust, 0.20), which the tests use as the oracle:
//  - added tokens with normalized=false are split off the original text first, leftmost-longest (as
//    its Aho-Corasick matcher does); the spans between them are normalised on their own, then split
//    on the normalized=true added tokens (their content normalised the same way), and the rest is
//    pre-tokenized and tokenized;
//  - BertNormalizer, in this order: clean_text (drop U+0000, U+FFFD and category C* except \t \n
//  \r;
//    White_Space -> ' '), handle_chinese_chars (spaces around CJK ideographs), strip_accents
//    (unset: follows lowercase; NFD, then drop category Mn), lowercase (per code point, Rust's
//    char::to_lowercase: U+0130 -> "i" U+0307). No NFC (BertTokenizer's slow version composes; this
//    one does not). A character keeps the span of the original character it came from; a dropped
//    one leaves no trace (an "e" + U+0301 stripped to "e" spans only the "e");
//  - BertPreTokenizer: White_Space separates words; ASCII punctuation and category P* are words of
//    their own;
//  - WordPiece: greedy longest match with continuing_subword_prefix, a word over
//    max_input_chars_per_word characters or with an unmatched part -> unk_token spanning the word.
// Character classes come from utf8proc (Unicode 15).
//
// Why one file of ~700 lines: every component class here is small and is built from one node of
// the same tokenizer.json document by one dispatch (ParseNormalizer, ParsePreTokenizer, ...); the
// file reads as the list of supported component types, as tokenizers' own model/normalizer folders
// would if merged.
#include <utf8proc.h>

#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/tokenizer_parts.h"
#include "nlohmann/json.hpp"

namespace topserve::engine::tokenizer_internal {
namespace {

using Json = nlohmann::json;

// Larger ids are refused: the id -> token table is sized by the largest id.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

// ---------------------------------------------------------------------------------------------------
// Character classes (the tokenizers library's: Rust's char::is_whitespace, the unicode_categories
// crate's is_other / is_punctuation / is_mark_nonspacing)

utf8proc_category_t Category(char32_t cp) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(cp));
}

// The White_Space property (Rust's char::is_whitespace).
bool IsWhiteSpace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool IsOther(char32_t cp) {
  switch (Category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:  // not Cn: the package keeps unassigned code points (they become
                                // [UNK])
      return true;
    default: return false;
  }
}

bool IsBertPunctuation(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
           (cp >= 123 && cp <= 126);
  }
  const utf8proc_category_t c = Category(cp);
  return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

bool IsNonspacingMark(char32_t cp) { return cp >= 0x300 && Category(cp) == UTF8PROC_CATEGORY_MN; }

bool IsChineseChar(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

// ---------------------------------------------------------------------------------------------------
// Pipeline components

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Normalises s in place (tmp is scratch).
  virtual void Normalize(std::vector<CharSpan>& s, std::vector<CharSpan>& tmp) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Appends the words of s as index ranges [first, second).
  virtual void Split(const std::vector<CharSpan>& s,
                     std::vector<std::pair<size_t, size_t>>& words) const = 0;
};

class Model {
 public:
  virtual ~Model() = default;
  // Appends the pieces of the word w[0, n).
  virtual void Tokenize(const CharSpan* w, size_t n, std::vector<Piece>& out) const = 0;
};

struct BertNormalizerOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;
  bool lowercase = true;
};

class BertNormalizer final : public Normalizer {
 public:
  explicit BertNormalizer(BertNormalizerOptions o) : o_(o) {}

  void Normalize(std::vector<CharSpan>& s, std::vector<CharSpan>& tmp) const override {
    tmp.clear();
    for (CharSpan c : s) {
      if (o_.clean_text) {
        if (c.cp == 0 || c.cp == 0xFFFD ||
            (c.cp != '\t' && c.cp != '\n' && c.cp != '\r' && IsOther(c.cp)))
          continue;
        if (IsWhiteSpace(c.cp)) c.cp = ' ';
      }
      if (o_.handle_chinese_chars && IsChineseChar(c.cp)) {
        tmp.push_back({U' ', c.b, c.e});
        tmp.push_back(c);
        tmp.push_back({U' ', c.b, c.e});
        continue;
      }
      tmp.push_back(c);
    }
    if (o_.strip_accents) {
      Nfd(tmp, s);
      tmp.clear();
      for (const CharSpan& c : s) {
        if (!IsNonspacingMark(c.cp)) tmp.push_back(c);
      }
    }
    s.clear();
    if (!o_.lowercase) {
      s.swap(tmp);
      return;
    }
    for (const CharSpan& c : tmp) {
      if (c.cp < 0x80) {
        s.push_back({c.cp >= 'A' && c.cp <= 'Z' ? c.cp + 32 : c.cp, c.b, c.e});
      } else if (c.cp == 0x130) {  // the one multi-character lower-case mapping
        s.push_back({U'i', c.b, c.e});
        s.push_back({0x307, c.b, c.e});
      } else {
        s.push_back({static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c.cp))),
                     c.b, c.e});
      }
    }
  }

 private:
  BertNormalizerOptions o_;
};

class BertPreTokenizer final : public PreTokenizer {
 public:
  void Split(const std::vector<CharSpan>& s,
             std::vector<std::pair<size_t, size_t>>& words) const override {
    size_t start = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (IsWhiteSpace(s[i].cp)) {
        if (start < i) words.emplace_back(start, i);
        start = i + 1;
      } else if (IsBertPunctuation(s[i].cp)) {
        if (start < i) words.emplace_back(start, i);
        words.emplace_back(i, i + 1);
        start = i + 1;
      }
    }
    if (start < s.size()) words.emplace_back(start, s.size());
  }
};

class WordPieceModel final : public Model {
 public:
  WordPieceModel(WordPieceTrie trie, int32_t unk, size_t max_chars)
      : trie_(std::move(trie)), unk_(unk), max_chars_(max_chars) {}
  void Tokenize(const CharSpan* w, size_t n, std::vector<Piece>& out) const override {
    trie_.Greedy(w, 0, n, unk_, max_chars_, out);
  }

 private:
  WordPieceTrie trie_;
  int32_t unk_;
  size_t max_chars_;
};

struct AddedToken {
  std::string content;
  int32_t id;
  // normalized=true: matched in the normalised text, as `cps` (the content normalised by the same
  // normalizer); otherwise matched as `content` in the original text.
  bool normalized = false;
  std::vector<char32_t> cps;
};

class JsonPipeline final : public TextTokenizer {
 public:
  JsonPipeline(std::vector<AddedToken> added, std::unique_ptr<const Normalizer> normalizer,
               std::unique_ptr<const PreTokenizer> pre_tokenizer,
               std::unique_ptr<const Model> model)
      : normalizer_(std::move(normalizer)),
        pre_tokenizer_(std::move(pre_tokenizer)),
        model_(std::move(model)) {
    for (AddedToken& t : added) {
      if (!t.normalized) {
        first_byte_[static_cast<unsigned char>(t.content[0])] = true;
        added_.push_back(std::move(t));
        continue;
      }
      std::vector<CharSpan> s, tmp;
      for (const char32_t cp : t.cps) s.push_back({cp, 0, 0});
      if (normalizer_ != nullptr) normalizer_->Normalize(s, tmp);
      t.cps.clear();
      for (const CharSpan& c : s) t.cps.push_back(c.cp);
      if (!t.cps.empty())
        normalized_.push_back(std::move(t));  // normalised away: it can never match
    }
    // Longest first: at one position the longest added token wins (leftmost-longest).
    std::stable_sort(added_.begin(), added_.end(), [](const AddedToken& x, const AddedToken& y) {
      return x.content.size() > y.content.size();
    });
    std::stable_sort(
        normalized_.begin(), normalized_.end(),
        [](const AddedToken& x, const AddedToken& y) { return x.cps.size() > y.cps.size(); });
  }

  absl::StatusOr<std::vector<Piece>> Tokenize(std::string_view text) const override {
    if (text.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat("text of ", text.size(), " bytes is too long (limit 2 GiB)"));
    }
    std::vector<CharSpan> chars;
    chars.reserve(text.size());
    const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
    for (size_t pos = 0; pos < text.size();) {
      char32_t cp;
      const char* why = nullptr;
      const int len = DecodeUtf8(bytes + pos, text.size() - pos, &cp, &why);
      if (len == 0) return InvalidUtf8(text, pos, why);
      chars.push_back(
          {cp, static_cast<int32_t>(pos), static_cast<int32_t>(pos + static_cast<size_t>(len))});
      pos += static_cast<size_t>(len);
    }

    std::vector<Piece> out;
    out.reserve(text.size() / 4 + 4);
    Scratch scratch;
    size_t segment = 0;  // first character not yet tokenized
    for (size_t i = 0; i < chars.size();) {
      const size_t b = static_cast<size_t>(chars[i].b);
      const AddedToken* match = nullptr;
      if (first_byte_[bytes[b]]) {
        for (const AddedToken& t : added_) {
          if (text.compare(b, t.content.size(), t.content) == 0) {
            match = &t;
            break;
          }
        }
      }
      if (match == nullptr) {
        ++i;
        continue;
      }
      TokenizeSegment(chars, segment, i, scratch, out);
      out.push_back(
          {match->id, static_cast<int32_t>(b), static_cast<int32_t>(b + match->content.size())});
      // Added tokens are valid UTF-8, so the match ends on a character boundary.
      while (i < chars.size() && static_cast<size_t>(chars[i].b) < b + match->content.size()) ++i;
      segment = i;
    }
    TokenizeSegment(chars, segment, chars.size(), scratch, out);
    return out;
  }

 private:
  struct Scratch {
    std::vector<CharSpan> s, tmp, part;
    std::vector<std::pair<size_t, size_t>> words;
  };

  void TokenizeSegment(const std::vector<CharSpan>& chars, size_t begin, size_t end,
                       Scratch& scratch, std::vector<Piece>& out) const {
    if (begin >= end) return;
    scratch.s.assign(chars.begin() + static_cast<std::ptrdiff_t>(begin),
                     chars.begin() + static_cast<std::ptrdiff_t>(end));
    if (normalizer_ != nullptr) normalizer_->Normalize(scratch.s, scratch.tmp);
    const std::vector<CharSpan>& s = scratch.s;
    // Added tokens matched in the normalised text split it further, leftmost-longest.
    size_t from = 0;
    for (size_t i = 0; i < s.size() && !normalized_.empty();) {
      const AddedToken* match = nullptr;
      for (const AddedToken& t : normalized_) {
        if (t.cps.size() > s.size() - i) continue;
        size_t k = 0;
        while (k < t.cps.size() && s[i + k].cp == t.cps[k]) ++k;
        if (k == t.cps.size()) {
          match = &t;
          break;
        }
      }
      if (match == nullptr) {
        ++i;
        continue;
      }
      PreTokenizeAndModel(s, from, i, scratch, out);
      int32_t b = s[i].b, e = s[i].e;
      for (size_t k = i; k < i + match->cps.size(); ++k) {
        b = std::min(b, s[k].b);
        e = std::max(e, s[k].e);
      }
      out.push_back({match->id, b, e});
      i += match->cps.size();
      from = i;
    }
    PreTokenizeAndModel(s, from, s.size(), scratch, out);
  }

  // Pre-tokenizes s[begin, end) and appends the model's pieces of each word.
  void PreTokenizeAndModel(const std::vector<CharSpan>& s, size_t begin, size_t end,
                           Scratch& scratch, std::vector<Piece>& out) const {
    if (begin >= end) return;
    scratch.part.assign(s.begin() + static_cast<std::ptrdiff_t>(begin),
                        s.begin() + static_cast<std::ptrdiff_t>(end));
    scratch.words.clear();
    if (pre_tokenizer_ != nullptr) {
      pre_tokenizer_->Split(scratch.part, scratch.words);
    } else {
      scratch.words.emplace_back(0, scratch.part.size());
    }
    for (const auto& [wb, we] : scratch.words)
      model_->Tokenize(scratch.part.data() + wb, we - wb, out);
  }

  std::vector<AddedToken> added_;       // normalized=false, longest first
  std::vector<AddedToken> normalized_;  // normalized=true, longest normalised form first
  bool first_byte_[256] = {};
  std::unique_ptr<const Normalizer> normalizer_;
  std::unique_ptr<const PreTokenizer> pre_tokenizer_;
  std::unique_ptr<const Model> model_;
};

// ---------------------------------------------------------------------------------------------------
// Parsing

// Field readers for one JSON object; every error is "<origin>: <where>: ...".
class Fields {
 public:
  Fields(const Json& obj, std::string origin, std::string where)
      : obj_(obj), origin_(std::move(origin)), where_(std::move(where)) {}

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(origin_, ": ", where_, where_.empty() ? "" : " ", what));
  }
  // Refuses keys outside `known` (a field we do not read could change the behaviour).
  absl::Status OnlyKnown(std::initializer_list<std::string_view> known) const {
    for (const auto& [key, value] : obj_.items()) {
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        return Error(absl::StrCat("field \"", key, "\" is not supported"));
      }
    }
    return absl::OkStatus();
  }
  absl::StatusOr<bool> Bool(const char* key, bool fallback) const {
    const auto it = obj_.find(key);
    if (it == obj_.end()) return fallback;
    if (!it->is_boolean()) return Error(absl::StrCat("field \"", key, "\" must be true or false"));
    return it->get<bool>();
  }
  absl::StatusOr<std::string> String(const char* key, std::optional<std::string> fallback) const {
    const auto it = obj_.find(key);
    if (it == obj_.end() || (it->is_null() && fallback.has_value())) {
      if (fallback.has_value()) return *fallback;
      return Error(absl::StrCat("field \"", key, "\" is missing"));
    }
    if (!it->is_string()) return Error(absl::StrCat("field \"", key, "\" must be a string"));
    return it->get<std::string>();
  }
  absl::StatusOr<int64_t> Int(const char* key, std::optional<int64_t> fallback, int64_t lo,
                              int64_t hi) const {
    const auto it = obj_.find(key);
    if (it == obj_.end()) {
      if (fallback.has_value()) return *fallback;
      return Error(absl::StrCat("field \"", key, "\" is missing"));
    }
    if (!it->is_number_integer())
      return Error(absl::StrCat("field \"", key, "\" must be an integer"));
    const int64_t v = it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(hi)
                          ? hi + 1
                          : it->get<int64_t>();
    if (v < lo || v > hi)
      return Error(absl::StrCat("field \"", key, "\" is ", v, ", outside [", lo, ", ", hi, "]"));
    return v;
  }
  const Json& obj() const { return obj_; }

 private:
  const Json& obj_;
  std::string origin_;
  std::string where_;
};

// The "type" of a component object, or an error naming the component.
absl::StatusOr<std::string> TypeOf(const Json& component, const std::string& origin,
                                   const char* name) {
  if (!component.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": ", name, " must be an object or null"));
  }
  const auto it = component.find("type");
  if (it == component.end() || !it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", name, " has no \"type\""));
  }
  return it->get<std::string>();
}

absl::Status Unsupported(const std::string& origin, const char* component, const std::string& type,
                         const char* supported) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ": ", component, " type \"", type,
                                                 "\" is not supported (supported: ", supported,
                                                 ")"));
}

absl::StatusOr<std::unique_ptr<const Normalizer>> ParseNormalizer(const Json& j,
                                                                  const std::string& origin) {
  if (j.is_null()) return std::unique_ptr<const Normalizer>();
  ASSIGN_OR_RETURN(const std::string type, TypeOf(j, origin, "normalizer"));
  if (type != "BertNormalizer")
    return Unsupported(origin, "normalizer", type, "BertNormalizer, null");
  const Fields f(j, origin, "normalizer BertNormalizer:");
  RETURN_IF_ERROR(
      f.OnlyKnown({"type", "clean_text", "handle_chinese_chars", "strip_accents", "lowercase"}));
  BertNormalizerOptions o;
  ASSIGN_OR_RETURN(o.clean_text, f.Bool("clean_text", true));
  ASSIGN_OR_RETURN(o.handle_chinese_chars, f.Bool("handle_chinese_chars", true));
  ASSIGN_OR_RETURN(o.lowercase, f.Bool("lowercase", true));
  // strip_accents: null (or absent) follows lowercase.
  if (const auto it = j.find("strip_accents"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(o.strip_accents, f.Bool("strip_accents", false));
  } else {
    o.strip_accents = o.lowercase;
  }
  return std::unique_ptr<const Normalizer>(new BertNormalizer(o));
}

absl::StatusOr<std::unique_ptr<const PreTokenizer>> ParsePreTokenizer(const Json& j,
                                                                      const std::string& origin) {
  if (j.is_null()) return std::unique_ptr<const PreTokenizer>();
  ASSIGN_OR_RETURN(const std::string type, TypeOf(j, origin, "pre_tokenizer"));
  if (type != "BertPreTokenizer")
    return Unsupported(origin, "pre_tokenizer", type, "BertPreTokenizer, null");
  RETURN_IF_ERROR(Fields(j, origin, "pre_tokenizer BertPreTokenizer:").OnlyKnown({"type"}));
  return std::unique_ptr<const PreTokenizer>(new BertPreTokenizer());
}

struct ParsedModel {
  std::unique_ptr<const Model> model;
  std::vector<std::pair<std::string, int32_t>> vocab;
  int32_t unk_id = -1;
};

absl::StatusOr<ParsedModel> ParseModel(const Json& j, const std::string& origin) {
  if (j.is_null()) return absl::InvalidArgumentError(absl::StrCat(origin, ": model is missing"));
  ASSIGN_OR_RETURN(const std::string type, TypeOf(j, origin, "model"));
  if (type != "WordPiece") return Unsupported(origin, "model", type, "WordPiece");
  const Fields f(j, origin, "model WordPiece:");
  RETURN_IF_ERROR(f.OnlyKnown(
      {"type", "unk_token", "continuing_subword_prefix", "max_input_chars_per_word", "vocab"}));
  ASSIGN_OR_RETURN(const std::string unk, f.String("unk_token", "[UNK]"));
  ASSIGN_OR_RETURN(const std::string prefix, f.String("continuing_subword_prefix", "##"));
  ASSIGN_OR_RETURN(const int64_t max_chars,
                   f.Int("max_input_chars_per_word", 100, 0, std::numeric_limits<int32_t>::max()));
  const auto vit = j.find("vocab");
  if (vit == j.end() || !vit->is_object())
    return f.Error("field \"vocab\" must be an object (token -> id)");
  ParsedModel parsed;
  std::vector<std::pair<std::vector<char32_t>, int32_t>> entries;
  entries.reserve(vit->size());
  for (const auto& [token, id] : vit->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId) {
      return f.Error(absl::StrCat("vocab: token \"", token, "\" has id ", id.dump(),
                                  ", not an integer in [0, ", kMaxTokenId, "]"));
    }
    std::vector<char32_t> cps;
    if (!DecodeAll(token, cps)) return f.Error("vocab: a token is not valid UTF-8");
    const auto tid = static_cast<int32_t>(id.get<int64_t>());
    entries.emplace_back(std::move(cps), tid);
    parsed.vocab.emplace_back(token, tid);
  }
  std::vector<char32_t> prefix_cps;
  if (!DecodeAll(prefix, prefix_cps))
    return f.Error("continuing_subword_prefix is not valid UTF-8");
  WordPieceTrie trie;
  trie.Build(entries, std::u32string_view(prefix_cps.data(), prefix_cps.size()));
  parsed.unk_id = trie.Find(unk);
  if (parsed.unk_id < 0)
    return f.Error(absl::StrCat("unk_token \"", unk, "\" is not in the vocab"));
  parsed.model = std::make_unique<WordPieceModel>(std::move(trie), parsed.unk_id,
                                                  static_cast<size_t>(max_chars));
  return parsed;
}

absl::StatusOr<std::vector<AddedToken>> ParseAddedTokens(const Json& j, const std::string& origin) {
  std::vector<AddedToken> added;
  if (j.is_null()) return added;
  if (!j.is_array())
    return absl::InvalidArgumentError(absl::StrCat(origin, ": added_tokens must be an array"));
  for (size_t i = 0; i < j.size(); ++i) {
    const Json& t = j[i];
    if (!t.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": added_tokens[", i, "] must be an object"));
    }
    const Fields f(t, origin, absl::StrCat("added_tokens[", i, "]:"));
    RETURN_IF_ERROR(
        f.OnlyKnown({"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"}));
    AddedToken token;
    ASSIGN_OR_RETURN(token.content, f.String("content", std::nullopt));
    ASSIGN_OR_RETURN(const int64_t id, f.Int("id", std::nullopt, 0, kMaxTokenId));
    token.id = static_cast<int32_t>(id);
    std::vector<char32_t> cps;
    if (token.content.empty() || !DecodeAll(token.content, cps)) {
      return f.Error("content must be non-empty valid UTF-8");
    }
    ASSIGN_OR_RETURN(token.normalized, f.Bool("normalized", false));
    token.cps = std::move(cps);
    // Options that change where a token matches: only their defaults are implemented.
    for (const char* option : {"single_word", "lstrip", "rstrip"}) {
      ASSIGN_OR_RETURN(const bool value, f.Bool(option, false));
      if (value) {
        return f.Error(
            absl::StrCat("token \"", token.content, "\": ", option, "=true is not supported"));
      }
    }
    ASSIGN_OR_RETURN(const bool special, f.Bool("special", false));
    (void)special;  // special only matters for decoding (skip_special_tokens)
    added.push_back(std::move(token));
  }
  return added;
}

// TemplateProcessing's "single"/"pair": [{"SpecialToken": {"id", "type_id"}} | {"Sequence": {"id",
// "type_id"}}].
absl::StatusOr<std::vector<PostTemplate::Item>> ParseTemplate(const Json& j,
                                                              const Json& special_tokens, bool pair,
                                                              const std::string& origin) {
  const char* name = pair ? "pair" : "single";
  const std::string where = absl::StrCat("post_processor TemplateProcessing: ", name);
  if (!j.is_array())
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", where, " must be an array"));
  std::vector<PostTemplate::Item> items;
  int seen[2] = {0, 0};
  for (const Json& piece : j) {
    if (!piece.is_object() || piece.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": ", where,
                       ": each piece must be {\"SpecialToken\": ...} or {\"Sequence\": ...}"));
    }
    // Not a structured binding over piece.items(): that proxy is a temporary, and the key would
    // dangle.
    const auto first = piece.begin();
    const std::string kind = first.key();
    const Json& body = first.value();
    if (!body.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": ", where, ": ", kind, " must be an object"));
    }
    const Fields f(body, origin, absl::StrCat(where, ": ", kind, ":"));
    RETURN_IF_ERROR(f.OnlyKnown({"id", "type_id"}));
    ASSIGN_OR_RETURN(const std::string id, f.String("id", std::nullopt));
    ASSIGN_OR_RETURN(const int64_t type_id,
                     f.Int("type_id", 0, 0, std::numeric_limits<int32_t>::max()));
    PostTemplate::Item item;
    item.type_id = static_cast<int32_t>(type_id);
    if (kind == "Sequence") {
      if (id != "A" && id != "B")
        return f.Error(absl::StrCat("id \"", id, "\" must be \"A\" or \"B\""));
      item.sequence = id == "A" ? 0 : 1;
      ++seen[item.sequence];
    } else if (kind == "SpecialToken") {
      const auto it = special_tokens.is_object() ? special_tokens.find(id) : special_tokens.end();
      if (it == special_tokens.end() || !it->is_object() || !it->contains("ids") ||
          !(*it)["ids"].is_array()) {
        return f.Error(
            absl::StrCat("special token \"", id, "\" is not in special_tokens (with its ids)"));
      }
      for (const Json& v : (*it)["ids"]) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxTokenId) {
          return f.Error(absl::StrCat("special token \"", id, "\" has id ", v.dump(),
                                      ", not an integer in [0, ", kMaxTokenId, "]"));
        }
        item.ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ": ", where, ": piece kind \"", kind, "\" is not supported"));
    }
    items.push_back(std::move(item));
  }
  if (seen[0] != 1 || seen[1] != (pair ? 1 : 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        origin, ": ", where, ": must hold ", pair ? "$A and $B once each" : "$A once and no $B"));
  }
  return items;
}

absl::StatusOr<PostTemplate> ParsePostProcessor(const Json& j, const std::string& origin) {
  if (j.is_null()) {
    // The encoder needs its [CLS]/[SEP] (classification reads the first token, QA windows the
    // layout).
    return absl::InvalidArgumentError(absl::StrCat(
        origin, ": post_processor is null: a model input without special tokens is not supported"));
  }
  ASSIGN_OR_RETURN(const std::string type, TypeOf(j, origin, "post_processor"));
  PostTemplate post;
  if (type == "TemplateProcessing") {
    const Fields f(j, origin, "post_processor TemplateProcessing:");
    RETURN_IF_ERROR(f.OnlyKnown({"type", "single", "pair", "special_tokens"}));
    const Json null_json;
    const Json& specials = j.contains("special_tokens") ? j["special_tokens"] : null_json;
    ASSIGN_OR_RETURN(post.single,
                     ParseTemplate(j.value("single", Json()), specials, false, origin));
    ASSIGN_OR_RETURN(post.pair, ParseTemplate(j.value("pair", Json()), specials, true, origin));
    return post;
  }
  if (type == "BertProcessing") {
    const Fields f(j, origin, "post_processor BertProcessing:");
    RETURN_IF_ERROR(f.OnlyKnown({"type", "sep", "cls"}));
    int32_t ids[2];
    for (int k = 0; k < 2; ++k) {
      const char* key = k == 0 ? "cls" : "sep";
      const auto it = j.find(key);
      if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[0].is_string() ||
          !(*it)[1].is_number_integer() || (*it)[1].get<int64_t>() < 0 ||
          (*it)[1].get<int64_t>() > kMaxTokenId) {
        return f.Error(absl::StrCat("field \"", key, "\" must be [token, id]"));
      }
      ids[k] = static_cast<int32_t>((*it)[1].get<int64_t>());
    }
    post.single = {{-1, {ids[0]}, 0}, {0, {}, 0}, {-1, {ids[1]}, 0}};
    post.pair = {{-1, {ids[0]}, 0}, {0, {}, 0}, {-1, {ids[1]}, 0}, {1, {}, 1}, {-1, {ids[1]}, 1}};
    return post;
  }
  return Unsupported(origin, "post_processor", type, "TemplateProcessing, BertProcessing");
}

}  // namespace

absl::StatusOr<LoadedTokenizer> ParseTokenizerJson(const std::string& json_text,
                                                   const std::string& origin) {
  Json j;
  try {
    j = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  } catch (const std::exception&) {
    j = Json(Json::value_t::discarded);
  }
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(origin, ": not valid JSON"));
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(origin, ": not a JSON object"));
  // truncation and padding are the server's (max_length, truncation per request; batches are
  // packed), decoder is for decoding, which the server does not do: all three are ignored.
  RETURN_IF_ERROR(Fields(j, origin, "")
                      .OnlyKnown({"version", "truncation", "padding", "added_tokens", "normalizer",
                                  "pre_tokenizer", "post_processor", "decoder", "model"}));
  const Json null_json;
  const auto get = [&](const char* key) -> const Json& {
    return j.contains(key) ? j[key] : null_json;
  };

  ASSIGN_OR_RETURN(std::vector<AddedToken> added, ParseAddedTokens(get("added_tokens"), origin));
  ASSIGN_OR_RETURN(std::unique_ptr<const Normalizer> normalizer,
                   ParseNormalizer(get("normalizer"), origin));
  ASSIGN_OR_RETURN(std::unique_ptr<const PreTokenizer> pre_tokenizer,
                   ParsePreTokenizer(get("pre_tokenizer"), origin));
  ASSIGN_OR_RETURN(ParsedModel model, ParseModel(get("model"), origin));
  ASSIGN_OR_RETURN(PostTemplate post, ParsePostProcessor(get("post_processor"), origin));

  LoadedTokenizer loaded;
  loaded.unk_id = model.unk_id;
  loaded.post = std::move(post);
  // id -> token over the model's vocabulary and the added tokens (an added token's id may be new).
  int32_t max_id = -1;
  for (const auto& [token, id] : model.vocab) max_id = std::max(max_id, id);
  for (const AddedToken& t : added) max_id = std::max(max_id, t.id);
  loaded.id_to_token.resize(static_cast<size_t>(max_id) + 1);
  std::vector<std::pair<std::vector<char32_t>, int32_t>> entries;
  entries.reserve(model.vocab.size() + added.size());
  for (auto& [token, id] : model.vocab) {
    std::vector<char32_t> cps;
    DecodeAll(token, cps);
    entries.emplace_back(std::move(cps), id);
    loaded.id_to_token[static_cast<size_t>(id)] = std::move(token);
  }
  for (const AddedToken& t : added) {  // after the model's: the added vocabulary is looked up first
    std::vector<char32_t> cps;
    DecodeAll(t.content, cps);
    entries.emplace_back(std::move(cps), t.id);
    loaded.id_to_token[static_cast<size_t>(t.id)] = t.content;
  }
  loaded.lookup.Build(entries, U"");
  for (const auto* items : {&loaded.post.single, &loaded.post.pair}) {
    for (const PostTemplate::Item& item : *items) {
      for (const int32_t id : item.ids) {
        if (static_cast<size_t>(id) >= loaded.id_to_token.size()) {
          return absl::InvalidArgumentError(
              absl::StrCat(origin, ": post_processor: special token id ", id,
                           " is not in the vocab (", loaded.id_to_token.size(), " ids)"));
        }
      }
    }
  }
  loaded.impl = std::make_unique<JsonPipeline>(std::move(added), std::move(normalizer),
                                               std::move(pre_tokenizer), std::move(model.model));
  return loaded;
}

}  // namespace topserve::engine::tokenizer_internal
