// Tests of the BERT WordPiece tokenizer (engine/tokenizer.h).
//
// Expected outputs come from three places:
//  - the golden files of the reference implementation (../shared/data/golden/tokenizer): ids and
//  tokens
//    of every SST-2 dev sentence and of the stress strings and pairs;
//  - tools/ref_tokenizer.py, an independent pure-Python implementation run at test time (its
//  outputs
//    are cached in TOPSERVE_TEST_DATA_DIR and rebuilt when the script, vocab or data change): ids
//    and byte offsets of every SQuAD dev question and context and every code point of planes 0-3
//    and 14, and truncation lengths of every SQuAD question+context pair; the script is itself
//    checked against the golden files;
//  - hand-written cases below.
#include "engine/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <utf8proc.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <tuple>

namespace topserve::engine {
namespace {

using json = nlohmann::json;
using namespace std::string_literals;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

const std::string kShared = TOPSERVE_SHARED_DIR;
const std::string kVocab = kShared + "/data/bert-base-uncased/vocab.txt";
const std::string kGoldenDir = kShared + "/data/golden/tokenizer";
const std::string kSquad = kShared + "/data/squad/dev-v1.1.json";
const std::string kRefScript = std::string(TOPSERVE_SOURCE_DIR) + "/tools/ref_tokenizer.py";
const std::string kDataDir = TOPSERVE_TEST_DATA_DIR;
constexpr size_t kNoLimit = size_t{1} << 30;

const Tokenizer& Uncased() {
  static const Tokenizer* tok = [] {
    auto t = Tokenizer::Load(kVocab, TokenizerConfig{});
    if (!t.ok()) {
      ADD_FAILURE() << t.status();
      std::abort();
    }
    return t->release();
  }();
  return *tok;
}

std::unique_ptr<Tokenizer> LoadOrDie(const std::string& path, const TokenizerConfig& config) {
  auto t = Tokenizer::Load(path, config);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

std::vector<json> ReadJsonl(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(json::parse(line));
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, std::string_view content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Runs tools/ref_tokenizer.py with `args`; returns its exit status, its output in *log.
int RunReference(const std::string& args, const std::string& log_name, std::string* log) {
  const std::string log_path = kDataDir + "/" + log_name;
  const std::string cmd = ShellQuote(TOPSERVE_PYTHON) + " " + ShellQuote(kRefScript) + " " + args +
                          " > " + ShellQuote(log_path) + " 2>&1";
  const int rc = std::system(cmd.c_str());
  *log = ReadFile(log_path);
  return rc;
}

// The reference output file `name`, (re)made by `args` (which must write --out to it) unless it is
// newer than the script and every input.
std::string ReferenceOutput(const std::string& name, const std::string& args,
                            const std::vector<std::string>& inputs) {
  const std::string out = kDataDir + "/" + name;
  std::error_code ec;
  bool fresh = fs::exists(out, ec);
  if (fresh) {
    const auto made = fs::last_write_time(out, ec);
    for (const std::string& in : inputs) fresh = fresh && fs::last_write_time(in, ec) <= made;
    fresh = fresh && fs::last_write_time(kRefScript, ec) <= made;
  }
  if (!fresh) {
    std::string log;
    const int rc = RunReference(args + " --out " + ShellQuote(out), name + ".log", &log);
    EXPECT_EQ(rc, 0) << "reference tokenizer failed: " << log;
  }
  return out;
}

std::vector<std::string> Tokens(const Tokenizer& tok, const std::vector<Piece>& pieces) {
  std::vector<std::string> out;
  for (const Piece& p : pieces) out.push_back(tok.token(p.id));
  return out;
}

std::vector<std::pair<int32_t, int32_t>> Spans(const std::vector<Piece>& pieces) {
  std::vector<std::pair<int32_t, int32_t>> out;
  for (const Piece& p : pieces) out.emplace_back(p.begin, p.end);
  return out;
}

std::vector<Piece> TokenizeOk(const Tokenizer& tok, std::string_view text) {
  auto r = tok.Tokenize(text);
  EXPECT_TRUE(r.ok()) << r.status() << " for " << text;
  return r.ok() ? *r : std::vector<Piece>{};
}

// What the original text looks like to the tokenizer, without the splitting: dropped characters
// removed, lower-cased (Python semantics), NFD, combining marks (Mn) removed. Written with
// utf8proc's whole-string API rather than the tokenizer's per-character code.
std::string Normalized(std::string_view slice) {
  std::string kept;
  for (size_t i = 0; i < slice.size();) {
    utf8proc_int32_t cp;
    const utf8proc_ssize_t n =
        utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(slice.data()) + i,
                         static_cast<utf8proc_ssize_t>(slice.size() - i), &cp);
    if (n <= 0) return "<invalid>";
    i += static_cast<size_t>(n);
    const utf8proc_category_t cat = utf8proc_category(cp);
    if (cp == 0 || cp == 0xFFFD || cat == UTF8PROC_CATEGORY_CN || cat >= UTF8PROC_CATEGORY_CC)
      continue;
    utf8proc_uint8_t buf[8];
    if (cp == 0x130) {
      kept += "i\xCC\x87";
      continue;
    }
    const utf8proc_ssize_t len = utf8proc_encode_char(utf8proc_tolower(cp), buf);
    kept.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(len));
  }
  utf8proc_uint8_t* nfd = utf8proc_NFD(reinterpret_cast<const utf8proc_uint8_t*>(kept.c_str()));
  std::string out;
  for (utf8proc_ssize_t i = 0; nfd[i] != 0;) {
    utf8proc_int32_t cp;
    const utf8proc_ssize_t n = utf8proc_iterate(nfd + i, -1, &cp);
    if (utf8proc_category(cp) != UTF8PROC_CATEGORY_MN)
      out.append(reinterpret_cast<const char*>(nfd + i), static_cast<size_t>(n));
    i += n;
  }
  std::free(nfd);
  return out;
}

// Checks the offsets of pieces against text: every span is non-empty, inside the text and starts no
// earlier than the previous one; the normalised slice contains the piece text (without "##"),
// except [UNK]; a special token's slice is the token itself. Returns the number of failures
// (reports the first few).
int CheckOffsets(const Tokenizer& tok, std::string_view text, const std::vector<Piece>& pieces,
                 int report = 3) {
  int failures = 0;
  int32_t prev_begin = 0;
  for (const Piece& p : pieces) {
    std::string why;
    if (p.begin < prev_begin || p.begin >= p.end || p.end > static_cast<int32_t>(text.size())) {
      why = "bad span";
    } else {
      const std::string_view slice =
          text.substr(static_cast<size_t>(p.begin), static_cast<size_t>(p.end - p.begin));
      std::string piece = tok.token(p.id);
      if (p.id == tok.unk_id() && slice != "[UNK]") continue;
      if (piece.size() == 5 && piece[0] == '[' && piece[4] == ']') {
        if (slice != piece) why = "special token slice";
      } else {
        if (piece.size() > 2 && piece.compare(0, 2, "##") == 0) piece.erase(0, 2);
        if (Normalized(slice).find(piece) == std::string::npos)
          why = "slice does not contain piece";
      }
    }
    prev_begin = p.begin;
    if (!why.empty()) {
      if (++failures <= report) {
        ADD_FAILURE() << why << ": piece '" << tok.token(p.id) << "' [" << p.begin << ", " << p.end
                      << ") in \"" << text << "\"";
      }
    }
  }
  return failures;
}

// ---------------------------------------------------------------------------------------------------
// Golden files of the reference implementation

TEST(TokenizerGolden, Sst2DevIdsTokensAndOffsets) {
  const Tokenizer& tok = Uncased();
  const auto golden = ReadJsonl(kGoldenDir + "/sst2-dev.jsonl");
  ASSERT_EQ(golden.size(), 872u);
  int mismatches = 0, offset_failures = 0;
  for (const json& g : golden) {
    const std::string text = g["text"];
    const auto pieces = TokenizeOk(tok, text);
    auto enc = tok.Build(pieces, nullptr, kNoLimit, Truncation::kNone);
    ASSERT_TRUE(enc.ok()) << enc.status();
    std::vector<std::string> tokens;
    for (const int32_t id : enc->ids) tokens.push_back(tok.token(id));
    if (enc->ids != g["input_ids"].get<std::vector<int32_t>>() ||
        tokens != g["tokens"].get<std::vector<std::string>>()) {
      if (++mismatches <= 5)
        ADD_FAILURE() << "mismatch on \"" << text << "\": " << ::testing::PrintToString(tokens);
    }
    EXPECT_EQ(enc->type_ids, std::vector<int32_t>(enc->size(), 0));
    offset_failures += CheckOffsets(tok, text, pieces);
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(offset_failures, 0);
}

TEST(TokenizerGolden, StressStringsAndPairs) {
  const Tokenizer& tok = Uncased();
  const auto golden = ReadJsonl(kGoldenDir + "/stress.jsonl");
  ASSERT_EQ(golden.size(), 67u);
  int pairs = 0;
  for (const json& g : golden) {
    const std::string text = g["text"];
    std::optional<std::string> pair;
    if (g.contains("text_pair")) pair = g["text_pair"].get<std::string>();
    pairs += pair.has_value();
    auto enc = tok.Encode(text, pair, kNoLimit, Truncation::kNone);
    ASSERT_TRUE(enc.ok()) << enc.status();
    std::vector<std::string> tokens;
    for (const int32_t id : enc->ids) tokens.push_back(tok.token(id));
    EXPECT_EQ(tokens, g["tokens"].get<std::vector<std::string>>()) << text;
    EXPECT_EQ(enc->ids, g["input_ids"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(enc->type_ids, g["token_type_ids"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(CheckOffsets(tok, text, TokenizeOk(tok, text)), 0) << text;
    if (pair) {
      EXPECT_EQ(CheckOffsets(tok, *pair, TokenizeOk(tok, *pair)), 0) << *pair;
    }
  }
  EXPECT_EQ(pairs, 10);
}

// ---------------------------------------------------------------------------------------------------
// The Python reference

TEST(TokenizerReference, PythonReferenceMatchesGoldenFiles) {
  std::string log;
  const int rc = RunReference(
      "selfcheck --golden-dir " + ShellQuote(kGoldenDir) + " --vocab " + ShellQuote(kVocab),
      "tokenizer_selfcheck.log", &log);
  EXPECT_EQ(rc, 0) << log;
  EXPECT_THAT(log, HasSubstr("selfcheck: 939 golden entries, 0 mismatches")) << log;
}

struct RefText {
  std::string text;
  std::vector<int32_t> ids, begin, end;
};

RefText ParseRefText(const json& j) {
  return {j["text"].get<std::string>(), j["ids"].get<std::vector<int32_t>>(),
          j["begin"].get<std::vector<int32_t>>(), j["end"].get<std::vector<int32_t>>()};
}

// Compares C++ pieces with a reference record; reports the first few mismatches via *mismatches.
void ComparePieces(const Tokenizer& tok, const RefText& ref, const std::vector<Piece>& pieces,
                   int* mismatches) {
  std::vector<int32_t> ids, begin, end;
  for (const Piece& p : pieces) {
    ids.push_back(p.id);
    begin.push_back(p.begin);
    end.push_back(p.end);
  }
  if (ids != ref.ids || begin != ref.begin || end != ref.end) {
    if (++*mismatches <= 5) {
      std::vector<std::string> expected;
      for (const int32_t id : ref.ids) expected.push_back(tok.token(id));
      ADD_FAILURE() << "mismatch on \"" << ref.text << "\"\n  got      "
                    << ::testing::PrintToString(Tokens(tok, pieces)) << " "
                    << ::testing::PrintToString(Spans(pieces)) << "\n  expected "
                    << ::testing::PrintToString(expected) << " begins "
                    << ::testing::PrintToString(ref.begin) << " ends "
                    << ::testing::PrintToString(ref.end);
    }
  }
}

struct SquadRef {
  std::vector<RefText> contexts, questions;
  std::vector<json> pairs;
};

const SquadRef& Squad() {
  static const SquadRef* squad = [] {
    const std::string path = ReferenceOutput(
        "tokenizer_squad_ref.jsonl",
        "squad --squad " + ShellQuote(kSquad) + " --vocab " + ShellQuote(kVocab), {kSquad, kVocab});
    auto* s = new SquadRef;
    for (json& j : ReadJsonl(path)) {
      const std::string kind = j["kind"];
      if (kind == "context") {
        s->contexts.push_back(ParseRefText(j));
      } else if (kind == "question") {
        s->questions.push_back(ParseRefText(j));
      } else {
        s->pairs.push_back(std::move(j));
      }
    }
    return s;
  }();
  return *squad;
}

TEST(TokenizerReference, SquadQuestionsAndContexts) {
  const Tokenizer& tok = Uncased();
  const SquadRef& ref = Squad();
  ASSERT_EQ(ref.contexts.size(), 2067u);
  ASSERT_EQ(ref.questions.size(), 10570u);
  // The reference saw the same texts, in the same order, as the data set has.
  const json squad = json::parse(ReadFile(kSquad));
  size_t ci = 0, qi = 0;
  for (const json& article : squad["data"]) {
    for (const json& para : article["paragraphs"]) {
      ASSERT_EQ(para["context"].get<std::string>(), ref.contexts.at(ci++).text);
      for (const json& qa : para["qas"])
        ASSERT_EQ(qa["question"].get<std::string>(), ref.questions.at(qi++).text);
    }
  }
  ASSERT_EQ(ci, ref.contexts.size());
  ASSERT_EQ(qi, ref.questions.size());

  int mismatches = 0, offset_failures = 0;
  for (const auto* texts : {&ref.contexts, &ref.questions}) {
    for (const RefText& r : *texts) {
      const auto pieces = TokenizeOk(tok, r.text);
      ComparePieces(tok, r, pieces, &mismatches);
      offset_failures += CheckOffsets(tok, r.text, pieces);
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(offset_failures, 0);
}

// Expected encoding of a pair from the reference's per-text outputs and truncated lengths.
Encoding ExpectedPair(const Tokenizer& tok, const RefText& a, const RefText& b, size_t la,
                      size_t lb) {
  Encoding e;
  auto add = [&e](int32_t id, int32_t type, int32_t begin, int32_t end, int8_t seg) {
    e.ids.push_back(id);
    e.type_ids.push_back(type);
    e.begin.push_back(begin);
    e.end.push_back(end);
    e.segment.push_back(seg);
  };
  add(tok.cls_id(), 0, 0, 0, -1);
  for (size_t i = 0; i < la; ++i) add(a.ids[i], 0, a.begin[i], a.end[i], 0);
  add(tok.sep_id(), 0, 0, 0, -1);
  for (size_t i = 0; i < lb; ++i) add(b.ids[i], 1, b.begin[i], b.end[i], 1);
  add(tok.sep_id(), 1, 0, 0, -1);
  return e;
}

bool SameEncoding(const Encoding& x, const Encoding& y) {
  return x.ids == y.ids && x.type_ids == y.type_ids && x.begin == y.begin && x.end == y.end &&
         x.segment == y.segment;
}

TEST(TokenizerReference, SquadPairsTruncated) {
  const Tokenizer& tok = Uncased();
  const SquadRef& ref = Squad();
  ASSERT_EQ(ref.pairs.size(), 10570u);
  std::vector<std::vector<Piece>> contexts, questions;
  for (const RefText& r : ref.contexts) contexts.push_back(TokenizeOk(tok, r.text));
  for (const RefText& r : ref.questions) questions.push_back(TokenizeOk(tok, r.text));
  int mismatches = 0, truncated[2] = {0, 0}, over512 = 0;
  for (const json& p : ref.pairs) {
    const size_t q = p["question"], c = p["context"];
    const RefText& rq = ref.questions.at(q);
    const RefText& rc = ref.contexts.at(c);
    // Untruncated.
    auto full = tok.Build(questions[q], &contexts[c], kNoLimit, Truncation::kNone);
    ASSERT_TRUE(full.ok()) << full.status();
    over512 += full->size() > 512;
    if (!SameEncoding(*full, ExpectedPair(tok, rq, rc, rq.ids.size(), rc.ids.size())) &&
        ++mismatches <= 5) {
      ADD_FAILURE() << "untruncated pair " << q << " differs";
    }
    const std::pair<const char*, std::pair<Truncation, size_t>> modes[] = {
        {"only_second_384", {Truncation::kOnlySecond, 384}},
        {"longest_first_128", {Truncation::kLongestFirst, 128}}};
    for (int m = 0; m < 2; ++m) {
      const auto& [key, mode] = modes[m];
      auto enc = tok.Build(questions[q], &contexts[c], mode.second, mode.first);
      const json& lengths = p[key];
      if (lengths.is_null()) {
        EXPECT_FALSE(enc.ok()) << key << " pair " << q;
        continue;
      }
      ASSERT_TRUE(enc.ok()) << enc.status();
      EXPECT_LE(enc->size(), mode.second);
      const size_t la = lengths[0], lb = lengths[1];
      truncated[m] += la + lb < rq.ids.size() + rc.ids.size();
      if (!SameEncoding(*enc, ExpectedPair(tok, rq, rc, la, lb)) && ++mismatches <= 5) {
        ADD_FAILURE() << key << " pair " << q << " differs: got " << enc->size()
                      << " tokens, expected " << la << " + " << lb << " + 3";
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
  // The data really exercises truncation.
  EXPECT_GT(truncated[0], 100);
  EXPECT_GT(truncated[1], 5000);
  EXPECT_GT(over512, 0);
}

TEST(TokenizerReference, EveryCodePoint) {
  const Tokenizer& tok = Uncased();
  const std::string path = ReferenceOutput("tokenizer_codepoints_ref.jsonl",
                                           "codepoints --vocab " + ShellQuote(kVocab), {kVocab});
  const auto lines = ReadJsonl(path);
  ASSERT_GT(lines.size(), 4000u);
  int mismatches = 0;
  for (const json& j : lines) {
    const RefText r = ParseRefText(j);
    ComparePieces(tok, r, TokenizeOk(tok, r.text), &mismatches);
  }
  EXPECT_EQ(mismatches, 0);
}

// Strings that exercise the configuration-dependent steps (NFC, never_split, accents kept).
std::vector<std::string> ConfigTexts() {
  std::vector<std::string> texts = {
      "Caf\u00e9 CAFE\u0301 Cafe\u0301\u0301 \u00c5ngstr\u00f6m \u212bngstr\u00f6m",
      "St\u00e9phane Ste\u0301phane",
      "[CLS] [cls] [Cls] x[SEP]y [MASK][PAD]",
      "[CL\0S] [C\u200bLS] [CLS\u0301] [UN\u212a] [unk]"s,
      "\u0130stanbul I\u0307stanbul \u0131 \u03a3\u039f\u03a6\u039f\u03a3 \u1e9e stra\u00dfe",
      "a\u0327\u0301 a\u0301\u0327 q\u0307\u0323 \u1e0b\u0323 \u0b47\u0b3e \u1100\u1161\u11a8 "
      "\ud55c",
      "\ufb01 \u2126 \u212a \u1fef x \u037e y \u0387 \u0344",
      "\u4e2d\u6587 \ufa0e\u8c48 \U0002f800",
      std::string(101, 'x') + " " + std::string(100, 'y'),
  };
  std::string e101, decomposed60;
  for (int i = 0; i < 101; ++i) e101 += "\u00e9";
  for (int i = 0; i < 60; ++i) decomposed60 += "e\u0301";
  texts.push_back(e101);
  texts.push_back(decomposed60);
  for (const json& g : ReadJsonl(kGoldenDir + "/stress.jsonl")) {
    texts.push_back(g["text"]);
    if (g.contains("text_pair")) texts.push_back(g["text_pair"]);
  }
  return texts;
}

TEST(TokenizerReference, OtherConfigurations) {
  const std::string input = kDataDir + "/tokenizer_config_texts.jsonl";
  const auto texts = ConfigTexts();
  {
    std::string content;
    for (const std::string& t : texts) content += json(t).dump() + "\n";
    WriteFile(input, content);
  }
  struct Case {
    const char* name;
    const char* flags;
    TokenizerConfig config;
  };
  const Case cases[] = {
      {"cased", "--cased", {false, std::nullopt, true, 512}},
      {"cased_strip", "--cased --strip-accents true", {false, true, true, 512}},
      {"lower_keep_accents", "--strip-accents false", {true, false, true, 512}},
      {"no_chinese_chars", "--no-chinese-chars", {true, std::nullopt, false, 512}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string out = kDataDir + "/tokenizer_config_" + c.name + ".jsonl";
    std::string log;
    ASSERT_EQ(RunReference(std::string("texts ") + c.flags + " --input " + ShellQuote(input) +
                               " --vocab " + ShellQuote(kVocab) + " --out " + ShellQuote(out),
                           std::string("tokenizer_config_") + c.name + ".log", &log),
              0)
        << log;
    const auto tok = LoadOrDie(kVocab, c.config);
    const auto lines = ReadJsonl(out);
    ASSERT_EQ(lines.size(), texts.size());
    int mismatches = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      const RefText r = ParseRefText(lines[i]);
      ASSERT_EQ(r.text, texts[i]);
      ComparePieces(*tok, r, TokenizeOk(*tok, r.text), &mismatches);
    }
    EXPECT_EQ(mismatches, 0);
  }
}

// ---------------------------------------------------------------------------------------------------
// Hand-written cases

TEST(Tokenizer, EmptyAndWhitespaceOnly) {
  const Tokenizer& tok = Uncased();
  for (const char* text : {"", " ", "\t\n\r ", "\u3000\u00a0\u2028 \u200b"}) {
    EXPECT_TRUE(TokenizeOk(tok, text).empty()) << text;
  }
  EXPECT_TRUE(TokenizeOk(tok, std::string_view("\0\0 \x01", 4)).empty());
  auto enc = tok.Encode("", std::nullopt, 512, Truncation::kNone);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(101, 102));
  EXPECT_THAT(enc->type_ids, ElementsAre(0, 0));
  EXPECT_THAT(enc->begin, ElementsAre(0, 0));
  EXPECT_THAT(enc->end, ElementsAre(0, 0));
  EXPECT_THAT(enc->segment, ElementsAre(-1, -1));
  enc = tok.Encode(" ", "  ", 3, Truncation::kNone);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(101, 102, 102));
  EXPECT_THAT(enc->type_ids, ElementsAre(0, 0, 1));
}

TEST(Tokenizer, SubwordOffsets) {
  const Tokenizer& tok = Uncased();
  auto p = TokenizeOk(tok, "unaffable");
  EXPECT_THAT(Tokens(tok, p), ElementsAre("una", "##ffa", "##ble"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 3), std::pair(3, 6), std::pair(6, 9)));
  p = TokenizeOk(tok, "Hello, World!");
  EXPECT_THAT(Tokens(tok, p), ElementsAre("hello", ",", "world", "!"));
  EXPECT_THAT(Spans(p),
              ElementsAre(std::pair(0, 5), std::pair(5, 6), std::pair(7, 12), std::pair(12, 13)));
  // Lower-cased / accent-stripped characters map back to the original (multi-byte) characters.
  p = TokenizeOk(tok, "\u00c5ngstr\u00f6m");  // Ångström
  EXPECT_THAT(Tokens(tok, p), ElementsAre("ang", "##strom"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 4), std::pair(4, 10)));
  p = TokenizeOk(tok, "\u0130stanbul");  // İ lower-cases to i + U+0307 in Python
  EXPECT_THAT(Tokens(tok, p), ElementsAre("istanbul"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 9)));
  p = TokenizeOk(tok, "cafe\u0301!");  // a decomposed accent belongs to the character before it
  EXPECT_THAT(Tokens(tok, p), ElementsAre("cafe", "!"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 6), std::pair(6, 7)));
  // CJK characters are words of their own.
  p = TokenizeOk(tok, "\u6df7\u5408English");  // 混合English
  EXPECT_THAT(Tokens(tok, p), ElementsAre("[UNK]", "\u5408", "english"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 3), std::pair(3, 6), std::pair(6, 13)));
}

TEST(Tokenizer, ControlAndZeroWidthCharactersAreDropped) {
  const Tokenizer& tok = Uncased();
  auto p = TokenizeOk(tok, "zero\u200bwidth");
  EXPECT_THAT(Tokens(tok, p), ElementsAre("zero", "##wi", "##dt", "##h"));
  EXPECT_THAT(Spans(p),
              ElementsAre(std::pair(0, 4), std::pair(7, 9), std::pair(9, 11), std::pair(11, 12)));
  p = TokenizeOk(tok, std::string_view("a\x01"
                                       "b\x7f"
                                       "c",
                                       5));
  EXPECT_THAT(Tokens(tok, p), ElementsAre("abc"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 5)));
  p = TokenizeOk(tok, std::string_view("nul\0byte", 8));
  EXPECT_THAT(Tokens(tok, p), ElementsAre("nu", "##lby", "##te"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 2), std::pair(2, 6), std::pair(6, 8)));
  // U+FEFF, U+00AD (soft hyphen), U+FFFD, private use, unassigned: dropped; U+2028 separates words.
  p = TokenizeOk(tok, "bom\ufeffstart soft\u00adhyphen \ufffd\ue000\U000e0001 ab\u2028cd");
  EXPECT_THAT(Tokens(tok, p), ElementsAre("bo", "##ms", "##tar", "##t", "soft", "##hy", "##ph",
                                          "##en", "ab", "cd"));
  // A character assigned only after Unicode 14.0 (U+1FA75, Unicode 15) is unassigned for the
  // reference.
  EXPECT_THAT(Tokens(tok, TokenizeOk(tok, "a\U0001fa75b")), ElementsAre("ab"));
}

TEST(Tokenizer, EmojiAndLongWordsAreUnknown) {
  const Tokenizer& tok = Uncased();
  auto p = TokenizeOk(tok, "emoji \U0001f600");
  EXPECT_THAT(Tokens(tok, p), ElementsAre("em", "##oj", "##i", "[UNK]"));
  EXPECT_THAT(Spans(p),
              ElementsAre(std::pair(0, 2), std::pair(2, 4), std::pair(4, 5), std::pair(6, 10)));
  p = TokenizeOk(tok, "x " + std::string(200, 'a') + " y");
  EXPECT_THAT(Tokens(tok, p), ElementsAre("x", "[UNK]", "y"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 1), std::pair(2, 202), std::pair(203, 204)));
  // The limit counts code points after normalisation: 100 "é" (200 bytes) is a word, 101 is not.
  std::string e100;
  for (int i = 0; i < 100; ++i) e100 += "\u00e9";
  p = TokenizeOk(tok, e100);
  EXPECT_EQ(p.size(), 50u);
  EXPECT_EQ(tok.token(p[0].id), "ee");
  EXPECT_EQ(p.back().end, 200);
  p = TokenizeOk(tok, e100 + "\u00e9");
  EXPECT_THAT(Tokens(tok, p), ElementsAre("[UNK]"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 202)));
  // A megabyte-long word, twice (the second call reuses the per-thread buffers).
  const std::string huge = "a " + std::string(1 << 20, 'x') + " b";
  for (int i = 0; i < 2; ++i) {
    p = TokenizeOk(tok, huge);
    EXPECT_THAT(Tokens(tok, p), ElementsAre("a", "[UNK]", "b"));
    EXPECT_THAT(Spans(p)[1], std::pair(2, 2 + (1 << 20)));
  }
  // Punctuation splits first: 150 characters of "a-" are short words.
  std::string dashed;
  for (int i = 0; i < 75; ++i) dashed += "a-";
  EXPECT_EQ(TokenizeOk(tok, dashed).size(), 150u);
}

TEST(Tokenizer, LiteralSpecialTokens) {
  const Tokenizer& tok = Uncased();
  auto p = TokenizeOk(tok, "a[SEP]b [MASK] [cls] [[CLS]]");
  EXPECT_THAT(Tokens(tok, p),
              ElementsAre("a", "[SEP]", "b", "[MASK]", "[", "cl", "##s", "]", "[", "[CLS]", "]"));
  EXPECT_EQ(p[1].id, tok.sep_id());
  EXPECT_THAT(Spans(p)[1], std::pair(1, 6));
  EXPECT_THAT(Spans(p)[9], std::pair(22, 27));
}

TEST(Tokenizer, InvalidUtf8IsAnError) {
  const Tokenizer& tok = Uncased();
  const std::pair<std::string_view, const char*> cases[] = {
      {"abc\xE2\x82", "invalid UTF-8 at byte 3 of 5: truncated multi-byte sequence"},
      {"\xE2\x82x", "invalid UTF-8 at byte 0 of 3: truncated multi-byte sequence"},
      {"a\xC0\xAF", "invalid UTF-8 at byte 1 of 3: overlong encoding"},
      {"\xE0\x80\xAF", "invalid UTF-8 at byte 0 of 3: overlong encoding"},
      {"\xF0\x80\x80\xAF", "overlong encoding"},
      {"\x80"
       "abc",
       "invalid UTF-8 at byte 0 of 4: unexpected continuation byte"},
      {"ok \xBF", "unexpected continuation byte"},
      {"\xED\xA0\x80", "UTF-16 surrogate"},
      {"\xF4\x90\x80\x80", "code point above U+10FFFF"},
      {"\xFF", "byte that never appears in UTF-8"},
      {"caf\xE9", "invalid UTF-8 at byte 3 of 4"},  // Latin-1
  };
  for (const auto& [text, message] : cases) {
    auto r = tok.Tokenize(text);
    ASSERT_FALSE(r.ok()) << ::testing::PrintToString(std::string(text));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(message));
  }
  auto enc = tok.Encode("fine", std::string_view("bad\xC3"), 512, Truncation::kNone);
  ASSERT_FALSE(enc.ok());
  EXPECT_EQ(enc.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(enc.status().message()),
              HasSubstr("second text: invalid UTF-8 at byte 3"));
  // Valid 4-byte and boundary sequences are accepted.
  EXPECT_TRUE(
      tok.Tokenize("\xF4\x8F\xBF\xBF \xEF\xBF\xBF \xC2\x80 \xED\x9F\xBF \xEE\x80\x80").ok());
}

std::vector<Piece> FakePieces(int32_t first_id, int n, int32_t offset) {
  std::vector<Piece> out;
  for (int i = 0; i < n; ++i) out.push_back({first_id + i, offset + i, offset + i + 1});
  return out;
}

TEST(Tokenizer, TruncationOfPairs) {
  const Tokenizer& tok = Uncased();
  const auto a = FakePieces(2000, 5, 0);
  const auto b = FakePieces(3000, 10, 100);
  // 5 + 10 + 3 = 18 tokens into 12: longest_first takes 5 from b (10 -> 5), then the sixth from b
  // (equal).
  auto enc = tok.Build(a, &b, 12, Truncation::kLongestFirst);
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_THAT(enc->ids,
              ElementsAre(101, 2000, 2001, 2002, 2003, 2004, 102, 3000, 3001, 3002, 3003, 102));
  EXPECT_THAT(enc->type_ids, ElementsAre(0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1));
  EXPECT_THAT(enc->segment, ElementsAre(-1, 0, 0, 0, 0, 0, -1, 1, 1, 1, 1, -1));
  EXPECT_THAT(enc->begin, ElementsAre(0, 0, 1, 2, 3, 4, 0, 100, 101, 102, 103, 0));
  EXPECT_THAT(enc->end, ElementsAre(0, 1, 2, 3, 4, 5, 0, 101, 102, 103, 104, 0));
  // Into 11: both end at 4.
  enc = tok.Build(a, &b, 11, Truncation::kLongestFirst);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(101, 2000, 2001, 2002, 2003, 102, 3000, 3001, 3002, 3003, 102));
  // The first is longer: it loses tokens first.
  enc = tok.Build(b, &a, 12, Truncation::kLongestFirst);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids,
              ElementsAre(101, 3000, 3001, 3002, 3003, 3004, 102, 2000, 2001, 2002, 2003, 102));
  // Down to nothing but the specials.
  enc = tok.Build(a, &b, 3, Truncation::kLongestFirst);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(101, 102, 102));
  // Into 4: b 10 -> 5, then b, a, b, a, ... (9 more): a keeps 1, b none.
  enc = tok.Build(a, &b, 4, Truncation::kLongestFirst);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(101, 2000, 102, 102));
  EXPECT_THAT(enc->type_ids, ElementsAre(0, 0, 0, 1));
  // only_second / only_first.
  enc = tok.Build(a, &b, 12, Truncation::kOnlySecond);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids,
              ElementsAre(101, 2000, 2001, 2002, 2003, 2004, 102, 3000, 3001, 3002, 3003, 102));
  enc = tok.Build(b, &a, 12, Truncation::kOnlyFirst);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids,
              ElementsAre(101, 3000, 3001, 3002, 3003, 102, 2000, 2001, 2002, 2003, 2004, 102));
  // Would have to remove a whole sequence (Hugging Face refuses as well).
  enc = tok.Build(a, &b, 12, Truncation::kOnlyFirst);
  ASSERT_FALSE(enc.ok());
  EXPECT_EQ(enc.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(enc.status().message()),
              HasSubstr("6 tokens must go but the first sequence has only 5"));
  enc = tok.Build(a, &b, 8, Truncation::kOnlySecond);
  ASSERT_FALSE(enc.ok());
  EXPECT_THAT(std::string(enc.status().message()), HasSubstr("second sequence has only 10"));
  // kNone: fits, or an error.
  EXPECT_TRUE(tok.Build(a, &b, 18, Truncation::kNone).ok());
  enc = tok.Build(a, &b, 17, Truncation::kNone);
  ASSERT_FALSE(enc.ok());
  EXPECT_THAT(std::string(enc.status().message()), HasSubstr("18 tokens"));
  // Fits exactly: nothing removed whatever the strategy.
  for (const Truncation t :
       {Truncation::kLongestFirst, Truncation::kOnlyFirst, Truncation::kOnlySecond}) {
    enc = tok.Build(a, &b, 18, t);
    ASSERT_TRUE(enc.ok());
    EXPECT_EQ(enc->size(), 18u);
  }
}

TEST(Tokenizer, TruncationOfSingleSequences) {
  const Tokenizer& tok = Uncased();
  const auto a = FakePieces(2000, 5, 0);
  for (const Truncation t : {Truncation::kLongestFirst, Truncation::kOnlyFirst}) {
    auto enc = tok.Build(a, nullptr, 5, t);
    ASSERT_TRUE(enc.ok()) << enc.status();
    EXPECT_THAT(enc->ids, ElementsAre(101, 2000, 2001, 2002, 102));
    EXPECT_THAT(enc->type_ids, ElementsAre(0, 0, 0, 0, 0));
    EXPECT_FALSE(tok.Build(a, nullptr, 2, t).ok());  // would remove all of a
  }
  auto enc = tok.Build(a, nullptr, 5, Truncation::kOnlySecond);
  ASSERT_FALSE(enc.ok());
  EXPECT_THAT(std::string(enc.status().message()),
              HasSubstr("only_second truncation needs a second sequence"));
  EXPECT_TRUE(tok.Build(a, nullptr, 7, Truncation::kOnlySecond).ok());  // fits: nothing to truncate
  // Real text through Encode.
  enc = tok.Encode("one two three four five six", std::nullopt, 5, Truncation::kLongestFirst);
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(tok.token(enc->ids[3]), "three");
  EXPECT_THAT(enc->begin, ElementsAre(0, 0, 4, 8, 0));
  EXPECT_THAT(enc->end, ElementsAre(0, 3, 7, 13, 0));
}

TEST(Tokenizer, MaxLengthSmallerThanSpecialTokens) {
  const Tokenizer& tok = Uncased();
  const std::vector<Piece> none;
  auto enc = tok.Build(none, &none, 2, Truncation::kLongestFirst);
  ASSERT_FALSE(enc.ok());
  EXPECT_EQ(enc.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(enc.status().message()),
              HasSubstr("max_length 2 is smaller than the 3 special tokens"));
  enc = tok.Build(none, nullptr, 1, Truncation::kNone);
  ASSERT_FALSE(enc.ok());
  EXPECT_THAT(std::string(enc.status().message()),
              HasSubstr("max_length 1 is smaller than the 2 special tokens"));
  EXPECT_FALSE(tok.Build(none, nullptr, 0, Truncation::kLongestFirst).ok());
  EXPECT_TRUE(tok.Build(none, nullptr, 2, Truncation::kNone).ok());
  EXPECT_TRUE(tok.Build(none, &none, 3, Truncation::kNone).ok());
}

// ---------------------------------------------------------------------------------------------------
// Vocab loading and WordPiece on small vocabularies

std::string VocabFile(const std::string& name, std::string_view content) {
  const std::string path = kDataDir + "/tokenizer_vocab_" + name + ".txt";
  WriteFile(path, content);
  return path;
}

TEST(TokenizerVocab, LoadErrorsNameTheFile) {
  auto t = Tokenizer::Load(kDataDir + "/no_such_vocab.txt", {});
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("no_such_vocab.txt"));
  for (const auto& [name, content, missing] :
       {std::tuple<const char*, const char*, const char*>{"no_unk", "[PAD]\n[CLS]\n[SEP]\nhello\n",
                                                          "[UNK]"},
        {"no_cls", "[UNK]\n[SEP]\n", "[CLS]"},
        {"no_sep", "[UNK]\n[CLS]\n[SEP] \n", "[SEP]"},
        {"empty", "", "[UNK]"}}) {
    const std::string path = VocabFile(name, content);
    t = Tokenizer::Load(path, {});
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(path));
    EXPECT_THAT(std::string(t.status().message()), HasSubstr("has no " + std::string(missing)));
  }
  const std::string bad = VocabFile("bad_utf8", "[UNK]\n[CLS]\n[SEP]\nab\xC3\n");
  t = Tokenizer::Load(bad, {});
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr(bad));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("line 4: invalid UTF-8"));
}

TEST(TokenizerVocab, LineEndsDuplicatesAndGreedyMatching) {
  // \r\n, \r and \n line ends; the last line has none. "ab" appears twice: the last id wins (as in
  // HF).
  const std::string path = VocabFile(
      "small",
      "[PAD]\r\n[UNK]\r[CLS]\n[SEP]\nab\na\n##c\n##bc\nab\nx\n##y\n##yz\n##z\n\u00e9\n##\u00e9");
  const auto tok = LoadOrDie(path, {});
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 15u);
  EXPECT_EQ(tok->unk_id(), 1);
  EXPECT_EQ(tok->cls_id(), 2);
  EXPECT_EQ(tok->sep_id(), 3);
  EXPECT_EQ(tok->token_id("ab"), 8);
  EXPECT_EQ(tok->token_id("##\u00e9"), 14);
  EXPECT_EQ(tok->token_id("##"), -1);
  EXPECT_EQ(tok->token_id("b"), -1);
  EXPECT_EQ(tok->token(4), "ab");
  // Greedy longest match from the left: "abc" is ab ##c, not a ##bc.
  auto p = TokenizeOk(*tok, "abc ABC a xyz");
  EXPECT_THAT(Tokens(*tok, p), ElementsAre("ab", "##c", "ab", "##c", "a", "x", "##yz"));
  EXPECT_EQ(p[0].id, 8);
  EXPECT_THAT(Spans(p),
              ElementsAre(std::pair(0, 2), std::pair(2, 3), std::pair(4, 6), std::pair(6, 7),
                          std::pair(8, 9), std::pair(10, 11), std::pair(11, 13)));
  // A word that cannot be fully matched is one [UNK] for the whole word.
  p = TokenizeOk(*tok, "abx xyq b");
  EXPECT_THAT(Tokens(*tok, p), ElementsAre("[UNK]", "[UNK]", "[UNK]"));
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 3), std::pair(4, 7), std::pair(8, 9)));
  // [MASK] is not in this vocab: not special.
  p = TokenizeOk(*tok, "[MASK]");
  EXPECT_EQ(p.size(), 3u);
  // Accents: stripped when lower-casing; kept with strip_accents = false.
  EXPECT_THAT(Tokens(*tok, TokenizeOk(*tok, "\u00e9\u00e9")), ElementsAre("[UNK]"));
  const auto keep = LoadOrDie(path, {true, false, true, 512});
  EXPECT_THAT(Tokens(*keep, TokenizeOk(*keep, "\u00c9\u00e9 e\u0301")),
              ElementsAre("\u00e9", "##\u00e9", "\u00e9"));
  // No "##" continuation in the vocab at all.
  const auto bare = LoadOrDie(VocabFile("bare", "[UNK]\n[CLS]\n[SEP]\nab\n"), {});
  EXPECT_THAT(Tokens(*bare, TokenizeOk(*bare, "ab abab")), ElementsAre("ab", "[UNK]"));
}

TEST(TokenizerVocab, CanonicalOrderingAndComposition) {
  // U+1E0B (d, dot above) + U+0323 (dot below) is canonically d + U+0323 + U+0307, whose NFC is
  // U+1E0D (d, dot below) + U+0307: marks are reordered by combining class before composing.
  const std::string path = VocabFile("marks",
                                     "[UNK]\n[CLS]\n[SEP]\nd\n\u1e0d\n##\u0307\n\u1e0b\n##"
                                     "\u0323\n\uac01\n\u1100\n##\u1161\n##\u11a8\n");
  const auto keep = LoadOrDie(path, {true, false, true, 512});  // lower-case, keep accents: NFC
  auto p = TokenizeOk(*keep, "\u1e0b\u0323 d\u0307\u0323 \u1100\u1161\u11a8");
  EXPECT_THAT(Tokens(*keep, p), ElementsAre("\u1e0d", "##\u0307", "\u1e0d", "##\u0307", "\uac01"));
  // The composite spans every byte it was made of; the mark left over keeps its own.
  EXPECT_THAT(Spans(p), ElementsAre(std::pair(0, 5), std::pair(0, 3), std::pair(6, 11),
                                    std::pair(7, 9), std::pair(12, 21)));
  const auto strip = LoadOrDie(path, {});  // NFD, marks dropped (their bytes join the letter)
  p = TokenizeOk(*strip, "\u1e0b\u0323 \uac01");
  EXPECT_THAT(Tokens(*strip, p), ElementsAre("d", "\u1100", "##\u1161", "##\u11a8"));
  EXPECT_THAT(Spans(p),
              ElementsAre(std::pair(0, 5), std::pair(6, 9), std::pair(6, 9), std::pair(6, 9)));
}

// ---------------------------------------------------------------------------------------------------
// Threads and speed

TEST(Tokenizer, ConcurrentUseGivesTheSameResults) {
  const Tokenizer& tok = Uncased();
  const SquadRef& ref = Squad();
  std::vector<std::vector<Piece>> expected;
  for (size_t i = 0; i < 200; ++i) expected.push_back(TokenizeOk(tok, ref.contexts[i].text));
  std::atomic<int> differences{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (size_t i = static_cast<size_t>(t); i < 200; i += 2) {
          auto r = tok.Tokenize(ref.contexts[i].text);
          if (!r.ok() || Spans(*r) != Spans(expected[i])) ++differences;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(differences.load(), 0);
}

double ThreadCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// Reports throughput (thread CPU time, so other load on the machine matters less); checks only that
// every context was fully tokenized.
TEST(TokenizerSpeed, SquadContextsSingleThread) {
  const Tokenizer& tok = Uncased();
  const SquadRef& ref = Squad();
  size_t expected_pieces = 0, bytes = 0;
  for (const RefText& r : ref.contexts) {
    expected_pieces += r.ids.size();
    bytes += r.text.size();
  }
  const int rounds = 5;
  size_t pieces = 0;
  double best = 1e9;
  for (int round = 0; round < rounds; ++round) {
    const double start = ThreadCpuSeconds();
    for (const RefText& r : ref.contexts) {
      auto enc = tok.Encode(r.text, std::nullopt, kNoLimit, Truncation::kNone);
      ASSERT_TRUE(enc.ok());
      pieces += enc->size() - 2;
    }
    best = std::min(best, ThreadCpuSeconds() - start);
  }
  EXPECT_EQ(pieces, expected_pieces * rounds);
  const double contexts_per_s = static_cast<double>(ref.contexts.size()) / best;
  std::printf(
      "tokenizer speed (Encode, best of %d rounds, thread CPU time): %.0f SQuAD contexts/s, %.1f "
      "MB/s, "
      "%.2f M pieces/s\n",
      rounds, contexts_per_s, static_cast<double>(bytes) / best / 1e6,
      static_cast<double>(expected_pieces) / best / 1e6);
  RecordProperty("contexts_per_second", static_cast<int>(contexts_per_s));
}

}  // namespace
}  // namespace topserve::engine
