// Tests of tokenizer.json loading (engine/tokenizer_json.cc) against Hugging Face's tokenizers
// package.
//
// tests/make_tokenizer_json_fixtures.py (the ctest fixture tokenizer_json_files) builds the
// tokenizer.json files with the `tokenizers` package and writes that package's ids, type ids and
// character offsets for every SST-2 dev sentence, every SQuAD v1.1 dev question and context (alone
// and as question/context pairs), stress strings and code-point sweeps. Here the engine loads the
// same files and must agree id for id and offset for offset (our byte offsets converted to
// characters).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/bert_model.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace topserve::engine {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

const std::string kDir = std::string(TOPSERVE_TEST_DATA_DIR) + "/tokjson";
const std::string kVocab = std::string(TOPSERVE_SHARED_DIR) + "/data/bert-base-uncased/vocab.txt";
constexpr size_t kNoLimit = size_t{1} << 30;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

const json& TextsJson() {
  static const auto* j = new json(json::parse(ReadFile(kDir + "/texts.json")));
  return *j;
}
const std::vector<std::string>& Texts() {
  static const auto* texts =
      new std::vector<std::string>(TextsJson().at("texts").get<std::vector<std::string>>());
  return *texts;
}
// Texts from this index on are the code-point sweeps.
size_t SweepFrom() { return TextsJson().at("sweep_from").get<size_t>(); }

// Character index of every byte offset of `text` that starts a character (and of text.size()).
std::vector<int32_t> ByteToChar(const std::string& text) {
  std::vector<int32_t> map(text.size() + 1, -1);
  int32_t chars = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) map[i] = chars++;
  }
  map[text.size()] = chars;
  return map;
}

std::unique_ptr<Tokenizer> LoadOrDie(const std::string& path) {
  auto t = Tokenizer::LoadJson(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

// Compares the engine with the package's expected output for one tokenizer file; returns the number
// of cases compared. Mismatches are reported (the first few in detail) as test failures.
// sweeps: compare the code-point sweeps instead of the data texts.
// At most max_mismatches cases may differ.
size_t CompareWithPackage(const std::string& name, bool sweeps = false, size_t max_mismatches = 0) {
  auto tok = LoadOrDie(kDir + "/" + name + ".json");
  if (tok == nullptr) return 0;
  const auto& texts = Texts();
  std::vector<std::vector<int32_t>> char_of(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) char_of[i] = ByteToChar(texts[i]);
  const json expected = json::parse(ReadFile(kDir + "/" + name + ".expected.json"));
  size_t compared = 0, mismatches = 0;
  for (const json& c : expected.at("cases")) {
    const size_t a = c.at("a").get<size_t>();
    const bool pair = !c.at("b").is_null();
    const size_t b = pair ? c.at("b").get<size_t>() : 0;
    if ((a >= SweepFrom()) != sweeps) continue;
    auto enc = pair ? tok->Encode(texts[a], texts[b], kNoLimit, Truncation::kNone)
                    : tok->Encode(texts[a], std::nullopt, kNoLimit, Truncation::kNone);
    ++compared;
    if (!enc.ok()) {
      ADD_FAILURE() << name << ": text " << a << ": " << enc.status();
      ++mismatches;
      continue;
    }
    std::vector<int32_t> offsets;
    for (size_t k = 0; k < enc->size(); ++k) {
      const auto& map = char_of[enc->segment[k] == 1 ? b : a];
      // Specials are (0, 0) in both; a span must start and end on character boundaries.
      const int32_t cb = map.at(static_cast<size_t>(enc->begin[k])),
                    ce = map.at(static_cast<size_t>(enc->end[k]));
      offsets.push_back(cb);
      offsets.push_back(ce);
    }
    const auto want_ids = c.at("ids").get<std::vector<int32_t>>();
    const auto want_types = c.at("type_ids").get<std::vector<int32_t>>();
    const auto want_offsets = c.at("offsets").get<std::vector<int32_t>>();
    if (enc->ids == want_ids && enc->type_ids == want_types && offsets == want_offsets) continue;
    // Sweeps within their bound are a measurement, not a failure: print their first differences.
    if (++mismatches <= 5) {
      size_t k = 0;
      while (k < enc->size() && k < want_ids.size() && enc->ids[k] == want_ids[k] &&
             enc->type_ids[k] == want_types[k] && offsets[2 * k] == want_offsets[2 * k] &&
             offsets[2 * k + 1] == want_offsets[2 * k + 1]) {
        ++k;
      }
      std::ostringstream msg;
      msg << name << ": text " << a << (pair ? " + " + std::to_string(b) : std::string())
          << " differs at token " << k << " of " << enc->size() << " (package: " << want_ids.size()
          << " tokens)";
      if (k < enc->size()) {
        msg << "; ours: " << enc->ids[k] << " '" << tok->token(enc->ids[k]) << "' type "
            << enc->type_ids[k] << " [" << offsets[2 * k] << ", " << offsets[2 * k + 1] << ")";
      }
      if (k < want_ids.size()) {
        msg << "; package: " << want_ids[k] << " '" << tok->token(want_ids[k]) << "' type "
            << want_types[k] << " [" << want_offsets[2 * k] << ", " << want_offsets[2 * k + 1]
            << ")";
      }
      msg << "; text: " << texts[a].substr(0, 300);
      if (sweeps) {
        std::printf("%s\n", msg.str().c_str());
      } else {
        ADD_FAILURE() << msg.str();
      }
    }
  }
  EXPECT_LE(mismatches, max_mismatches)
      << name << ": " << mismatches << " of " << compared << " cases differ";
  std::printf("%s%s: %zu cases compared, %zu differ\n", name.c_str(),
              sweeps ? " (code-point sweeps)" : "", compared, mismatches);
  return compared;
}

// 872 SST-2 dev sentences + 10,570 SQuAD dev questions + 2,067 contexts + stress/hand-written texts
// alone (13,612), and for uncased/cased the 10,570 question/context pairs (1,000 for the others).
TEST(TokenizerJsonReference, WordPieceUncased) {
  EXPECT_GE(CompareWithPackage("wordpiece-uncased"), 24182u);
}
TEST(TokenizerJsonReference, WordPieceCased) {
  EXPECT_GE(CompareWithPackage("wordpiece-cased"), 24182u);
}
TEST(TokenizerJsonReference, WordPieceUncasedKeepAccents) {
  EXPECT_GE(CompareWithPackage("wordpiece-uncased-accents"), 14612u);
}
// Added tokens matched in the original text (normalized=false: "NFL") and in the normalised text
// ("super bowl" across a space, "Denver" normalised to "denver", "naïve" to "naive", "ing" inside
// words).
TEST(TokenizerJsonReference, WordPieceAddedTokens) {
  EXPECT_GE(CompareWithPackage("wordpiece-added"), 14612u);
}
TEST(TokenizerJsonReference, WordPieceBertProcessing) {
  EXPECT_GE(CompareWithPackage("wordpiece-bertproc"), 14612u);
}

// Not a check: how fast the pipeline is next to the vocab.txt tokenizer, on the data texts.
TEST(TokenizerJsonReference, SpeedNextToVocabTxt) {
  auto json_tok = LoadOrDie(kDir + "/wordpiece-uncased.json");
  auto vocab_tok = Tokenizer::Load(kVocab, TokenizerConfig{});
  ASSERT_NE(json_tok, nullptr);
  ASSERT_TRUE(vocab_tok.ok());
  const auto& texts = Texts();
  size_t bytes = 0;
  for (size_t i = 0; i < SweepFrom(); ++i) bytes += texts[i].size();
  for (const auto& [name, tok] :
       {std::pair<const char*, const Tokenizer*>{"tokenizer.json", json_tok.get()},
        {"vocab.txt", vocab_tok->get()}}) {
    const auto start = std::chrono::steady_clock::now();
    size_t pieces = 0;
    for (size_t i = 0; i < SweepFrom(); ++i) pieces += tok->Tokenize(texts[i])->size();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double mb = static_cast<double>(bytes) / 1e6;
    std::printf("%s: %zu texts, %.1f MB, %zu pieces in %.3f s (%.1f MB/s)\n", name, SweepFrom(), mb,
                pieces, s, mb / s);
  }
}

// Every code point of planes 0-3 and 14, 32 per text. Known gap: the package classifies characters
// with the unicode_categories crate's old tables, so code points assigned in recent Unicode
// versions are plain letters to it (an unknown word -> [UNK]), while utf8proc (Unicode 15) knows
// them as format characters (dropped), punctuation (split) or non-spacing marks (stripped). The
// bound is the number of sweep texts measured to differ for that reason (87 and 36 of 8,252); more
// means a regression.
TEST(TokenizerJsonCodepoints, DifferOnlyWhereUnicodeVersionsDo) {
  EXPECT_GE(CompareWithPackage("wordpiece-uncased", true, 87), 8252u);
  EXPECT_GE(CompareWithPackage("wordpiece-cased", true, 36), 8252u);
}

// ---------------------------------------------------------------------------------------------------
// Behaviour around the reference comparison

TEST(TokenizerJson, SpecialsAndLookups) {
  auto tok = LoadOrDie(kDir + "/wordpiece-uncased.json");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->cls_id(), 101);
  EXPECT_EQ(tok->sep_id(), 102);
  EXPECT_EQ(tok->unk_id(), 100);
  EXPECT_EQ(tok->vocab_size(), 30522u);
  EXPECT_EQ(tok->token_id("[MASK]"), 103);
  EXPECT_EQ(tok->token_id("##ing"), tok->token_id("##ing"));
  EXPECT_GE(tok->token_id("##ing"), 0);
  EXPECT_EQ(tok->token_id("no-such-token"), -1);
  EXPECT_EQ(tok->num_special_tokens(false), 2u);
  EXPECT_EQ(tok->num_special_tokens(true), 3u);
}

TEST(TokenizerJson, InvalidUtf8IsAnErrorNamingTheByte) {
  auto tok = LoadOrDie(kDir + "/wordpiece-uncased.json");
  ASSERT_NE(tok, nullptr);
  for (const std::string bad :
       {"ab\xff", "\xc3", "a\xed\xa0\x80", "\xc0\xaf", "x\xf4\x90\x80\x80"}) {
    auto pieces = tok->Tokenize(bad);
    ASSERT_FALSE(pieces.ok());
    EXPECT_EQ(pieces.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(pieces.status().message()), HasSubstr("invalid UTF-8 at byte"));
  }
}

TEST(TokenizerJson, TruncationUsesTheTemplate) {
  auto tok = LoadOrDie(kDir + "/wordpiece-uncased.json");
  ASSERT_NE(tok, nullptr);
  auto enc = tok->Encode("one two three four", "five six", 6, Truncation::kLongestFirst);
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_EQ(enc->size(), 6u);
  EXPECT_EQ(enc->ids.front(), 101);
  EXPECT_EQ(enc->ids.back(), 102);
  auto too_small = tok->Encode("a", "b", 2, Truncation::kLongestFirst);
  ASSERT_FALSE(too_small.ok());
  EXPECT_THAT(std::string(too_small.status().message()),
              HasSubstr("smaller than the 3 special tokens"));
}

// A minimal valid file, edited per case.
json MinimalJson() {
  json j = json::parse(ReadFile(kDir + "/wordpiece-uncased.json"));
  j["model"]["vocab"] = {{"[UNK]", 0}, {"[CLS]", 1}, {"[SEP]", 2}, {"a", 3}, {"##b", 4}};
  j["added_tokens"] = json::array();
  j["post_processor"]["special_tokens"]["[CLS]"]["ids"] = {1};
  j["post_processor"]["special_tokens"]["[SEP]"]["ids"] = {2};
  return j;
}

std::string LoadError(const json& j) {
  const std::string path = kDir + "/edited.json";
  WriteFile(path, j.dump());
  auto t = Tokenizer::LoadJson(path);
  if (t.ok()) return "loaded";
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
  return std::string(t.status().message());
}

TEST(TokenizerJson, MinimalFileLoadsAndTokenizes) {
  const std::string path = kDir + "/minimal.json";
  WriteFile(path, MinimalJson().dump());
  auto tok = LoadOrDie(path);
  ASSERT_NE(tok, nullptr);
  auto enc = tok->Encode("ab A c", std::nullopt, kNoLimit, Truncation::kNone);
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_EQ(enc->ids, (std::vector<int32_t>{1, 3, 4, 3, 0, 2}));
  EXPECT_EQ(enc->begin, (std::vector<int32_t>{0, 0, 1, 3, 5, 0}));
  EXPECT_EQ(enc->end, (std::vector<int32_t>{0, 1, 2, 4, 6, 0}));
}

TEST(TokenizerJson, UnsupportedPartsAreOneLineErrorsNamingThem) {
  json j = MinimalJson();
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", "AAAA"}};
  EXPECT_THAT(LoadError(j),
              HasSubstr("edited.json: normalizer type \"Precompiled\" is not supported"));

  j = MinimalJson();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "_"}};
  EXPECT_THAT(LoadError(j), HasSubstr("pre_tokenizer type \"Metaspace\" is not supported"));

  j = MinimalJson();
  j["model"] = {{"type", "Unigram"}, {"vocab", json::array()}};
  EXPECT_THAT(LoadError(j), HasSubstr("model type \"Unigram\" is not supported"));

  j = MinimalJson();
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  EXPECT_THAT(LoadError(j),
              HasSubstr("post_processor type \"RobertaProcessing\" is not supported"));

  j = MinimalJson();
  j["post_processor"] = nullptr;
  EXPECT_THAT(LoadError(j), HasSubstr("post_processor is null"));

  j = MinimalJson();
  j["normalizer"]["unicode_normalization"] = true;
  EXPECT_THAT(
      LoadError(j),
      HasSubstr("normalizer BertNormalizer: field \"unicode_normalization\" is not supported"));

  j = MinimalJson();
  j["model"]["unk_token"] = "<unk>";
  EXPECT_THAT(LoadError(j), HasSubstr("model WordPiece: unk_token \"<unk>\" is not in the vocab"));

  j = MinimalJson();
  j["added_tokens"] = {{{"id", 5}, {"content", "<mask>"}, {"lstrip", true}, {"normalized", false}}};
  EXPECT_THAT(LoadError(j),
              HasSubstr("added_tokens[0]: token \"<mask>\": lstrip=true is not supported"));

  j = MinimalJson();
  j["added_tokens"] = {{{"id", 5}, {"content", "new"}, {"single_word", true}}};
  EXPECT_THAT(LoadError(j), HasSubstr("single_word=true is not supported"));

  j = MinimalJson();
  j["post_processor"]["special_tokens"]["[SEP]"]["ids"] = {99};
  EXPECT_THAT(LoadError(j), HasSubstr("special token id 99 is not in the vocab"));

  j = MinimalJson();
  j["model"]["vocab"]["a"] = -1;
  EXPECT_THAT(LoadError(j), HasSubstr("vocab: token \"a\" has id -1"));

  j = MinimalJson();
  j["post_processor"]["single"] = json::array();
  EXPECT_THAT(LoadError(j), HasSubstr("single: must hold $A once"));

  for (const std::string& bad : {std::string("{"), std::string("[]"), std::string("")}) {
    WriteFile(kDir + "/edited.json", bad);
    auto t = Tokenizer::LoadJson(kDir + "/edited.json");
    ASSERT_FALSE(t.ok());
    EXPECT_THAT(std::string(t.status().message()), HasSubstr("edited.json: not"));
  }
  auto missing = Tokenizer::LoadJson(kDir + "/no-such-file.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerJson, ModelDirPrefersVocabTxtThenTokenizerJson) {
  const fs::path dir = fs::path(kDir) / "modeldir";
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto none = Tokenizer::LoadFromModelDir(dir.string(), TokenizerConfig{});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("neither vocab.txt nor tokenizer.json"));

  // tokenizer.json alone: the file's normalizer decides (cased here, whatever the config says).
  fs::copy_file(fs::path(kDir) / "wordpiece-cased.json", dir / "tokenizer.json");
  auto json_only = Tokenizer::LoadFromModelDir(dir.string(), TokenizerConfig{});
  ASSERT_TRUE(json_only.ok()) << json_only.status();
  auto cased = (*json_only)->Tokenize("Hello");
  ASSERT_TRUE(cased.ok());
  ASSERT_EQ(cased->size(), 1u);  // the uncased vocabulary has no "H": [UNK], as the package says
  EXPECT_EQ((*cased)[0].id, (*json_only)->unk_id());
  // With vocab.txt present, vocab.txt is used exactly as before (uncased by default).
  fs::copy_file(kVocab, dir / "vocab.txt");
  auto both = Tokenizer::LoadFromModelDir(dir.string(), TokenizerConfig{});
  ASSERT_TRUE(both.ok()) << both.status();
  auto uncased = (*both)->Tokenize("Hello");
  ASSERT_TRUE(uncased.ok());
  ASSERT_EQ(uncased->size(), 1u);
  EXPECT_EQ((*uncased)[0].id, (*both)->token_id("hello"));
}

// A model directory with tokenizer.json and no vocab.txt loads and serves: the golden tiny-cls
// model with its vocab.txt swapped for the uncased tokenizer.json gives the golden ids and logits.
TEST(TokenizerJson, ModelDirWithOnlyTokenizerJsonRunsTheGoldenModel) {
  const std::string golden = std::string(TOPSERVE_SHARED_DIR) + "/data/golden/tiny-cls";
  const fs::path dir = fs::path(kDir) / "tiny-cls-json";
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors", "tokenizer_config.json"}) {
    fs::copy_file(golden + "/" + file, dir / file);
  }
  auto bad = LoadModelDir(dir.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("vocab.txt: cannot open (and there is no"));
  fs::copy_file(fs::path(kDir) / "wordpiece-uncased.json", dir / "tokenizer.json");
  auto model_dir = LoadModelDir(dir.string());
  ASSERT_TRUE(model_dir.ok()) << model_dir.status();
  EXPECT_EQ(model_dir->tokenizer_path, (dir / "tokenizer.json").string());

  auto model = BertModel::Load(dir.string());
  ASSERT_TRUE(model.ok()) << model.status();
  Workspace ws(**model);
  std::ifstream rows(golden + "/expected.jsonl");
  std::string line;
  size_t n = 0;
  while (std::getline(rows, line)) {
    if (line.empty()) continue;
    const json row = json::parse(line);
    std::optional<std::string> pair;
    if (row.contains("text_pair")) pair = row.at("text_pair").get<std::string>();
    // The golden pairs are truncated longest_first to 128 tokens (golden/README.md).
    auto enc = (*model)->tokenizer().Encode(row.at("text").get<std::string>(), pair, 128,
                                            Truncation::kLongestFirst);
    ASSERT_TRUE(enc.ok()) << enc.status();
    EXPECT_EQ(enc->ids, row.at("input_ids").get<std::vector<int32_t>>()) << row.at("text");
    EXPECT_EQ(enc->type_ids, row.at("token_type_ids").get<std::vector<int32_t>>())
        << row.at("text");
    std::vector<SequenceInput> in = {{enc->ids, enc->type_ids, {}}};
    std::vector<SequenceOutput> out(1);
    ASSERT_TRUE((*model)->Run(in, out, ws).ok());
    const auto want = row.at("logits").get<std::vector<float>>();
    ASSERT_EQ(out[0].logits.size(), want.size());
    for (size_t k = 0; k < want.size(); ++k)
      EXPECT_NEAR(out[0].logits[k], want[k], 1e-4) << row.at("text");
    ++n;
  }
  EXPECT_EQ(n, 64u);
}

}  // namespace
}  // namespace topserve::engine
