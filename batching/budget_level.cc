#include "batching/budget_level.h"

#include <algorithm>

namespace topserve::batching {

void BudgetLevelCalculator::AddBatchTask(double cost_min, double cost_full, absl::Time deadline) {
  a_ += cost_min;
  b_ += cost_full - cost_min;
  batch_deadline_ = std::min(batch_deadline_, deadline);
}

void BudgetLevelCalculator::CloseBatch() {
  if (batch_closed_) return;
  batch_closed_ = true;
  if (!(p_.beta > 0)) return;
  if (batch_deadline_ != absl::InfiniteFuture() && b_ > 0) {
    // The batch's own deadline: it starts now and pays alpha once.
    const double allowed = (absl::ToDoubleSeconds(batch_deadline_ - p_.now) - p_.alpha) / p_.beta;
    if (a_ + b_ > allowed) level_ = std::clamp((allowed - a_) / b_, 0.0, 1.0);
  }
}

void BudgetLevelCalculator::AddQueued(double cost_min, double cost_full, int64_t tokens,
                                      absl::Time deadline) {
  CloseBatch();
  a_ += cost_min;
  b_ += cost_full - cost_min;
  const int64_t batches_before =
      1 + std::max(index_ / std::max<int64_t>(1, p_.max_batch_size),
                   tokens_before_ / std::max<int64_t>(1, p_.max_batch_tokens));
  ++index_;
  tokens_before_ += tokens;
  if (!(p_.beta > 0) || deadline == absl::InfiniteFuture()) return;
  const double allowed =  // in cost units
      (p_.workers * (absl::ToDoubleSeconds(deadline - p_.now) - p_.alpha) - p_.backlog_seconds -
       p_.alpha * static_cast<double>(batches_before)) /
      p_.beta;
  if (a_ > allowed) return;  // lost even at minimum budgets
  if (a_ + level_ * b_ > allowed) level_ = std::clamp((allowed - a_) / b_, 0.0, 1.0);
}

double BudgetLevelCalculator::level() {
  CloseBatch();
  return level_;
}

}  // namespace topserve::batching
