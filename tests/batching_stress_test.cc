// Stress: many producers, random sizes/priorities/budgets, cancellations at random moments,
// deadlines, executor errors, queue-full rejections and a shutdown racing the producers. Checks
// that every accepted task completes exactly once and no refused task ever completes. Real clock.
// Meant to run under ThreadSanitizer too (build with -DTOPSERVE_SANITIZE=thread, then
// `ctest -R BatchingStress`). TOPSERVE_STRESS_SCALE=<n> multiplies the task count.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "batching/scheduler.h"

namespace topserve::batching {
namespace {

struct StressTask : Task {
  int64_t index = 0;
};

struct Ledger {
  explicit Ledger(size_t n) : completions(n), accepted(n), runs(n) {}
  std::vector<std::atomic<int>> completions;
  std::vector<std::atomic<bool>> accepted;
  std::vector<std::atomic<int>> runs;  // Times an executor saw the task.
  std::atomic<int64_t> by_code[32] = {};
  std::atomic<int64_t> refused_by_code[32] = {};
};

class StressExecutor : public BatchExecutor {
 public:
  explicit StressExecutor(Ledger* ledger) : ledger_(ledger) {}
  absl::Status Run(const Batch& batch) override {
    const uint64_t n = batches_.fetch_add(1);
    volatile double sink = 0;
    for (Task* t : batch.tasks) {
      auto& st = static_cast<StressTask&>(*t);
      EXPECT_EQ(ledger_->runs[static_cast<size_t>(st.index)].fetch_add(1), 0);
      EXPECT_EQ(ledger_->completions[static_cast<size_t>(st.index)].load(), 0);
      EXPECT_GE(t->report().budget_used, t->min_budget.value_or(t->budget) - 1e-12);
      EXPECT_LE(t->report().budget_used, t->budget + 1e-12);
      if (t->cancelled()) continue;  // Skip work; the scheduler reports CANCELLED.
      for (int64_t i = 0; i < t->tokens * 8; ++i) sink = sink + static_cast<double>(i);
      if (st.index % 97 == 0) t->SetError(absl::InvalidArgumentError("per-task failure"));
    }
    if (n % 29 == 7) return absl::InternalError("injected batch failure");
    if (n % 101 == 50) throw std::runtime_error("injected exception");
    return absl::OkStatus();
  }

 private:
  Ledger* const ledger_;
  std::atomic<uint64_t> batches_{0};
};

int Scale() {
  const char* s = std::getenv("TOPSERVE_STRESS_SCALE");
  return s != nullptr && std::atoi(s) > 0 ? std::atoi(s) : 1;
}

void RunStress(ShutdownOptions::Mode mode, int workers) {
  constexpr int kProducers = 8;
  const int per_producer = 1500 * Scale();
  const size_t total = static_cast<size_t>(kProducers) * static_cast<size_t>(per_producer);
  Ledger ledger(total);

  auto created = Scheduler::Create({.num_workers = workers, .threads_per_worker = 1});
  ASSERT_TRUE(created.ok()) << created.status();
  std::unique_ptr<Scheduler> scheduler = std::move(*created);
  auto executor = std::make_shared<StressExecutor>(&ledger);
  ModelOptions a;
  a.max_batch_tokens = 2048;
  a.max_batch_size = 16;
  a.max_queue_delay = absl::Microseconds(300);
  a.max_queue_size = 300;
  a.max_queue_tokens = 40000;
  a.grouping_window = 64;
  a.predictor.prior_seconds_per_unit = 1e-7;
  ModelOptions b = a;
  b.max_batch_size = 4;
  b.max_queue_delay = absl::ZeroDuration();
  b.max_queue_size = 50;
  ASSERT_TRUE(scheduler->AddModel("a", a, executor).ok());
  ASSERT_TRUE(scheduler->AddModel("b", b, executor).ok());

  std::atomic<int64_t> submitted{0};
  std::atomic<int64_t> rejected{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      std::mt19937_64 rng(static_cast<uint64_t>(p) * 7919 + 1);
      std::uniform_int_distribution<int> percent(0, 99);
      std::vector<CancellationToken> to_cancel;
      for (int i = 0; i < per_producer; ++i) {
        const int64_t index = static_cast<int64_t>(p) * per_producer + i;
        auto t = std::make_unique<StressTask>();
        t->index = index;
        static const std::string kModelA = "a", kModelB = "b";
        t->model = percent(rng) < 80 ? kModelA : kModelB;
        t->tokens = std::uniform_int_distribution<int64_t>(1, 512)(rng);
        t->priority = percent(rng) % 3;
        t->budget = 0.3 + 0.7 * std::uniform_real_distribution<double>(0, 1)(rng);
        if (percent(rng) < 50) t->min_budget = t->budget * 0.5;
        if (percent(rng) < 25) {
          t->deadline = absl::Now() + absl::Microseconds(percent(rng) * 40 + 1);
        }
        if (percent(rng) < 15) to_cancel.push_back(t->cancellation);
        t->done = [&ledger](std::unique_ptr<Task> task, absl::Status status) {
          auto& st = static_cast<StressTask&>(*task);
          ledger.completions[static_cast<size_t>(st.index)].fetch_add(1);
          ledger.by_code[static_cast<int>(status.code()) & 31].fetch_add(1);
        };
        std::unique_ptr<Task> base = std::move(t);
        const absl::Status s = scheduler->Schedule(&base);
        if (s.ok()) {
          ledger.accepted[static_cast<size_t>(index)] = true;
        } else {
          EXPECT_NE(base, nullptr);
          EXPECT_TRUE(s.code() == absl::StatusCode::kUnavailable ||
                      s.code() == absl::StatusCode::kDeadlineExceeded ||
                      s.code() == absl::StatusCode::kCancelled)
              << s;
          ++rejected;
          ledger.refused_by_code[static_cast<int>(s.code()) & 31].fetch_add(1);
        }
        ++submitted;
        // Cancel earlier tasks at random moments: queued, running or already done.
        if (!to_cancel.empty() && percent(rng) < 20) {
          const size_t k = static_cast<size_t>(rng() % to_cancel.size());
          to_cancel[k].Cancel();
          to_cancel.erase(to_cancel.begin() + static_cast<std::ptrdiff_t>(k));
        }
        // Pace the producers so that queues fill and drain repeatedly rather than just overflow.
        if (percent(rng) < 50) std::this_thread::sleep_for(std::chrono::microseconds(percent(rng)));
      }
      for (const CancellationToken& c : to_cancel) c.Cancel();
    });
  }
  // Shut down while the producers are still going.
  while (submitted.load() < static_cast<int64_t>(total) * 3 / 4) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  scheduler->Shutdown({.mode = mode, .grace = absl::Milliseconds(20)});
  for (std::thread& t : producers) t.join();

  int64_t accepted = 0;
  for (size_t i = 0; i < total; ++i) {
    const bool acc = ledger.accepted[i].load();
    accepted += acc ? 1 : 0;
    ASSERT_EQ(ledger.completions[i].load(), acc ? 1 : 0)
        << "task " << i << (acc ? " (accepted)" : " (refused)");
    ASSERT_LE(ledger.runs[i].load(), acc ? 1 : 0);
  }
  EXPECT_EQ(accepted + rejected.load(), static_cast<int64_t>(total));
  // The per-model counts agree with what the callbacks saw.
  int64_t counted = 0;
  for (const char* m : {"a", "b"}) {
    const ModelStats s = *scheduler->GetModelStats(m);
    EXPECT_EQ(s.depth.queued_tasks + s.depth.in_flight_tasks, 0);
    EXPECT_EQ(s.counts.ok + s.counts.deadline_exceeded + s.counts.cancelled + s.counts.failed,
              s.counts.scheduled);
    counted += s.counts.scheduled;
  }
  EXPECT_EQ(counted, accepted);
  const auto code = [&](absl::StatusCode c) { return ledger.by_code[static_cast<int>(c)].load(); };
  std::printf(
      "accepted %lld refused %lld | ok %lld cancelled %lld deadline %lld internal %lld "
      "invalid %lld unavailable %lld\n",
      static_cast<long long>(accepted), static_cast<long long>(rejected.load()),
      static_cast<long long>(code(absl::StatusCode::kOk)),
      static_cast<long long>(code(absl::StatusCode::kCancelled)),
      static_cast<long long>(code(absl::StatusCode::kDeadlineExceeded)),
      static_cast<long long>(code(absl::StatusCode::kInternal)),
      static_cast<long long>(code(absl::StatusCode::kInvalidArgument)),
      static_cast<long long>(code(absl::StatusCode::kUnavailable)));
  std::printf("refused: unavailable %lld deadline %lld cancelled %lld\n",
              static_cast<long long>(ledger.refused_by_code[14].load()),
              static_cast<long long>(ledger.refused_by_code[4].load()),
              static_cast<long long>(ledger.refused_by_code[1].load()));
  EXPECT_GT(code(absl::StatusCode::kOk), 0);
}

TEST(BatchingStress, DrainShutdownEveryTaskCompletesExactlyOnce) {
  RunStress(ShutdownOptions::Mode::kDrain, /*workers=*/3);
}

TEST(BatchingStress, FailShutdownEveryTaskCompletesExactlyOnce) {
  RunStress(ShutdownOptions::Mode::kFail, /*workers=*/2);
}

}  // namespace
}  // namespace topserve::batching
