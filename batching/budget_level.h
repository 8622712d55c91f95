// The deadline arithmetic that picks a batch's budget level, as a pure calculation: no clock, no
// threads, no queue. The scheduler feeds it the batch it is forming and then the tasks still
// queued behind it, in the order they will run; it answers the highest level in [0, 1] at which
// every task that can still make its deadline (at its minimum budget) is predicted to. A task's
// cost at level x is cost_min + x (cost_full - cost_min), in the cost function's units; predicted
// seconds are alpha + beta x cost per batch (the predictor's overhead and per-unit time, each times
// the deadline safety factor).
#pragma once

#include <cstdint>

#include "absl/time/time.h"

namespace topserve::batching {

struct BudgetLevelParams {
  double alpha = 0;    // predicted seconds per batch, fixed part (x safety)
  double beta = 0;     // predicted seconds per cost unit (x safety); <= 0: no prediction, level 1
  double workers = 1;  // workers sharing the queue
  double backlog_seconds = 0;  // predicted seconds left in the batches now running (x safety)
  int64_t max_batch_size = 1;
  int64_t max_batch_tokens = 1;
  absl::Time now;
};

class BudgetLevelCalculator {
 public:
  explicit BudgetLevelCalculator(const BudgetLevelParams& params) : p_(params) {}

  // A task of the batch being formed. All of them come before the first AddQueued.
  void AddBatchTask(double cost_min, double cost_full, absl::Time deadline);
  // The next task still queued (it runs in a later batch: every batch before it, this one
  // included, pays alpha; about 1 + max(index / max_batch_size, tokens before / max_batch_tokens)).
  void AddQueued(double cost_min, double cost_full, int64_t tokens, absl::Time deadline);
  // The level so far. A task lost even at its minimum budget does not lower it (it cannot be
  // saved, so the others should not pay for it).
  double level();

 private:
  void CloseBatch();

  BudgetLevelParams p_;
  double a_ = 0;  // cumulative cost at minimum budgets
  double b_ = 0;  // cumulative reducible cost (full - minimum)
  absl::Time batch_deadline_ = absl::InfiniteFuture();
  bool batch_closed_ = false;
  double level_ = 1.0;
  int64_t index_ = 0;          // queued tasks seen
  int64_t tokens_before_ = 0;  // their tokens
};

}  // namespace topserve::batching
