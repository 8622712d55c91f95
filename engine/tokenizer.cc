// The tokenizer: the vocab.txt BERT tokenizer (BertVocabTokenizer), the WordPiece trie it shares
// with the tokenizer.json pipeline (tokenizer_json.cc), and Tokenizer, which lays out the model
// input from the pieces. See tokenizer.h for the behaviour; tools/ref_tokenizer.py is the Python
// reference the vocab.txt tests compare against (ids and byte offsets, SQuAD dev and every code
// point).
//
// vocab.txt pipeline for one text, in a single pass over the bytes:
//   1. decode UTF-8 (strictly: no overlong forms, surrogates, or values above U+10FFFF);
//   2. a literal special token ("[CLS]", ...) becomes its piece;
//   3. dropped characters are skipped, separators end the current word, a CJK ideograph is a
//      word of its own, anything else is appended to the word as (code point, byte span of the
//      original);
//   4. each word: lower-case, NFD + drop Mn (or NFC), split off punctuation, greedy WordPiece
//      over a code-point trie of the vocab. A normalised character keeps the span of the
//      character it came from, so every piece maps back to the original bytes.
// ASCII words skip the Unicode steps. Words are built in thread-local scratch buffers, so
// steady-state tokenization allocates only the output vector.
//
// Why one file of ~900 lines: the vocab.txt pipeline is one pass over the bytes whose stages share
// the per-text state (code points with their byte spans, the current word), and the WordPiece
// trie at its end is the one tokenizer_json.cc uses; split, each part would expose that state.
#include "engine/tokenizer.h"

#include <sys/stat.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "engine/tokenizer_parts.h"

namespace topserve::engine {
namespace tokenizer_internal {

// ---------------------------------------------------------------------------------------------------
// UTF-8

int DecodeUtf8(const unsigned char* p, size_t avail, char32_t* cp, const char** why) {
  const unsigned char b0 = p[0];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  int len;
  char32_t value;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 < 0xC0) {
    *why = "unexpected continuation byte";
    return 0;
  } else if (b0 < 0xC2) {
    *why = "overlong encoding";
    return 0;
  } else if (b0 < 0xE0) {
    len = 2;
    value = b0 & 0x1F;
  } else if (b0 < 0xF0) {
    len = 3;
    value = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (b0 < 0xF5) {
    len = 4;
    value = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    *why = "byte that never appears in UTF-8";
    return 0;
  }
  for (int i = 1; i < len; ++i) {
    if (static_cast<size_t>(i) >= avail || (p[i] & 0xC0) != 0x80) {
      *why = "truncated multi-byte sequence";
      return 0;
    }
    if (i == 1 && (p[1] < lo || p[1] > hi)) {
      *why = b0 == 0xED   ? "UTF-16 surrogate"
             : b0 == 0xF4 ? "code point above U+10FFFF"
                          : "overlong encoding";
      return 0;
    }
    value = (value << 6) | (p[i] & 0x3F);
  }
  *cp = value;
  return len;
}

absl::Status InvalidUtf8(std::string_view text, size_t pos, const char* why) {
  return absl::InvalidArgumentError(
      absl::StrFormat("invalid UTF-8 at byte %d of %d: %s (byte 0x%02X)", pos, text.size(), why,
                      static_cast<unsigned char>(text[pos])));
}

bool DecodeAll(std::string_view text, std::vector<char32_t>& out) {
  out.clear();
  for (size_t i = 0; i < text.size();) {
    char32_t cp;
    const char* why = nullptr;
    const int len = DecodeUtf8(reinterpret_cast<const unsigned char*>(text.data()) + i,
                               text.size() - i, &cp, &why);
    if (len == 0) return false;
    out.push_back(cp);
    i += static_cast<size_t>(len);
  }
  return true;
}

int CombiningClass(char32_t cp) {
  if (cp < 0x300) return 0;
  return utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class;
}

// Full canonical decomposition of in into out, then canonical ordering (stable sort of each run of
// non-starters by combining class). Spans follow their characters.
void Nfd(const std::vector<CharSpan>& in, std::vector<CharSpan>& out) {
  out.clear();
  for (const auto& c : in) {
    if (c.cp < 0xC0) {
      out.push_back(c);
      continue;
    }
    utf8proc_int32_t buf[16];
    int boundclass = 0;
    const utf8proc_ssize_t n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c.cp), buf, 16,
                                                       UTF8PROC_DECOMPOSE, &boundclass);
    if (n <= 0 || n > 16) {
      out.push_back(c);
      continue;
    }
    for (utf8proc_ssize_t i = 0; i < n; ++i)
      out.push_back({static_cast<char32_t>(buf[i]), c.b, c.e});
  }
  for (size_t i = 0; i < out.size();) {
    if (CombiningClass(out[i].cp) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < out.size() && CombiningClass(out[j].cp) != 0) ++j;
    if (j - i > 1) {
      std::stable_sort(
          out.begin() + static_cast<std::ptrdiff_t>(i),
          out.begin() + static_cast<std::ptrdiff_t>(j),
          [](const auto& x, const auto& y) { return CombiningClass(x.cp) < CombiningClass(y.cp); });
    }
    i = j;
  }
}

// ---------------------------------------------------------------------------------------------------
// WordPiece trie

void WordPieceTrie::Build(const std::vector<std::pair<std::vector<char32_t>, int32_t>>& entries,
                          std::u32string_view continuation) {
  // Insert the tokens in sorted order, so a node's children arrive sorted and a prefix shared with
  // the previous token is found by following each node's last child. Equal tokens: the later entry
  // wins.
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return entries[x].first < entries[y].first; });
  struct BuildNode {
    int32_t token = -1;
    std::vector<std::pair<char32_t, int32_t>> children;
  };
  std::vector<BuildNode> build(1);
  for (const size_t e : order) {
    int32_t node = 0;
    for (const char32_t cp : entries[e].first) {
      auto& ch = build[static_cast<size_t>(node)].children;
      if (!ch.empty() && ch.back().first == cp) {
        node = ch.back().second;
      } else {
        const auto child = static_cast<int32_t>(build.size());
        ch.emplace_back(cp, child);
        build.emplace_back();
        node = child;
      }
    }
    build[static_cast<size_t>(node)].token = entries[e].second;
  }
  nodes_.assign(build.size(), Node{});
  edge_cp_.clear();
  edge_to_.clear();
  dense_.clear();
  for (size_t n = 0; n < build.size(); ++n) {
    Node& node = nodes_[n];
    node.token = build[n].token;
    node.first_edge = static_cast<uint32_t>(edge_cp_.size());
    node.num_edges = static_cast<uint32_t>(build[n].children.size());
    for (const auto& [cp, child] : build[n].children) {
      edge_cp_.push_back(cp);
      edge_to_.push_back(child);
    }
    if (node.num_edges >= 16) {
      node.dense = static_cast<int32_t>(dense_.size() / 128);
      dense_.resize(dense_.size() + 128, -1);
      for (const auto& [cp, child] : build[n].children) {
        if (cp < 128) dense_[static_cast<size_t>(node.dense) * 128 + cp] = child;
      }
    }
  }
  continuation_node_ = 0;
  for (const char32_t cp : continuation) {
    continuation_node_ = Child(continuation_node_, cp);
    if (continuation_node_ < 0) break;
  }
}

int32_t WordPieceTrie::Child(int32_t node, char32_t cp) const {
  const Node& n = nodes_[static_cast<size_t>(node)];
  if (cp < 128 && n.dense >= 0) return dense_[static_cast<size_t>(n.dense) * 128 + cp];
  const char32_t* first = edge_cp_.data() + n.first_edge;
  const char32_t* last = first + n.num_edges;
  if (n.num_edges <= 8) {
    for (const char32_t* p = first; p != last; ++p) {
      if (*p == cp) return edge_to_[static_cast<size_t>(p - edge_cp_.data())];
    }
    return -1;
  }
  const char32_t* p = std::lower_bound(first, last, cp);
  return p != last && *p == cp ? edge_to_[static_cast<size_t>(p - edge_cp_.data())] : -1;
}

int32_t WordPieceTrie::Find(std::string_view token) const {
  if (nodes_.empty()) return -1;
  int32_t node = 0;
  for (size_t i = 0; i < token.size();) {
    char32_t cp;
    const char* why = nullptr;
    const int len = DecodeUtf8(reinterpret_cast<const unsigned char*>(token.data()) + i,
                               token.size() - i, &cp, &why);
    if (len == 0) return -1;
    node = Child(node, cp);
    if (node < 0) return -1;
    i += static_cast<size_t>(len);
  }
  return nodes_[static_cast<size_t>(node)].token;
}

void WordPieceTrie::Greedy(const CharSpan* w, size_t begin, size_t end, int32_t unk,
                           size_t max_chars, std::vector<Piece>& out) const {
  auto span = [&](size_t from, size_t to) {
    int32_t b = w[from].b, e = w[from].e;
    for (size_t k = from + 1; k < to; ++k) {
      b = std::min(b, w[k].b);
      e = std::max(e, w[k].e);
    }
    return std::pair<int32_t, int32_t>(b, e);
  };
  const size_t mark = out.size();
  if (end - begin <= max_chars) {
    size_t pos = begin;
    while (pos < end) {
      int32_t node = pos == begin ? 0 : continuation_node_;
      size_t best_end = 0;
      int32_t best_id = -1;
      for (size_t k = pos; k < end && node >= 0; ++k) {
        node = Child(node, w[k].cp);
        if (node >= 0 && nodes_[static_cast<size_t>(node)].token >= 0) {
          best_end = k + 1;
          best_id = nodes_[static_cast<size_t>(node)].token;
        }
      }
      if (best_id < 0) break;
      const auto [b, e] = span(pos, best_end);
      out.push_back({best_id, b, e});
      pos = best_end;
    }
    if (pos == end) return;
  }
  out.resize(mark);  // too long, or some part matches no vocab entry: the whole word is unk
  const auto [b, e] = span(begin, end);
  out.push_back({unk, b, e});
}

namespace {

constexpr size_t kMaxCharsPerWord = 100;  // HF WordpieceTokenizer.max_input_chars_per_word
constexpr std::array<std::string_view, 5> kSpecialTokens = {"[UNK]", "[SEP]", "[PAD]", "[CLS]",
                                                            "[MASK]"};

// ---------------------------------------------------------------------------------------------------
// Character classes (HF tokenization_bert.py: _is_whitespace, _is_control, _is_punctuation,
// _is_chinese_char; plus the separators of Python's str.split()).

enum CharClass : uint8_t {
  kOther = 0,
  kDrop = 1,   // U+0000, U+FFFD, category C* except \t \n \r
  kSpace = 2,  // space \t \n \r, Zs, and U+2028/U+2029 (str.split() separators not cleaned before)
  kPunct = 3,  // ASCII 33-47, 58-64, 91-96, 123-126, category P*
  kCjk = 4,
};

// Code points assigned by the Unicode 15.0 data in utf8proc but unassigned (Cn) in Unicode 14.0,
// the version of Python 3.11's unicodedata, which the reference uses: HF drops Cn characters as
// control. From comparing utf8proc 2.8 with unicodedata 14.0 over all code points; the test
// TokenizerCodepoints re-checks every code point of planes 0-3 and 14 against the reference.
constexpr std::array<std::pair<char32_t, char32_t>, 32> kUnassignedInReference = {{
    {0xCF3, 0xCF3},     {0xECE, 0xECE},     {0x10EFD, 0x10EFF}, {0x1123F, 0x11241},
    {0x11B00, 0x11B09}, {0x11F00, 0x11F10}, {0x11F12, 0x11F3A}, {0x11F3E, 0x11F59},
    {0x1342F, 0x1342F}, {0x13439, 0x13455}, {0x1B132, 0x1B132}, {0x1B155, 0x1B155},
    {0x1D2C0, 0x1D2D3}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E08F, 0x1E08F},
    {0x1E4D0, 0x1E4F9}, {0x1F6DC, 0x1F6DC}, {0x1F774, 0x1F776}, {0x1F77B, 0x1F77F},
    {0x1F7D9, 0x1F7D9}, {0x1FA75, 0x1FA77}, {0x1FA87, 0x1FA88}, {0x1FAAD, 0x1FAAF},
    {0x1FABB, 0x1FABD}, {0x1FABF, 0x1FABF}, {0x1FACE, 0x1FACF}, {0x1FADA, 0x1FADB},
    {0x1FAE8, 0x1FAE8}, {0x1FAF7, 0x1FAF8}, {0x2B739, 0x2B739}, {0x31350, 0x323AF},
}};

bool UnassignedInReference(char32_t cp) {
  if (cp < kUnassignedInReference.front().first) return false;
  auto it = std::upper_bound(
      kUnassignedInReference.begin(), kUnassignedInReference.end(), cp,
      [](char32_t c, const std::pair<char32_t, char32_t>& r) { return c < r.first; });
  return it != kUnassignedInReference.begin() && cp <= std::prev(it)->second;
}

bool IsChineseChar(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

constexpr std::array<uint8_t, 128> MakeAsciiClasses() {
  std::array<uint8_t, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if (c < 32 || c == 127) t[c] = kDrop;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') t[c] = kSpace;
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
        (c >= 123 && c <= 126)) {
      t[c] = kPunct;
    }
  }
  return t;
}
constexpr std::array<uint8_t, 128> kAsciiClass = MakeAsciiClasses();

// The class of a character of the (lower-cased) input.
CharClass ClassOf(char32_t cp) {
  if (cp < 0x80) return static_cast<CharClass>(kAsciiClass[cp]);
  if (cp == 0xFFFD || UnassignedInReference(cp)) return kDrop;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN: return kDrop;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP: return kSpace;
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO: return kPunct;
    default: return IsChineseChar(cp) ? kCjk : kOther;
  }
}

bool IsPunctuation(char32_t cp) {
  if (cp < 0x80) return kAsciiClass[cp] == kPunct;
  const utf8proc_category_t c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

bool IsNonspacingMark(char32_t cp) {
  return cp >= 0x300 &&
         utf8proc_category(static_cast<utf8proc_int32_t>(cp)) == UTF8PROC_CATEGORY_MN;
}

// ---------------------------------------------------------------------------------------------------
// A word being normalised: code points with the byte span [b, e) of the original they came from.

using WordChar = CharSpan;

struct Word {
  std::vector<WordChar> chars;
  std::vector<WordChar> tmp;
  bool ascii = true;

  void Clear() {
    chars.clear();
    ascii = true;
  }
  void Add(char32_t cp, size_t b, size_t e) {
    chars.push_back({cp, static_cast<int32_t>(b), static_cast<int32_t>(e)});
    ascii = ascii && cp < 0x80;
  }
};

// Python's str.lower() for one code point: the simple mapping, except U+0130 (the only
// unconditional multi-character lower-case mapping in SpecialCasing.txt).
template <typename Out>
void LowerInto(char32_t cp, int32_t b, int32_t e, Out& out) {
  if (cp < 0x80) {
    out.push_back({cp >= 'A' && cp <= 'Z' ? cp + 32 : cp, b, e});
  } else if (cp == 0x130) {
    out.push_back({U'i', b, e});
    out.push_back({0x307, b, e});
  } else {
    out.push_back(
        {static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))), b, e});
  }
}
// The primary composite of starter + c, or 0.
char32_t ComposePair(char32_t starter, char32_t c) {
  utf8proc_int32_t buf[2] = {static_cast<utf8proc_int32_t>(starter),
                             static_cast<utf8proc_int32_t>(c)};
  const utf8proc_ssize_t n = utf8proc_normalize_utf32(
      buf, 2, static_cast<utf8proc_option_t>(UTF8PROC_COMPOSE | UTF8PROC_STABLE));
  return n == 1 ? static_cast<char32_t>(buf[0]) : 0;
}

// NFC of in into out (via `scratch`): NFD, then the canonical composition algorithm. A composite
// gets the union of the spans of the characters it was composed from.
void Nfc(const std::vector<CharSpan>& in, std::vector<CharSpan>& out,
         std::vector<CharSpan>& scratch) {
  Nfd(in, scratch);
  out.clear();
  ptrdiff_t starter = -1;
  int max_class = -1;  // highest combining class appended since the starter, -1 if none
  for (const auto& c : scratch) {
    const int cc = CombiningClass(c.cp);
    if (starter >= 0 && cc > max_class) {
      auto& s = out[static_cast<size_t>(starter)];
      if (const char32_t composite = ComposePair(s.cp, c.cp); composite != 0) {
        s.cp = composite;
        s.b = std::min(s.b, c.b);
        s.e = std::max(s.e, c.e);
        continue;
      }
    }
    out.push_back(c);
    if (cc == 0) {
      starter = static_cast<ptrdiff_t>(out.size()) - 1;
      max_class = -1;
    } else {
      max_class = std::max(max_class, cc);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// vocab.txt: Hugging Face's slow BertTokenizer

class BertVocabTokenizer final : public TextTokenizer {
 public:
  BertVocabTokenizer(const TokenizerConfig& config, WordPieceTrie trie,
                     std::vector<std::pair<std::string, int32_t>> specials, int32_t unk_id)
      : config_(config),
        strip_accents_(config.do_lower_case ? config.strip_accents.value_or(true)
                                            : config.strip_accents.value_or(false)),
        trie_(std::move(trie)),
        specials_(std::move(specials)),
        unk_id_(unk_id) {}

  absl::StatusOr<std::vector<Piece>> Tokenize(std::string_view text) const override;

 private:
  // Id of the special token spelled by chars, or -1.
  int32_t MatchSpecial(const std::vector<WordChar>& chars) const;
  // Appends the pieces of one whitespace-delimited word.
  void WordPieces(Word& word, std::vector<Piece>& out) const;

  TokenizerConfig config_;
  bool strip_accents_;
  WordPieceTrie trie_;
  // Special tokens present in the vocab, longest first: (text, id).
  std::vector<std::pair<std::string, int32_t>> specials_;
  int32_t unk_id_;
};

int32_t BertVocabTokenizer::MatchSpecial(const std::vector<WordChar>& chars) const {
  if (chars.empty() || chars.front().cp != U'[' || chars.back().cp != U']') return -1;
  for (const auto& [name, id] : specials_) {
    if (name.size() != chars.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i)
      same = chars[i].cp == static_cast<char32_t>(name[i]);
    if (same) return id;
  }
  return -1;
}

void BertVocabTokenizer::WordPieces(Word& word, std::vector<Piece>& out) const {
  if (word.chars.empty()) return;
  // BasicTokenizer's never_split: a whole word equal to a special token stays that token. It is
  // checked after HF's lower-casing pre-pass and NFC, so with do_lower_case it never matches
  // (literal special tokens are split off before, in Tokenize); without, it catches e.g. "[CLS]"
  // with a control character inside.
  const bool check_special = !config_.do_lower_case && !specials_.empty();
  const auto special = [&](int32_t id) {
    int32_t b = word.chars.front().b, e = word.chars.front().e;
    for (const auto& c : word.chars) {
      b = std::min(b, c.b);
      e = std::max(e, c.e);
    }
    out.push_back({id, b, e});
  };
  if (word.ascii) {  // ASCII: no decompositions or compositions, lower-casing is A-Z only
    if (config_.do_lower_case) {
      for (auto& c : word.chars) {
        if (c.cp >= 'A' && c.cp <= 'Z') c.cp += 32;
      }
    } else if (check_special) {
      if (const int32_t id = MatchSpecial(word.chars); id >= 0) return special(id);
    }
  } else {
    // Lower-case per code point (PreTrainedTokenizer.tokenize lower-cases character by character).
    if (config_.do_lower_case) {
      word.tmp.clear();
      for (const auto& c : word.chars) LowerInto(c.cp, c.b, c.e, word.tmp);
      word.chars.swap(word.tmp);
    }
    bool composable = false;  // combining marks start at U+0300; below, NFC and NFD change nothing
    for (const auto& c : word.chars) composable = composable || c.cp >= 0x300;
    if (composable && (!strip_accents_ || check_special)) {
      std::vector<WordChar> scratch;
      Nfc(word.chars, word.tmp, scratch);
      if (check_special) {
        if (const int32_t id = MatchSpecial(word.tmp); id >= 0) return special(id);
      }
      if (!strip_accents_) word.chars.swap(word.tmp);
    } else if (check_special) {
      if (const int32_t id = MatchSpecial(word.chars); id >= 0) return special(id);
    }
    if (strip_accents_) {  // NFD(NFC(x)) == NFD(x): HF's NFC step needs no work here
      // A dropped mark's span joins the character before it (if any): a decomposed "e" + U+0301
      // maps to all of its bytes, like a precomposed "é" does.
      Nfd(word.chars, word.tmp);
      word.chars.clear();
      for (const auto& c : word.tmp) {
        if (!IsNonspacingMark(c.cp)) {
          word.chars.push_back(c);
        } else if (!word.chars.empty()) {
          word.chars.back().b = std::min(word.chars.back().b, c.b);
          word.chars.back().e = std::max(word.chars.back().e, c.e);
        }
      }
      if (word.chars.empty()) return;
    }
  }

  // Split off punctuation, WordPiece each part.
  size_t start = 0;
  const size_t n = word.chars.size();
  for (size_t i = 0; i < n; ++i) {
    if (IsPunctuation(word.chars[i].cp)) {
      if (start < i) trie_.Greedy(word.chars.data(), start, i, unk_id_, kMaxCharsPerWord, out);
      trie_.Greedy(word.chars.data(), i, i + 1, unk_id_, kMaxCharsPerWord, out);
      start = i + 1;
    }
  }
  if (start < n) trie_.Greedy(word.chars.data(), start, n, unk_id_, kMaxCharsPerWord, out);
}

absl::StatusOr<std::vector<Piece>> BertVocabTokenizer::Tokenize(std::string_view text) const {
  if (text.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("text of ", text.size(), " bytes is too long (limit 2 GiB)"));
  }
  thread_local Word word;
  word.Clear();
  std::vector<Piece> out;
  out.reserve(text.size() / 4 + 4);

  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t pos = 0;
  while (pos < n) {
    const unsigned char c = bytes[pos];
    if (c < 0x80) {  // ASCII fast path
      switch (kAsciiClass[c]) {
        case kOther: word.Add(c, pos, pos + 1); break;
        case kSpace:
          WordPieces(word, out);
          word.Clear();
          break;
        case kPunct:
          if (c == '[' && !specials_.empty()) {
            bool matched = false;
            for (const auto& [name, id] : specials_) {
              if (text.compare(pos, name.size(), name) == 0) {
                WordPieces(word, out);
                word.Clear();
                out.push_back(
                    {id, static_cast<int32_t>(pos), static_cast<int32_t>(pos + name.size())});
                pos += name.size();
                matched = true;
                break;
              }
            }
            if (matched) continue;
          }
          word.Add(c, pos, pos + 1);
          break;
        default:  // kDrop
          break;
      }
      ++pos;
      continue;
    }
    char32_t cp;
    const char* why = nullptr;
    const int len = DecodeUtf8(bytes + pos, n - pos, &cp, &why);
    if (len == 0) return InvalidUtf8(text, pos, why);
    const size_t next = pos + static_cast<size_t>(len);
    switch (ClassOf(cp)) {
      case kOther:
      case kPunct: word.Add(cp, pos, next); break;
      case kSpace:
        WordPieces(word, out);
        word.Clear();
        break;
      case kCjk:
        if (config_.tokenize_chinese_chars) {
          WordPieces(word, out);
          word.Clear();
          word.Add(cp, pos, next);
          WordPieces(word, out);
          word.Clear();
        } else {
          word.Add(cp, pos, next);
        }
        break;
      case kDrop: break;
    }
    pos = next;
  }
  WordPieces(word, out);
  word.Clear();
  if (word.chars.capacity() > 4096) {  // an unusually long word: do not keep its buffers per thread
    word.chars = {};
    word.tmp = {};
  }
  return out;
}

}  // namespace
}  // namespace tokenizer_internal

// ---------------------------------------------------------------------------------------------------
// Loading

namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(
        absl::StrCat("cannot open ", what, " '", path, "': ", std::strerror(errno)));
  }
  std::string data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) return absl::DataLossError(absl::StrCat("error reading ", what, " '", path, "'"));
  return data;
}

// [CLS]:0 $A:0 [SEP]:0, pair: ... $B:1 [SEP]:1.
PostTemplate BertTemplate(int32_t cls, int32_t sep) {
  PostTemplate t;
  t.single = {{-1, {cls}, 0}, {0, {}, 0}, {-1, {sep}, 0}};
  t.pair = {{-1, {cls}, 0}, {0, {}, 0}, {-1, {sep}, 0}, {1, {}, 1}, {-1, {sep}, 1}};
  return t;
}

}  // namespace

size_t PostTemplate::num_special_tokens(bool is_pair) const {
  size_t n = 0;
  for (const Item& item : is_pair ? pair : single) n += item.ids.size();
  return n;
}

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& vocab_path,
                                                           const TokenizerConfig& config) {
  using tokenizer_internal::DecodeUtf8;
  ASSIGN_OR_RETURN(const std::string data, ReadFile(vocab_path, "vocab file"));
  std::unique_ptr<Tokenizer> tok(new Tokenizer());

  // Lines as Python's text mode reads them (universal newlines: \n, \r\n and \r end a line).
  std::vector<std::pair<std::vector<char32_t>, int32_t>> entries;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t end = data.find_first_of("\r\n", pos);
    size_t next;
    if (end == std::string::npos) {
      end = next = data.size();
    } else {
      next = end + 1;
      if (data[end] == '\r' && next < data.size() && data[next] == '\n') ++next;
    }
    const std::string_view line(data.data() + pos, end - pos);
    std::vector<char32_t> cps;
    for (size_t i = 0; i < line.size();) {
      char32_t cp;
      const char* why = nullptr;
      const int len = DecodeUtf8(reinterpret_cast<const unsigned char*>(line.data()) + i,
                                 line.size() - i, &cp, &why);
      if (len == 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("vocab file '%s' line %d: invalid UTF-8 (%s)", vocab_path,
                            tok->id_to_token_.size() + 1, why));
      }
      cps.push_back(cp);
      i += static_cast<size_t>(len);
    }
    if (tok->id_to_token_.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocab file '", vocab_path, "' has too many lines"));
    }
    entries.emplace_back(std::move(cps), static_cast<int32_t>(tok->id_to_token_.size()));
    tok->id_to_token_.emplace_back(line);
    pos = next;
  }
  // A duplicated token keeps its last line's id: entries are in line order, the later one wins.
  tokenizer_internal::WordPieceTrie trie;
  trie.Build(entries, U"##");
  entries = {};
  tok->lookup_ = std::make_unique<tokenizer_internal::WordPieceTrie>(trie);

  std::vector<std::pair<std::string, int32_t>> specials;
  for (const std::string_view name : tokenizer_internal::kSpecialTokens) {
    const int32_t id = tok->token_id(name);
    if (id >= 0) specials.emplace_back(std::string(name), id);
  }
  std::stable_sort(specials.begin(), specials.end(),
                   [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  tok->unk_id_ = tok->token_id("[UNK]");
  tok->cls_id_ = tok->token_id("[CLS]");
  tok->sep_id_ = tok->token_id("[SEP]");
  for (const auto& [name, id] : {std::pair<const char*, int32_t>{"[UNK]", tok->unk_id_},
                                 {"[CLS]", tok->cls_id_},
                                 {"[SEP]", tok->sep_id_}}) {
    if (id < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("vocab file '%s' (%d tokens) has no %s token", vocab_path,
                          tok->id_to_token_.size(), name));
    }
  }
  tok->post_ = BertTemplate(tok->cls_id_, tok->sep_id_);
  tok->impl_ = std::make_unique<tokenizer_internal::BertVocabTokenizer>(
      config, std::move(trie), std::move(specials), tok->unk_id_);
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadJson(const std::string& json_path) {
  ASSIGN_OR_RETURN(const std::string text, ReadFile(json_path, "tokenizer file"));
  ASSIGN_OR_RETURN(tokenizer_internal::LoadedTokenizer loaded,
                   tokenizer_internal::ParseTokenizerJson(text, json_path));
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  tok->impl_ = std::move(loaded.impl);
  tok->id_to_token_ = std::move(loaded.id_to_token);
  tok->lookup_ = std::make_unique<tokenizer_internal::WordPieceTrie>(std::move(loaded.lookup));
  tok->post_ = std::move(loaded.post);
  tok->unk_id_ = loaded.unk_id;
  for (const PostTemplate::Item& item : tok->post_.single) {
    if (item.ids.empty()) continue;
    if (tok->cls_id_ < 0) tok->cls_id_ = item.ids.front();
    tok->sep_id_ = item.ids.back();
  }
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromModelDir(
    const std::string& dir, const TokenizerConfig& config) {
  const std::string prefix = (!dir.empty() && dir.back() == '/') ? dir : dir + "/";
  struct stat st {};
  if (::stat((prefix + "vocab.txt").c_str(), &st) == 0) return Load(prefix + "vocab.txt", config);
  if (::stat((prefix + "tokenizer.json").c_str(), &st) == 0)
    return LoadJson(prefix + "tokenizer.json");
  return absl::NotFoundError(
      absl::StrCat(dir, ": no tokenizer: neither vocab.txt nor tokenizer.json exists"));
}

int32_t Tokenizer::token_id(std::string_view token) const { return lookup_->Find(token); }

absl::StatusOr<std::vector<Piece>> Tokenizer::Tokenize(std::string_view text) const {
  return impl_->Tokenize(text);
}

// ---------------------------------------------------------------------------------------------------
// Building model inputs

absl::StatusOr<Encoding> Tokenizer::Build(const std::vector<Piece>& a, const std::vector<Piece>* b,
                                          size_t max_length, Truncation truncation) const {
  const size_t specials = post_.num_special_tokens(b != nullptr);
  if (max_length < specials) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_length %d is smaller than the %d special tokens of a %s", max_length,
                        specials, b != nullptr ? "sentence pair" : "single sequence"));
  }
  size_t la = a.size();
  size_t lb = b != nullptr ? b->size() : 0;
  const size_t total = la + lb + specials;
  if (total > max_length) {
    size_t remove = total - max_length;
    const auto cannot = [&](const char* which, size_t len) {
      return absl::InvalidArgumentError(
          absl::StrFormat("cannot truncate to max_length %d: %d tokens must go but the %s sequence "
                          "has only %d (the "
                          "truncation strategy may not remove a whole sequence)",
                          max_length, remove, which, len));
    };
    switch (truncation) {
      case Truncation::kNone:
        return absl::InvalidArgumentError(
            absl::StrFormat("input has %d tokens including %d special tokens, more than max_length "
                            "%d, and truncation is off",
                            total, specials, max_length));
      case Truncation::kLongestFirst:
        if (b == nullptr) {
          if (la <= remove) return cannot("first", la);
          la -= remove;
        } else {
          // Equivalent to removing one token at a time from the longer sequence (the second when
          // equal).
          if (la > lb) {
            const size_t d = std::min(remove, la - lb);
            la -= d;
            remove -= d;
          } else if (lb > la) {
            const size_t d = std::min(remove, lb - la);
            lb -= d;
            remove -= d;
          }
          lb -= (remove + 1) / 2;
          la -= remove / 2;
        }
        break;
      case Truncation::kOnlyFirst:
        if (la <= remove) return cannot("first", la);
        la -= remove;
        break;
      case Truncation::kOnlySecond:
        if (b == nullptr) {
          return absl::InvalidArgumentError(
              absl::StrFormat("input has %d tokens, more than max_length %d, and only_second "
                              "truncation needs a second sequence",
                              total, max_length));
        }
        if (lb <= remove) return cannot("second", lb);
        lb -= remove;
        break;
    }
  }

  Encoding enc;
  const size_t size = la + lb + specials;
  enc.ids.reserve(size);
  enc.type_ids.reserve(size);
  enc.begin.reserve(size);
  enc.end.reserve(size);
  enc.segment.reserve(size);
  const auto add = [&enc](int32_t id, int32_t type, int32_t begin, int32_t end, int8_t segment) {
    enc.ids.push_back(id);
    enc.type_ids.push_back(type);
    enc.begin.push_back(begin);
    enc.end.push_back(end);
    enc.segment.push_back(segment);
  };
  for (const PostTemplate::Item& item : b != nullptr ? post_.pair : post_.single) {
    if (item.sequence < 0) {
      for (const int32_t id : item.ids) add(id, item.type_id, 0, 0, -1);
      continue;
    }
    const std::vector<Piece>& seq = item.sequence == 0 ? a : *b;
    const size_t len = item.sequence == 0 ? la : lb;
    for (size_t i = 0; i < len; ++i)
      add(seq[i].id, item.type_id, seq[i].begin, seq[i].end, item.sequence);
  }
  return enc;
}

absl::StatusOr<Encoding> Tokenizer::Encode(std::string_view a, std::optional<std::string_view> b,
                                           size_t max_length, Truncation truncation) const {
  auto pa = Tokenize(a);
  if (!pa.ok()) return WithPrefix(pa.status(), "first text");
  if (!b.has_value()) return Build(*pa, nullptr, max_length, truncation);
  auto pb = Tokenize(*b);
  if (!pb.ok()) return WithPrefix(pb.status(), "second text");
  return Build(*pa, &*pb, max_length, truncation);
}

}  // namespace topserve::engine
