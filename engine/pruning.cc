#include "engine/pruning.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include <yaml-cpp/yaml.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace topserve::engine {

std::string_view PlacementName(Placement placement) {
  return placement == Placement::kAfterMha ? "after_mha" : "between_layers";
}

PruningSchedule PruningSchedule::Default(int64_t num_layers) {
  PruningSchedule s;
  const int64_t start = std::max<int64_t>(1, num_layers / 6);
  s.keep_ratios.assign(static_cast<size_t>(num_layers), 1.0);
  for (int64_t l = start; l < num_layers; ++l) s.keep_ratios[static_cast<size_t>(l)] = 0.9;
  s.source = "built-in default";
  return s;
}

absl::StatusOr<PruningSchedule> PruningSchedule::Load(const std::string& path, int64_t num_layers) {
  auto fail = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return fail(absl::StrCat("not valid YAML: ", e.what()));
  }
  if (!root.IsMap()) return fail("expected a mapping at the top level");
  static const std::set<std::string> kKeys = {"version",      "placement", "keep_ratios",
                                              "target_flops", "method",    "notes"};
  PruningSchedule s;
  s.source = path;
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      if (!kKeys.count(key)) return fail(absl::StrCat("unknown key '", key, "'"));
    }
    if (!root["version"] || root["version"].as<int>() != 1) return fail("'version' must be 1");
    if (root["placement"]) {
      const std::string p = root["placement"].as<std::string>();
      if (p == "after_mha") {
        s.placement = Placement::kAfterMha;
      } else if (p == "between_layers") {
        s.placement = Placement::kBetweenLayers;
      } else {
        return fail(absl::StrCat("'placement' must be after_mha or between_layers, not '", p, "'"));
      }
    }
    const YAML::Node ratios = root["keep_ratios"];
    if (!ratios || !ratios.IsSequence()) return fail("'keep_ratios' must be a list");
    if (static_cast<int64_t>(ratios.size()) != num_layers) {
      return fail(absl::StrCat("'keep_ratios' has ", ratios.size(), " entries; the model has ",
                               num_layers, " layers"));
    }
    for (size_t i = 0; i < ratios.size(); ++i) {
      const double r = ratios[i].as<double>();
      if (!(r > 0.0 && r <= 1.0)) {
        return fail(absl::StrCat("keep_ratios[", i, "] = ", r, " is outside (0, 1]"));
      }
      s.keep_ratios.push_back(r);
    }
    if (root["target_flops"]) {
      const double t = root["target_flops"].as<double>();
      if (!(t > 0.0 && t <= 1.0))
        return fail(absl::StrCat("'target_flops' ", t, " is outside (0, 1]"));
      s.target_flops = t;
    }
    if (root["method"]) s.method = root["method"].as<std::string>();
  } catch (const YAML::Exception& e) {
    return fail(absl::StrCat("bad value: ", e.what()));
  }
  return s;
}

absl::StatusOr<PruningSchedule> PruningSchedule::ForModelDir(const std::string& dir,
                                                             int64_t num_layers) {
  const std::string path = dir + "/pruning.yaml";
  if (!std::filesystem::exists(path)) return Default(num_layers);
  return Load(path, num_layers);
}

std::vector<int32_t> KeptTokens(int64_t length, const std::vector<double>& ratios) {
  std::vector<int32_t> kept(ratios.size());
  int64_t n = length;
  for (size_t l = 0; l < ratios.size(); ++l) {
    // The 1e-9 keeps 0.7 x 10 at 7 although it is 7.000000000000001 in binary.
    const int64_t k = static_cast<int64_t>(std::ceil(ratios[l] * static_cast<double>(n) - 1e-9));
    n = std::clamp<int64_t>(k, 1, n);
    kept[l] = static_cast<int32_t>(n);
  }
  return kept;
}

bool PruneReport::pruned() const { return !kept.empty() && kept.back() < tokens_in; }

absl::Status ValidateBudget(double budget) {
  if (std::isnan(budget) || budget <= 0.0 || budget > 1.0) {
    return absl::InvalidArgumentError(absl::StrCat("budget must be in (0, 1], got ", budget));
  }
  return absl::OkStatus();
}

BudgetPlanner::BudgetPlanner(ModelShape shape, PruningSchedule schedule, size_t cache_capacity)
    : shape_(shape), schedule_(std::move(schedule)), cache_capacity_(cache_capacity) {
  double min_pruned = 1.0;
  bool any = false;
  for (double r : schedule_.keep_ratios) {
    if (r < 1.0) {
      min_pruned = std::min(min_pruned, 1.0 - r);
      any = true;
    }
  }
  full_multiplier_ = any ? 1.0 / min_pruned : 0.0;
}

// u in [0, 2]: for u <= 1 the learned pruned fractions are scaled by u x full_multiplier_ (the
// schedule's shape, from unpruned at u = 0 to every learned pruning layer keeping only [CLS] at
// u = 1); for u > 1 every layer's ratio then falls linearly to 0 (only [CLS] from layer 0 on at u =
// 2).
std::vector<double> BudgetPlanner::Ratios(double u) const {
  std::vector<double> r = schedule_.keep_ratios;
  const double m = std::min(u, 1.0) * full_multiplier_;
  for (double& v : r) v = std::clamp(1.0 - m * (1.0 - v), 0.0, 1.0);
  if (u > 1.0) {
    const double t = std::min(u - 1.0, 1.0);
    for (double& v : r) v = (1.0 - t) * v;
  }
  return r;
}

PruneReport BudgetPlanner::Compute(int64_t length, double budget) const {
  PruneReport rep;
  rep.tokens_in = length;
  rep.budget = budget;
  rep.unpruned_macs = UnprunedMacs(shape_, length);
  const auto cost = [&](const std::vector<int32_t>& kept) {
    return EncoderMacs(shape_, length, kept, schedule_.placement);
  };
  const double limit = budget * static_cast<double>(rep.unpruned_macs);
  if (budget >= 1.0) {
    rep.kept.assign(static_cast<size_t>(shape_.layers), static_cast<int32_t>(length));
    rep.macs = rep.unpruned_macs;
    return rep;
  }
  // Cost is non-increasing in u; find the smallest u whose plan fits (bisection on a monotone step
  // function, then take the plan at the upper end, which always fits when anything does).
  double lo = 0.0, hi = 2.0;
  std::vector<int32_t> best = KeptTokens(length, Ratios(hi));
  if (static_cast<double>(cost(best)) > limit) {
    rep.kept = best;
    rep.macs = cost(best);
    rep.over_budget = true;
    return rep;
  }
  for (int it = 0; it < 60 && hi - lo > 1e-12; ++it) {
    const double mid = 0.5 * (lo + hi);
    std::vector<int32_t> kept = KeptTokens(length, Ratios(mid));
    if (static_cast<double>(cost(kept)) <= limit) {
      hi = mid;
      best = std::move(kept);
    } else {
      lo = mid;
    }
  }
  rep.kept = std::move(best);
  rep.macs = cost(rep.kept);
  return rep;
}

absl::StatusOr<PruneReport> BudgetPlanner::Plan(int64_t length, double budget) const {
  RETURN_IF_ERROR(ValidateBudget(budget));
  if (length < 1) return absl::InvalidArgumentError("length must be at least 1");
  const auto key = std::make_pair(length, budget);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
  }
  PruneReport rep = Compute(length, budget);
  std::lock_guard<std::mutex> lock(mu_);
  if (cache_.size() >= cache_capacity_) cache_.clear();
  cache_.emplace(key, rep);
  return rep;
}

}  // namespace topserve::engine
