// The glue between the batching scheduler and the engine: the server's task type (one tokenized
// sequence and its outputs) and the BatchExecutor that runs a batch of them on a BertModel.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "batching/executor.h"
#include "batching/task.h"
#include "engine/bert_model.h"
#include "engine/pruning.h"

namespace topserve::server {

// One sequence: a classification input or a QA window.
class InferTask final : public batching::Task {
 public:
  // ---- Input (set before Schedule()). ----
  std::vector<int32_t> ids;
  std::vector<int32_t> type_ids;
  int index = 0;  // Which input / window of its call.

  // ---- Output (written by EngineExecutor::Run()). ----
  engine::PruneReport plan;  // The plan it ran with (at report().budget_used).
  std::vector<float> logits;
  std::vector<float> start_logits;
  std::vector<float> end_logits;
};

// Runs batches of InferTasks on one model. Thread-safe: each scheduler worker uses its own
// Workspace (Batch::worker_index).
class EngineExecutor final : public batching::BatchExecutor {
 public:
  // `model` and `planner` must outlive the executor. One Workspace per scheduler worker, each
  // running `threads_per_worker` OpenMP threads (the scheduler's Batch::threads).
  EngineExecutor(const engine::BertModel& model, const engine::BudgetPlanner& planner,
                 int num_workers, int threads_per_worker);

  absl::Status Run(const batching::Batch& batch) override;

  // Runs every worker's workspace a few times (short, long, pruned) so that buffers are allocated
  // and oneDNN primitives created before the first request; checks the outputs are finite.
  // Call before the model is added to the scheduler (no worker may be using a workspace).
  absl::Status Warmup();

  // FLOPs of a task of `tokens` tokens at `budget` (the scheduler's cost function).
  double Cost(int64_t tokens, double budget) const;

  // Testing only (topserve-server --test-fail-model): every batch fails with INTERNAL.
  void FailForTesting() { fail_for_testing_ = true; }

 private:
  const engine::BertModel& model_;
  const engine::BudgetPlanner& planner_;
  std::vector<std::unique_ptr<engine::Workspace>> workspaces_;
  bool fail_for_testing_ = false;
};

}  // namespace topserve::server
