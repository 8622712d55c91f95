// The engine on the shipped, trained model against the trainer's eval-mode outputs
// (training/evaluate.py --dump, a ctest fixture): the schedule as written and the budget planner
// (whose Python copy lives in training/) must give the same kept tokens and logits within 1e-4.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

#include "engine/bert_model.h"
#include "engine/pruning.h"

namespace topserve::engine {
namespace {

const std::string kModel = std::string(TOPSERVE_SOURCE_DIR) + "/models/sst2-small";

std::vector<nlohmann::json> Read(const std::string& name) {
  std::ifstream in(std::string(TOPSERVE_TEST_DATA_DIR) + "/" + name);
  EXPECT_TRUE(in.good()) << name;
  std::vector<nlohmann::json> rows;
  std::string line;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// Runs the dumped sentences as one batch with the given plans and placement (the model's unless
// given).
std::vector<SequenceOutput> RunBatch(const BertModel& model,
                                     const std::vector<std::vector<int32_t>>& ids,
                                     const std::vector<std::vector<int32_t>>& kept,
                                     std::optional<Placement> placement = std::nullopt) {
  Workspace ws(model);
  std::vector<SequenceInput> in;
  for (size_t i = 0; i < ids.size(); ++i) in.push_back({ids[i], {}, kept[i]});
  std::vector<SequenceOutput> out(in.size());
  RunOptions opts;
  opts.placement = placement.value_or(model.schedule().placement);
  const absl::Status st = model.Run(in, out, ws, opts);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// budget < 0: the schedule's ratios as written; else the budget planner.
void Compare(const std::string& dump, double budget) {
  auto model = BertModel::Load(kModel);
  ASSERT_TRUE(model.ok()) << model.status();
  const auto rows = Read(dump);
  ASSERT_GE(rows.size(), 100u);
  std::vector<std::vector<int32_t>> ids, kept;
  for (const auto& r : rows) {
    ids.push_back(r["input_ids"].get<std::vector<int32_t>>());
    const int64_t n = static_cast<int64_t>(ids.back().size());
    if (budget < 0) {
      kept.push_back(KeptTokens(n, (*model)->schedule().keep_ratios));
    } else {
      auto plan = (*model)->planner().Plan(n, budget);
      ASSERT_TRUE(plan.ok());
      kept.push_back(plan->kept);
    }
  }
  const std::vector<SequenceOutput> out = RunBatch(**model, ids, kept);
  ASSERT_EQ(out.size(), rows.size());
  double worst = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(kept[i], rows[i]["kept"].get<std::vector<int32_t>>()) << "sentence " << i;
    const auto want = rows[i]["logits"].get<std::vector<double>>();
    ASSERT_EQ(out[i].logits.size(), want.size());
    for (size_t k = 0; k < want.size(); ++k)
      worst = std::max(worst, std::abs(out[i].logits[k] - want[k]));
  }
  EXPECT_LT(worst, 1e-4);
  std::cout << dump << ": max abs diff " << worst << "\n";
}

TEST(TrainingParity, ScheduleAsWritten) { Compare("parity-schedule.jsonl", -1); }
TEST(TrainingParity, BudgetPlanner) { Compare("parity-budget.jsonl", 0.3); }

// The reduced precisions on the trained model, with its schedule: not bit-equal to the trainer,
// but the same decisions: at least 99.5% of these 200 SST-2 dev sentences keep the fp32 trainer's
// label, and the accuracy moves by at most 1 point.
class ReducedPrecisionParity : public ::testing::TestWithParam<Precision> {};

TEST_P(ReducedPrecisionParity, KeepsTheDecisions) {
  const Precision precision = GetParam();
  if (precision == Precision::kBfloat16 && !CpuHasNativeBf16()) GTEST_SKIP() << "no native bf16";
  const std::string what(PrecisionName(precision));
  auto model = BertModel::Load(
      kModel, {.num_threads = 2, .precision = precision, .bf16_kernels = Bf16Kernels::kAlways});
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ((*model)->precision(), precision);
  const auto rows = Read("parity-schedule.jsonl");
  ASSERT_GE(rows.size(), 100u);
  std::vector<std::vector<int32_t>> ids, kept;
  for (const auto& r : rows) {
    ids.push_back(r["input_ids"].get<std::vector<int32_t>>());
    kept.push_back(
        KeptTokens(static_cast<int64_t>(ids.back().size()), (*model)->schedule().keep_ratios));
  }
  const std::vector<SequenceOutput> out = RunBatch(**model, ids, kept);
  ASSERT_EQ(out.size(), rows.size());
  auto argmax = [](const auto& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
  int agree = 0, right_fp32 = 0, right_reduced = 0;
  double worst = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto want = rows[i]["logits"].get<std::vector<double>>();
    const int label = rows[i]["label"].get<int>();
    agree += argmax(want) == argmax(out[i].logits);
    right_fp32 += argmax(want) == label;
    right_reduced += argmax(out[i].logits) == label;
    for (size_t k = 0; k < want.size(); ++k)
      worst = std::max(worst, std::abs(out[i].logits[k] - want[k]));
  }
  const double n = static_cast<double>(rows.size());
  std::cout << what << " vs trainer: " << agree << "/" << rows.size() << " same label, accuracy "
            << right_reduced / n << " vs " << right_fp32 / n << ", max abs logit diff " << worst
            << "\n";
  EXPECT_GE(agree, 0.995 * n);
  EXPECT_LE(std::abs(right_reduced - right_fp32), 0.01 * n);
  EXPECT_GT(worst, 1e-5) << what << " outputs equal fp32 ones: the precision did not run";
}

// The same with pruning between layers, which the model was not trained for: the reference is our
// fp32 engine with that placement. (The int8 layers hand quantized rows from one layer to the next;
// rows removed between layers must invalidate them.)
TEST_P(ReducedPrecisionParity, KeepsTheDecisionsBetweenLayers) {
  const Precision precision = GetParam();
  if (precision == Precision::kBfloat16 && !CpuHasNativeBf16()) GTEST_SKIP() << "no native bf16";
  auto fp32 = BertModel::Load(kModel, {.num_threads = 2});
  auto reduced = BertModel::Load(
      kModel, {.num_threads = 2, .precision = precision, .bf16_kernels = Bf16Kernels::kAlways});
  ASSERT_TRUE(fp32.ok() && reduced.ok());
  const auto rows = Read("parity-schedule.jsonl");
  std::vector<std::vector<int32_t>> ids, kept;
  for (const auto& r : rows) {
    ids.push_back(r["input_ids"].get<std::vector<int32_t>>());
    kept.push_back(
        KeptTokens(static_cast<int64_t>(ids.back().size()), (*fp32)->schedule().keep_ratios));
  }
  const auto want = RunBatch(**fp32, ids, kept, Placement::kBetweenLayers);
  const auto got = RunBatch(**reduced, ids, kept, Placement::kBetweenLayers);
  auto argmax = [](const auto& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
  int agree = 0;
  for (size_t i = 0; i < rows.size(); ++i) agree += argmax(want[i].logits) == argmax(got[i].logits);
  std::cout << PrecisionName(precision) << " vs fp32, between layers: " << agree << "/"
            << rows.size() << " same label\n";
  EXPECT_GE(agree, 0.995 * static_cast<double>(rows.size()));
}

INSTANTIATE_TEST_SUITE_P(Precisions, ReducedPrecisionParity,
                         ::testing::Values(Precision::kInt8, Precision::kBfloat16),
                         [](const auto& param_info) {
                           return std::string(PrecisionName(param_info.param));
                         });

}  // namespace
}  // namespace topserve::engine
