// libFuzzer target: arbitrary bytes -> ParseBertConfig, ParseTokenizerConfig (config.json /
// tokenizer_config.json) and PruningSchedule::Load (pruning.yaml, from a per-process scratch file,
// for 2- and 12-layer models). JSON is YAML, so one corpus feeds all three.
//
// Checked (besides no crash / ASan / UBSan): every error is INVALID_ARGUMENT and names the origin;
// an accepted config satisfies the documented rules (sizes in [1, 2^31), hidden % heads == 0,
// eps > 0 finite, pad id in the vocab, labels non-empty, 2 for QA; ExpectedBertTensors has the
// documented count); an accepted schedule has one ratio per layer in (0, 1] and target_flops in
// (0, 1], and the budget planner built from it gives plans with 1 <= kept[l] <= kept[l-1] and
// planned MACs within the budget unless flagged over_budget.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "engine/cost_model.h"
#include "engine/model_config.h"
#include "engine/pruning.h"
#include "fuzz/fuzz_util.h"

namespace {

using topserve::engine::BertConfig;
using topserve::engine::BudgetPlanner;
using topserve::engine::ModelShape;
using topserve::engine::PruningSchedule;
using topserve::engine::Task;

constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();

void CheckBertConfig(const std::string& text) {
  const std::string origin = "fuzz/config.json";
  auto parsed = topserve::engine::ParseBertConfig(text, origin);
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument, "ParseBertConfig: %s",
               parsed.status().ToString().c_str());
    FUZZ_CHECK(absl::StartsWith(parsed.status().message(), origin + ": "),
               "error does not name the file: %s", parsed.status().ToString().c_str());
    return;
  }
  const BertConfig& c = *parsed;
  for (const int64_t v : {c.vocab_size, c.hidden_size, c.num_layers, c.num_heads,
                          c.intermediate_size, c.max_position_embeddings, c.type_vocab_size}) {
    FUZZ_CHECK(v >= 1 && v <= kMaxSize, "size %lld outside [1, 2^31)", static_cast<long long>(v));
  }
  FUZZ_CHECK(c.hidden_size % c.num_heads == 0, "hidden %lld not divisible by heads %lld",
             static_cast<long long>(c.hidden_size), static_cast<long long>(c.num_heads));
  FUZZ_CHECK(c.layer_norm_eps > 0 && std::isfinite(c.layer_norm_eps), "layer_norm_eps %g",
             c.layer_norm_eps);
  FUZZ_CHECK(c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size, "pad_token_id %lld",
             static_cast<long long>(c.pad_token_id));
  FUZZ_CHECK(c.num_labels() >= 1, "no labels");
  if (c.task == Task::kQuestionAnswering)
    FUZZ_CHECK(c.num_labels() == 2, "QA with %lld labels", static_cast<long long>(c.num_labels()));
  if (c.num_layers <= 64 && c.num_labels() <= 1024) {
    const auto specs = topserve::engine::ExpectedBertTensors(c);
    const size_t expected = 5 + 16 * static_cast<size_t>(c.num_layers) +
                            (c.task == Task::kSequenceClassification ? 4
                             : c.task == Task::kQuestionAnswering    ? 2
                                                                     : 0);
    FUZZ_CHECK(specs.size() == expected, "ExpectedBertTensors: %zu tensors, expected %zu",
               specs.size(), expected);
  }
}

void CheckTokenizerConfig(const std::string& text) {
  const std::string origin = "fuzz/tokenizer_config.json";
  auto parsed = topserve::engine::ParseTokenizerConfig(text, origin);
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument,
               "ParseTokenizerConfig: %s", parsed.status().ToString().c_str());
    FUZZ_CHECK(absl::StartsWith(parsed.status().message(), origin + ": "),
               "error does not name the file: %s", parsed.status().ToString().c_str());
    return;
  }
  FUZZ_CHECK(parsed->model_max_length >= 1, "model_max_length %lld",
             static_cast<long long>(parsed->model_max_length));
}

void CheckPlans(const PruningSchedule& s, int64_t layers) {
  ModelShape shape;
  shape.hidden = 64;
  shape.ffn = 256;
  shape.layers = layers;
  shape.num_labels = 2;
  const BudgetPlanner planner(shape, s);
  for (const int64_t length : {1, 7, 128}) {
    for (const double budget : {1.0, 0.5, 0.05}) {
      auto plan = planner.Plan(length, budget);
      FUZZ_CHECK(plan.ok(), "Plan(%lld, %g): %s", static_cast<long long>(length), budget,
                 plan.status().ToString().c_str());
      FUZZ_CHECK(static_cast<int64_t>(plan->kept.size()) == layers ||
                     (budget == 1.0 && plan->kept.empty()),
                 "plan has %zu layers", plan->kept.size());
      int64_t prev = length;
      for (const int32_t k : plan->kept) {
        FUZZ_CHECK(k >= 1 && k <= prev, "Plan(%lld, %g): kept %d after %lld",
                   static_cast<long long>(length), budget, k, static_cast<long long>(prev));
        prev = k;
      }
      FUZZ_CHECK(plan->over_budget || static_cast<double>(plan->macs) <=
                                          budget * static_cast<double>(plan->unpruned_macs) + 0.5,
                 "Plan(%lld, %g): %lld MACs over the budget of %lld unpruned",
                 static_cast<long long>(length), budget, static_cast<long long>(plan->macs),
                 static_cast<long long>(plan->unpruned_macs));
    }
  }
}

void CheckPruningSchedule(const uint8_t* data, size_t size) {
  const std::string& path = topserve::fuzz::Scratch(".yaml").Write(data, size);
  for (const int64_t layers : {2, 12}) {
    auto loaded = PruningSchedule::Load(path, layers);
    if (!loaded.ok()) {
      FUZZ_CHECK(loaded.status().code() == absl::StatusCode::kInvalidArgument,
                 "PruningSchedule::Load: %s", loaded.status().ToString().c_str());
      FUZZ_CHECK(absl::StartsWith(loaded.status().message(), path + ": "),
                 "error does not name the file: %s", loaded.status().ToString().c_str());
      continue;
    }
    const PruningSchedule& s = *loaded;
    FUZZ_CHECK(static_cast<int64_t>(s.keep_ratios.size()) == layers, "%zu ratios for %lld layers",
               s.keep_ratios.size(), static_cast<long long>(layers));
    for (const double r : s.keep_ratios) FUZZ_CHECK(r > 0.0 && r <= 1.0, "keep ratio %g", r);
    if (s.target_flops)
      FUZZ_CHECK(*s.target_flops > 0.0 && *s.target_flops <= 1.0, "target_flops %g",
                 *s.target_flops);
    CheckPlans(s, layers);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  CheckBertConfig(text);
  CheckTokenizerConfig(text);
  CheckPruningSchedule(data, size);
  return 0;
}
