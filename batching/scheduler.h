// topserve's dynamic batcher: per-model queues of tokenized requests, batched by tokens and planned
// cost, run by a shared pool of worker threads through a BatchExecutor the server implements.
// No gRPC and no engine dependency. See batching/README.md for the design and how to wire it.
//
// Typical use (the server):
//
//   auto scheduler = Scheduler::Create({.num_workers = 2, .threads_per_worker = 1,
//                                       .observer = &metrics});
//   (*scheduler)->AddModel("sst2", {.max_batch_tokens = 4096, .cost = engine_cost_fn},
//                          std::make_shared<EngineExecutor>(engine));
//   auto task = std::make_unique<InferTask>(...);   // : batching::Task, holds ids + outputs
//   task->model = "sst2"; task->tokens = ids.size(); task->deadline = ...;
//   task->done = [reactor](std::unique_ptr<Task> t, absl::Status s) { ... reactor->Finish(...); };
//   if (absl::Status s = scheduler->Schedule(&task); !s.ok()) reactor->Finish(ToGrpc(s));
//   ...
//   scheduler->Shutdown({.mode = ShutdownOptions::Mode::kDrain, .grace = absl::Seconds(30)});
#pragma once

#include <concepts>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "batching/clock.h"
#include "batching/cost_predictor.h"
#include "batching/executor.h"
#include "batching/observer.h"
#include "batching/task.h"

namespace topserve::batching {

// Planned cost of one task of `tokens` tokens at `budget`, in arbitrary consistent units (the
// engine's cost model returns FLOPs). Must be pure, thread-safe, finite, >= 0, and non-decreasing
// in budget. The predictor assumes compute time is affine in the summed cost of a batch.
using CostFunction = std::function<double(int64_t tokens, double budget)>;

// Per-model batching knobs (Triton's names in brackets). Defaults are filled in by AddModel().
struct ModelOptions {
  // A batch holds at most this many tokens (sum of task sizes); larger tasks are refused with
  // RESOURCE_EXHAUSTED. [TEI max-batch-tokens]
  int64_t max_batch_tokens = 8192;
  // A batch holds at most this many tasks. [max_batch_size]
  int max_batch_size = 32;
  // If > 0, a batch's planned cost at requested budgets stays under this (a single task always
  // fits).
  double max_batch_cost = 0;
  // How long the oldest queued task may wait for the batch to fill before a worker takes a partial
  // batch. Zero: dispatch as soon as a worker is free. [max_queue_delay_microseconds]
  absl::Duration max_queue_delay = absl::Microseconds(2000);
  // Queue limits: Schedule() refuses with UNAVAILABLE beyond them. [max_queue_size]
  int64_t max_queue_size = 1024;
  int64_t max_queue_tokens = 262144;
  // Queue limit in time: Schedule() refuses with UNAVAILABLE a task whose predicted wait before
  // its batch starts (PredictWaitSeconds()) is longer, whatever its deadline. It bounds how long
  // the queue takes to drain when overload stops, which a count of requests cannot (their cost
  // and the machine's speed vary). Infinite: no limit.
  absl::Duration max_queue_wait = absl::InfiniteDuration();
  // Length grouping looks at this many tasks from the head of the queue (service order) when it
  // fills a batch; bounds the work per batch and how far a task can be overtaken.
  int grouping_window = 256;
  // Planned cost of a task; unset = tokens * budget.
  CostFunction cost{};
  // Budget lowering plans with predicted times multiplied by this (>= 1): headroom for prediction
  // error, so that under sustained overload requests finish before, not at, their deadlines.
  // Measured on the engine at 3x overload (bench/serving_bench): 1.5 kept 91.8% of requests within
  // deadline, 2.0 kept 99.9% (docs/benchmarks.md).
  double deadline_safety_factor = 2.0;
  // Load shedding by deadline (on by default; active once the predictor has measured a batch, so
  // that a wrong prior cannot refuse every tight call forever). Schedule() refuses a task whose
  // predicted finish (PredictFinishSeconds(): the work queued ahead of it at minimum budgets shared
  // by the workers, plus its own compute) is already past its deadline: UNAVAILABLE if the work
  // ahead is the reason, DEADLINE_EXCEEDED if its own compute alone does not fit. A queued task
  // whose predicted time alone at its minimum budget, starting now, ends past its deadline is
  // completed with DEADLINE_EXCEEDED without being computed; a batch never takes a task that would
  // make it late. Predictions here are the predictor's, not inflated by deadline_safety_factor:
  // only work that is predicted to be wasted is shed. Off: tasks run whenever they are still
  // queued at batch formation (the deadline itself still expires them).
  bool shed_late = true;
  CostPredictorOptions predictor{};
};

// What admission knows when a task arrives (all times in seconds, costs in the model's units).
struct AdmissionEstimate {
  double overhead_seconds = 0;  // Predictor: seconds = overhead + per_unit * cost, per batch.
  double seconds_per_unit = 0;
  int workers = 1;
  double running_seconds = 0;  // Predicted time left in the batches now running, summed.
  int64_t tasks_ahead = 0;     // Queued tasks served before the new one (priority >= its own).
  int64_t tokens_ahead = 0;
  double cost_ahead = 0;  // Their cost at minimum budgets.
  double cost = 0;        // The new task's (or group's) cost at minimum budget.
  int64_t tasks = 1;      // Tasks in the new group.
  int64_t tokens = 0;
  int64_t max_batch_size = 1;
  int64_t max_batch_tokens = 1;
};

// Seconds from now until the new task (the last of its group) is predicted to finish: the work
// ahead, in full batches that each pay the per-batch overhead, spread over the workers after what
// they are running, then the batch holding the task. Pure; optimistic where it must guess (the
// whole pool works on this model, batches are full), so that it refuses only work predicted to
// be late.
double PredictFinishSeconds(const AdmissionEstimate& e);
// The part of it spent waiting: until the new work's (first) batch is predicted to start.
double PredictWaitSeconds(const AdmissionEstimate& e);

struct SchedulerOptions {
  // Concurrent batches (worker threads). The server sizes num_workers * threads_per_worker to the
  // CPUs the process may use, e.g. 1 x 2 (lowest latency per batch) or 2 x 1 (more overlap).
  int num_workers = 1;
  // Intra-batch threads, passed to the executor in Batch::threads and to on_worker_start; the
  // scheduler itself never spawns them.
  int threads_per_worker = 1;
  Clock* clock = nullptr;                 // Not owned; must outlive the scheduler. Null: RealClock.
  SchedulerObserver* observer = nullptr;  // Not owned; must outlive the scheduler. May be null.
  // Runs first on each worker thread (e.g. omp_set_num_threads(threads), thread naming, pinning).
  std::function<void(int worker_index, int threads)> on_worker_start{};
  // Linux: added to each worker thread's nice value when it starts (before on_worker_start), so
  // threads it starts later (the executor's OpenMP team) inherit it. A positive value lets the
  // RPC threads, which parse calls and answer refusals, preempt compute instead of queueing
  // behind it on a busy machine. Raising priority (negative) needs CAP_SYS_NICE; failures are
  // ignored.
  int worker_nice = 0;
  // Runs on a worker thread, outside the scheduler's lock, each time that worker has finished
  // work and finds nothing queued (the load has stopped, for now). Keep it cheap (e.g. wake a
  // thread of your own): the worker plans again only after it returns.
  std::function<void()> on_idle{};
};

struct ShutdownOptions {
  enum class Mode {
    kDrain,  // Run queued tasks; whatever is still queued after `grace` fails with UNAVAILABLE.
    kFail,   // Fail queued tasks with UNAVAILABLE right away.
  };
  Mode mode = Mode::kDrain;
  absl::Duration grace = absl::Seconds(30);
};

struct ModelStats {
  QueueDepth depth{};
  TaskCounts counts{};
  // The compute-time model: seconds = overhead + seconds_per_unit * planned cost.
  double predictor_overhead_seconds = 0;
  double predictor_seconds_per_unit = 0;
  int64_t predictor_observations = 0;
};

class Scheduler {
 public:
  // Validates the options and starts the worker threads.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(SchedulerOptions options);

  // Shutdown({kFail, 0}) if Shutdown() was not called.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Adds a model queue served by `executor` (shared by all workers; must be thread-safe).
  // INVALID_ARGUMENT for bad options (the message names the field), ALREADY_EXISTS for a duplicate
  // name, FAILED_PRECONDITION after Shutdown(). May be called while other models are serving.
  absl::Status AddModel(std::string name, ModelOptions options,
                        std::shared_ptr<BatchExecutor> executor);

  // Never blocks on work (only on the scheduler's short internal lock) and never calls `done`.
  // OK: the scheduler took ownership (*task is null) and will call done exactly once.
  // Otherwise *task is untouched, done will never be called, and the status says why:
  //   INVALID_ARGUMENT   null task/callback, tokens < 1, budget or min_budget out of range
  //   NOT_FOUND          unknown model
  //   RESOURCE_EXHAUSTED tokens > max_batch_tokens (could never run)
  //   CANCELLED          already cancelled
  //   DEADLINE_EXCEEDED  deadline already passed, or (shed_late) its own compute alone is
  //                      predicted to take longer than the time left: not worth retrying
  //   UNAVAILABLE        queue full (requests, tokens or max_queue_wait), shutting down, or
  //                      (shed_late) predicted to finish after its deadline because of the work
  //                      queued ahead: retryable
  absl::Status Schedule(std::unique_ptr<Task>* task);

  // All or none: the tasks of one call (same model), admitted under one lock hold, so a call
  // refused for a full queue leaves nothing queued behind it (no sibling to sweep later). The
  // queue limits and the deadline prediction apply to the group as a whole (its last task). OK:
  // every element is null and each task's done is called exactly once. Otherwise no element is
  // touched, and *failed_index (if given) is the task the status is about, or -1 for the group.
  absl::Status ScheduleAll(std::span<std::unique_ptr<Task>> tasks, int* failed_index = nullptr);

  // A cheap check before the caller spends per-call work (tokenization) on a call of `tasks`
  // sequences: refuses, with the status and accounting Schedule() would use, what the queue's
  // state alone already refuses (shutting down; queue full by requests; predicted wait over
  // max_queue_wait; with shed_late, a deadline that even the wait alone overruns). OK promises
  // nothing: Schedule() still decides. Unknown models pass (Schedule() says NOT_FOUND).
  absl::Status PreAdmit(std::string_view model, int64_t tasks, int priority, absl::Time deadline);

  // The same for a derived task type: on refusal the task is handed back in *task.
  template <typename T>
  requires(std::derived_from<T, Task> && !std::same_as<T, Task>) absl::Status
      Schedule(std::unique_ptr<T>* task) {
    if (task == nullptr) return Schedule(static_cast<std::unique_ptr<Task>*>(nullptr));
    std::unique_ptr<Task> base = std::move(*task);
    absl::Status status = Schedule(&base);
    if (!status.ok()) task->reset(static_cast<T*>(base.release()));
    return status;
  }

  // Stops accepting (Schedule() -> UNAVAILABLE), then drains or fails the queued tasks as `options`
  // says, waits for running batches to finish (they cannot be interrupted; their tasks complete
  // normally) and joins the workers. Blocks; must not be called from a done callback or an
  // executor. Later calls wait for the first to finish.
  void Shutdown(const ShutdownOptions& options = {});

  // False once Shutdown() has started (for readiness probes).
  bool IsAccepting() const;

  // Snapshot of one model's queue, counts and predictor. NOT_FOUND for an unknown model.
  absl::StatusOr<ModelStats> GetModelStats(std::string_view model) const;

  // Test hook: returns once every worker is either blocked in BatchExecutor::Run() or asleep with
  // nothing due at the clock's current time, and every completion triggered so far was delivered.
  // With a FakeClock this makes "advance time, then check" tests deterministic.
  void WaitForIdleForTesting();

 private:
  struct Entry;
  struct Level;
  struct ModelQueue;
  struct Finished;
  struct FormedBatch;
  struct Work;
  struct Picked;
  struct Worker;
  enum class WorkerState { kPlanning, kSleeping, kRunning, kCompleting, kExited };

  explicit Scheduler(SchedulerOptions options);
  void Start();
  void WorkerLoop(int index);

  ModelQueue* FindQueue(std::string_view model) const;
  absl::Status Reject(ModelQueue* queue, std::string_view model, absl::Status status);

  // All *Locked methods require mu_.
  absl::Time PlanLocked(int worker, absl::Time now, Work& work);
  absl::Time DueLocked(const ModelQueue& queue, absl::Time now) const;
  void SweepLocked(ModelQueue& queue, absl::Time now, std::vector<Finished>& out);
  AdmissionEstimate EstimateLocked(const ModelQueue& queue, int priority, absl::Time now) const;
  double RunningSecondsLocked(absl::Time now) const;
  void RecomputeHintsLocked(ModelQueue& queue);
  void FormBatchLocked(int worker, ModelQueue& queue, absl::Time now, Work& work);
  double BudgetLevelLocked(const ModelQueue& queue, const std::vector<Picked>& picked,
                           absl::Time now) const;
  void TakeAllQueuedLocked(std::vector<Finished>& out, std::string_view reason);
  void WakeOneSleeperLocked(absl::Time due);
  void WakeAllLocked();
  void SetWorkerStateLocked(int worker, WorkerState state);
  void NotifyDepthLocked(const ModelQueue& queue);
  void NotifyIfDrainedLocked();

  void RunBatch(int worker, FormedBatch& batch, std::unique_lock<std::mutex>& lock);
  void Complete(Finished finished, absl::Time now);

  const SchedulerOptions options_;
  Clock* const clock_;
  SchedulerObserver* const observer_;
  Clock::ListenerId listener_ = 0;

  // Model lookup for Schedule(); entries are never removed, so ModelQueue pointers stay valid.
  mutable std::shared_mutex models_mu_;  // Ordered before mu_.
  absl::flat_hash_map<std::string, std::unique_ptr<ModelQueue>> models_;

  mutable std::mutex mu_;
  std::condition_variable drained_cv_;  // Shutdown() waits here (workers wait on their own).
  std::condition_variable idle_cv_;     // WaitForIdleForTesting() waits here.
  // Everything below is guarded by mu_.
  std::vector<ModelQueue*> queues_;
  std::vector<Worker> workers_;
  uint64_t next_seq_ = 0;
  uint64_t epoch_ = 0;      // Bumped when every worker should look again (testing, clock jumps).
  uint64_t sleep_seq_ = 0;  // Orders sleeping workers: the most recent one is woken first.
  int idle_waiters_ = 0;
  int64_t queued_total_ = 0;
  int64_t in_flight_total_ = 0;
  bool accepting_ = true;
  bool draining_ = false;
  bool shutdown_started_ = false;
  bool stop_ = false;
  bool joined_ = false;

  std::vector<std::thread> threads_;  // Written by Start() and Shutdown() only.
};

}  // namespace topserve::batching
