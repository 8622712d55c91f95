// Online model of batch compute time: seconds = overhead + seconds_per_unit * planned_cost_units,
// fitted on measured batches (exponentially weighted least squares), starting from a prior.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace topserve::batching {

struct CostPredictorOptions {
  // The prior line, in the units of the model's cost function (tokens x budget by default; the
  // engine's cost model gives FLOPs). It is the answer before any measurement; afterwards only its
  // shape matters (see CostPredictor).
  double prior_overhead_seconds = 0.0005;
  double prior_seconds_per_unit = 0.001;
  // A typical batch cost. Measured batches whose costs spread by much less than ~1% of this are
  // treated as "all the same size" (the slope then comes from the rescaled prior).
  double prior_reference_units = 1000.0;
  // Each new measurement multiplies the weight of the older ones by this factor (0 < f <= 1);
  // 0.98 remembers roughly the last 50 batches.
  double forgetting_factor = 0.98;
};

absl::Status ValidateCostPredictorOptions(const CostPredictorOptions& options);

// Fit: the line passes through the (weighted) mean of the measurements; its slope is the weighted
// least-squares slope, shrunk slightly towards the prior's slope rescaled by the measured/prior
// time ratio (a ridge of strength 1e-4 * weight * prior_reference_units^2). So one measurement
// already rescales the prior, a spread of batch costs determines the slope, and a run of identical
// batches predicts their time exactly. Overhead and slope are kept >= 0.
// Not thread-safe: the scheduler guards it with its lock.
class CostPredictor {
 public:
  explicit CostPredictor(const CostPredictorOptions& options = {});

  // Records one batch: planned cost units and measured wall seconds. Non-finite or negative values
  // are ignored.
  void Observe(double units, double seconds);

  double PredictSeconds(double units) const { return overhead_ + per_unit_ * units; }
  double overhead_seconds() const { return overhead_; }
  double seconds_per_unit() const { return per_unit_; }
  int64_t num_observations() const { return observations_; }

 private:
  double Prior(double units) const {
    return options_.prior_overhead_seconds + options_.prior_seconds_per_unit * units;
  }
  void Refit();

  CostPredictorOptions options_;
  // Exponentially weighted: total weight, means, centred co-moments, sums of y and of the prior.
  double w_ = 0, mx_ = 0, my_ = 0, cxx_ = 0, cxy_ = 0, sum_y_ = 0, sum_prior_ = 0;
  double overhead_ = 0, per_unit_ = 0;
  int64_t observations_ = 0;
};

}  // namespace topserve::batching
