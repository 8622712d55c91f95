#include "batching/cost_predictor.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace topserve::batching {
namespace {
constexpr double kRidge = 1e-4;
}  // namespace

absl::Status ValidateCostPredictorOptions(const CostPredictorOptions& o) {
  auto bad = [](const char* field, double value, const char* want) {
    return absl::InvalidArgumentError(
        absl::StrCat("cost predictor: ", field, " = ", value, ", must be ", want));
  };
  if (!std::isfinite(o.prior_overhead_seconds) || o.prior_overhead_seconds < 0) {
    return bad("prior_overhead_seconds", o.prior_overhead_seconds, ">= 0");
  }
  if (!std::isfinite(o.prior_seconds_per_unit) || o.prior_seconds_per_unit <= 0) {
    return bad("prior_seconds_per_unit", o.prior_seconds_per_unit, "> 0");
  }
  if (!std::isfinite(o.prior_reference_units) || o.prior_reference_units <= 0) {
    return bad("prior_reference_units", o.prior_reference_units, "> 0");
  }
  if (!(o.forgetting_factor > 0 && o.forgetting_factor <= 1)) {
    return bad("forgetting_factor", o.forgetting_factor, "in (0, 1]");
  }
  return absl::OkStatus();
}

CostPredictor::CostPredictor(const CostPredictorOptions& options)
    : options_(options),
      overhead_(options.prior_overhead_seconds),
      per_unit_(options.prior_seconds_per_unit) {}

void CostPredictor::Observe(double x, double y) {
  if (!std::isfinite(x) || !std::isfinite(y) || x < 0 || y < 0) return;
  const double f = options_.forgetting_factor;
  // Weighted Welford update: old weights scale by f, the new sample has weight 1.
  w_ = f * w_ + 1;
  const double dx = x - mx_;
  mx_ += dx / w_;
  my_ += (y - my_) / w_;
  cxx_ = f * cxx_ + dx * (x - mx_);
  cxy_ = f * cxy_ + dx * (y - my_);
  sum_y_ = f * sum_y_ + y;
  sum_prior_ = f * sum_prior_ + Prior(x);
  ++observations_;
  Refit();
}

void CostPredictor::Refit() {
  const double scale = sum_prior_ > 0 ? sum_y_ / sum_prior_ : 1.0;
  const double prior_slope = scale * options_.prior_seconds_per_unit;
  const double xr = options_.prior_reference_units;
  const double lambda = kRidge * w_ * xr * xr;
  double b = (cxy_ + lambda * prior_slope) / (cxx_ + lambda);
  double a = my_ - b * mx_;
  // Time cannot fall with work, nor be negative at zero work.
  if (b < 0) {
    b = 0;
    a = my_;
  }
  if (a < 0) {
    a = 0;
    b = mx_ > 0 ? my_ / mx_ : b;
  }
  if (std::isfinite(a) && std::isfinite(b)) {
    overhead_ = a;
    per_unit_ = b;
  }
}

}  // namespace topserve::batching
