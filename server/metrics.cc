#include "server/metrics.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace topserve::server {
namespace {

using prometheus::Histogram;

const Histogram::BucketBoundaries& SecondsBuckets() {
  static const Histogram::BucketBoundaries b = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                                1,      2.5,     5,      10,    30};
  return b;
}
const Histogram::BucketBoundaries& FractionBuckets() {
  static const Histogram::BucketBoundaries b = {0.05, 0.1, 0.2, 0.3, 0.4,  0.5,
                                                0.6,  0.7, 0.8, 0.9, 0.95, 1.0};
  return b;
}
const Histogram::BucketBoundaries& BatchSizeBuckets() {
  static const Histogram::BucketBoundaries b = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  return b;
}
const Histogram::BucketBoundaries& BatchTokensBuckets() {
  static const Histogram::BucketBoundaries b = {16,   32,   64,   128,   256,   512,  1024,
                                                2048, 4096, 8192, 16384, 32768, 65536};
  return b;
}

// Measured / predicted batch compute time: 1 is a perfect prediction; the scheduler's deadline
// decisions (predicted_late, budget lowering) are only as good as this.
const Histogram::BucketBoundaries& PredictionRatioBuckets() {
  static const Histogram::BucketBoundaries b = {0.25, 0.5,  0.67, 0.8, 0.9, 1.0,
                                                1.1,  1.25, 1.5,  2.0, 4.0};
  return b;
}

// The codes whose series exist from the start (the ones serving.md names).
constexpr absl::StatusCode kCommonCodes[] = {
    absl::StatusCode::kOk,
    absl::StatusCode::kInvalidArgument,
    absl::StatusCode::kUnavailable,
    absl::StatusCode::kResourceExhausted,
    absl::StatusCode::kDeadlineExceeded,
    absl::StatusCode::kCancelled,
    absl::StatusCode::kInternal,
    absl::StatusCode::kUnauthenticated,
};

std::string CodeName(int code) {
  // absl's names are gRPC's (the codes are the same numbers); outside 0..16 it has none.
  if (code < 0 || code >= Metrics::kNumCodes) return "UNKNOWN";
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string_view ShedReasonName(batching::ShedReason reason) {
  switch (reason) {
    case batching::ShedReason::kQueueFull: return "queue_full";
    case batching::ShedReason::kPredictedLate: return "predicted_late";
    case batching::ShedReason::kLateInQueue: return "late_in_queue";
    case batching::ShedReason::kExpired: return "expired";
  }
  return "unknown";
}

}  // namespace

std::string_view MethodName(Method method) {
  switch (method) {
    case Method::kClassify: return "Classify";
    case Method::kClassifyStream: return "ClassifyStream";
    case Method::kAnswer: return "Answer";
    case Method::kListModels: return "ListModels";
    case Method::kGetModel: return "GetModel";
  }
  return "unknown";
}

Metrics::Metrics(const std::vector<ModelMetricsSpec>& models, const std::string& version)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  requests_ = &prometheus::BuildCounter()
                   .Name("topserve_requests_total")
                   .Help(
                       "Finished RPCs (one per ClassifyStream message) by model, method and "
                       "gRPC status code")
                   .Register(r);
  auto& request_duration =
      prometheus::BuildHistogram()
          .Name("topserve_request_duration_seconds")
          .Help("Server-side RPC latency, from the handler's start to the status being sent")
          .Register(r);
  auto& queue_duration = prometheus::BuildHistogram()
                             .Name("topserve_queue_duration_seconds")
                             .Help("Time a sequence waited in the batching queue")
                             .Register(r);
  auto& compute_duration = prometheus::BuildHistogram()
                               .Name("topserve_compute_duration_seconds")
                               .Help("Compute time of the batch each sequence ran in")
                               .Register(r);
  auto& inflight = prometheus::BuildGauge()
                       .Name("topserve_inflight_requests")
                       .Help("RPCs (and ClassifyStream messages) being handled")
                       .Register(r);
  auto& batch_size = prometheus::BuildHistogram()
                         .Name("topserve_batch_size")
                         .Help("Sequences per batch run by the engine")
                         .Register(r);
  auto& batch_tokens = prometheus::BuildHistogram()
                           .Name("topserve_batch_tokens")
                           .Help("Tokens per batch run by the engine")
                           .Register(r);
  auto& prediction_ratio =
      prometheus::BuildHistogram()
          .Name("topserve_batch_compute_over_predicted")
          .Help(
              "Measured compute time of a batch / the time the scheduler's predictor expected "
              "when it formed the batch (1 = exact; above 1 = slower than predicted)")
          .Register(r);
  auto& flops_fraction =
      prometheus::BuildHistogram()
          .Name("topserve_flops_fraction")
          .Help("FLOPs used / unpruned FLOPs, per sequence (classification input or QA window)")
          .Register(r);
  auto& budget_used = prometheus::BuildHistogram()
                          .Name("topserve_budget_used")
                          .Help("Budget each sequence ran at (after any lowering under load)")
                          .Register(r);
  auto& kept_ratio =
      prometheus::BuildHistogram()
          .Name("topserve_tokens_kept_ratio")
          .Help("Fraction of a sequence's input tokens still present after each layer")
          .Register(r);
  auto& queue_depth = prometheus::BuildGauge()
                          .Name("topserve_queue_depth")
                          .Help("Sequences waiting in the model's batching queue")
                          .Register(r);
  auto& queue_tokens = prometheus::BuildGauge()
                           .Name("topserve_queue_tokens")
                           .Help("Tokens waiting in the model's batching queue")
                           .Register(r);
  auto& running = prometheus::BuildGauge()
                      .Name("topserve_running_sequences")
                      .Help("Sequences in batches being computed")
                      .Register(r);
  auto& ready = prometheus::BuildGauge()
                    .Name("topserve_model_ready")
                    .Help("1 when the model is loaded, warmed up and accepting work")
                    .Register(r);
  auto& sequences = prometheus::BuildCounter()
                        .Name("topserve_sequences_total")
                        .Help("Sequences computed (classification inputs and QA windows)")
                        .Register(r);
  auto& tokens = prometheus::BuildCounter()
                     .Name("topserve_tokens_total")
                     .Help("Input tokens of the sequences computed")
                     .Register(r);
  auto& flops = prometheus::BuildCounter()
                    .Name("topserve_flops_total")
                    .Help("FLOPs used by the sequences computed")
                    .Register(r);
  auto& unpruned = prometheus::BuildCounter()
                       .Name("topserve_unpruned_flops_total")
                       .Help("FLOPs the unpruned model would have used on the same sequences")
                       .Register(r);
  auto& shed = prometheus::BuildCounter()
                   .Name("topserve_shed_sequences_total")
                   .Help(
                       "Sequences refused or dropped without compute for load, by reason: "
                       "queue_full and predicted_late (refused, UNAVAILABLE), late_in_queue "
                       "(dropped before their deadline, predicted to miss it) and expired "
                       "(their deadline passed in the queue; both DEADLINE_EXCEEDED)")
                   .Register(r);
  prometheus::BuildGauge()
      .Name("topserve_build_info")
      .Help("Always 1; the version label says which build is running")
      .Register(r)
      .Add({{"version", version}})
      .Set(1);

  for (const ModelMetricsSpec& spec : models) {
    auto s = std::make_unique<ModelSeries>();
    s->name = spec.name;
    const prometheus::Labels model{{"model", spec.name}};
    std::vector<Method> methods = {Method::kGetModel};
    if (spec.qa) {
      methods.push_back(Method::kAnswer);
    } else {
      methods.push_back(Method::kClassify);
      methods.push_back(Method::kClassifyStream);
    }
    for (Method m : methods) {
      MethodSeries& ms = s->methods[static_cast<size_t>(m)];
      const prometheus::Labels labels{{"model", spec.name}, {"method", std::string(MethodName(m))}};
      ms.request_duration = &request_duration.Add(labels, SecondsBuckets());
      ms.inflight = &inflight.Add(labels);
      if (m == Method::kGetModel) {
        ms.requests[0] = &requests_->Add(
            {{"model", spec.name}, {"method", std::string(MethodName(m))}, {"code", "OK"}});
        continue;
      }
      ms.queue_duration = &queue_duration.Add(labels, SecondsBuckets());
      ms.compute_duration = &compute_duration.Add(labels, SecondsBuckets());
      for (absl::StatusCode code : kCommonCodes) {
        const int c = static_cast<int>(code);
        ms.requests[static_cast<size_t>(c)] = &requests_->Add(
            {{"model", spec.name}, {"method", std::string(MethodName(m))}, {"code", CodeName(c)}});
      }
    }
    s->batch_size = &batch_size.Add(model, BatchSizeBuckets());
    s->batch_tokens = &batch_tokens.Add(model, BatchTokensBuckets());
    s->prediction_ratio = &prediction_ratio.Add(model, PredictionRatioBuckets());
    s->flops_fraction = &flops_fraction.Add(model, FractionBuckets());
    s->budget_used = &budget_used.Add(model, FractionBuckets());
    for (int64_t l = 0; l < spec.layers; ++l) {
      s->kept_ratio.push_back(
          &kept_ratio.Add({{"model", spec.name}, {"layer", absl::StrCat(l)}}, FractionBuckets()));
    }
    s->queue_depth = &queue_depth.Add(model);
    s->queue_tokens = &queue_tokens.Add(model);
    s->running = &running.Add(model);
    s->ready = &ready.Add(model);
    s->sequences = &sequences.Add(model);
    s->tokens = &tokens.Add(model);
    s->flops = &flops.Add(model);
    s->unpruned_flops = &unpruned.Add(model);
    for (int reason = 0; reason < batching::kNumShedReasons; ++reason) {
      s->shed[static_cast<size_t>(reason)] = &shed.Add(
          {{"model", spec.name},
           {"reason", std::string(ShedReasonName(static_cast<batching::ShedReason>(reason)))}});
    }
    models_.emplace(spec.name, std::move(s));
  }
  // Pseudo-models: requests naming an unknown model, and ListModels.
  for (std::string_view pseudo : {kUnknownModel, kAllModels}) {
    auto s = std::make_unique<ModelSeries>();
    s->name = std::string(pseudo);
    for (int m = 0; m < kNumMethods; ++m) {
      const Method method = static_cast<Method>(m);
      if ((pseudo == kAllModels) != (method == Method::kListModels)) continue;
      s->methods[static_cast<size_t>(m)].request_duration = &request_duration.Add(
          {{"model", s->name}, {"method", std::string(MethodName(method))}}, SecondsBuckets());
    }
    models_.emplace(s->name, std::move(s));
  }
}

Metrics::ModelSeries* Metrics::Find(std::string_view model) const {
  auto it = models_.find(absl::string_view(model.data(), model.size()));
  return it == models_.end() ? nullptr : it->second.get();
}

prometheus::Counter& Metrics::RequestCounter(ModelSeries& s, Method method, int code) {
  auto& slot = s.methods[static_cast<size_t>(method)].requests[static_cast<size_t>(code)];
  prometheus::Counter* c = slot.load(std::memory_order_acquire);
  if (c != nullptr) return *c;
  absl::MutexLock lock(&add_mu_);
  c = slot.load(std::memory_order_relaxed);
  if (c == nullptr) {
    c = &requests_->Add(
        {{"model", s.name}, {"method", std::string(MethodName(method))}, {"code", CodeName(code)}});
    slot.store(c, std::memory_order_release);
  }
  return *c;
}

void Metrics::RecordRequest(std::string_view model, Method method, absl::StatusCode code,
                            double seconds) {
  ModelSeries* s = Find(model);
  if (s == nullptr) s = Find(kUnknownModel);
  const int c = std::clamp(static_cast<int>(code), 0, kNumCodes - 1);
  RequestCounter(*s, method, c).Increment();
  MethodSeries& ms = s->methods[static_cast<size_t>(method)];
  if (ms.request_duration != nullptr) ms.request_duration->Observe(seconds);
}

void Metrics::RecordSequence(std::string_view model, Method method,
                             const batching::TaskReport& report, const engine::PruneReport& plan,
                             int64_t flops, int64_t unpruned_flops) {
  ModelSeries* s = Find(model);
  if (s == nullptr || s->batch_size == nullptr) return;
  MethodSeries& ms = s->methods[static_cast<size_t>(method)];
  if (ms.queue_duration != nullptr) {
    ms.queue_duration->Observe(absl::ToDoubleSeconds(report.queue_time));
    ms.compute_duration->Observe(absl::ToDoubleSeconds(report.compute_time));
  }
  s->flops_fraction->Observe(plan.flops_fraction());
  s->budget_used->Observe(report.budget_used);
  const double n = static_cast<double>(std::max<int64_t>(1, plan.tokens_in));
  for (size_t l = 0; l < s->kept_ratio.size(); ++l) {
    const double kept = l < plan.kept.size() ? static_cast<double>(plan.kept[l]) : n;
    s->kept_ratio[l]->Observe(kept / n);
  }
  s->sequences->Increment();
  s->tokens->Increment(static_cast<double>(plan.tokens_in));
  s->flops->Increment(static_cast<double>(flops));
  s->unpruned_flops->Increment(static_cast<double>(unpruned_flops));
}

void Metrics::AddInflight(std::string_view model, Method method, double delta) {
  ModelSeries* s = Find(model);
  if (s == nullptr) return;
  prometheus::Gauge* g = s->methods[static_cast<size_t>(method)].inflight;
  if (g != nullptr) g->Increment(delta);
}

void Metrics::SetModelReady(std::string_view model, bool ready) {
  ModelSeries* s = Find(model);
  if (s != nullptr && s->ready != nullptr) s->ready->Set(ready ? 1 : 0);
}

void Metrics::OnQueueDepth(std::string_view model, const batching::QueueDepth& depth) {
  ModelSeries* s = Find(model);
  if (s == nullptr || s->queue_depth == nullptr) return;
  s->queue_depth->Set(static_cast<double>(depth.queued_tasks));
  s->queue_tokens->Set(static_cast<double>(depth.queued_tokens));
  s->running->Set(static_cast<double>(depth.in_flight_tasks));
}

void Metrics::OnShed(std::string_view model, batching::ShedReason reason, int64_t tasks) {
  ModelSeries* s = Find(model);
  const size_t r = static_cast<size_t>(reason);
  if (s == nullptr || r >= s->shed.size() || s->shed[r] == nullptr) return;
  s->shed[r]->Increment(static_cast<double>(tasks));
}

void Metrics::OnBatchDone(const batching::BatchStats& stats) {
  ModelSeries* s = Find(stats.model);
  if (s == nullptr || s->batch_size == nullptr) return;
  s->batch_size->Observe(stats.size);
  s->batch_tokens->Observe(static_cast<double>(stats.tokens));
  // Only batches that ran: a failed Run says nothing about the predictor, and a batch formed
  // before the predictor had a measurement has no prediction to compare.
  if (stats.status.ok() && stats.predicted_compute_time > absl::ZeroDuration()) {
    s->prediction_ratio->Observe(
        absl::FDivDuration(stats.compute_time, stats.predicted_compute_time));
  }
}

}  // namespace topserve::server
