// Turning the engine's and the scheduler's figures into response fields. FLOPs are 2 x the MACs the
// one cost model (engine/cost_model.h) put in the PruneReport; nothing here recomputes them.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "batching/task.h"
#include "engine/cost_model.h"
#include "engine/pruning.h"
#include "topserve/v1/inference.pb.h"

namespace topserve::server {

using engine::FlopsFromMacs;  // engine/cost_model.h: FLOPs = 2 x MACs

// Fills `out` from a plan (an unpruned plan, with empty kept, reports tokens_in for every layer).
void FillPruningReport(const engine::PruneReport& plan, int64_t num_layers, double budget_requested,
                       const batching::TaskReport& task, v1::PruningReport* out);

// Seconds from `start` to now: the request duration every handler records in the metrics.
inline double SecondsSince(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

// Unicode code points in the first `bytes` bytes of valid UTF-8 `text`.
int32_t CodePoints(std::string_view text, int32_t bytes);

}  // namespace topserve::server
