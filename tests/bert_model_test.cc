// The fp32 engine against expected outputs of the reference BERT: the Hugging Face golden files in
// ../shared/data/golden and our float64 PyTorch reference (tools/reference_bert.py) on generated
// models of every weight dtype, with batches mixing lengths 1..512.
#include "engine/bert_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

namespace topserve::engine {
namespace {

using nlohmann::json;

std::vector<json> ReadJsonl(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<json> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) rows.push_back(json::parse(line));
  }
  return rows;
}

double MaxAbsDiff(const std::vector<float>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double m = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i)
    m = std::max(m, std::abs(got[i] - want[i]));
  return m;
}

double MaxAbsDiff(const std::vector<float>& got, const std::vector<float>& want) {
  return MaxAbsDiff(got, std::vector<double>(want.begin(), want.end()));
}

struct Row {
  std::vector<int32_t> ids, types;
  json expected;
};

std::vector<Row> LoadRows(const std::string& path) {
  std::vector<Row> rows;
  for (json& j : ReadJsonl(path)) {
    Row r;
    r.ids = j["input_ids"].get<std::vector<int32_t>>();
    r.types = j.contains("token_type_ids") ? j["token_type_ids"].get<std::vector<int32_t>>()
                                           : std::vector<int32_t>(r.ids.size(), 0);
    r.expected = std::move(j);
    rows.push_back(std::move(r));
  }
  return rows;
}

std::vector<SequenceOutput> RunRows(const BertModel& model, const std::vector<Row>& rows,
                                    Workspace& ws) {
  std::vector<SequenceInput> in;
  for (const Row& r : rows) in.push_back({r.ids, r.types, {}});
  std::vector<SequenceOutput> out(in.size());
  absl::Status st = model.Run(in, out, ws);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// Checks every row's outputs against `expected` keys (logits or start/end logits) within tol.
void ExpectMatches(const std::vector<Row>& rows, const std::vector<SequenceOutput>& out, double tol,
                   const std::string& what) {
  ASSERT_EQ(rows.size(), out.size());
  double worst = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const json& e = rows[i].expected;
    if (e.contains("logits")) {
      worst = std::max(worst, MaxAbsDiff(out[i].logits, e["logits"].get<std::vector<double>>()));
    }
    if (e.contains("start_logits")) {
      worst = std::max(
          worst, MaxAbsDiff(out[i].start_logits, e["start_logits"].get<std::vector<double>>()));
      worst = std::max(worst,
                       MaxAbsDiff(out[i].end_logits, e["end_logits"].get<std::vector<double>>()));
    }
  }
  EXPECT_LT(worst, tol) << what;
  std::cout << what << ": max abs diff " << worst << "\n";
}

const std::string kGolden = std::string(TOPSERVE_SHARED_DIR) + "/data/golden";

TEST(BertModelGolden, ClassificationEachAloneAndBatched) {
  auto model = BertModel::Load(kGolden + "/tiny-cls");
  ASSERT_TRUE(model.ok()) << model.status();
  Workspace ws(**model);
  std::vector<Row> rows = LoadRows(kGolden + "/tiny-cls/expected.jsonl");
  ASSERT_EQ(rows.size(), 64u);
  std::vector<SequenceOutput> alone;
  for (const Row& r : rows) alone.push_back(RunRows(**model, {r}, ws)[0]);
  ExpectMatches(rows, alone, 1e-4, "tiny-cls one at a time");
  std::vector<SequenceOutput> batched = RunRows(**model, rows, ws);
  ExpectMatches(rows, batched, 1e-4, "tiny-cls as one batch");
  // A sequence's outputs do not depend on its batch-mates.
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t k = 0; k < alone[i].logits.size(); ++k) {
      EXPECT_NEAR(alone[i].logits[k], batched[i].logits[k], 1e-5) << "row " << i;
    }
  }
}

TEST(BertModelGolden, QuestionAnsweringBatched) {
  auto model = BertModel::Load(kGolden + "/tiny-qa");
  ASSERT_TRUE(model.ok()) << model.status();
  Workspace ws(**model);
  std::vector<Row> rows = LoadRows(kGolden + "/tiny-qa/expected.jsonl");
  ASSERT_EQ(rows.size(), 32u);
  ExpectMatches(rows, RunRows(**model, rows, ws), 1e-4, "tiny-qa as one batch");
}

TEST(BertModelGolden, RejectsBadInputsBeforeCompute) {
  auto model = BertModel::Load(kGolden + "/tiny-cls");
  ASSERT_TRUE(model.ok()) << model.status();
  Workspace ws(**model);
  std::vector<int32_t> ok_ids = {101, 7592, 102};
  std::vector<int32_t> bad_id = {101, 30522, 102};
  std::vector<int32_t> neg_id = {101, -1, 102};
  std::vector<int32_t> bad_type = {0, 2, 0};
  std::vector<int32_t> short_types = {0, 0};
  std::vector<int32_t> too_long(513, 1000);
  std::vector<int32_t> empty;
  std::vector<int32_t> plan_bad = {3, 4};   // grows
  std::vector<int32_t> plan_zero = {0, 0};  // keeps nothing
  std::vector<int32_t> plan_short = {2};    // wrong layer count
  struct Case {
    SequenceInput in;
    std::string needle;
  } cases[] = {
      {{bad_id, {}, {}}, "id 30522"},
      {{neg_id, {}, {}}, "id -1"},
      {{ok_ids, bad_type, {}}, "type id 2"},
      {{ok_ids, short_types, {}}, "2 type ids for 3 tokens"},
      {{too_long, {}, {}}, "513 tokens"},
      {{empty, {}, {}}, "empty"},
      {{ok_ids, {}, plan_bad}, "keeps 4 tokens at layer 1"},
      {{ok_ids, {}, plan_zero}, "keeps 0 tokens at layer 0"},
      {{ok_ids, {}, plan_short}, "1 layers"},
  };
  for (const Case& c : cases) {
    std::vector<SequenceInput> in = {{ok_ids, {}, {}}, c.in};
    std::vector<SequenceOutput> out(2);
    absl::Status st = (*model)->Run(in, out, ws);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.needle;
    EXPECT_NE(st.message().find(c.needle), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("sequence 1"), std::string::npos) << st.message();
  }
}

// Models and reference outputs generated by tests/make_engine_fixtures.py (a ctest fixture).
const std::string kData = TOPSERVE_TEST_DATA_DIR;

class BertModelReference : public ::testing::TestWithParam<std::string> {};

TEST_P(BertModelReference, MixedLengthBatchMatchesFloat64Reference) {
  const std::string dir = kData + "/" + GetParam();
  auto model = BertModel::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  Workspace ws(**model);
  std::vector<Row> rows = LoadRows(dir + "/reference.jsonl");
  ASSERT_GE(rows.size(), 20u);
  bool has512 = false;
  for (const Row& r : rows) has512 |= r.ids.size() == 512;
  EXPECT_TRUE(has512) << "the fixture must include one 512-token sequence";
  ExpectMatches(rows, RunRows(**model, rows, ws), 1e-4, GetParam() + " mixed batch");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BertModelReference,
                         ::testing::Values("cls-f32", "cls-f16", "cls-bf16", "qa-f32", "qa-f16",
                                           "qa-bf16", "cls-gelu-tanh", "cls-relu"));

// int8 dense layers (EngineOptions::precision = kInt8) against the same float64 reference: not
// exact, so the bound is relative to the logits' own scale; and since activations are quantized per
// token with exact int32 accumulation, a sequence's outputs are bit-identical alone and batched.
// The reduced precisions on the random fixtures: close to the float64 reference within each
// precision's own bound, and as independent of batch-mates as the precision promises (int8: bit for
// bit; bf16: within rounding, since oneDNN blocks bf16 GEMMs by row count).
// Each precision with the bf16 kernels forced on and (int8: fp32 attention products) off, so both
// paths run whichever one BertModel::Load's measurement would pick on this CPU.
class BertModelReduced
    : public ::testing::TestWithParam<std::tuple<std::string, Precision, Bf16Kernels>> {};

double MaxAbs(const std::vector<Row>& rows) {
  double m = 0;
  for (const Row& r : rows) {
    for (const char* key : {"logits", "start_logits", "end_logits"}) {
      if (!r.expected.contains(key)) continue;
      for (double v : r.expected[key].get<std::vector<double>>()) m = std::max(m, std::abs(v));
    }
  }
  return m;
}

TEST_P(BertModelReduced, CloseToReferenceAndIndependentOfBatchMates) {
  const auto& [name, precision, kernels] = GetParam();
  if (precision == Precision::kBfloat16 && !CpuHasNativeBf16()) GTEST_SKIP() << "no native bf16";
  if (precision == Precision::kBfloat16 && kernels == Bf16Kernels::kNever) {
    GTEST_SKIP() << "bf16 without bf16 kernels is fp32 (BertModelTest.Bf16KernelChoice)";
  }
  const std::string dir = kData + "/" + name;
  const std::string what = std::string(PrecisionName(precision));
  auto model =
      BertModel::Load(dir, {.num_threads = 2, .precision = precision, .bf16_kernels = kernels});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->precision(), precision);
  EXPECT_EQ((*model)->uses_bf16(), kernels == Bf16Kernels::kAlways && CpuHasNativeBf16());
  Workspace ws(**model);
  std::vector<Row> rows = LoadRows(dir + "/reference.jsonl");
  const double scale = MaxAbs(rows);
  ASSERT_GT(scale, 0.1);
  std::vector<SequenceOutput> batched = RunRows(**model, rows, ws);
  if (precision == Precision::kInt8) {
    ExpectMatches(rows, batched, 0.05 * scale,
                  name + " int8 mixed batch (bound 5% of max |logit|)");
  } else {
    // bf16 keeps 8 significant bits: about 2^-9 relative per rounding, a few per layer.
    ExpectMatches(rows, batched, 0.03 * scale,
                  name + " bf16 mixed batch (bound 3% of max |logit|)");
  }
  // A reduced-precision model that silently ran fp32 would pass the bound above; it must differ.
  double moved = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].expected.contains("logits")) {
      moved = std::max(moved, MaxAbsDiff(batched[i].logits,
                                         rows[i].expected["logits"].get<std::vector<double>>()));
    } else {
      moved =
          std::max(moved, MaxAbsDiff(batched[i].start_logits,
                                     rows[i].expected["start_logits"].get<std::vector<double>>()));
    }
  }
  EXPECT_GT(moved, 1e-4) << what << " outputs equal fp32 ones: the precision did not run";
  for (size_t i = 0; i < rows.size(); i += 3) {
    SequenceOutput alone = RunRows(**model, {rows[i]}, ws)[0];
    if (precision == Precision::kInt8) {
      EXPECT_EQ(alone.logits, batched[i].logits) << "row " << i;
      EXPECT_EQ(alone.start_logits, batched[i].start_logits) << "row " << i;
      EXPECT_EQ(alone.end_logits, batched[i].end_logits) << "row " << i;
    } else {
      EXPECT_LE(MaxAbsDiff(alone.logits, batched[i].logits), 1e-2) << "row " << i;
      EXPECT_LE(MaxAbsDiff(alone.start_logits, batched[i].start_logits), 1e-2) << "row " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, BertModelReduced,
    ::testing::Combine(::testing::Values("cls-f32", "qa-f32", "cls-relu", "cls-gelu-tanh"),
                       ::testing::Values(Precision::kInt8, Precision::kBfloat16),
                       ::testing::Values(Bf16Kernels::kAlways, Bf16Kernels::kNever)),
    [](const auto& param_info) {
      std::string n =
          std::get<0>(param_info.param) + "_" +
          std::string(PrecisionName(std::get<1>(param_info.param))) +
          (std::get<2>(param_info.param) == Bf16Kernels::kAlways ? "_bf16kernels" : "_fp32kernels");
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

// What Load decides for the reduced precisions where the CPU has native bf16: kIfFaster measures
// and follows the measurement (bf16 falls back to fp32 where bf16 lost), kAlways and kNever obey.
TEST(BertModelTest, Bf16KernelChoice) {
  if (!CpuHasNativeBf16()) GTEST_SKIP() << "no native bf16";
  const std::string dir = kData + "/cls-f32";
  for (Precision p : {Precision::kBfloat16, Precision::kInt8}) {
    SCOPED_TRACE(std::string(PrecisionName(p)));
    auto measured = BertModel::Load(dir, {.num_threads = 2, .precision = p});
    ASSERT_TRUE(measured.ok()) << measured.status();
    const auto& probe = (*measured)->bf16_probe();
    ASSERT_TRUE(probe.has_value());
    EXPECT_GT(probe->fp32_ms, 0.0);
    EXPECT_GT(probe->bf16_ms, 0.0);
    EXPECT_LT(probe->fp32_ms + probe->bf16_ms, 1e4);
    EXPECT_EQ((*measured)->uses_bf16(), probe->bf16_faster());
    const Precision expected =
        p == Precision::kInt8 || probe->bf16_faster() ? p : Precision::kFloat32;
    EXPECT_EQ((*measured)->precision(), expected);

    auto always = BertModel::Load(
        dir, {.num_threads = 2, .precision = p, .bf16_kernels = Bf16Kernels::kAlways});
    ASSERT_TRUE(always.ok()) << always.status();
    EXPECT_FALSE((*always)->bf16_probe().has_value());
    EXPECT_TRUE((*always)->uses_bf16());
    EXPECT_EQ((*always)->precision(), p);

    auto never = BertModel::Load(
        dir, {.num_threads = 2, .precision = p, .bf16_kernels = Bf16Kernels::kNever});
    ASSERT_TRUE(never.ok()) << never.status();
    EXPECT_FALSE((*never)->uses_bf16());
    EXPECT_EQ((*never)->precision(), p == Precision::kInt8 ? p : Precision::kFloat32);
  }
  // fp32 never measures.
  auto fp32 = BertModel::Load(dir, {.num_threads = 2});
  ASSERT_TRUE(fp32.ok());
  EXPECT_FALSE((*fp32)->bf16_probe().has_value());
  EXPECT_FALSE((*fp32)->uses_bf16());
}

}  // namespace
}  // namespace topserve::engine
