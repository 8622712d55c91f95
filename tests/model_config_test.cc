// Tests of config.json / tokenizer_config.json parsing, the expected tensor list, and loading whole
// model directories (the golden ones, broken copies of them, and models made by
// tools/gen_model.py).
#include "engine/model_config.h"

#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/bert_model.h"
#include "engine/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace topserve::engine {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kGolden = std::string(TOPSERVE_SHARED_DIR) + "/data/golden";
const std::string kVocab = std::string(TOPSERVE_SHARED_DIR) + "/data/bert-base-uncased/vocab.txt";

// The tiny-cls config.json, with `replacements` applied (exact substrings).
const char kBaseConfig[] = R"({
  "architectures": ["BertForSequenceClassification"],
  "model_type": "bert",
  "vocab_size": 30522,
  "hidden_size": 64,
  "num_hidden_layers": 2,
  "num_attention_heads": 2,
  "intermediate_size": 256,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "max_position_embeddings": 512,
  "type_vocab_size": 2,
  "layer_norm_eps": 1e-12,
  "pad_token_id": 0,
  "id2label": {"0": "negative", "1": "positive"},
  "label2id": {"negative": 0, "positive": 1},
  "transformers_version": "4.30.0"
})";

std::string Config(std::vector<std::pair<std::string, std::string>> replacements) {
  std::string text = kBaseConfig;
  for (const auto& [from, to] : replacements) {
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << "test bug: '" << from << "' not in the base config";
    if (at != std::string::npos) text.replace(at, from.size(), to);
  }
  return text;
}

absl::StatusOr<BertConfig> Parse(const std::string& text) {
  return ParseBertConfig(text, "cfg.json");
}

// Parsing must fail with INVALID_ARGUMENT and a message starting with the origin and containing
// `what`.
std::string ParseError(const std::string& text) {
  absl::StatusOr<BertConfig> config = Parse(text);
  EXPECT_FALSE(config.ok()) << "accepted:\n" << text;
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
  EXPECT_THAT(std::string(config.status().message()), StartsWith("cfg.json: "));
  return std::string(config.status().message());
}

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "topserve_model_config_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Write(const std::string& name, const std::string& content) const {
    const std::string path = dir_ + "/" + name;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
    EXPECT_TRUE(out.good()) << path;
    return path;
  }
  // A copy of a golden model directory (config, weights, vocab, tokenizer config) under dir_/name.
  std::string CopyGolden(const std::string& golden, const std::string& name) const {
    const std::string out = dir_ + "/" + name;
    std::filesystem::create_directories(out);
    for (const char* file :
         {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"}) {
      std::filesystem::copy_file(kGolden + "/" + golden + "/" + file, out + "/" + file);
    }
    return out;
  }
  std::string dir_;
};

// ----------------------------------------------------------------------------------------------
// config.json

TEST(ModelConfigTest, GoldenTinyCls) {
  auto config = LoadBertConfig(kGolden + "/tiny-cls/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->task, Task::kSequenceClassification);
  EXPECT_EQ(config->vocab_size, 30522);
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->num_layers, 2);
  EXPECT_EQ(config->num_heads, 2);
  EXPECT_EQ(config->head_dim(), 32);
  EXPECT_EQ(config->intermediate_size, 256);
  EXPECT_EQ(config->max_position_embeddings, 512);
  EXPECT_EQ(config->type_vocab_size, 2);
  EXPECT_EQ(config->layer_norm_eps, 1e-12);
  EXPECT_EQ(config->activation, Activation::kGelu);
  EXPECT_EQ(config->pad_token_id, 0);
  EXPECT_THAT(config->labels, ElementsAre("negative", "positive"));
  EXPECT_EQ(config->num_labels(), 2);
}

TEST(ModelConfigTest, GoldenTinyQa) {
  auto config = LoadBertConfig(kGolden + "/tiny-qa/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->task, Task::kQuestionAnswering);
  EXPECT_THAT(config->labels, ElementsAre("LABEL_0", "LABEL_1"));
}

TEST(ModelConfigTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = kGolden + "/no-such-model/config.json";
  auto config = LoadBertConfig(path);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(config.status().message()), StartsWith(path + ": cannot open"));
}

TEST(ModelConfigTest, BadJson) {
  EXPECT_THAT(ParseError(""), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError("{\"hidden_size\": 64,}"), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError(std::string(kBaseConfig).substr(0, 100)), HasSubstr("not valid JSON"));
  EXPECT_THAT(ParseError("[1, 2]"), HasSubstr("not a JSON object (it is a JSON array)"));
  EXPECT_THAT(ParseError("\"bert\""), HasSubstr("not a JSON object"));
  EXPECT_THAT(ParseError(std::string(100000, '[') + std::string(100000, ']')),
              HasSubstr("not a JSON object"));
}

TEST(ModelConfigTest, ZeroHeads) {
  EXPECT_EQ(ParseError(Config({{"\"num_attention_heads\": 2", "\"num_attention_heads\": 0"}})),
            "cfg.json: num_attention_heads must be a positive integer (at most 2147483647), got 0");
}

TEST(ModelConfigTest, HiddenNotDivisibleByHeads) {
  EXPECT_EQ(ParseError(Config({{"\"num_attention_heads\": 2", "\"num_attention_heads\": 3"}})),
            "cfg.json: hidden_size 64 is not divisible by num_attention_heads 3");
}

TEST(ModelConfigTest, SizesMustBePositiveIntegers) {
  for (const char* field : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "intermediate_size", "max_position_embeddings", "type_vocab_size"}) {
    const std::string key = absl::StrCat("\"", field, "\": ");
    const std::string base = kBaseConfig;
    const size_t at = base.find(key);
    ASSERT_NE(at, std::string::npos) << field;
    const size_t value_end = base.find(',', at);
    const std::string original = base.substr(at, value_end - at);
    for (const char* bad : {"0", "-1", "64.5", "\"64\"", "true", "null", "[64]", "4294967296"}) {
      const std::string message = ParseError(Config({{original, key + bad}}));
      EXPECT_THAT(message, AllOf(HasSubstr(absl::StrCat(field, " must be a positive integer")),
                                 HasSubstr(absl::StrCat("got ", bad))))
          << field << " = " << bad;
    }
  }
}

TEST(ModelConfigTest, RequiredSizesMissing) {
  for (const char* field : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "intermediate_size"}) {
    const std::string key = absl::StrCat("\"", field, "\": ");
    const std::string base = kBaseConfig;
    const size_t at = base.find(key);
    const std::string line = base.substr(at, base.find(',', at) + 1 - at);
    EXPECT_EQ(ParseError(Config({{line, ""}})), absl::StrCat("cfg.json: ", field, " is missing"));
  }
}

TEST(ModelConfigTest, OptionalSizesDefault) {
  auto config = Parse(Config({{"\"max_position_embeddings\": 512,", ""},
                              {"\"type_vocab_size\": 2,", ""},
                              {"\"layer_norm_eps\": 1e-12,", ""},
                              {"\"hidden_act\": \"gelu\",", ""},
                              {"\"pad_token_id\": 0,", ""}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_position_embeddings, 512);
  EXPECT_EQ(config->type_vocab_size, 2);
  EXPECT_EQ(config->layer_norm_eps, 1e-12);
  EXPECT_EQ(config->activation, Activation::kGelu);
  EXPECT_EQ(config->pad_token_id, 0);
}

TEST(ModelConfigTest, Activations) {
  const std::vector<std::pair<std::string, Activation>> known = {
      {"gelu", Activation::kGelu},
      {"gelu_python", Activation::kGelu},
      {"gelu_new", Activation::kGeluTanh},
      {"gelu_pytorch_tanh", Activation::kGeluTanh},
      {"relu", Activation::kRelu}};
  for (const auto& [name, activation] : known) {
    auto config = Parse(
        Config({{"\"hidden_act\": \"gelu\"", absl::StrCat("\"hidden_act\": \"", name, "\"")}}));
    ASSERT_TRUE(config.ok()) << name << ": " << config.status();
    EXPECT_EQ(config->activation, activation) << name;
  }
  EXPECT_THAT(ParseError(Config({{"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"swish\""}})),
              AllOf(HasSubstr("cfg.json: hidden_act \"swish\" is not supported"),
                    HasSubstr("supported: gelu")));
  EXPECT_THAT(ParseError(Config({{"\"hidden_act\": \"gelu\"", "\"hidden_act\": \"GELU\""}})),
              HasSubstr("\"GELU\""));
  EXPECT_THAT(ParseError(Config({{"\"hidden_act\": \"gelu\"", "\"hidden_act\": 1"}})),
              HasSubstr("hidden_act must be a string, got 1"));
}

TEST(ModelConfigTest, Architectures) {
  auto qa = Parse(Config({{"BertForSequenceClassification", "BertForQuestionAnswering"},
                          {"\"id2label\": {\"0\": \"negative\", \"1\": \"positive\"},", ""}}));
  ASSERT_TRUE(qa.ok()) << qa.status();
  EXPECT_EQ(qa->task, Task::kQuestionAnswering);

  EXPECT_THAT(
      ParseError(Config({{"BertForSequenceClassification", "BertForMaskedLM"}})),
      AllOf(HasSubstr(
                "cfg.json: architectures [\"BertForMaskedLM\"] names no supported architecture"),
            HasSubstr("BertForSequenceClassification, BertForQuestionAnswering, BertModel")));
  EXPECT_THAT(ParseError(Config({{"\"architectures\": [\"BertForSequenceClassification\"],", ""}})),
              HasSubstr("architectures is missing"));
  EXPECT_THAT(ParseError(Config({{"[\"BertForSequenceClassification\"]", "[]"}})),
              HasSubstr("architectures must be a non-empty array"));
  EXPECT_THAT(ParseError(Config(
                  {{"[\"BertForSequenceClassification\"]", "\"BertForSequenceClassification\""}})),
              HasSubstr("architectures must be a non-empty array"));
  EXPECT_THAT(ParseError(Config({{"[\"BertForSequenceClassification\"]", "[7]"}})),
              HasSubstr("architectures must hold strings, got 7"));
  EXPECT_THAT(
      ParseError(Config({{"[\"BertForSequenceClassification\"]",
                          "[\"BertForSequenceClassification\", \"BertForQuestionAnswering\"]"}})),
      HasSubstr("names two different tasks"));
  // An unknown name next to a known one: the known one decides.
  auto mixed = Parse(Config({{"[\"BertForSequenceClassification\"]",
                              "[\"BertForMaskedLM\", \"BertForSequenceClassification\"]"}}));
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_EQ(mixed->task, Task::kSequenceClassification);
  // The bare encoder: a headless model alone, the head when one is named next to it.
  auto bare = Parse(Config({{"[\"BertForSequenceClassification\"]", "[\"BertModel\"]"}}));
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->task, Task::kFeatureExtraction);
  for (const char* names : {"[\"BertModel\", \"BertForQuestionAnswering\"]",
                            "[\"BertForQuestionAnswering\", \"BertModel\"]"}) {
    auto headed =
        Parse(Config({{"[\"BertForSequenceClassification\"]", names},
                      {"\"id2label\": {\"0\": \"negative\", \"1\": \"positive\"},", ""}}));
    ASSERT_TRUE(headed.ok()) << names << ": " << headed.status();
    EXPECT_EQ(headed->task, Task::kQuestionAnswering) << names;
  }
}

TEST(ModelConfigTest, ModelTypeAndPositionEmbeddings) {
  EXPECT_THAT(ParseError(Config({{"\"model_type\": \"bert\"", "\"model_type\": \"roberta\""}})),
              HasSubstr("model_type must be \"bert\", got \"roberta\""));
  auto no_type = Parse(Config({{"\"model_type\": \"bert\",", ""}}));
  EXPECT_TRUE(no_type.ok()) << no_type.status();
  EXPECT_THAT(ParseError(Config(
                  {{"\"model_type\": \"bert\"",
                    "\"model_type\": \"bert\", \"position_embedding_type\": \"relative_key\""}})),
              HasSubstr("position_embedding_type must be \"absolute\""));
  EXPECT_TRUE(
      Parse(Config({{"\"model_type\": \"bert\"",
                     "\"model_type\": \"bert\", \"position_embedding_type\": \"absolute\""}}))
          .ok());
}

TEST(ModelConfigTest, LayerNormEps) {
  auto config = Parse(Config({{"1e-12", "1e-5"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->layer_norm_eps, 1e-5);
  auto integer = Parse(Config({{"1e-12", "1"}}));
  ASSERT_TRUE(integer.ok()) << integer.status();
  EXPECT_EQ(integer->layer_norm_eps, 1.0);
  for (const char* bad : {"0", "0.0", "-1e-12", "\"1e-12\"", "null"}) {
    EXPECT_THAT(ParseError(Config({{"1e-12", bad}})),
                HasSubstr(absl::StrCat("layer_norm_eps must be a positive number, got ", bad)));
  }
}

TEST(ModelConfigTest, PadTokenId) {
  EXPECT_TRUE(Parse(Config({{"\"pad_token_id\": 0", "\"pad_token_id\": null"}})).ok());
  EXPECT_EQ(Parse(Config({{"\"pad_token_id\": 0", "\"pad_token_id\": 30521"}}))->pad_token_id,
            30521);
  EXPECT_THAT(ParseError(Config({{"\"pad_token_id\": 0", "\"pad_token_id\": 30522"}})),
              HasSubstr("pad_token_id must be an integer in [0, 30521], got 30522"));
  EXPECT_THAT(ParseError(Config({{"\"pad_token_id\": 0", "\"pad_token_id\": -1"}})),
              HasSubstr("pad_token_id must be an integer in [0, 30521], got -1"));
}

TEST(ModelConfigTest, Id2Label) {
  const std::string three = "\"id2label\": {\"2\": \"c\", \"0\": \"a\", \"1\": \"b\"}";
  const std::string id2label = "\"id2label\": {\"0\": \"negative\", \"1\": \"positive\"}";
  auto config = Parse(Config({{id2label, three}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->labels, ElementsAre("a", "b", "c"));  // by id, not by key order

  EXPECT_THAT(ParseError(Config({{id2label, "\"id2label\": {\"0\": \"a\", \"2\": \"c\"}"}})),
              HasSubstr("id2label key \"2\" is not a class id in 0..1"));
  EXPECT_THAT(ParseError(Config({{id2label, "\"id2label\": {\"1\": \"a\", \"2\": \"b\"}"}})),
              HasSubstr("id2label key \"2\" is not a class id in 0..1"));
  EXPECT_THAT(ParseError(Config({{id2label, "\"id2label\": {\"0\": \"a\", \"00\": \"b\"}"}})),
              HasSubstr("id2label key \"00\" is not a class id"));
  EXPECT_THAT(ParseError(Config({{id2label, "\"id2label\": {\"0\": \"a\", \"-1\": \"b\"}"}})),
              HasSubstr("id2label key \"-1\" is not a class id"));
  EXPECT_THAT(ParseError(Config({{id2label, "\"id2label\": {\"0\": \"a\", \"one\": \"b\"}"}})),
              HasSubstr("id2label key \"one\" is not a class id"));
  EXPECT_THAT(ParseError(Config({{id2label, "\"id2label\": {\"0\": \"a\", \"1\": 5}"}})),
              HasSubstr("id2label label of class 1 must be a string, got 5"));
  EXPECT_THAT(ParseError(Config({{id2label, "\"id2label\": {}"}})),
              HasSubstr("id2label must be a non-empty object"));
  EXPECT_THAT(ParseError(Config({{id2label, "\"id2label\": [\"a\", \"b\"]"}})),
              HasSubstr("id2label must be a non-empty object"));
}

TEST(ModelConfigTest, NumLabels) {
  const std::string id2label = "\"id2label\": {\"0\": \"negative\", \"1\": \"positive\"}";
  EXPECT_TRUE(Parse(Config({{id2label, id2label + ", \"num_labels\": 2"}})).ok());
  EXPECT_EQ(ParseError(Config({{id2label, id2label + ", \"num_labels\": 3"}})),
            "cfg.json: num_labels is 3 but id2label has 2 labels");
  EXPECT_THAT(ParseError(Config({{id2label, "\"num_labels\": 0"}})),
              HasSubstr("num_labels must be a positive integer"));
  auto only_count = Parse(Config({{id2label, "\"num_labels\": 3"}}));
  ASSERT_TRUE(only_count.ok()) << only_count.status();
  EXPECT_THAT(only_count->labels, ElementsAre("LABEL_0", "LABEL_1", "LABEL_2"));
  auto neither = Parse(Config({{id2label + ",", ""}}));
  ASSERT_TRUE(neither.ok()) << neither.status();
  EXPECT_THAT(neither->labels, ElementsAre("LABEL_0", "LABEL_1"));
  // Question answering has exactly two outputs (start, end).
  EXPECT_THAT(
      ParseError(Config({{"BertForSequenceClassification", "BertForQuestionAnswering"},
                         {id2label, "\"id2label\": {\"0\": \"a\", \"1\": \"b\", \"2\": \"c\"}"}})),
      HasSubstr("num_labels is 3 but BertForQuestionAnswering needs 2"));
}

// ----------------------------------------------------------------------------------------------
// tokenizer_config.json

class ModelConfigTokenizerTest : public TempDirTest {};

TEST_F(ModelConfigTokenizerTest, GoldenAndMissingFile) {
  auto golden = LoadTokenizerConfig(kGolden + "/tiny-cls/tokenizer_config.json");
  ASSERT_TRUE(golden.ok()) << golden.status();
  EXPECT_TRUE(golden->do_lower_case);
  EXPECT_FALSE(golden->strip_accents.has_value());
  EXPECT_TRUE(golden->tokenize_chinese_chars);
  EXPECT_EQ(golden->model_max_length, 512);

  auto missing = LoadTokenizerConfig(dir_ + "/tokenizer_config.json");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_TRUE(missing->do_lower_case);
  EXPECT_FALSE(missing->strip_accents.has_value());
  EXPECT_TRUE(missing->tokenize_chinese_chars);
  EXPECT_EQ(missing->model_max_length, 512);
}

TEST_F(ModelConfigTokenizerTest, AllFields) {
  const std::string path =
      Write("tokenizer_config.json", R"({"do_lower_case": false, "strip_accents": true,
      "tokenize_chinese_chars": false, "model_max_length": 128, "tokenizer_class": "BertTokenizer",
      "unk_token": "[UNK]"})");
  auto config = LoadTokenizerConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->do_lower_case);
  EXPECT_EQ(config->strip_accents, std::optional<bool>(true));
  EXPECT_FALSE(config->tokenize_chinese_chars);
  EXPECT_EQ(config->model_max_length, 128);

  auto null_accents =
      ParseTokenizerConfig(R"({"strip_accents": null, "do_lower_case": true})", "t.json");
  ASSERT_TRUE(null_accents.ok()) << null_accents.status();
  EXPECT_FALSE(null_accents->strip_accents.has_value());
  auto no_strip = ParseTokenizerConfig(R"({"strip_accents": false})", "t.json");
  ASSERT_TRUE(no_strip.ok());
  EXPECT_EQ(no_strip->strip_accents, std::optional<bool>(false));
}

TEST_F(ModelConfigTokenizerTest, HuggingFaceNoLimitPlaceholderKeepsDefault) {
  // transformers writes int(1e30) when a tokenizer has no known maximum length.
  auto config =
      ParseTokenizerConfig(R"({"model_max_length": 1000000000000000019884624838656})", "t.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_max_length, 512);
}

TEST_F(ModelConfigTokenizerTest, MalformedFilesNameFileAndField) {
  struct Case {
    std::string json;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"{\"do_lower_case\": true", "not valid JSON"},
      {"[]", "not a JSON object"},
      {"{\"do_lower_case\": \"yes\"}", "do_lower_case must be true or false, got \"yes\""},
      {"{\"do_lower_case\": 1}", "do_lower_case must be true or false, got 1"},
      {"{\"tokenize_chinese_chars\": null}",
       "tokenize_chinese_chars must be true or false, got null"},
      {"{\"strip_accents\": \"auto\"}", "strip_accents must be true, false or null, got \"auto\""},
      {"{\"model_max_length\": 0}", "model_max_length must be a positive integer"},
      {"{\"model_max_length\": -5}", "model_max_length must be a positive integer"},
      {"{\"model_max_length\": 512.5}", "model_max_length must be a positive integer"},
      {"{\"model_max_length\": \"512\"}", "model_max_length must be a positive integer"},
  };
  for (const Case& c : cases) {
    const std::string path = Write("tokenizer_config.json", c.json);
    auto config = LoadTokenizerConfig(path);
    ASSERT_FALSE(config.ok()) << c.json;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_THAT(std::string(config.status().message()),
                AllOf(StartsWith(path + ": "), HasSubstr(c.message)))
        << c.json;
  }
}

TEST_F(ModelConfigTokenizerTest, DirectoryInsteadOfFileIsAnError) {
  std::filesystem::create_directories(dir_ + "/tokenizer_config.json");
  auto config = LoadTokenizerConfig(dir_ + "/tokenizer_config.json");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("not a regular file"));
}

// ----------------------------------------------------------------------------------------------
// Expected tensors and model directories

std::set<std::string> NamesIn(const SafetensorsFile& file) {
  std::set<std::string> names;
  for (const TensorView& t : file.tensors()) names.insert(t.name);
  return names;
}

TEST(ModelConfigTensorsTest, MatchesGoldenCheckpointsExactly) {
  for (const char* model : {"tiny-cls", "tiny-qa"}) {
    auto config = LoadBertConfig(kGolden + "/" + model + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    auto file = SafetensorsFile::Open(kGolden + "/" + model + "/model.safetensors");
    ASSERT_TRUE(file.ok()) << file.status();
    const std::vector<TensorSpec> specs = ExpectedBertTensors(*config);
    std::set<std::string> expected;
    for (const TensorSpec& spec : specs) {
      expected.insert(spec.name);
      const TensorView* view = (*file)->Find(spec.name);
      ASSERT_NE(view, nullptr) << model << " " << spec.name;
      EXPECT_EQ(view->shape, spec.shape) << model << " " << spec.name;
    }
    EXPECT_EQ(expected.size(), specs.size()) << "no duplicate names";
    EXPECT_EQ(expected, NamesIn(**file)) << model;
    EXPECT_TRUE(ValidateBertTensors(**file, *config).ok());
  }
}

TEST(ModelConfigTensorsTest, ShapesFollowTheConfig) {
  BertConfig config;
  config.task = Task::kSequenceClassification;
  config.vocab_size = 100;
  config.hidden_size = 8;
  config.num_layers = 3;
  config.num_heads = 2;
  config.intermediate_size = 32;
  config.max_position_embeddings = 40;
  config.type_vocab_size = 3;
  config.labels = {"a", "b", "c", "d", "e"};
  const std::vector<TensorSpec> specs = ExpectedBertTensors(config);
  EXPECT_EQ(specs.size(), 5u + 3u * 16u + 4u);
  auto shape_of = [&](const std::string& name) {
    for (const TensorSpec& s : specs) {
      if (s.name == name) return s.shape;
    }
    ADD_FAILURE() << name << " not expected";
    return std::vector<int64_t>{};
  };
  EXPECT_EQ(shape_of("bert.embeddings.word_embeddings.weight"), (std::vector<int64_t>{100, 8}));
  EXPECT_EQ(shape_of("bert.embeddings.position_embeddings.weight"), (std::vector<int64_t>{40, 8}));
  EXPECT_EQ(shape_of("bert.embeddings.token_type_embeddings.weight"), (std::vector<int64_t>{3, 8}));
  EXPECT_EQ(shape_of("bert.encoder.layer.2.intermediate.dense.weight"),
            (std::vector<int64_t>{32, 8}));
  EXPECT_EQ(shape_of("bert.encoder.layer.2.output.dense.weight"), (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(shape_of("classifier.weight"), (std::vector<int64_t>{5, 8}));
  EXPECT_EQ(shape_of("classifier.bias"), (std::vector<int64_t>{5}));
  config.task = Task::kQuestionAnswering;
  const std::vector<TensorSpec> qa = ExpectedBertTensors(config);
  EXPECT_EQ(qa.back().name, "qa_outputs.bias");
  EXPECT_EQ(qa.back().shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(qa.size(), 5u + 3u * 16u + 2u);
}

class ModelConfigDirTest : public TempDirTest {};

TEST_F(ModelConfigDirTest, LoadsGoldenDirectories) {
  auto cls = LoadModelDir(kGolden + "/tiny-cls");
  ASSERT_TRUE(cls.ok()) << cls.status();
  EXPECT_EQ(cls->config.task, Task::kSequenceClassification);
  EXPECT_EQ(cls->vocab_path, kGolden + "/tiny-cls/vocab.txt");
  ASSERT_NE(cls->weights, nullptr);
  auto classifier = cls->weights->ReadF32("classifier.weight", {2, 64});
  EXPECT_TRUE(classifier.ok()) << classifier.status();
  auto qa = LoadModelDir(kGolden + "/tiny-qa/");
  ASSERT_TRUE(qa.ok()) << qa.status();
  EXPECT_EQ(qa->config.task, Task::kQuestionAnswering);
  EXPECT_EQ(qa->config_path, kGolden + "/tiny-qa/config.json");
}

TEST_F(ModelConfigDirTest, MissingPiecesAreNamed) {
  {
    const std::string missing = dir_ + "/nope";
    auto model = LoadModelDir(missing);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(model.status().message()), StartsWith(missing));
  }
  for (const char* file : {"config.json", "model.safetensors", "vocab.txt"}) {
    const std::string dir = CopyGolden("tiny-cls", absl::StrCat("without-", file));
    std::filesystem::remove(dir + "/" + file);
    auto model = LoadModelDir(dir);
    ASSERT_FALSE(model.ok()) << file;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound) << model.status();
    EXPECT_THAT(std::string(model.status().message()),
                StartsWith(absl::StrCat(dir, "/", file, ": cannot open")));
  }
  // No tokenizer_config.json: the defaults.
  const std::string dir = CopyGolden("tiny-qa", "without-tokenizer-config");
  std::filesystem::remove(dir + "/tokenizer_config.json");
  auto model = LoadModelDir(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->tokenizer.model_max_length, 512);
  EXPECT_TRUE(model->tokenizer.do_lower_case);
}

// A config whose sizes the weights cannot back fails at once, before anything is sized by it
// (issue: num_hidden_layers 1e9 took 6 GB and never finished starting).
TEST_F(ModelConfigDirTest, AbsurdLayerCountFailsBeforeAllocating) {
  const std::string dir = CopyGolden("tiny-cls", "billion-layers");
  Write("billion-layers/config.json",
        Config({{"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1000000000"}}));
  // Without the check this builds a billion tensor specs (and BertModel::Load a billion-layer
  // schedule): the test would run out of memory or time, not pass.
  auto model = LoadModelDir(dir);
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(std::string(model.status().message()),
              AllOf(StartsWith(dir + "/model.safetensors: holds "),
                    HasSubstr("config.json's num_hidden_layers 1000000000 needs")));
  auto loaded = BertModel::Load(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().message(), model.status().message());
}

TEST_F(ModelConfigDirTest, ConfigNotMatchingWeightsIsNamedPerTensor) {
  const std::string dir = CopyGolden("tiny-cls", "three-labels");
  Write("three-labels/config.json",
        absl::StrReplaceAll(Config({}),
                            {{"\"1\": \"positive\"}", "\"1\": \"positive\", \"2\": \"neutral\"}"},
                             {"\"label2id\": {\"negative\": 0, \"positive\": 1},", ""}}));
  auto model = LoadModelDir(dir);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      model.status().message(),
      dir +
          "/model.safetensors: tensor 'classifier.weight' has shape [2, 64], expected [3, 64]; "
          "tensor 'classifier.bias' has shape [2], expected [3]");

  const std::string deeper = CopyGolden("tiny-cls", "four-layers");
  Write("four-layers/config.json",
        Config({{"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 4"}}));
  auto four = LoadModelDir(deeper);
  ASSERT_FALSE(four.ok());
  EXPECT_THAT(
      std::string(four.status().message()),
      AllOf(StartsWith(
                deeper +
                "/model.safetensors: tensor 'bert.encoder.layer.2.attention.self.query.weight' "
                "is missing"),
            HasSubstr("and 27 more (32 tensors do not match config.json)")));

  // A QA config over classification weights: qa_outputs is missing (the pooler is allowed extra).
  const std::string swapped = CopyGolden("tiny-cls", "swapped");
  Write("swapped/config.json",
        Config({{"BertForSequenceClassification", "BertForQuestionAnswering"}}));
  auto qa = LoadModelDir(swapped);
  ASSERT_FALSE(qa.ok());
  EXPECT_EQ(qa.status().message(), swapped +
                                       "/model.safetensors: tensor 'qa_outputs.weight' is missing; "
                                       "tensor 'qa_outputs.bias' is missing");
}

TEST_F(ModelConfigDirTest, BrokenWeightsFileIsNamed) {
  const std::string dir = CopyGolden("tiny-qa", "truncated");
  std::filesystem::resize_file(dir + "/model.safetensors", 8000000);
  auto model = LoadModelDir(dir);
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(std::string(model.status().message()),
              AllOf(StartsWith(dir + "/model.safetensors: tensor '"),
                    HasSubstr("run past the end of the data section")));
}

// ----------------------------------------------------------------------------------------------
// Models made by tools/gen_model.py (needs the Python in TOPSERVE_PYTHON with numpy)

bool PythonHasNumpy() {
  const std::string command = absl::StrCat(TOPSERVE_PYTHON, " -c 'import numpy' >/dev/null 2>&1");
  return std::system(command.c_str()) == 0;
}

class ModelConfigGeneratedTest : public TempDirTest {
 protected:
  // Runs gen_model.py; returns the model directory.
  std::string Generate(const std::string& name, const std::string& args) {
    const std::string out = dir_ + "/" + name;
    const std::string command =
        absl::StrCat(TOPSERVE_PYTHON, " ", TOPSERVE_SOURCE_DIR, "/tools/gen_model.py --out ", out,
                     " --vocab ", kVocab, " ", args, " >/dev/null");
    const int rc = std::system(command.c_str());
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << command;
    return out;
  }
};

TEST_F(ModelConfigGeneratedTest, EveryDtypeAndTaskLoadsAndRoundsConsistently) {
  if (!PythonHasNumpy()) GTEST_SKIP() << TOPSERVE_PYTHON << " has no numpy";
  const std::string common = "--layers 2 --hidden 32 --heads 4 --ffn 48 --max-pos 64 --seed 7";
  for (const char* task : {"cls", "qa"}) {
    const std::string f32_dir = Generate(absl::StrCat(task, "-f32"),
                                         absl::StrCat(common, " --task ", task, " --dtype f32"));
    auto f32 = LoadModelDir(f32_dir);
    ASSERT_TRUE(f32.ok()) << f32.status();
    EXPECT_EQ(f32->config.num_heads, 4);
    EXPECT_EQ(f32->config.max_position_embeddings, 64);
    EXPECT_EQ(f32->tokenizer.model_max_length, 64);
    if (std::string(task) == "cls") {
      EXPECT_THAT(f32->config.labels, ElementsAre("negative", "positive"));
    }
    for (const auto& [dtype, name, relative_error] :
         {std::tuple{DType::kF16, "f16", 0x1p-11}, std::tuple{DType::kBF16, "bf16", 0x1p-8}}) {
      const std::string dir = Generate(absl::StrCat(task, "-", name),
                                       absl::StrCat(common, " --task ", task, " --dtype ", name));
      auto half = LoadModelDir(dir);
      ASSERT_TRUE(half.ok()) << half.status();
      // Same seed: the half-precision file holds the f32 draws rounded to nearest.
      for (const TensorSpec& spec : ExpectedBertTensors(half->config)) {
        ASSERT_EQ(half->weights->Find(spec.name)->dtype, dtype) << spec.name;
        auto a = f32->weights->ReadF32(spec.name, spec.shape);
        auto b = half->weights->ReadF32(spec.name, spec.shape);
        ASSERT_TRUE(a.ok() && b.ok()) << spec.name;
        for (size_t i = 0; i < a->size(); ++i) {
          const double x = (*a)[i], y = (*b)[i];
          // Relative bound for normal values; an absolute one covers F16 subnormals.
          ASSERT_LE(std::abs(x - y), std::abs(x) * relative_error + 0x1p-25)
              << spec.name << "[" << i << "] " << name;
        }
      }
    }
    // LayerNorm weights are drawn around 1, the rest around 0.
    auto gamma = f32->weights->ReadF32("bert.embeddings.LayerNorm.weight", {32});
    ASSERT_TRUE(gamma.ok());
    double mean = 0;
    for (float g : *gamma) mean += g / 32.0;
    EXPECT_NEAR(mean, 1.0, 0.1);
  }
}

TEST_F(ModelConfigGeneratedTest, SameSeedSameBytes) {
  if (!PythonHasNumpy()) GTEST_SKIP() << TOPSERVE_PYTHON << " has no numpy";
  const std::string args =
      "--layers 1 --hidden 16 --heads 2 --ffn 16 --max-pos 32 --dtype bf16 --seed 5";
  const std::string a = Generate("a", args), b = Generate("b", args), c = Generate("c", args + "1");
  auto read = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  EXPECT_EQ(read(a + "/model.safetensors"), read(b + "/model.safetensors"));
  EXPECT_EQ(read(a + "/config.json"), read(b + "/config.json"));
  EXPECT_NE(read(a + "/model.safetensors"), read(c + "/model.safetensors"));
}

}  // namespace
}  // namespace topserve::engine
