// What the RPC handlers call: the served models, request validation and tokenization, scheduling
// of each sequence on the batcher, and assembling responses. No gRPC types beyond the generated
// messages: every outcome is an absl::Status, converted to a grpc::Status once, by the handlers.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "batching/scheduler.h"
#include "engine/bert_model.h"
#include "engine/pruning.h"
#include "server/config.h"
#include "server/executor.h"
#include "server/metrics.h"
#include "topserve/v1/inference.pb.h"

namespace topserve::server {

// One configured model. `qa`, `layers` and `labels` are known from config.json before the weights
// load; everything else is valid once `state` is READY (or later DRAINING): it is written before
// the state's release store and never changed afterwards.
struct ServedModel {
  ModelConfig config;
  bool qa = false;
  int64_t layers = 0;
  std::atomic<int> state{v1::MODEL_STATE_LOADING};  // A v1::ModelState value.

  std::unique_ptr<engine::BertModel> engine;
  std::unique_ptr<engine::BudgetPlanner> own_planner;  // When config.schedule overrides the dir's.
  const engine::BudgetPlanner* planner = nullptr;      // own_planner or engine->planner().
  std::shared_ptr<EngineExecutor> executor;
  v1::ModelInfo info;  // Everything but `state`.

  bool ready() const { return state.load(std::memory_order_acquire) == v1::MODEL_STATE_READY; }
};

// Reads config.json of every model (task, layers) without loading weights: the fast start-up check.
absl::StatusOr<std::vector<std::unique_ptr<ServedModel>>> PrepareModels(const ServerConfig& config);

class Runtime {
 public:
  using DoneFn = absl::AnyInvocable<void(absl::Status)>;

  // `metrics` and `scheduler` must outlive the runtime.
  Runtime(ServerConfig config, std::vector<std::unique_ptr<ServedModel>> models, Metrics* metrics,
          batching::Scheduler* scheduler);

  const ServerConfig& config() const { return config_; }
  const std::vector<std::unique_ptr<ServedModel>>& models() const { return models_; }

  // Loads the weights (and schedule override), warms up, registers the model with the scheduler and
  // marks it READY. Errors name the model.
  absl::Status LoadModel(ServedModel& model);

  // Classify (or one ClassifyStream message): validates, tokenizes (on the calling thread),
  // schedules every input and calls `done` exactly once (possibly before returning) when `response`
  // is complete or the call failed. `token` cancels the call. `response` must stay valid until
  // done.
  void StartClassify(const v1::ClassifyRequest& request, v1::ClassifyResponse* response,
                     Method method, absl::Time deadline, batching::CancellationToken token,
                     DoneFn done);
  void StartAnswer(const v1::AnswerRequest& request, v1::AnswerResponse* response,
                   absl::Time deadline, batching::CancellationToken token, DoneFn done);
  absl::Status ListModels(v1::ListModelsResponse* response);
  absl::Status GetModel(const v1::GetModelRequest& request, v1::ModelInfo* response);

  // Testing only: the named models' batches all fail with INTERNAL (set before LoadModel()).
  void FailModelsForTesting(std::vector<std::string> names) { fail_models_ = std::move(names); }

  // New calls fail with UNAVAILABLE from now on; models report DRAINING.
  void BeginDrain();
  bool draining() const { return draining_.load(std::memory_order_acquire); }

  // The metrics label of a model name as a call gives it: the configured name, or for an empty
  // name the first model of the task (`qa`; none for GetModel), else Metrics::kUnknownModel.
  std::string ModelLabel(const std::string& name, std::optional<bool> qa) const;

  Metrics& metrics() { return *metrics_; }
  batching::Scheduler& scheduler() { return *scheduler_; }

 private:
  friend class Job;
  // The model a request names (empty: the first one of the right task), if it can take work now.
  // `label` becomes the model's name as soon as one is identified (for metrics).
  absl::StatusOr<ServedModel*> Resolve(const std::string& name, bool qa, std::string* label) const;
  void FillInfo(const ServedModel& model, v1::ModelInfo* out) const;

  ServerConfig config_;
  std::vector<std::unique_ptr<ServedModel>> models_;
  absl::flat_hash_map<std::string, ServedModel*> by_name_;
  Metrics* metrics_;
  batching::Scheduler* scheduler_;
  std::atomic<bool> draining_{false};
  std::vector<std::string> fail_models_;
};

}  // namespace topserve::server
