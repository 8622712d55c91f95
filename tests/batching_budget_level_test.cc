// The budget-level arithmetic (batching/budget_level.h) on hand-computed cases: one row per case,
// each with the batch being formed, the queue behind it, and the level worked out on paper.
#include "batching/budget_level.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace topserve::batching {
namespace {

struct Item {
  double cost_min, cost_full;
  int64_t tokens;
  double deadline_s;  // seconds after now; < 0 = none
};

struct Case {
  std::string name;
  BudgetLevelParams params;  // now is filled in below
  std::vector<Item> batch, queued;
  double want;
};

absl::Time Deadline(absl::Time now, double s) {
  return s < 0 ? absl::InfiniteFuture() : now + absl::Milliseconds(static_cast<int64_t>(s * 1000));
}

TEST(BudgetLevelTest, Table) {
  // alpha 0, beta 1: a cost unit is a second, so the arithmetic reads off directly.
  const BudgetLevelParams unit{.alpha = 0,
                               .beta = 1,
                               .workers = 1,
                               .max_batch_size = 8,
                               .max_batch_tokens = 1000,
                               .now = absl::Time()};
  BudgetLevelParams overhead = unit;
  overhead.alpha = 0.5;
  BudgetLevelParams two_workers = overhead;
  two_workers.workers = 2;
  BudgetLevelParams backlog = overhead;
  backlog.backlog_seconds = 1;
  BudgetLevelParams small_batches = overhead;
  small_batches.max_batch_size = 1;
  BudgetLevelParams no_prediction = unit;
  no_prediction.beta = 0;
  const std::vector<Case> cases = {
      {"no deadlines", unit, {{1, 3, 10, -1}}, {{1, 3, 10, -1}}, 1.0},
      {"no prediction yet", no_prediction, {{1, 3, 10, 0.1}}, {}, 1.0},
      // Batch: a = 1, b = 2, allowed = 2 s: (2 - 1) / 2.
      {"batch deadline halves the reducible cost", unit, {{1, 3, 10, 2}}, {}, 0.5},
      {"batch deadline met at full budget", unit, {{1, 3, 10, 3}}, {}, 1.0},
      // allowed 0.5 < a = 1: the level floors at 0 (the batch still runs, at minimum budgets).
      {"batch deadline lost even at minimum", unit, {{1, 3, 10, 0.5}}, {}, 0.0},
      // The earliest deadline of the batch counts: min(5, 2) = 2.
      {"batch takes its earliest deadline", unit, {{1, 2, 10, 5}, {0, 1, 10, 2}}, {}, 0.5},
      // Queued (index 0, one batch before it): allowed = (4 - 0.5) - 0.5 x 1 = 3; a = 2, b = 2:
      // (3 - 2) / 2.
      {"queued task behind the batch", overhead, {{1, 1, 10, -1}}, {{1, 3, 10, 4}}, 0.5},
      // Two workers: allowed = 2 x 3.5 - 0.5 = 6.5 >= a + b = 4.
      {"two workers share the queue", two_workers, {{1, 1, 10, -1}}, {{1, 3, 10, 4}}, 1.0},
      // Backlog 1 s: allowed = 3.5 - 1 - 0.5 = 2, a = 2: level 0, not skipped (a == allowed).
      {"running batches' backlog", backlog, {{1, 1, 10, -1}}, {{1, 3, 10, 4}}, 0.0},
      // A queued task lost even at minimum (a = 2 > allowed = 1.5 - 0.5 - 0.5 = 0.5) lowers
      // nothing: nobody else pays for it.
      {"hopeless queued task is skipped", overhead, {{1, 1, 10, -1}}, {{1, 3, 10, 1.5}}, 1.0},
      // max_batch_size 1: the second queued task has 2 batches before it (alpha each):
      // allowed = 5.5 - 1 = 4.5; a = 3, b = 4: (4.5 - 3) / 4 = 0.375. The first (deadline none)
      // only adds its cost.
      {"batches before a queued task pay alpha each",
       small_batches,
       {{1, 1, 10, -1}},
       {{1, 3, 10, -1}, {1, 3, 10, 6}},
       0.375},
      // The batch gives 0.5 (allowed 2 for a = 1, b = 2); the queued task alone would allow more
      // (allowed = 9.5 - 0.5 = 9 >= 2 + 0.5 x 4 = 4): the lower level stays.
      {"the lowest level wins", overhead, {{1, 3, 10, 2.5}}, {{1, 3, 10, 10}}, 0.5},
  };
  const absl::Time now = absl::FromUnixSeconds(1000);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    BudgetLevelParams p = c.params;
    p.now = now;
    BudgetLevelCalculator calc(p);
    for (const Item& i : c.batch)
      calc.AddBatchTask(i.cost_min, i.cost_full, Deadline(now, i.deadline_s));
    for (const Item& i : c.queued) {
      calc.AddQueued(i.cost_min, i.cost_full, i.tokens, Deadline(now, i.deadline_s));
    }
    EXPECT_NEAR(calc.level(), c.want, 1e-9);
  }
}

// level() may be asked more than once, and the batch's deadline is applied once.
TEST(BudgetLevelTest, LevelIsStable) {
  const absl::Time now = absl::FromUnixSeconds(1000);
  BudgetLevelCalculator calc({.alpha = 0, .beta = 1, .now = now});
  calc.AddBatchTask(1, 3, now + absl::Seconds(2));
  EXPECT_DOUBLE_EQ(calc.level(), 0.5);
  EXPECT_DOUBLE_EQ(calc.level(), 0.5);
}

}  // namespace
}  // namespace topserve::batching
