// A unit of work for the batching scheduler: one request (a tokenized text or pair) for one model.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace topserve::batching {

// A cheap, copyable, thread-safe cancellation flag shared by the RPC layer (which calls Cancel(),
// e.g. from ServerUnaryReactor::OnCancel) and the scheduler/executor (which poll it). Copies share
// the flag. Cancelling is idempotent and never blocks.
class CancellationToken {
 public:
  CancellationToken() : flag_(std::make_shared<std::atomic<bool>>(false)) {}
  void Cancel() const { flag_->store(true, std::memory_order_release); }
  bool IsCancelled() const { return flag_->load(std::memory_order_acquire); }

 private:
  std::shared_ptr<std::atomic<bool>> flag_;
};

// What the scheduler did with a task. The first group is filled in before the batch runs (the
// executor must run the task at `budget_used`); the rest when the task completes.
struct TaskReport {
  // The budget the task runs at: its own `budget`, or lower (never below `min_budget`) when the
  // scheduler predicted a deadline miss. Set when the task enters a batch; 0 if it never did.
  double budget_used = 0;
  bool budget_lowered = false;
  // Cost of the task at budget_used in the model's cost units (ModelOptions::cost).
  double planned_cost = 0;
  int batch_size = 0;        // Tasks in the task's batch (0 if it never ran).
  int64_t batch_tokens = 0;  // Tokens in the task's batch.
  int worker_index = -1;     // Worker that ran the batch.

  absl::Time enqueue_time = absl::InfinitePast();  // When Schedule() accepted it.
  absl::Time start_time = absl::InfinitePast();    // When its batch started (InfinitePast: never).
  absl::Time end_time = absl::InfinitePast();      // When it was completed.
  absl::Duration queue_time{};    // enqueue -> batch start, or -> completion if it never ran.
  absl::Duration compute_time{};  // Duration of its batch's Run() (zero if it never ran).
};

// The server derives its request type from Task, adding the executor's input (token ids, segment
// ids) and output (logits, per-layer kept tokens, FLOPs), and downcasts in its BatchExecutor.
//
// Ownership and lifetime:
//  - The caller creates the task, fills in the fields below and passes it to Scheduler::Schedule().
//    If Schedule() returns OK, the scheduler owns the task from then on and `done` will be called
//    exactly once; if it returns an error, the task (and its `done`) stays with the caller and
//    `done` is never called.
//  - While queued or running, the scheduler reads the input fields; nobody may change them (except
//    through `cancellation`, which is thread-safe).
//  - During BatchExecutor::Run() the executor may read and write the task's own (derived) fields
//    and call SetError(); no other thread touches the task meanwhile.
//  - Completion: the scheduler moves `done` out of the task and calls it with the task, handing
//    ownership back. status OK means the executor ran the task and its outputs are valid;
//    otherwise the outputs are unspecified (CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE at shutdown,
//    the batch's error, or the error passed to SetError()). `done` runs on a scheduler worker
//    thread (or the thread calling Shutdown()), never inside Schedule(), with no scheduler lock
//    held: it may call Schedule() but must not block for long, throw, or call Shutdown().
class Task {
 public:
  using DoneCallback = absl::AnyInvocable<void(std::unique_ptr<Task> task, absl::Status status)>;

  Task() = default;
  virtual ~Task() = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;

  // ---- Inputs, set by the caller before Schedule(). ----
  std::string model;   // Selects the model queue (Scheduler::AddModel()).
  int64_t tokens = 0;  // The task's size(): tokens after tokenization, >= 1.
  // Fraction of the unpruned FLOPs the request may use, in (0, 1].
  double budget = 1.0;
  // If set (in (0, budget]), the scheduler may lower the budget down to this value to meet the
  // deadline under load. Unset: the budget is never changed.
  std::optional<double> min_budget;
  int priority = 0;  // Higher runs first; FIFO within a level.
  // Absolute, on the scheduler's clock (for RealClock: absl::Now()-based, e.g.
  // absl::FromChrono(server_context->deadline())). A task still queued at its deadline is
  // completed with DEADLINE_EXCEEDED and never computed.
  absl::Time deadline = absl::InfiniteFuture();
  CancellationToken cancellation;
  DoneCallback done;  // Required.

  // ---- For the executor, during Run(). ----
  // Fails this task only (the rest of the batch is unaffected). The last call wins.
  void SetError(absl::Status status) { error_ = std::move(status); }
  bool cancelled() const { return cancellation.IsCancelled(); }

  // ---- Filled in by the scheduler. ----
  const TaskReport& report() const { return report_; }

 private:
  friend class Scheduler;
  TaskReport report_;
  absl::Status error_;
};

// Helper for executors and callbacks that know the concrete type.
template <typename T>
T& TaskAs(Task& task) {
  return static_cast<T&>(task);
}
template <typename T>
std::unique_ptr<T> TaskAs(std::unique_ptr<Task> task) {
  return std::unique_ptr<T>(static_cast<T*>(task.release()));
}

}  // namespace topserve::batching
