// Token pruning: the engine against the independently written Python rule
// (tools/reference_pruning.py) on mixed batches with mixed plans, both placements, classification
// and QA; plus the cost model by hand, the budget planner and the schedule file.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include <nlohmann/json.hpp>

#include "engine/bert_model.h"
#include "engine/cost_model.h"
#include "engine/pruning.h"

namespace topserve::engine {
namespace {

using nlohmann::json;
const std::string kData = TOPSERVE_TEST_DATA_DIR;

struct Row {
  std::vector<int32_t> ids, types, kept;
  json expected;
};

std::vector<Row> LoadRows(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<Row> rows;
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line);
    Row r;
    r.ids = j["input_ids"].get<std::vector<int32_t>>();
    r.types = j["token_type_ids"].get<std::vector<int32_t>>();
    r.kept = j["kept"].get<std::vector<int32_t>>();
    r.expected = std::move(j);
    rows.push_back(std::move(r));
  }
  return rows;
}

double MaxDiff(const std::vector<float>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

struct Case {
  std::string model;
  Placement placement;
  std::string file;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.model << "/" << c.file; }

class PrunedAgainstReference : public ::testing::TestWithParam<Case> {};

TEST_P(PrunedAgainstReference, MixedPlansInOneBatch) {
  const Case& c = GetParam();
  auto model = BertModel::Load(kData + "/" + c.model);
  ASSERT_TRUE(model.ok()) << model.status();
  Workspace ws(**model);
  std::vector<Row> rows = LoadRows(kData + "/" + c.model + "/" + c.file);
  ASSERT_GE(rows.size(), 20u);
  std::vector<SequenceInput> in;
  for (const Row& r : rows) in.push_back({r.ids, r.types, r.kept});
  std::vector<SequenceOutput> out(in.size());
  RunOptions opts;
  opts.placement = c.placement;
  opts.record_kept = true;
  ASSERT_TRUE((*model)->Run(in, out, ws, opts).ok());
  double worst = 0;
  int pruned_rows = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const json& e = rows[i].expected;
    const auto want_kept = e["kept_positions"].get<std::vector<std::vector<int32_t>>>();
    ASSERT_EQ(out[i].kept_positions.size(), want_kept.size());
    for (size_t l = 0; l < want_kept.size(); ++l) {
      EXPECT_EQ(out[i].kept_positions[l], want_kept[l]) << "row " << i << " layer " << l;
      EXPECT_EQ(static_cast<int32_t>(out[i].kept_positions[l].size()), rows[i].kept[l]);
    }
    if (rows[i].kept.back() < static_cast<int32_t>(rows[i].ids.size())) ++pruned_rows;
    if (e.contains("logits"))
      worst = std::max(worst, MaxDiff(out[i].logits, e["logits"].get<std::vector<double>>()));
    if (e.contains("start_logits")) {
      worst = std::max(worst,
                       MaxDiff(out[i].start_logits, e["start_logits"].get<std::vector<double>>()));
      worst =
          std::max(worst, MaxDiff(out[i].end_logits, e["end_logits"].get<std::vector<double>>()));
    }
  }
  EXPECT_GE(pruned_rows, 15) << "the fixture should prune most sequences";
  EXPECT_LT(worst, 1e-4);
  std::cout << c.model << " " << c.file << ": max abs diff " << worst << "\n";

  // A sequence's outputs do not depend on its batch-mates.
  for (size_t i = 0; i < rows.size(); i += 3) {
    std::vector<SequenceOutput> alone(1);
    ASSERT_TRUE((*model)->Run(std::span(&in[i], 1), alone, ws, opts).ok());
    for (size_t k = 0; k < alone[0].logits.size(); ++k)
      EXPECT_NEAR(alone[0].logits[k], out[i].logits[k], 1e-5);
    for (size_t k = 0; k < alone[0].start_logits.size(); ++k) {
      EXPECT_NEAR(alone[0].start_logits[k], out[i].start_logits[k], 1e-5);
      EXPECT_NEAR(alone[0].end_logits[k], out[i].end_logits[k], 1e-5);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Placements, PrunedAgainstReference,
    ::testing::Values(Case{"cls-f32", Placement::kAfterMha, "pruned-after_mha.jsonl"},
                      Case{"cls-f32", Placement::kBetweenLayers, "pruned-between_layers.jsonl"},
                      Case{"qa-f32", Placement::kAfterMha, "pruned-after_mha.jsonl"},
                      Case{"qa-f32", Placement::kBetweenLayers, "pruned-between_layers.jsonl"},
                      Case{"cls-relu", Placement::kAfterMha, "pruned-after_mha.jsonl"}),
    [](const auto& param_info) {
      const Case& c = param_info.param;
      std::string n = c.model + "_" + std::string(PlacementName(c.placement));
      for (char& ch : n)
        if (ch == '-') ch = '_';
      return n;
    });

TEST(Pruning, BudgetOneIsBitIdenticalToUnpruned) {
  for (const char* name : {"cls-f32", "qa-f32"}) {
    auto model = BertModel::Load(kData + "/" + name);
    ASSERT_TRUE(model.ok()) << model.status();
    Workspace ws(**model);
    std::vector<std::vector<int32_t>> ids;
    std::mt19937 rng(7);
    for (int n : {1, 5, 40, 128, 300}) {
      std::vector<int32_t> v(static_cast<size_t>(n));
      for (auto& x : v) x = static_cast<int32_t>(1000 + rng() % 20000);
      ids.push_back(v);
    }
    std::vector<PruneReport> plans;
    std::vector<SequenceInput> plain, planned;
    for (const auto& v : ids) {
      auto plan = (*model)->planner().Plan(static_cast<int64_t>(v.size()), 1.0);
      ASSERT_TRUE(plan.ok());
      EXPECT_FALSE(plan->pruned());
      EXPECT_EQ(plan->macs, plan->unpruned_macs);
      plans.push_back(*plan);
    }
    for (size_t i = 0; i < ids.size(); ++i) {
      plain.push_back({ids[i], {}, {}});
      planned.push_back({ids[i], {}, plans[i].kept});
    }
    std::vector<SequenceOutput> a(ids.size()), b(ids.size());
    ASSERT_TRUE((*model)->Run(plain, a, ws).ok());
    ASSERT_TRUE((*model)->Run(planned, b, ws).ok());
    for (size_t i = 0; i < ids.size(); ++i) {
      // Bit for bit; an empty vector (the other task's output) has no data to compare, and
      // memcmp must not get its null pointer (UBSan reports it).
      auto same_bits = [](const std::vector<float>& x, const std::vector<float>& y) {
        return x.size() == y.size() &&
               (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
      };
      EXPECT_TRUE(same_bits(a[i].logits, b[i].logits)) << i;
      EXPECT_TRUE(same_bits(a[i].start_logits, b[i].start_logits)) << i;
    }
  }
}

TEST(CostModel, MatchesHandComputation) {
  ModelShape s;
  s.hidden = 4;
  s.ffn = 8;
  s.layers = 2;
  s.num_labels = 3;
  // Layer 0: n=10 in, keeps 6 after MHA; layer 1: 6 in, keeps 3.
  // after_mha: L0 = 3*10*16 + 2*100*4 + 10*16 + 2*6*4*8 = 480+800+160+384 = 1824
  //            L1 = 3*6*16 + 2*36*4 + 6*16 + 2*3*4*8 = 288+288+96+192 = 864; head = 16+12 = 28
  const std::vector<int32_t> kept = {6, 3};
  EXPECT_EQ(EncoderMacs(s, 10, kept, Placement::kAfterMha), 1824 + 864 + 28);
  // between_layers: FFN runs on all tokens entering the layer.
  //            L0 = 480+800+160+2*10*32 = 2080; L1 = 288+288+96+2*6*32 = 1056
  EXPECT_EQ(EncoderMacs(s, 10, kept, Placement::kBetweenLayers), 2080 + 1056 + 28);
  // Unpruned: 2 x (480+800+160+640) + 28
  EXPECT_EQ(UnprunedMacs(s, 10), 2 * 2080 + 28);
  s.qa = true;
  s.num_labels = 0;
  EXPECT_EQ(HeadMacs(s, 10), 10 * 4 * 2);
}

TEST(Planner, RejectsBadBudgets) {
  BudgetPlanner p(ModelShape{64, 256, 2, 2, false}, PruningSchedule::Default(2));
  for (double b :
       {0.0, -0.5, 1.0000001, 2.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    auto r = p.Plan(10, b);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << b;
    EXPECT_NE(r.status().message().find("budget must be in (0, 1]"), std::string::npos);
  }
  EXPECT_EQ(p.Plan(0, 0.5).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Planner, HonoursBudgetsAndFollowsTheScheduleShape) {
  PruningSchedule sched;
  sched.keep_ratios = {1.0, 1.0, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5};
  const ModelShape shape{768, 3072, 12, 2, false};
  BudgetPlanner p(shape, sched);
  std::mt19937 rng(3);
  for (int it = 0; it < 2000; ++it) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 512);
    const double b = std::max(1e-3, static_cast<double>(rng() % 1000) / 1000.0);
    auto r = p.Plan(n, b);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->kept.size(), 12u);
    EXPECT_EQ(r->macs, EncoderMacs(shape, n, r->kept, Placement::kAfterMha));
    EXPECT_EQ(r->unpruned_macs, UnprunedMacs(shape, n));
    if (r->over_budget) {
      for (int32_t k : r->kept) EXPECT_EQ(k, 1);  // only a [CLS]-only plan may exceed
    } else {
      EXPECT_LE(static_cast<double>(r->macs), b * static_cast<double>(r->unpruned_macs))
          << n << " " << b;
    }
    int32_t prev = static_cast<int32_t>(n);
    for (int32_t k : r->kept) {
      EXPECT_LE(k, prev);
      EXPECT_GE(k, 1);
      prev = k;
    }
  }
  // A moderate budget keeps the learned shape: nothing pruned in layers 0 and 1.
  auto r = p.Plan(128, 0.6);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kept[0], 128);
  EXPECT_EQ(r->kept[1], 128);
  EXPECT_LT(r->kept[2], 128);
  EXPECT_GT(r->flops_fraction(), 0.5);  // and it is not wastefully below the budget
  EXPECT_LE(r->flops_fraction(), 0.6);
  // Tiny budgets go down to [CLS] only.
  auto tiny = p.Plan(300, 0.001);
  ASSERT_TRUE(tiny.ok());
  EXPECT_TRUE(tiny->over_budget);
  EXPECT_EQ(tiny->kept[0], 1);
}

TEST(Planner, KeptTokensRoundingRule) {
  EXPECT_EQ(KeptTokens(10, {0.7, 0.5, 0.01}), (std::vector<int32_t>{7, 4, 1}));
  EXPECT_EQ(KeptTokens(3, {1.0, 0.34}), (std::vector<int32_t>{3, 2}));
  EXPECT_EQ(KeptTokens(1, {0.1}), (std::vector<int32_t>{1}));
}

class ScheduleFile : public ::testing::Test {
 protected:
  std::string Write(const std::string& text) {
    const std::string dir = ::testing::TempDir() + "/sched_" + std::to_string(counter_++);
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/pruning.yaml") << text;
    return dir;
  }
  int counter_ = 0;
};

TEST_F(ScheduleFile, LoadsValidFile) {
  auto s = PruningSchedule::ForModelDir(Write("version: 1\nplacement: between_layers\nkeep_ratios: "
                                              "[1, 0.5]\ntarget_flops: 0.25\nmethod: top\n"),
                                        2);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->placement, Placement::kBetweenLayers);
  EXPECT_EQ(s->keep_ratios, (std::vector<double>{1.0, 0.5}));
  EXPECT_EQ(*s->target_flops, 0.25);
  EXPECT_EQ(s->method, "top");
}

TEST_F(ScheduleFile, MissingFileGivesDefault) {
  const std::string dir = ::testing::TempDir() + "/no_schedule_here";
  std::filesystem::create_directories(dir);
  auto s = PruningSchedule::ForModelDir(dir, 12);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->source, "built-in default");
  EXPECT_EQ(s->keep_ratios.size(), 12u);
  EXPECT_EQ(s->keep_ratios[0], 1.0);
  EXPECT_LT(s->keep_ratios[11], 1.0);
}

TEST_F(ScheduleFile, RejectsDefectsNamingTheKey) {
  struct Bad {
    std::string text, needle;
  } cases[] = {
      {"version: 1\nkeep_ratios: [1, 0.5]\nspeed: fast\n", "unknown key 'speed'"},
      // Once accepted and silently ignored; a key the schedule does not use is an error.
      {"version: 1\nkeep_ratios: [1, 0.5]\nstart_layer: 1\n", "unknown key 'start_layer'"},
      {"version: 2\nkeep_ratios: [1, 0.5]\n", "'version' must be 1"},
      {"version: 1\nkeep_ratios: [1, 0.5, 0.5]\n", "has 3 entries; the model has 2"},
      {"version: 1\nkeep_ratios: [1, 0]\n", "keep_ratios[1] = 0"},
      {"version: 1\nkeep_ratios: [1, 1.5]\n", "keep_ratios[1] = 1.5"},
      {"version: 1\nkeep_ratios: [1, abc]\n", "bad value"},
      {"version: 1\nplacement: sideways\nkeep_ratios: [1, 1]\n", "'placement' must be"},
      {"version: 1\n", "'keep_ratios' must be a list"},
      {"version: 1\nkeep_ratios: [1, 1]\ntarget_flops: 3\n", "'target_flops' 3"},
      {"[1, 2", "not valid YAML"},
      {"- 1\n- 2\n", "mapping"},
  };
  for (const Bad& b : cases) {
    auto s = PruningSchedule::ForModelDir(Write(b.text), 2);
    ASSERT_FALSE(s.ok()) << b.text;
    EXPECT_NE(s.status().message().find(b.needle), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find("pruning.yaml"), std::string::npos);
  }
}

}  // namespace
}  // namespace topserve::engine
