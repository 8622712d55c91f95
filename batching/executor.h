// The interface the server implements to run a batch on the engine.
#pragma once

#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "batching/task.h"

namespace topserve::batching {

// One batch handed to an executor. Valid only during Run().
struct Batch {
  std::string_view model;
  // All tasks belong to `model`. Each runs at task->report().budget_used. Tasks are ordered by
  // priority, then by closeness in length to the first one (the oldest task of the top priority).
  std::span<Task* const> tasks{};
  int worker_index = 0;  // In [0, SchedulerOptions::num_workers).
  // SchedulerOptions::threads_per_worker: the intra-batch parallelism (OpenMP/oneDNN threads) the
  // executor should use for this batch.
  int threads = 1;
  double planned_cost = 0;  // Sum of the tasks' report().planned_cost.
  double budget_level = 1;  // The scheduler's load level for this batch (1 = nobody lowered).
};

// Concurrency: Run() is called from up to SchedulerOptions::num_workers threads at once (each with
// its own batch), so implementations must be thread-safe. Each worker thread runs one batch at a
// time; intra-batch parallelism is the executor's business (Batch::threads).
class BatchExecutor {
 public:
  virtual ~BatchExecutor() = default;

  // Runs the batch and writes each task's outputs into the task. A non-OK return fails every task
  // of the batch with that status (an exception escaping Run() becomes INTERNAL for every task);
  // Task::SetError() fails one task. Tasks cancelled while running may be skipped (check
  // task->cancelled()): their outputs are discarded and they complete with CANCELLED regardless.
  virtual absl::Status Run(const Batch& batch) = 0;
};

}  // namespace topserve::batching
