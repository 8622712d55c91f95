// Scheduler behaviour on a FakeClock: every knob, deadlines, cancellation, priorities, length
// grouping, adaptive budgets, executor errors, shutdown, observer hooks.
#include "batching/scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <stdexcept>
#include <thread>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tests/batching_test_util.h"

namespace topserve::batching {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::Recorder;
using testing::TestExecutor;
using testing::TestTask;
using ::testing::UnorderedElementsAre;

constexpr absl::Duration kDelay = absl::Milliseconds(10);

ModelOptions DefaultModel() {
  ModelOptions o;
  o.max_batch_tokens = 1000;
  o.max_batch_size = 8;
  o.max_queue_delay = kDelay;
  o.max_queue_size = 100;
  o.max_queue_tokens = 100000;
  return o;
}

// Predictor pinned to seconds = 1 ms per unit (cost = tokens * budget), no overhead.
CostPredictorOptions PinnedPredictor() {
  return {.prior_overhead_seconds = 0,
          .prior_seconds_per_unit = 0.001,
          .prior_reference_units = 100,
          .forgetting_factor = 1};
}

class RecordingObserver : public SchedulerObserver {
 public:
  void OnQueueDepth(std::string_view, const QueueDepth& depth) override {
    std::lock_guard<std::mutex> lock(mu_);
    depths.push_back(depth);
  }
  void OnBatchDone(const BatchStats& stats) override {
    std::lock_guard<std::mutex> lock(mu_);
    batches.push_back(stats);
  }
  void OnTaskDone(std::string_view, const Task&, const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    task_codes.push_back(status.code());
  }
  void OnRejected(std::string_view, const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    rejected.push_back(status.code());
  }
  void OnShed(std::string_view, ShedReason reason, int64_t tasks) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (int64_t i = 0; i < tasks; ++i) shed.push_back(reason);
  }
  std::mutex mu_;
  std::vector<QueueDepth> depths;
  std::vector<BatchStats> batches;
  std::vector<absl::StatusCode> task_codes;
  std::vector<absl::StatusCode> rejected;
  std::vector<ShedReason> shed;
};

class SchedulerTest : public ::testing::Test {
 protected:
  void TearDown() override {
    // A failed assertion may leave a batch held in the executor: let it go, or the scheduler's
    // shutdown would wait for it forever.
    for (const auto& [name, executor] : models_) executor->Release();
    scheduler_.reset();
  }

  void Init(ModelOptions model = DefaultModel(), int workers = 1) {
    SchedulerOptions options;
    options.num_workers = workers;
    options.threads_per_worker = 3;
    options.clock = &clock_;
    options.observer = &observer_;
    options.on_worker_start = [this](int index, int threads) {
      std::lock_guard<std::mutex> lock(started_mu_);
      started_.insert({index, threads});
    };
    options.on_idle = [this] { idle_calls_.fetch_add(1); };
    auto s = Scheduler::Create(std::move(options));
    ASSERT_TRUE(s.ok()) << s.status();
    scheduler_ = std::move(*s);
    AddModel("m", std::move(model), executor_);
  }

  void AddModel(const std::string& name, ModelOptions model,
                std::shared_ptr<TestExecutor> executor) {
    ASSERT_TRUE(scheduler_->AddModel(name, std::move(model), executor).ok());
    models_.push_back({name, std::move(executor)});
  }

  std::unique_ptr<Task> Make(int id, int64_t tokens, const std::string& model = "m") {
    auto t = std::make_unique<TestTask>();
    t->id = id;
    t->model = model;
    t->tokens = tokens;
    t->done = recorder_.Callback();
    return t;
  }

  absl::Status Submit(std::unique_ptr<Task> task) {
    absl::Status s = scheduler_->Schedule(&task);
    EXPECT_EQ(s.ok(), task == nullptr) << "Schedule() must consume the task iff OK";
    return s;
  }
  absl::Status Submit(int id, int64_t tokens) { return Submit(Make(id, tokens)); }

  void Advance(absl::Duration d) {
    clock_.Advance(d);
    Idle();
  }
  // WaitForIdleForTesting() counts a worker inside Run() as idle (so held executors do not block
  // it); here we also wait until every in-flight batch is one a TestExecutor is holding.
  void Idle() {
    auto snapshot = [&] {
      std::pair<int64_t, int64_t> in_flight_and_done{0, 0};
      for (const auto& [name, executor] : models_) {
        const ModelStats stats = *scheduler_->GetModelStats(name);
        in_flight_and_done.first += stats.depth.in_flight_batches;
        in_flight_and_done.second += stats.counts.batches;
      }
      return in_flight_and_done;
    };
    for (;;) {
      const auto before = snapshot();
      scheduler_->WaitForIdleForTesting();
      const auto after = snapshot();
      int64_t blocked = 0;
      for (const auto& [name, executor] : models_) blocked += executor->blocked();
      if (before == after && after.first == blocked) return;
      std::this_thread::yield();
    }
  }

  std::vector<std::vector<int>> BatchIds() const {
    std::vector<std::vector<int>> out;
    for (const auto& b : executor_->batches()) out.push_back(b.ids);
    return out;
  }
  absl::StatusCode CodeOf(int id) const {
    auto d = recorder_.Find(id);
    return d ? d->status.code() : absl::StatusCode::kUnknown;
  }

  FakeClock clock_;
  RecordingObserver observer_;
  Recorder recorder_;
  std::shared_ptr<TestExecutor> executor_ = std::make_shared<TestExecutor>(&clock_);
  std::mutex started_mu_;
  std::set<std::pair<int, int>> started_;
  std::atomic<int> idle_calls_{0};
  std::vector<std::pair<std::string, std::shared_ptr<TestExecutor>>> models_;
  std::unique_ptr<Scheduler> scheduler_;  // Last: destroyed first.
};

// ---- max_queue_delay, max_batch_size, max_batch_tokens, max_batch_cost ----

TEST_F(SchedulerTest, PartialBatchWaitsForMaxQueueDelay) {
  Init();
  ASSERT_TRUE(Submit(1, 10).ok());
  Advance(absl::Milliseconds(4));
  ASSERT_TRUE(Submit(2, 10).ok());
  Advance(kDelay - absl::Milliseconds(4) - absl::Microseconds(1));
  EXPECT_TRUE(BatchIds().empty());
  Advance(absl::Microseconds(1));  // The oldest task has now waited max_queue_delay.
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1, 2)));
  ASSERT_TRUE(recorder_.WaitFor(2));
  EXPECT_TRUE(recorder_.Find(1)->status.ok());
  EXPECT_EQ(recorder_.Find(1)->report.queue_time, kDelay);
  EXPECT_EQ(recorder_.Find(2)->report.queue_time, kDelay - absl::Milliseconds(4));
}

TEST_F(SchedulerTest, OnIdleRunsOnceWhenTheWorkRunsOut) {
  Init();
  Idle();
  EXPECT_EQ(idle_calls_.load(), 0) << "no work has been done yet";
  ASSERT_TRUE(Submit(1, 10).ok());
  Idle();
  EXPECT_EQ(idle_calls_.load(), 0) << "a task waiting for its batch to fill is work to come";
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(1));
  Idle();
  EXPECT_EQ(idle_calls_.load(), 1);
  // While a batch computes and another task waits, the scheduler is not idle.
  executor_->Hold();
  ASSERT_TRUE(Submit(2, 10).ok());
  Advance(kDelay);
  ASSERT_TRUE(Submit(3, 10).ok());
  Idle();
  EXPECT_EQ(idle_calls_.load(), 1);
  executor_->Release();
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(3));
  Idle();
  EXPECT_EQ(idle_calls_.load(), 2) << "one call when the second burst of work ran out";
  Advance(absl::Seconds(1));
  EXPECT_EQ(idle_calls_.load(), 2) << "an idle scheduler does not call it again";
}

TEST_F(SchedulerTest, ZeroDelayDispatchesAtOnce) {
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::ZeroDuration();
  Init(o);
  ASSERT_TRUE(Submit(1, 10).ok());
  Idle();
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1)));
}

TEST_F(SchedulerTest, FullBatchBySizeDispatchesWithoutWaiting) {
  ModelOptions o = DefaultModel();
  o.max_batch_size = 3;
  Init(o);
  for (int i = 1; i <= 7; ++i) ASSERT_TRUE(Submit(i, 10).ok());
  Idle();
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1, 2, 3), ElementsAre(4, 5, 6)));
  Advance(kDelay);
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1, 2, 3), ElementsAre(4, 5, 6), ElementsAre(7)));
  ASSERT_TRUE(recorder_.WaitFor(7));
  EXPECT_EQ(recorder_.Find(4)->report.batch_size, 3);
  EXPECT_EQ(recorder_.Find(4)->report.batch_tokens, 30);
}

TEST_F(SchedulerTest, MaxBatchTokensBoundsBatches) {
  ModelOptions o = DefaultModel();
  o.max_batch_tokens = 100;
  Init(o);
  ASSERT_TRUE(Submit(1, 40).ok());
  ASSERT_TRUE(Submit(2, 40).ok());
  Idle();
  EXPECT_TRUE(BatchIds().empty());  // 80 < 100 tokens: not full yet.
  ASSERT_TRUE(Submit(3, 40).ok());  // 120 queued tokens: a full batch is possible.
  Idle();
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1, 2)));
  Advance(kDelay);
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1, 2), ElementsAre(3)));
}

TEST_F(SchedulerTest, MaxBatchCostBoundsBatches) {
  ModelOptions o = DefaultModel();
  o.max_batch_cost = 50;  // Default cost: tokens * budget.
  Init(o);
  auto half = Make(1, 60);
  half->budget = 0.5;  // Cost 30.
  ASSERT_TRUE(Submit(std::move(half)).ok());
  ASSERT_TRUE(Submit(2, 30).ok());  // Cost 30: 60 >= 50 queued, due now; 30 + 30 > 50.
  Idle();
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1)));
  Advance(kDelay);
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1), ElementsAre(2)));
  EXPECT_DOUBLE_EQ(executor_->batches()[0].planned_cost, 30);
}

TEST_F(SchedulerTest, SingleTaskAboveMaxBatchCostStillRuns) {
  ModelOptions o = DefaultModel();
  o.max_batch_cost = 5;
  Init(o);
  ASSERT_TRUE(Submit(1, 10).ok());
  Idle();
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1)));
}

// ---- queue limits and argument checks: immediate rejection, callback never called ----

TEST_F(SchedulerTest, QueueFullByRequestsIsUnavailable) {
  ModelOptions o = DefaultModel();
  o.max_queue_size = 2;
  Init(o);
  ASSERT_TRUE(Submit(1, 10).ok());
  ASSERT_TRUE(Submit(2, 10).ok());
  auto third = Make(3, 10);
  const absl::Status s = scheduler_->Schedule(&third);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr("full"));
  ASSERT_NE(third, nullptr);  // Still ours.
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(2));
  ASSERT_TRUE(Submit(std::move(third)).ok());  // Room again.
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(3));
  EXPECT_EQ(scheduler_->GetModelStats("m")->counts.rejected, 1);
  EXPECT_THAT(observer_.rejected, ElementsAre(absl::StatusCode::kUnavailable));
}

TEST_F(SchedulerTest, QueueFullByTokensIsUnavailable) {
  ModelOptions o = DefaultModel();
  o.max_queue_tokens = 100;
  Init(o);
  ASSERT_TRUE(Submit(1, 60).ok());
  EXPECT_EQ(Submit(2, 41).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Submit(3, 40).ok());
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(2));
  EXPECT_FALSE(recorder_.Find(2).has_value());
}

TEST_F(SchedulerTest, DerivedTaskPointersCanBeScheduledAndComeBackOnRefusal) {
  ModelOptions o = DefaultModel();
  o.max_queue_size = 1;
  Init(o);
  auto first = std::make_unique<TestTask>();
  first->id = 1;
  first->model = "m";
  first->tokens = 10;
  first->done = recorder_.Callback();
  ASSERT_TRUE(scheduler_->Schedule(&first).ok());
  EXPECT_EQ(first, nullptr);
  auto second = std::make_unique<TestTask>();
  second->id = 2;
  second->model = "m";
  second->tokens = 10;
  second->done = recorder_.Callback();
  EXPECT_EQ(scheduler_->Schedule(&second).code(), absl::StatusCode::kUnavailable);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->id, 2);
}

TEST_F(SchedulerTest, TaskLargerThanMaxBatchTokensIsResourceExhausted) {
  ModelOptions o = DefaultModel();
  o.max_batch_tokens = 512;
  Init(o);
  EXPECT_EQ(Submit(1, 513).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Submit(2, 512).ok());
}

TEST_F(SchedulerTest, InvalidTasksAreRefused) {
  Init();
  std::unique_ptr<Task> null_task;
  EXPECT_EQ(scheduler_->Schedule(&null_task).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(scheduler_->Schedule(nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Submit(1, 0).code(), absl::StatusCode::kInvalidArgument);
  auto t = Make(2, 10);
  t->budget = 0;
  EXPECT_EQ(Submit(std::move(t)).code(), absl::StatusCode::kInvalidArgument);
  t = Make(3, 10);
  t->budget = 1.5;
  EXPECT_EQ(Submit(std::move(t)).code(), absl::StatusCode::kInvalidArgument);
  t = Make(4, 10);
  t->budget = 0.5;
  t->min_budget = 0.6;
  EXPECT_EQ(Submit(std::move(t)).code(), absl::StatusCode::kInvalidArgument);
  t = Make(5, 10);
  t->done = nullptr;
  EXPECT_EQ(Submit(std::move(t)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Submit(Make(6, 10, "nope")).code(), absl::StatusCode::kNotFound);
  Advance(kDelay);
  EXPECT_EQ(recorder_.size(), 0u);
  EXPECT_TRUE(BatchIds().empty());
}

TEST_F(SchedulerTest, InvalidModelOptionsAreRefusedWithTheFieldName) {
  Init();
  ModelOptions o = DefaultModel();
  o.max_batch_size = 0;
  absl::Status s = scheduler_->AddModel("x", o, executor_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("max_batch_size"));
  o = DefaultModel();
  o.deadline_safety_factor = 0.5;
  EXPECT_THAT(std::string(scheduler_->AddModel("x", o, executor_).message()),
              HasSubstr("deadline_safety_factor"));
  o = DefaultModel();
  o.predictor.forgetting_factor = 0;
  EXPECT_THAT(std::string(scheduler_->AddModel("x", o, executor_).message()),
              HasSubstr("forgetting_factor"));
  EXPECT_EQ(scheduler_->AddModel("m", DefaultModel(), executor_).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(scheduler_->AddModel("y", DefaultModel(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Scheduler::Create({.num_workers = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- deadlines ----

TEST_F(SchedulerTest, DeadlineExpiresInQueueWithoutRunning) {
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::Milliseconds(100);
  o.predictor.prior_overhead_seconds = 0;  // Predicted compute ~0: no early dispatch for deadlines.
  o.predictor.prior_seconds_per_unit = 1e-9;
  Init(o);
  auto t = Make(1, 10);
  t->deadline = clock_.Now() + absl::Milliseconds(5);
  ASSERT_TRUE(Submit(std::move(t)).ok());
  ASSERT_TRUE(Submit(2, 10).ok());
  Idle();
  Advance(absl::Milliseconds(4));
  EXPECT_EQ(recorder_.size(), 0u);
  Advance(absl::Milliseconds(1));
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(recorder_.Find(1)->report.queue_time, absl::Milliseconds(5));
  EXPECT_EQ(recorder_.Find(1)->report.batch_size, 0);
  Advance(absl::Milliseconds(100));
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(2)));  // 1 was never computed.
  EXPECT_EQ(scheduler_->GetModelStats("m")->counts.deadline_exceeded, 1);
}

TEST_F(SchedulerTest, DeadlineAlreadyPassedIsRefused) {
  Init();
  auto t = Make(1, 10);
  t->deadline = clock_.Now();
  EXPECT_EQ(Submit(std::move(t)).code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(SchedulerTest, TightDeadlineDispatchesBeforeTheDelayWindowEnds) {
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::Milliseconds(100);
  o.predictor = PinnedPredictor();
  o.deadline_safety_factor = 2;
  Init(o);
  auto t = Make(1, 5);  // Predicted 5 ms alone, x2: must start by deadline - 10 ms.
  t->deadline = clock_.Now() + absl::Milliseconds(30);
  ASSERT_TRUE(Submit(std::move(t)).ok());
  Advance(absl::Milliseconds(19));
  EXPECT_TRUE(BatchIds().empty());
  Advance(absl::Milliseconds(1));
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1)));
}

// ---- cancellation ----

TEST_F(SchedulerTest, CancelledWhileQueuedIsDroppedBeforeCompute) {
  Init();
  auto a = Make(1, 10);
  CancellationToken token = a->cancellation;
  ASSERT_TRUE(Submit(std::move(a)).ok());
  ASSERT_TRUE(Submit(2, 10).ok());
  token.Cancel();
  Advance(kDelay);
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(2)));
  ASSERT_TRUE(recorder_.WaitFor(2));
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kCancelled);
  EXPECT_EQ(CodeOf(2), absl::StatusCode::kOk);
}

TEST_F(SchedulerTest, CancelledBeforeScheduleIsRefused) {
  Init();
  auto a = Make(1, 10);
  a->cancellation.Cancel();
  EXPECT_EQ(Submit(std::move(a)).code(), absl::StatusCode::kCancelled);
}

TEST_F(SchedulerTest, CancelledDuringComputeDiscardsTheResult) {
  Init();
  executor_->Hold();
  auto a = Make(1, 10);
  CancellationToken token = a->cancellation;
  ASSERT_TRUE(Submit(std::move(a)).ok());
  ASSERT_TRUE(Submit(2, 10).ok());
  clock_.Advance(kDelay);
  ASSERT_TRUE(executor_->WaitRunning(1));
  token.Cancel();
  executor_->Release();
  ASSERT_TRUE(recorder_.WaitFor(2));
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kCancelled);
  EXPECT_EQ(CodeOf(2), absl::StatusCode::kOk);
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1, 2)));
}

// ---- priorities and length grouping ----

TEST_F(SchedulerTest, HigherPriorityFirstFifoWithinALevel) {
  ModelOptions o = DefaultModel();
  o.max_batch_size = 1;
  Init(o);
  executor_->Hold();
  ASSERT_TRUE(Submit(0, 10).ok());  // Occupies the only worker.
  ASSERT_TRUE(executor_->WaitRunning(1));
  const std::vector<std::pair<int, int>> id_priority = {{1, 0}, {2, 5}, {3, 1}, {4, 0}, {5, 5}};
  for (auto [id, priority] : id_priority) {
    auto t = Make(id, 10);
    t->priority = priority;
    ASSERT_TRUE(Submit(std::move(t)).ok());
  }
  executor_->Release();
  ASSERT_TRUE(recorder_.WaitFor(6));
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(0), ElementsAre(2), ElementsAre(5),
                                      ElementsAre(3), ElementsAre(1), ElementsAre(4)));
}

TEST_F(SchedulerTest, BatchesGroupSimilarLengths) {
  ModelOptions o = DefaultModel();
  o.max_batch_size = 2;
  Init(o);
  executor_->Hold();
  ASSERT_TRUE(Submit(0, 50).ok());
  ASSERT_TRUE(Submit(100, 50).ok());
  Idle();  // The pair of 50s runs (size 2 reached) and blocks the worker.
  ASSERT_TRUE(executor_->WaitRunning(1));
  // Arrival order alternates short and long; the batches pair them by length.
  ASSERT_TRUE(Submit(1, 10).ok());
  ASSERT_TRUE(Submit(2, 100).ok());
  ASSERT_TRUE(Submit(3, 12).ok());
  ASSERT_TRUE(Submit(4, 98).ok());
  ASSERT_TRUE(Submit(5, 11).ok());
  executor_->Release();
  ASSERT_TRUE(recorder_.WaitFor(6));
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(7));
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(0, 100), ElementsAre(1, 5), ElementsAre(2, 4),
                                      ElementsAre(3)));
}

TEST_F(SchedulerTest, GroupingPrefersPriorityOverLength) {
  ModelOptions o = DefaultModel();
  o.max_batch_size = 2;
  Init(o);
  executor_->Hold();
  ASSERT_TRUE(Submit(0, 50).ok());
  ASSERT_TRUE(Submit(100, 50).ok());
  ASSERT_TRUE(executor_->WaitRunning(1));
  auto t = Make(1, 10);
  t->priority = 1;
  ASSERT_TRUE(Submit(std::move(t)).ok());
  ASSERT_TRUE(Submit(2, 10).ok());  // Same length, lower priority.
  t = Make(3, 300);
  t->priority = 1;
  ASSERT_TRUE(Submit(std::move(t)).ok());
  executor_->Release();
  ASSERT_TRUE(recorder_.WaitFor(4));
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(5));
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(0, 100), ElementsAre(1, 3), ElementsAre(2)));
}

// ---- executor errors ----

TEST_F(SchedulerTest, ExecutorErrorGoesToEveryTaskAndTheSchedulerKeepsRunning) {
  Init();
  std::atomic<int> calls{0};
  executor_->SetHook([&](const Batch&) {
    return calls++ == 0 ? absl::InternalError("kernel failed") : absl::OkStatus();
  });
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(Submit(i, 10).ok());
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(3));
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(CodeOf(i), absl::StatusCode::kInternal);
    EXPECT_EQ(recorder_.Find(i)->status.message(), "kernel failed");
  }
  ASSERT_TRUE(Submit(4, 10).ok());
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(4));
  EXPECT_EQ(CodeOf(4), absl::StatusCode::kOk);
  EXPECT_EQ(scheduler_->GetModelStats("m")->counts.failed, 3);
}

TEST_F(SchedulerTest, ExecutorExceptionBecomesInternalForEveryTask) {
  Init();
  executor_->SetHook([](const Batch&) -> absl::Status { throw std::runtime_error("boom"); });
  ASSERT_TRUE(Submit(1, 10).ok());
  ASSERT_TRUE(Submit(2, 10).ok());
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(2));
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(recorder_.Find(2)->status.message()), HasSubstr("boom"));
}

TEST_F(SchedulerTest, PerTaskErrorFailsOnlyThatTask) {
  Init();
  executor_->SetHook([](const Batch& batch) {
    for (Task* t : batch.tasks) {
      if (testing::IdOf(*t) == 2) t->SetError(absl::InvalidArgumentError("bad input"));
    }
    return absl::OkStatus();
  });
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(Submit(i, 10).ok());
  Advance(kDelay);
  ASSERT_TRUE(recorder_.WaitFor(3));
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kOk);
  EXPECT_EQ(CodeOf(2), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(3), absl::StatusCode::kOk);
}

// ---- adaptive budgets ----

class AdaptiveBudgetTest : public SchedulerTest {
 protected:
  void SetUp() override {
    ModelOptions o = DefaultModel();
    o.max_queue_delay = absl::ZeroDuration();
    o.max_batch_size = 1;
    o.predictor = PinnedPredictor();  // 1 ms per token at budget 1.
    o.deadline_safety_factor = safety_;
    Init(o);
  }
  double safety_ = 1.0;  // Exact arithmetic in the expectations below.
  // A 100-token task (100 ms at budget 1) with the given deadline and minimum budget.
  double BudgetUsed(int id, absl::Duration deadline, std::optional<double> min_budget) {
    auto t = Make(id, 100);
    t->deadline = clock_.Now() + deadline;
    t->min_budget = min_budget;
    const size_t before = recorder_.size();
    EXPECT_TRUE(Submit(std::move(t)).ok());
    EXPECT_TRUE(recorder_.WaitFor(before + 1));
    return recorder_.Find(id)->report.budget_used;
  }
};

TEST_F(AdaptiveBudgetTest, KeepsTheBudgetWhenTheDeadlineIsMet) {
  EXPECT_DOUBLE_EQ(BudgetUsed(1, absl::Milliseconds(200), 0.2), 1.0);
  EXPECT_FALSE(recorder_.Find(1)->report.budget_lowered);
}

TEST_F(AdaptiveBudgetTest, LowersTheBudgetJustEnoughToMeetTheDeadline) {
  // 50 ms available: cost 20 + level * 80 <= 50 -> level 0.375 -> budget 0.2 + 0.375 * 0.8 = 0.5.
  EXPECT_NEAR(BudgetUsed(1, absl::Milliseconds(50), 0.2), 0.5, 1e-9);
  EXPECT_TRUE(recorder_.Find(1)->report.budget_lowered);
  EXPECT_NEAR(recorder_.Find(1)->report.planned_cost, 50, 1e-6);
  EXPECT_NEAR(executor_->batches()[0].budgets[0], 0.5, 1e-9);  // The executor was told.
  EXPECT_EQ(scheduler_->GetModelStats("m")->counts.budget_lowered, 1);
}

class AdaptiveBudgetSafetyTest : public AdaptiveBudgetTest {
 protected:
  void SetUp() override {
    safety_ = 2.0;
    AdaptiveBudgetTest::SetUp();
  }
};

TEST_F(AdaptiveBudgetSafetyTest, PlansWithInflatedPredictions) {
  // Predicted 100 ms at budget 1, x2 = 200 ms > 150 ms: 2 * (20 + level * 80) <= 150 -> 0.6875.
  EXPECT_NEAR(BudgetUsed(1, absl::Milliseconds(150), 0.2), 0.2 + 0.6875 * 0.8, 1e-9);
}

TEST_F(AdaptiveBudgetSafetyTest, NeverBelowTheMinimum) {
  // 20 ms at the minimum fits 30 ms; inflated (40 ms) it does not: the level floors at 0.
  EXPECT_DOUBLE_EQ(BudgetUsed(1, absl::Milliseconds(30), 0.2), 0.2);
}

TEST_F(AdaptiveBudgetSafetyTest, NoMinimumMeansTheBudgetIsNeverChanged) {
  // 100 ms fits 150 ms; inflated (200 ms) it would not, but there is no minimum to lower to.
  EXPECT_DOUBLE_EQ(BudgetUsed(1, absl::Milliseconds(150), std::nullopt), 1.0);
  EXPECT_FALSE(recorder_.Find(1)->report.budget_lowered);
}

TEST_F(AdaptiveBudgetTest, QueuedDeadlinesLowerTheBudgetsAheadOfThem) {
  executor_->SetComputeSeconds([](double cost) { return 0.001 * cost; });  // Matches the model.
  executor_->Hold();
  ASSERT_TRUE(Submit(0, 10).ok());  // 10 ms, no deadline.
  ASSERT_TRUE(executor_->WaitRunning(1));
  const absl::Time t0 = clock_.Now();
  auto a = Make(1, 100);  // No deadline, but may be lowered.
  a->min_budget = 0.2;
  ASSERT_TRUE(Submit(std::move(a)).ok());
  auto b = Make(2, 100);
  b->min_budget = 0.2;
  b->deadline = t0 + absl::Milliseconds(150);
  ASSERT_TRUE(Submit(std::move(b)).ok());
  executor_->Release();
  ASSERT_TRUE(recorder_.WaitFor(3));
  // At t0+10ms, A is formed with B queued behind: 20 + 20 + level * 160 <= 140 -> level 0.625.
  EXPECT_NEAR(recorder_.Find(1)->report.budget_used, 0.7, 1e-9);
  // At t0+80ms, B alone: 20 + level * 80 <= 70 -> level 0.625.
  EXPECT_NEAR(recorder_.Find(2)->report.budget_used, 0.7, 1e-9);
  EXPECT_LE(recorder_.Find(2)->report.end_time,
            t0 + absl::Milliseconds(150) + absl::Microseconds(1));
  EXPECT_TRUE(recorder_.Find(2)->status.ok());
  EXPECT_FALSE(recorder_.Find(0)->report.budget_lowered);
}

TEST_F(SchedulerTest, PredictorLearnsFromMeasuredBatchesAndDrivesTheBudget) {
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::ZeroDuration();
  o.max_batch_size = 1;
  o.predictor.prior_overhead_seconds = 0.0005;  // Prior far off: 1 ms per token.
  o.predictor.prior_seconds_per_unit = 0.001;
  o.predictor.prior_reference_units = 300;  // A typical batch.
  o.deadline_safety_factor = 1;
  Init(o);
  // True cost: 2 ms + 10 us per token.
  executor_->SetComputeSeconds([](double cost) { return 0.002 + 1e-5 * cost; });
  for (int i = 0; i < 150; ++i) {
    ASSERT_TRUE(Submit(i, 10 + (i * 37) % 500).ok());
    ASSERT_TRUE(recorder_.WaitFor(static_cast<size_t>(i) + 1));
  }
  const ModelStats stats = *scheduler_->GetModelStats("m");
  EXPECT_EQ(stats.predictor_observations, 150);
  EXPECT_NEAR(stats.predictor_overhead_seconds, 0.002, 0.0001);
  EXPECT_NEAR(stats.predictor_seconds_per_unit, 1e-5, 5e-7);
  // 1000 tokens: 12 ms at budget 1; deadline 8 ms -> 100 + level * 900 <= 600 -> level 5/9.
  auto t = Make(1000, 1000);
  t->min_budget = 0.1;
  t->deadline = clock_.Now() + absl::Milliseconds(8);
  ASSERT_TRUE(Submit(std::move(t)).ok());
  ASSERT_TRUE(recorder_.WaitFor(151));
  EXPECT_NEAR(recorder_.Find(1000)->report.budget_used, 0.1 + 0.9 * 5.0 / 9.0, 0.02);
  EXPECT_TRUE(recorder_.Find(1000)->status.ok());
  EXPECT_LE(recorder_.Find(1000)->report.compute_time, absl::Microseconds(8100));
}

// ---- load shedding by deadline (ModelOptions::shed_late) ----

// Each row: what admission knows, and the predicted seconds to the new work's finish.
TEST(PredictFinishSecondsTest, Table) {
  struct Row {
    const char* what;
    AdmissionEstimate e;
    double want;
  };
  const Row rows[] = {
      {"idle, one task: overhead + its compute",
       {.overhead_seconds = 0.001,
        .seconds_per_unit = 0.001,
        .cost = 10,
        .max_batch_size = 8,
        .max_batch_tokens = 1000},
       0.011},
      {"behind a running batch: its predicted rest first",
       {.overhead_seconds = 0.001,
        .seconds_per_unit = 0.001,
        .running_seconds = 0.05,
        .cost = 10,
        .max_batch_size = 8,
        .max_batch_tokens = 1000},
       0.061},
      {"two workers share what is running and queued",
       {.overhead_seconds = 0,
        .seconds_per_unit = 0.001,
        .workers = 2,
        .running_seconds = 0.04,
        .tasks_ahead = 3,
        .tokens_ahead = 30,
        .cost_ahead = 60,
        .cost = 10,
        .max_batch_size = 8,
        .max_batch_tokens = 1000},
       0.06},
      {"17 ahead in batches of 8: two full batches pay the overhead, the rest rides along",
       {.overhead_seconds = 0.002,
        .seconds_per_unit = 0.001,
        .tasks_ahead = 17,
        .tokens_ahead = 170,
        .cost_ahead = 170,
        .cost = 10,
        .max_batch_size = 8,
        .max_batch_tokens = 1000},
       0.004 + 0.170 + 0.002 + 0.010},
      {"token-bound batches count too",
       {.overhead_seconds = 0.002,
        .seconds_per_unit = 0,
        .tasks_ahead = 2,
        .tokens_ahead = 300,
        .cost_ahead = 0,
        .cost = 0,
        .tokens = 10,
        .max_batch_size = 8,
        .max_batch_tokens = 100},
       0.006 + 0.002},
      {"a group of 20 in batches of 8 on 2 workers: 3 batches, 2 at a time",
       {.overhead_seconds = 0.001,
        .seconds_per_unit = 0.001,
        .workers = 2,
        .cost = 200,
        .tasks = 20,
        .tokens = 200,
        .max_batch_size = 8,
        .max_batch_tokens = 1000},
       (0.003 + 0.2) / 2},
      {"nonsense inputs are clamped, not trusted",
       {.overhead_seconds = 0,
        .seconds_per_unit = 0.001,
        .workers = 0,
        .running_seconds = -5,
        .cost_ahead = -3,
        .cost = 1,
        .max_batch_size = 0,
        .max_batch_tokens = 0},
       0.001},
  };
  for (const Row& row : rows) {
    EXPECT_NEAR(PredictFinishSeconds(row.e), row.want, 1e-12) << row.what;
  }
}

class ShedTest : public SchedulerTest {
 protected:
  void InitShed(bool shed_late, int workers = 1) {
    ModelOptions o = DefaultModel();
    o.max_queue_delay = absl::ZeroDuration();
    o.predictor = PinnedPredictor();  // 1 ms per token at budget 1, no overhead.
    o.deadline_safety_factor = 1;
    o.shed_late = shed_late;
    Init(o, workers);
    // One measured batch, exactly as predicted: shedding needs a measured predictor.
    executor_->SetComputeSeconds([](double cost) { return 0.001 * cost; });
    ASSERT_TRUE(Submit(-1, 10).ok());
    ASSERT_TRUE(recorder_.WaitFor(1));
    Idle();
    executor_->SetComputeSeconds(nullptr);  // From here on, time moves only in the tests.
    ASSERT_EQ(scheduler_->GetModelStats("m")->predictor_observations, 1);
  }
  std::unique_ptr<Task> WithDeadline(int id, int64_t tokens, absl::Duration deadline,
                                     int priority = 0) {
    auto t = Make(id, tokens);
    t->deadline = clock_.Now() + deadline;
    t->priority = priority;
    return t;
  }
  // Completions and batches after the warm-up task.
  bool WaitDone(size_t n) { return recorder_.WaitFor(n + 1); }
  std::vector<std::vector<int>> Batches() const {
    std::vector<std::vector<int>> ids = BatchIds();
    ids.erase(ids.begin());
    return ids;
  }
  // Task 0 (100 tokens: 100 ms predicted, no deadline) running, held in the executor.
  void StartLongBatch() {
    executor_->Hold();
    ASSERT_TRUE(Submit(0, 100).ok());
    ASSERT_TRUE(executor_->WaitRunning(1));
    Idle();
  }
};

TEST_F(ShedTest, AdmissionRefusesATaskPredictedToFinishAfterItsDeadline) {
  InitShed(true);
  StartLongBatch();
  // Behind 100 ms of running work, 10 ms of its own: predicted at 110 ms.
  auto late = WithDeadline(1, 10, absl::Milliseconds(109));
  const absl::Status s = scheduler_->Schedule(&late);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr("overloaded"));
  ASSERT_NE(late, nullptr);  // Refused: still the caller's, never queued.
  EXPECT_TRUE(Submit(WithDeadline(2, 10, absl::Milliseconds(110))).ok());  // Just fits.
  EXPECT_TRUE(Submit(3, 10).ok());  // No deadline: never refused for time.
  executor_->Release();
  ASSERT_TRUE(WaitDone(3));
  EXPECT_FALSE(recorder_.Find(1).has_value());
  const ModelStats stats = *scheduler_->GetModelStats("m");
  EXPECT_EQ(stats.counts.shed_at_admission, 1);
  EXPECT_EQ(stats.counts.rejected, 1);
  std::lock_guard<std::mutex> lock(observer_.mu_);
  EXPECT_THAT(observer_.shed, ElementsAre(ShedReason::kPredictedLate));
}

TEST_F(ShedTest, AdmissionCountsOnlyWorkOfTheSameOrHigherPriority) {
  InitShed(true);
  StartLongBatch();
  ASSERT_TRUE(Submit(1, 50).ok());  // 50 ms queued at priority 0.
  // At priority 0 it would wait 100 + 50 ms; at priority 1 it overtakes the queued task.
  auto low = WithDeadline(2, 10, absl::Milliseconds(130));
  EXPECT_EQ(scheduler_->Schedule(&low).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Submit(WithDeadline(3, 10, absl::Milliseconds(130), /*priority=*/1)).ok());
  executor_->Release();
  ASSERT_TRUE(WaitDone(3));
}

TEST_F(ShedTest, WithoutSheddingTheSameTaskIsQueuedAndComputedLate) {
  InitShed(false);  // The old behaviour, for contrast.
  StartLongBatch();
  ASSERT_TRUE(Submit(WithDeadline(1, 10, absl::Milliseconds(109))).ok());
  clock_.Advance(absl::Milliseconds(105));  // Still before its deadline when the worker is free.
  executor_->Release();
  ASSERT_TRUE(WaitDone(2));
  Idle();
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(0), ElementsAre(1)));  // 1 was computed.
}

TEST_F(ShedTest, QueuedTaskThatCanNoLongerFinishInTimeFailsWithoutCompute) {
  InitShed(true);
  StartLongBatch();
  // Predicted at 110 ms, deadline 150 ms: admitted.
  ASSERT_TRUE(Submit(WithDeadline(1, 10, absl::Milliseconds(150))).ok());
  // The running batch overruns its prediction: at 145 ms, 10 ms of compute no longer fits.
  clock_.Advance(absl::Milliseconds(145));
  executor_->Release();
  ASSERT_TRUE(WaitDone(2));
  Idle();
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(0)));        // 1 was never computed...
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kDeadlineExceeded);  // ... and failed before its deadline.
  EXPECT_THAT(std::string(recorder_.Find(1)->status.message()), HasSubstr("not started"));
  EXPECT_EQ(recorder_.Find(1)->report.end_time,
            recorder_.Find(1)->report.enqueue_time + absl::Milliseconds(145));
  const ModelStats stats = *scheduler_->GetModelStats("m");
  EXPECT_EQ(stats.counts.deadline_exceeded, 1);
  EXPECT_EQ(stats.counts.shed_in_queue, 1);
  std::lock_guard<std::mutex> lock(observer_.mu_);
  EXPECT_THAT(observer_.shed, ElementsAre(ShedReason::kLateInQueue));
}

TEST_F(ShedTest, QueuedTaskThatStillFitsRuns) {
  InitShed(true);
  executor_->SetComputeSeconds([](double cost) { return 0.001 * cost; });  // As predicted.
  StartLongBatch();
  // Predicted (and computed) at 110 ms; 1 ms to spare.
  ASSERT_TRUE(Submit(WithDeadline(1, 10, absl::Milliseconds(111))).ok());
  executor_->Release();
  ASSERT_TRUE(WaitDone(2));
  Idle();
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(0), ElementsAre(1)));
  EXPECT_TRUE(recorder_.Find(1)->status.ok());
}

TEST_F(ShedTest, ExpiredTaskIsCountedAsExpired) {
  InitShed(true);
  StartLongBatch();
  ASSERT_TRUE(Submit(WithDeadline(1, 10, absl::Milliseconds(150))).ok());
  clock_.Advance(absl::Milliseconds(200));
  executor_->Release();
  ASSERT_TRUE(WaitDone(2));
  Idle();
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(0)));
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(scheduler_->GetModelStats("m")->counts.shed_in_queue, 0);
  std::lock_guard<std::mutex> lock(observer_.mu_);
  EXPECT_THAT(observer_.shed, ElementsAre(ShedReason::kExpired));
}

TEST_F(ShedTest, BatchDoesNotTakeATaskThatWouldMakeItLate) {
  InitShed(true);
  StartLongBatch();
  // Seed (priority 1): 10 ms, deadline 150 ms. Candidate: 50 ms, no deadline. Together they would
  // finish at 160 ms: the seed would be late, so the candidate waits for the next batch.
  ASSERT_TRUE(Submit(WithDeadline(1, 10, absl::Milliseconds(150), /*priority=*/1)).ok());
  ASSERT_TRUE(Submit(2, 50).ok());
  clock_.Advance(absl::Milliseconds(100));
  executor_->Release();
  ASSERT_TRUE(WaitDone(3));
  Idle();
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(0), ElementsAre(1), ElementsAre(2)));
  EXPECT_TRUE(recorder_.Find(1)->status.ok());
  EXPECT_TRUE(recorder_.Find(2)->status.ok());
}

TEST_F(ShedTest, WithoutSheddingTheBatchTakesTheTaskThatMakesItLate) {
  InitShed(false);
  StartLongBatch();
  ASSERT_TRUE(Submit(WithDeadline(1, 10, absl::Milliseconds(150), /*priority=*/1)).ok());
  ASSERT_TRUE(Submit(2, 50).ok());
  clock_.Advance(absl::Milliseconds(100));
  executor_->Release();
  ASSERT_TRUE(WaitDone(3));
  Idle();
  EXPECT_THAT(Batches(), ElementsAre(ElementsAre(0), ElementsAre(1, 2)));
}

TEST_F(ShedTest, MaxQueueWaitBoundsThePredictedWait) {
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::ZeroDuration();
  o.predictor = PinnedPredictor();
  o.max_queue_wait = absl::Milliseconds(125);
  Init(o);
  executor_->Hold();
  ASSERT_TRUE(Submit(0, 100).ok());  // Idle: no wait, though 100 ms of compute.
  ASSERT_TRUE(executor_->WaitRunning(1));
  Idle();
  ASSERT_TRUE(Submit(1, 10).ok());  // Waits 100 ms.
  ASSERT_TRUE(Submit(2, 10).ok());  // 110 ms.
  ASSERT_TRUE(Submit(3, 10).ok());  // 120 ms.
  auto over = Make(4, 10);          // 130 ms; no deadline needed.
  const absl::Status s = scheduler_->Schedule(&over);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr("full"));
  executor_->Release();
  ASSERT_TRUE(recorder_.WaitFor(4));
  std::lock_guard<std::mutex> lock(observer_.mu_);
  EXPECT_THAT(observer_.shed, ElementsAre(ShedReason::kQueueFull));
}

TEST_F(ShedTest, PreAdmitRefusesWhatTheQueueAloneRefuses) {
  InitShed(true);
  StartLongBatch();  // 100 ms of running work.
  const absl::Time now = clock_.Now();
  EXPECT_TRUE(scheduler_->PreAdmit("m", 1, 0, now + absl::Milliseconds(101)).ok());
  EXPECT_TRUE(scheduler_->PreAdmit("m", 1, 0, absl::InfiniteFuture()).ok());
  EXPECT_TRUE(scheduler_->PreAdmit("nope", 1, 0, now).ok());  // Schedule() says NOT_FOUND.
  const absl::Status late = scheduler_->PreAdmit("m", 3, 0, now + absl::Milliseconds(99));
  EXPECT_EQ(late.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(late.message()), HasSubstr("overloaded"));
  const ModelStats stats = *scheduler_->GetModelStats("m");
  EXPECT_EQ(stats.counts.rejected, 1);
  EXPECT_EQ(stats.counts.shed_at_admission, 3);
  EXPECT_EQ(stats.depth.queued_tasks, 0);  // Nothing was queued by the checks.
  executor_->Release();
  ASSERT_TRUE(WaitDone(1));
}

TEST_F(ShedTest, ScheduleAllAdmitsAllOrNone) {
  ModelOptions o = DefaultModel();
  o.max_queue_size = 3;
  o.max_queue_delay = absl::Seconds(1);
  Init(o);
  ASSERT_TRUE(Submit(1, 10).ok());
  std::vector<std::unique_ptr<Task>> group;
  for (int id : {2, 3, 4}) group.push_back(Make(id, 10));
  int failed = 7;
  const absl::Status s = scheduler_->ScheduleAll(std::span(group), &failed);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);  // 1 + 3 > 3: none of them is queued.
  EXPECT_EQ(failed, -1);
  for (const auto& t : group) EXPECT_NE(t, nullptr);
  EXPECT_EQ(scheduler_->GetModelStats("m")->depth.queued_tasks, 1);
  group.pop_back();
  ASSERT_TRUE(scheduler_->ScheduleAll(std::span(group), &failed).ok());  // 1 + 2 fits.
  for (const auto& t : group) EXPECT_EQ(t, nullptr);
  // More than the whole queue can never fit: RESOURCE_EXHAUSTED, not retryable.
  std::vector<std::unique_ptr<Task>> huge;
  for (int id = 10; id < 14; ++id) huge.push_back(Make(id, 10));
  EXPECT_EQ(scheduler_->ScheduleAll(std::span(huge)).code(), absl::StatusCode::kResourceExhausted);
  // A bad task names its index; nothing is queued.
  std::vector<std::unique_ptr<Task>> bad;
  bad.push_back(Make(20, 10));
  bad.push_back(Make(21, 0));
  EXPECT_EQ(scheduler_->ScheduleAll(std::span(bad), &failed).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(failed, 1);
  Advance(absl::Seconds(1));
  ASSERT_TRUE(recorder_.WaitFor(3));
  EXPECT_EQ(recorder_.size(), 3u);
}

TEST_F(ShedTest, ScheduleAllPredictsTheWholeGroup) {
  InitShed(true);
  // Five 10 ms tasks in one batch finish at 50 ms; three at 30 ms.
  std::vector<std::unique_ptr<Task>> five;
  for (int id = 1; id <= 5; ++id) five.push_back(WithDeadline(id, 10, absl::Milliseconds(40)));
  // Idle server: the call's own compute does not fit its deadline, so retrying cannot help.
  const absl::Status s = scheduler_->ScheduleAll(std::span(five));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(s.message()), HasSubstr("of compute"));
  five.resize(3);
  EXPECT_TRUE(scheduler_->ScheduleAll(std::span(five)).ok());
  ASSERT_TRUE(WaitDone(3));
  EXPECT_EQ(scheduler_->GetModelStats("m")->counts.shed_at_admission, 5);
}

TEST_F(ShedTest, NothingIsShedForTimeBeforeTheFirstMeasuredBatch) {
  // A prior far off (here: 1 s per token) must not refuse tight calls forever: they would never
  // run, and the predictor would never learn.
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::ZeroDuration();
  o.predictor = PinnedPredictor();
  o.predictor.prior_seconds_per_unit = 1;
  Init(o);
  ASSERT_TRUE(Submit(WithDeadline(1, 10, absl::Milliseconds(5))).ok());
  ASSERT_TRUE(recorder_.WaitFor(1));
  EXPECT_TRUE(recorder_.Find(1)->status.ok());
  // Measured now (0 s for 10 tokens): the same call is admitted and runs.
  ASSERT_TRUE(Submit(WithDeadline(2, 10, absl::Milliseconds(5))).ok());
  ASSERT_TRUE(recorder_.WaitFor(2));
  EXPECT_TRUE(recorder_.Find(2)->status.ok());
}

// ---- shutdown ----

TEST_F(SchedulerTest, ShutdownDrainRunsQueuedTasksAndRefusesNewOnes) {
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::Seconds(10);
  o.max_batch_size = 2;
  Init(o);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(Submit(i, 10).ok());  // 1,2 run; 3 waits.
  scheduler_->Shutdown({.mode = ShutdownOptions::Mode::kDrain, .grace = absl::Seconds(5)});
  ASSERT_EQ(recorder_.size(), 3u);
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(CodeOf(i), absl::StatusCode::kOk);
  EXPECT_FALSE(scheduler_->IsAccepting());
  const absl::Status s = Submit(4, 10);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr("shutting down"));
  EXPECT_EQ(scheduler_->AddModel("late", DefaultModel(), executor_).code(),
            absl::StatusCode::kFailedPrecondition);
  scheduler_->Shutdown();  // Idempotent.
}

TEST_F(SchedulerTest, ShutdownFailFailsQueuedTasksAndFinishesRunningOnes) {
  ModelOptions o = DefaultModel();
  o.max_batch_size = 1;
  o.max_queue_delay = absl::ZeroDuration();
  Init(o);
  executor_->Hold();
  ASSERT_TRUE(Submit(1, 10).ok());
  ASSERT_TRUE(executor_->WaitRunning(1));
  ASSERT_TRUE(Submit(2, 10).ok());
  ASSERT_TRUE(Submit(3, 10).ok());
  std::thread shutdown([&] { scheduler_->Shutdown({.mode = ShutdownOptions::Mode::kFail}); });
  ASSERT_TRUE(recorder_.WaitFor(2));
  EXPECT_EQ(CodeOf(2), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeOf(3), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(recorder_.Find(1).has_value());
  executor_->Release();
  shutdown.join();
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kOk);
  EXPECT_EQ(recorder_.size(), 3u);
}

TEST_F(SchedulerTest, ShutdownDrainFailsWhatIsLeftAfterTheGracePeriod) {
  ModelOptions o = DefaultModel();
  o.max_batch_size = 1;
  o.max_queue_delay = absl::ZeroDuration();
  Init(o);
  executor_->Hold();
  ASSERT_TRUE(Submit(1, 10).ok());
  ASSERT_TRUE(executor_->WaitRunning(1));
  ASSERT_TRUE(Submit(2, 10).ok());
  ASSERT_TRUE(Submit(3, 10).ok());
  std::thread shutdown([&] {
    scheduler_->Shutdown({.mode = ShutdownOptions::Mode::kDrain, .grace = absl::Seconds(1)});
  });
  while (scheduler_->IsAccepting()) std::this_thread::yield();
  clock_.Advance(absl::Milliseconds(999));
  EXPECT_EQ(recorder_.size(), 0u);
  clock_.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(recorder_.WaitFor(2));
  EXPECT_EQ(CodeOf(2), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeOf(3), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(recorder_.Find(2)->status.message()), HasSubstr("grace"));
  executor_->Release();
  shutdown.join();
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kOk);
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1)));
}

TEST_F(SchedulerTest, DestructorFailsQueuedTasks) {
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::Seconds(10);
  Init(o);
  ASSERT_TRUE(Submit(1, 10).ok());
  scheduler_.reset();
  ASSERT_EQ(recorder_.size(), 1u);
  EXPECT_EQ(CodeOf(1), absl::StatusCode::kUnavailable);
}

// ---- workers, models, reports, observer ----

TEST_F(SchedulerTest, WorkersRunBatchesConcurrently) {
  ModelOptions o = DefaultModel();
  o.max_batch_size = 1;
  o.max_queue_delay = absl::ZeroDuration();
  Init(o, /*workers=*/2);
  executor_->Hold();
  ASSERT_TRUE(Submit(1, 10).ok());
  ASSERT_TRUE(Submit(2, 10).ok());
  ASSERT_TRUE(executor_->WaitRunning(2));  // Both blocked in Run() at once.
  executor_->Release();
  ASSERT_TRUE(recorder_.WaitFor(2));
  std::set<int> workers;
  for (const auto& b : executor_->batches()) {
    workers.insert(b.worker);
    EXPECT_EQ(b.threads, 3);
  }
  EXPECT_THAT(workers, UnorderedElementsAre(0, 1));
  std::lock_guard<std::mutex> lock(started_mu_);
  EXPECT_THAT(started_, UnorderedElementsAre(std::pair(0, 3), std::pair(1, 3)));
}

TEST(SchedulerNiceTest, WorkerThreadsRunAtTheConfiguredNiceValue) {
  const auto self = static_cast<id_t>(syscall(SYS_gettid));
  const int base = getpriority(PRIO_PROCESS, self);
  std::mutex mu;
  std::vector<int> seen;
  FakeClock clock;
  auto s = Scheduler::Create({.num_workers = 2,
                              .clock = &clock,
                              .on_worker_start =
                                  [&](int, int) {
                                    const int nice = getpriority(
                                        PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)));
                                    std::lock_guard<std::mutex> lock(mu);
                                    seen.push_back(nice);
                                  },
                              .worker_nice = 3});
  ASSERT_TRUE(s.ok());
  (*s)->WaitForIdleForTesting();
  s->reset();
  EXPECT_THAT(seen, ElementsAre(std::min(base + 3, 19), std::min(base + 3, 19)));
  EXPECT_EQ(getpriority(PRIO_PROCESS, self), base);  // The caller's thread is untouched.
}

TEST_F(SchedulerTest, ModelsHaveSeparateQueuesAndExecutors) {
  Init();
  auto other = std::make_shared<TestExecutor>();
  ModelOptions o = DefaultModel();
  o.max_batch_size = 1;
  AddModel("other", o, other);
  ASSERT_TRUE(Submit(1, 10).ok());
  ASSERT_TRUE(Submit(Make(2, 10, "other")).ok());  // Full batch for "other" at once.
  Idle();
  EXPECT_THAT(BatchIds(), ::testing::IsEmpty());
  ASSERT_EQ(other->batches().size(), 1u);
  EXPECT_THAT(other->batches()[0].ids, ElementsAre(2));
  Advance(kDelay);
  EXPECT_THAT(BatchIds(), ElementsAre(ElementsAre(1)));
  EXPECT_EQ(scheduler_->GetModelStats("other")->counts.ok, 1);
  EXPECT_EQ(scheduler_->GetModelStats("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SchedulerTest, ReportAndObserverSayWhatHappened) {
  Init();
  executor_->SetComputeSeconds([](double) { return 0.005; });
  ASSERT_TRUE(Submit(1, 10).ok());
  Advance(absl::Milliseconds(2));
  ASSERT_TRUE(Submit(2, 30).ok());
  {
    const ModelStats stats = *scheduler_->GetModelStats("m");
    EXPECT_EQ(stats.depth.queued_tasks, 2);
    EXPECT_EQ(stats.depth.queued_tokens, 40);
  }
  Advance(kDelay - absl::Milliseconds(2));
  ASSERT_TRUE(recorder_.WaitFor(2));
  Idle();
  const auto r = recorder_.Find(2)->report;
  EXPECT_EQ(r.batch_size, 2);
  EXPECT_EQ(r.batch_tokens, 40);
  EXPECT_EQ(r.worker_index, 0);
  EXPECT_EQ(r.queue_time, absl::Milliseconds(8));
  EXPECT_EQ(r.compute_time, absl::Milliseconds(5));
  EXPECT_DOUBLE_EQ(r.budget_used, 1.0);
  EXPECT_DOUBLE_EQ(r.planned_cost, 30);
  EXPECT_EQ(r.end_time - r.enqueue_time, absl::Milliseconds(13));

  std::lock_guard<std::mutex> lock(observer_.mu_);
  ASSERT_EQ(observer_.batches.size(), 1u);
  const BatchStats& b = observer_.batches[0];
  EXPECT_EQ(b.model, "m");
  EXPECT_EQ(b.size, 2);
  EXPECT_EQ(b.tokens, 40);
  EXPECT_DOUBLE_EQ(b.planned_cost, 40);
  EXPECT_EQ(b.max_queue_time, absl::Milliseconds(10));
  EXPECT_EQ(b.mean_queue_time, absl::Milliseconds(9));
  EXPECT_EQ(b.compute_time, absl::Milliseconds(5));
  EXPECT_TRUE(b.status.ok());
  EXPECT_THAT(observer_.task_codes, ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kOk));
  // Depth went 0 (AddModel) -> 1 -> 2 queued -> 2 in flight -> 0.
  ASSERT_GE(observer_.depths.size(), 5u);
  EXPECT_EQ(observer_.depths[2].queued_tasks, 2);
  const QueueDepth& running = observer_.depths[observer_.depths.size() - 2];
  EXPECT_EQ(running.queued_tasks, 0);
  EXPECT_EQ(running.in_flight_tasks, 2);
  EXPECT_EQ(running.in_flight_batches, 1);
  const QueueDepth& last = observer_.depths.back();
  EXPECT_EQ(last.queued_tasks + last.in_flight_tasks + last.in_flight_batches, 0);
}

TEST_F(SchedulerTest, DoneCallbackMayScheduleAgain) {
  ModelOptions o = DefaultModel();
  o.max_queue_delay = absl::ZeroDuration();
  Init(o);
  std::atomic<int> done{0};
  std::function<void(int)> submit = [&](int remaining) {
    auto t = std::make_unique<TestTask>();
    t->model = "m";
    t->tokens = 5;
    t->done = [&, remaining](std::unique_ptr<Task>, absl::Status s) {
      EXPECT_TRUE(s.ok());
      ++done;
      if (remaining > 0) submit(remaining - 1);
    };
    std::unique_ptr<Task> base = std::move(t);
    ASSERT_TRUE(scheduler_->Schedule(&base).ok());
  };
  submit(4);
  Idle();
  EXPECT_EQ(done, 5);
  scheduler_.reset();  // Before `submit` and `done` go out of scope.
}

}  // namespace
}  // namespace topserve::batching
