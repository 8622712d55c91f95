// Prometheus metrics of the server (names in docs/api.md and ../shared/notes/serving.md). Families
// are registered once, and every series of every configured model is created at start-up (so it
// reads zero before the first request); the hot path only touches cached references. Labels are
// low-cardinality: model (a configured name, "_unknown" for names that are not, "_all" for
// ListModels), method, code, layer.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

#include "absl/container/flat_hash_map.h"
#include "batching/observer.h"
#include "batching/task.h"
#include "engine/pruning.h"

namespace topserve::server {

enum class Method { kClassify, kClassifyStream, kAnswer, kListModels, kGetModel };
inline constexpr int kNumMethods = 5;
std::string_view MethodName(Method method);

struct ModelMetricsSpec {
  std::string name;
  int64_t layers = 0;
  bool qa = false;
};

class Metrics final : public batching::SchedulerObserver {
 public:
  static constexpr std::string_view kUnknownModel = "_unknown";
  static constexpr std::string_view kAllModels = "_all";
  static constexpr int kNumCodes = 17;  // status codes 0..16 (absl and gRPC agree)

  Metrics(const std::vector<ModelMetricsSpec>& models, const std::string& version);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // One finished RPC (or one ClassifyStream message): requests_total and request_duration_seconds.
  // `model` is a configured name, kUnknownModel or kAllModels.
  void RecordRequest(std::string_view model, Method method, absl::StatusCode code, double seconds);
  // One sequence (a classification input or a QA window) that ran: queue and compute durations,
  // FLOPs fraction, budget used, tokens kept per layer, FLOPs counters.
  void RecordSequence(std::string_view model, Method method, const batching::TaskReport& report,
                      const engine::PruneReport& plan, int64_t flops, int64_t unpruned_flops);
  // RPCs in progress.
  void AddInflight(std::string_view model, Method method, double delta);
  void SetModelReady(std::string_view model, bool ready);

  // batching::SchedulerObserver.
  void OnQueueDepth(std::string_view model, const batching::QueueDepth& depth) override;
  void OnBatchDone(const batching::BatchStats& stats) override;
  void OnShed(std::string_view model, batching::ShedReason reason, int64_t tasks) override;

 private:
  struct MethodSeries {
    std::array<std::atomic<prometheus::Counter*>, kNumCodes> requests{};
    prometheus::Histogram* request_duration = nullptr;
    prometheus::Histogram* queue_duration = nullptr;
    prometheus::Histogram* compute_duration = nullptr;
    prometheus::Gauge* inflight = nullptr;
  };
  struct ModelSeries {
    std::string name;
    std::array<MethodSeries, kNumMethods> methods;
    prometheus::Histogram* batch_size = nullptr;
    prometheus::Histogram* batch_tokens = nullptr;
    prometheus::Histogram* prediction_ratio = nullptr;  // measured / predicted batch compute time
    prometheus::Histogram* flops_fraction = nullptr;
    prometheus::Histogram* budget_used = nullptr;
    std::vector<prometheus::Histogram*> kept_ratio;  // per layer
    prometheus::Gauge* queue_depth = nullptr;
    prometheus::Gauge* queue_tokens = nullptr;
    prometheus::Gauge* running = nullptr;
    prometheus::Gauge* ready = nullptr;
    prometheus::Counter* sequences = nullptr;
    prometheus::Counter* tokens = nullptr;
    prometheus::Counter* flops = nullptr;
    prometheus::Counter* unpruned_flops = nullptr;
    std::array<prometheus::Counter*, batching::kNumShedReasons> shed{};
  };

  ModelSeries* Find(std::string_view model) const;
  prometheus::Counter& RequestCounter(ModelSeries& series, Method method, int code);

  std::shared_ptr<prometheus::Registry> registry_;
  // Serialises lazy creation of rare request-counter series in requests_ (the family is
  // prometheus-cpp's, thread-safe itself; the lock keeps two callers from adding one series twice).
  absl::Mutex add_mu_;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  // Built in the constructor and never changed: lock-free lookups.
  absl::flat_hash_map<std::string, std::unique_ptr<ModelSeries>> models_;
};

}  // namespace topserve::server
