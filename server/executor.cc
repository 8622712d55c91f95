#include "server/executor.h"

#include <algorithm>
#include <cmath>
#include <span>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/cost_model.h"
#include "server/report.h"

namespace topserve::server {

EngineExecutor::EngineExecutor(const engine::BertModel& model, const engine::BudgetPlanner& planner,
                               int num_workers, int threads_per_worker)
    : model_(model), planner_(planner) {
  for (int i = 0; i < std::max(1, num_workers); ++i) {
    workspaces_.push_back(std::make_unique<engine::Workspace>(model, threads_per_worker));
  }
}

double EngineExecutor::Cost(int64_t tokens, double budget) const {
  auto plan = planner_.Plan(tokens, budget);
  // The request path validates tokens and budget before anything is costed, so Plan does not fail
  // here; if it ever did, the unpruned cost (an upper bound, in FLOPs like every other answer)
  // keeps the scheduler's arithmetic in one unit.
  if (!plan.ok()) {
    return static_cast<double>(FlopsFromMacs(engine::UnprunedMacs(planner_.shape(), tokens)));
  }
  return static_cast<double>(FlopsFromMacs(plan->macs));
}

absl::Status EngineExecutor::Run(const batching::Batch& batch) {
  if (batch.worker_index < 0 || static_cast<size_t>(batch.worker_index) >= workspaces_.size()) {
    return absl::InternalError(absl::StrCat("worker index ", batch.worker_index, " out of range"));
  }
  if (fail_for_testing_) return absl::InternalError("injected failure (--test-fail-model)");
  engine::Workspace& ws = *workspaces_[static_cast<size_t>(batch.worker_index)];
  if (batch.threads != ws.threads()) {
    return absl::InternalError(absl::StrCat("batch asks for ", batch.threads,
                                            " threads; the workspace runs ", ws.threads()));
  }
  std::vector<InferTask*> run;
  run.reserve(batch.tasks.size());
  for (batching::Task* t : batch.tasks) {
    InferTask& task = batching::TaskAs<InferTask>(*t);
    if (task.cancelled()) continue;  // Dropped from the batch; completes CANCELLED.
    auto plan = planner_.Plan(static_cast<int64_t>(task.ids.size()), task.report().budget_used);
    if (!plan.ok()) {
      task.SetError(
          absl::InternalError(absl::StrCat("planning failed: ", plan.status().message())));
      continue;
    }
    task.plan = std::move(*plan);
    run.push_back(&task);
  }
  if (run.empty()) return absl::OkStatus();
  std::vector<engine::SequenceInput> inputs;
  inputs.reserve(run.size());
  for (InferTask* t : run) inputs.push_back({t->ids, t->type_ids, t->plan.kept});
  std::vector<engine::SequenceOutput> outputs(run.size());
  engine::RunOptions options;
  options.placement = planner_.schedule().placement;
  if (absl::Status s = model_.Run(inputs, outputs, ws, options); !s.ok()) {
    return absl::InternalError(absl::StrCat("engine: ", s.message()));
  }
  for (size_t i = 0; i < run.size(); ++i) {
    run[i]->logits = std::move(outputs[i].logits);
    run[i]->start_logits = std::move(outputs[i].start_logits);
    run[i]->end_logits = std::move(outputs[i].end_logits);
  }
  return absl::OkStatus();
}

absl::Status EngineExecutor::Warmup() {
  const engine::Tokenizer& tok = model_.tokenizer();
  const int64_t vocab = static_cast<int64_t>(tok.vocab_size());
  const int64_t max_len = model_.max_length();
  std::vector<int64_t> lengths = {std::min<int64_t>(16, max_len), std::min<int64_t>(128, max_len),
                                  max_len};
  std::vector<std::vector<int32_t>> ids;
  for (int64_t n : lengths) {
    std::vector<int32_t> seq(static_cast<size_t>(n), static_cast<int32_t>(std::min<int64_t>(
                                                         1996, vocab - 1)));  // "the" in BERT
    seq.front() = tok.cls_id();
    if (n > 1) seq.back() = tok.sep_id();
    ids.push_back(std::move(seq));
  }
  for (double budget : {1.0, 0.5}) {
    std::vector<engine::PruneReport> plans;
    for (const auto& seq : ids) {
      ASSIGN_OR_RETURN(engine::PruneReport plan,
                       planner_.Plan(static_cast<int64_t>(seq.size()), budget));
      plans.push_back(std::move(plan));
    }
    std::vector<engine::SequenceInput> inputs;
    for (size_t i = 0; i < ids.size(); ++i) inputs.push_back({ids[i], {}, plans[i].kept});
    engine::RunOptions options;
    options.placement = planner_.schedule().placement;
    for (auto& ws : workspaces_) {
      std::vector<engine::SequenceOutput> outputs(inputs.size());
      if (absl::Status s = model_.Run(inputs, outputs, *ws, options); !s.ok()) {
        return absl::InternalError(absl::StrCat("warm-up run failed: ", s.message()));
      }
      for (const auto& out : outputs) {
        for (const auto* v : {&out.logits, &out.start_logits, &out.end_logits}) {
          if (!std::all_of(v->begin(), v->end(), [](float x) { return std::isfinite(x); })) {
            return absl::InternalError("warm-up produced non-finite outputs (corrupt weights?)");
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace topserve::server
