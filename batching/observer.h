// Statistics hooks, for the server's Prometheus metrics. No global state: the observer is passed in
// SchedulerOptions and all numbers are per scheduler and per model.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "batching/task.h"

namespace topserve::batching {

struct QueueDepth {
  int64_t queued_tasks = 0;  // Accepted, not yet in a batch (includes not-yet-swept cancelled).
  int64_t queued_tokens = 0;
  int64_t in_flight_tasks = 0;  // In batches being run.
  int64_t in_flight_batches = 0;
};

struct BatchStats {
  std::string_view model;
  int worker_index = 0;
  int size = 0;
  int64_t tokens = 0;
  double planned_cost = 0;
  double budget_level = 1;
  int lowered_tasks = 0;  // Tasks that ran below their requested budget.
  absl::Duration max_queue_time{};
  absl::Duration mean_queue_time{};
  absl::Duration predicted_compute_time{};  // What the predictor expected when forming the batch.
  absl::Duration compute_time{};            // Measured Run() time.
  absl::Status status{};                    // What Run() returned.
};

// Per-model task counts since AddModel(). Every accepted task ends in exactly one of ok,
// deadline_exceeded, cancelled, failed (failed includes UNAVAILABLE at shutdown).
struct TaskCounts {
  int64_t scheduled = 0;  // Accepted by Schedule().
  int64_t rejected = 0;   // Refused by Schedule() (queue full, shutting down, invalid, ...).
  int64_t ok = 0;
  int64_t deadline_exceeded = 0;
  int64_t cancelled = 0;
  int64_t failed = 0;
  int64_t budget_lowered = 0;  // Tasks that ran below their requested budget.
  int64_t batches = 0;
  // Load shedding (ModelOptions::shed_late). Refused by Schedule() because their predicted finish
  // was past their deadline (part of `rejected`):
  int64_t shed_at_admission = 0;
  // Completed DEADLINE_EXCEEDED before their deadline, never computed, because their predicted
  // finish was past it (part of `deadline_exceeded`; the rest expired at their deadline):
  int64_t shed_in_queue = 0;
};

// Why work was refused or dropped without compute (for a per-reason counter).
enum class ShedReason {
  kQueueFull,      // Schedule(): UNAVAILABLE, the queue's requests or tokens are at the limit.
  kPredictedLate,  // Schedule(): UNAVAILABLE, predicted to finish after the deadline.
  kLateInQueue,    // Queued: DEADLINE_EXCEEDED before the deadline, predicted to finish after it.
  kExpired,        // Queued: DEADLINE_EXCEEDED, the deadline passed.
};
inline constexpr int kNumShedReasons = 4;

// All methods have empty defaults; override what you export. Implementations must be thread-safe
// and cheap (they run on the scheduling path) and must not call back into the Scheduler.
class SchedulerObserver {
 public:
  virtual ~SchedulerObserver() = default;

  // After every change of a model's queue depth or in-flight count. Called WITH the scheduler's
  // lock held, so calls are totally ordered (last call = current value): set gauges, nothing more.
  virtual void OnQueueDepth(std::string_view /*model*/, const QueueDepth& /*depth*/) {}
  // After a batch's Run() returned, before its tasks' callbacks. Worker thread, no lock held.
  virtual void OnBatchDone(const BatchStats& /*stats*/) {}
  // Just before a task's done callback (for every accepted task, whatever the outcome).
  virtual void OnTaskDone(std::string_view /*model*/, const Task& /*task*/,
                          const absl::Status& /*status*/) {}
  // When Schedule() refuses a task (on the caller's thread, no lock held).
  virtual void OnRejected(std::string_view /*model*/, const absl::Status& /*status*/) {}
  // When tasks are refused or dropped without compute for load (`tasks` of them at once; after
  // OnRejected for refusals, before OnTaskDone for drops). No lock held.
  virtual void OnShed(std::string_view /*model*/, ShedReason /*reason*/, int64_t /*tasks*/) {}
};

}  // namespace topserve::batching
