// Token-pruning schedules and the per-request budget planner.
//
// A schedule (pruning.yaml next to the weights, written by training/) gives each layer's keep ratio
// r_l: a sequence keeps max(1, ceil(r_l x tokens entering layer l)) tokens at layer l's pruning
// point. A request's budget b in (0, 1] is the fraction of the unpruned model's MACs at the
// request's own length that it may use. The planner turns (length, budget) into tokens kept per
// layer, shaped like the schedule, with planned MACs <= b x unpruned MACs. Every figure comes from
// engine/cost_model.h.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cost_model.h"

namespace topserve::engine {

struct PruningSchedule {
  Placement placement = Placement::kAfterMha;
  std::vector<double> keep_ratios;     // one per layer, each in (0, 1]
  std::optional<double> target_flops;  // training's target, informational
  std::string method = "default";      // top | topk-untrained | gates-no-ranking | default
  std::string source;                  // file it came from, or "built-in default"

  // Geometric decay from layer max(1, layers/6): r = 0.9 per pruning layer.
  static PruningSchedule Default(int64_t num_layers);
  // Reads and validates a schedule; unknown keys, wrong lengths and out-of-range ratios are errors
  // naming the file and the key.
  static absl::StatusOr<PruningSchedule> Load(const std::string& path, int64_t num_layers);
  // Load(dir/pruning.yaml) when the file exists, else Default().
  static absl::StatusOr<PruningSchedule> ForModelDir(const std::string& dir, int64_t num_layers);
};

std::string_view PlacementName(Placement placement);

// Tokens kept per layer with keep ratios `ratios`: the one place the rounding rule lives.
std::vector<int32_t> KeptTokens(int64_t length, const std::vector<double>& ratios);

// What was (or will be) done to one sequence.
struct PruneReport {
  int64_t tokens_in = 0;
  std::vector<int32_t> kept;  // per layer, after its pruning point
  int64_t macs = 0;           // planned = executed MACs
  int64_t unpruned_macs = 0;  // same length, no pruning
  double budget = 1.0;        // the budget the plan was made for
  bool over_budget = false;   // only when nothing but [CLS] is kept and that still costs more

  double flops_fraction() const {
    return unpruned_macs > 0 ? static_cast<double>(macs) / static_cast<double>(unpruned_macs) : 1.0;
  }
  bool pruned() const;
};

// INVALID_ARGUMENT unless 0 < budget <= 1 (NaN rejected).
absl::Status ValidateBudget(double budget);

class BudgetPlanner {
 public:
  BudgetPlanner(ModelShape shape, PruningSchedule schedule, size_t cache_capacity = 1 << 16);

  // The plan for one sequence: report.kept is what the engine runs (empty kept = unpruned at
  // budget 1). Thread-safe; cached per (length, budget).
  absl::StatusOr<PruneReport> Plan(int64_t length, double budget) const;

  const PruningSchedule& schedule() const { return schedule_; }
  const ModelShape& shape() const { return shape_; }

 private:
  PruneReport Compute(int64_t length, double budget) const;
  std::vector<double> Ratios(double u) const;

  ModelShape shape_;
  PruningSchedule schedule_;
  double full_multiplier_ = 0;  // multiplier at which every learned pruning layer keeps nothing
  size_t cache_capacity_;
  mutable std::mutex mu_;
  mutable std::map<std::pair<int64_t, double>, PruneReport> cache_;
};

}  // namespace topserve::engine
