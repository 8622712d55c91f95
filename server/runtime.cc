#include "server/runtime.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/model_config.h"
#include "engine/qa.h"
#include "engine/tokenizer.h"
#include "server/report.h"

namespace topserve::server {
namespace {

constexpr int64_t kDefaultQaMaxLength = 384;
constexpr int64_t kDefaultDocStride = 128;
constexpr int64_t kDefaultMaxQueryTokens = 64;
constexpr int64_t kDefaultMaxAnswerTokens = 30;

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

struct Budget {
  double budget = 1;
  std::optional<double> min_budget;
};

absl::StatusOr<Budget> ResolveBudget(bool has_budget, double budget, bool has_min,
                                     double min_budget, const ModelConfig& model) {
  Budget b;
  b.budget = has_budget ? budget : model.default_budget;
  if (has_budget) {
    if (absl::Status s = engine::ValidateBudget(budget); !s.ok()) {
      return Invalid("budget", absl::StrCat(budget, " is outside (0, 1]"));
    }
    if (budget > model.max_budget) {
      return absl::ResourceExhaustedError(absl::StrCat("budget: ", budget, " is above model '",
                                                       model.name, "''s max_budget ",
                                                       model.max_budget));
    }
  }
  if (has_min) {
    if (!(min_budget > 0 && min_budget <= b.budget)) {
      return Invalid("min_budget",
                     absl::StrCat(min_budget, " is outside (0, budget = ", b.budget, "]"));
    }
    b.min_budget = min_budget;
  }
  return b;
}

absl::Status CheckText(absl::string_view field, const std::string& text, int64_t max_bytes,
                       bool allow_empty) {
  if (!allow_empty && text.empty()) return Invalid(field, "must not be empty");
  if (static_cast<int64_t>(text.size()) > max_bytes) {
    return Invalid(field, absl::StrCat(text.size(), " bytes is over the limit of ", max_bytes,
                                       " (limits.max_text_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status CheckPriority(int32_t priority, int64_t max_priority) {
  if (std::abs(static_cast<int64_t>(priority)) > max_priority) {
    return Invalid("priority", absl::StrCat(priority, " is outside [", -max_priority, ", ",
                                            max_priority, "] (limits.max_priority)"));
  }
  return absl::OkStatus();
}

// A call whose sequences or tokens exceed the model's whole queue can never be admitted: that is
// RESOURCE_EXHAUSTED (do not retry), not the UNAVAILABLE of a queue that is full right now.
absl::Status CheckFitsQueue(int64_t sequences, int64_t tokens, const ModelConfig& model) {
  const QueueConfig& q = model.batching;
  if (q.max_queue_size && sequences > *q.max_queue_size) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request needs ", sequences, " sequences; model '", model.name,
                     "' queues at most ", *q.max_queue_size, " (batching.max_queue_size)"));
  }
  if (q.max_queue_tokens && tokens > *q.max_queue_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request has ", tokens, " tokens; model '", model.name,
                     "' queues at most ", *q.max_queue_tokens, " (batching.max_queue_tokens)"));
  }
  return absl::OkStatus();
}

absl::Status CheckTokens(int64_t tokens, int64_t quota) {
  if (tokens > quota) {
    return absl::ResourceExhaustedError(absl::StrCat("the request has ", tokens,
                                                     " tokens; the quota is ", quota,
                                                     " per call (limits.max_tokens_per_call)"));
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// A call in progress: its sequences are scheduled as separate tasks; the last one to complete
// assembles the response and calls `done`.
class Job : public std::enable_shared_from_this<Job> {
 public:
  Job(Runtime& rt, ServedModel& model, Method method, absl::Time start, Budget budget,
      absl::Time deadline, int32_t priority, batching::CancellationToken token,
      Runtime::DoneFn done)
      : rt_(rt),
        model_(model),
        method_(method),
        start_(start),
        budget_(budget),
        deadline_(deadline),
        priority_(priority),
        token_(std::move(token)),
        done_(std::move(done)) {
    rt_.metrics().AddInflight(model_.config.name, method_, 1);
  }
  virtual ~Job() = default;

  // Schedules every task, all or none (so a refused call leaves no sibling queued that a worker
  // would have to sweep before the call could answer). The call may complete (and `done` run)
  // before this returns.
  void Run(std::vector<std::unique_ptr<InferTask>> tasks) {
    num_tasks_ = static_cast<int>(tasks.size());
    pending_.store(num_tasks_ + 1, std::memory_order_relaxed);  // +1: this function's guard
    std::vector<std::unique_ptr<batching::Task>> group;
    group.reserve(tasks.size());
    for (auto& t : tasks) {
      t->model = model_.config.name;
      t->tokens = static_cast<int64_t>(t->ids.size());
      t->budget = budget_.budget;
      t->min_budget = budget_.min_budget;
      t->priority = priority_;
      t->deadline = deadline_;
      t->cancellation = token_;
      t->done = [self = shared_from_this()](std::unique_ptr<batching::Task> task,
                                            absl::Status status) {
        self->TaskDone(batching::TaskAs<InferTask>(std::move(task)), std::move(status));
      };
      group.push_back(std::move(t));
    }
    int failed = -1;
    absl::Status s = rt_.scheduler().ScheduleAll(std::span(group), &failed);
    if (!s.ok()) {
      // Nothing was queued. The tasks hold callbacks that keep this job alive: drop them first.
      group.clear();
      Fail(std::move(s), failed);
      Release(num_tasks_ + 1);
      return;
    }
    Release(1);  // Drop the guard.
  }

 protected:
  // A sequence finished OK: write its part of the response (tasks write disjoint parts and may
  // run concurrently).
  virtual void SequenceDone(InferTask& task) = 0;
  // Every sequence finished OK: complete the response (runs once, alone).
  virtual absl::Status Assemble() { return absl::OkStatus(); }
  // How an error of sequence `index` is introduced ("inputs[3]").
  virtual std::string Where(int index) const = 0;

  void Record(const InferTask& task) {
    rt_.metrics().RecordSequence(model_.config.name, method_, task.report(), task.plan,
                                 FlopsFromMacs(task.plan.macs),
                                 FlopsFromMacs(task.plan.unpruned_macs));
  }

  Runtime& rt_;
  ServedModel& model_;
  const Method method_;
  const absl::Time start_;
  const Budget budget_;

 private:
  void TaskDone(std::unique_ptr<InferTask> task, absl::Status status) {
    if (status.ok()) {
      Record(*task);
      SequenceDone(*task);
    } else {
      Fail(std::move(status), task->index);
    }
    task.reset();
    Release(1);
  }

  // Keeps the most telling error: a real failure wins over the CANCELLED it caused in the siblings.
  void Fail(absl::Status status, int index) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      const bool replace = error_.ok() || (absl::IsCancelled(error_) && !absl::IsCancelled(status));
      if (replace) {
        error_ =
            num_tasks_ > 1 && index >= 0 ? WithPrefix(status, Where(index)) : std::move(status);
      }
    }
    failed_.store(true, std::memory_order_release);
    token_.Cancel();  // Drop the rest of the call.
  }

  void Release(int n) {
    if (pending_.fetch_sub(n, std::memory_order_acq_rel) != n) return;
    absl::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = error_;
    }
    if (status.ok()) status = Assemble();
    rt_.metrics().RecordRequest(model_.config.name, method_, status.code(),
                                Seconds(absl::Now() - start_));
    rt_.metrics().AddInflight(model_.config.name, method_, -1);
    Runtime::DoneFn done = std::move(done_);
    done(std::move(status));
  }

  const absl::Time deadline_;
  const int32_t priority_;
  batching::CancellationToken token_;
  Runtime::DoneFn done_;
  int num_tasks_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<bool> failed_{false};
  std::mutex mu_;
  absl::Status error_;
};

namespace {

class ClassifyJob final : public Job {
 public:
  ClassifyJob(Runtime& rt, ServedModel& model, Method method, absl::Time start, Budget budget,
              absl::Time deadline, int32_t priority, batching::CancellationToken token,
              Runtime::DoneFn done, v1::ClassifyResponse* response, bool return_logits,
              std::vector<bool> truncated)
      : Job(rt, model, method, start, budget, deadline, priority, std::move(token),
            std::move(done)),
        response_(response),
        return_logits_(return_logits),
        truncated_(std::move(truncated)) {}

 protected:
  void SequenceDone(InferTask& task) override {
    v1::Classification* r = response_->mutable_results(task.index);
    const std::vector<std::string>& labels = model_.engine->config().labels;
    const std::vector<float>& logits = task.logits;
    const float top = logits.empty() ? 0.f : *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (float v : logits) z += std::exp(static_cast<double>(v) - top);
    size_t best = 0;
    auto* probs = r->mutable_probabilities();
    for (size_t k = 0; k < logits.size() && k < labels.size(); ++k) {
      (*probs)[labels[k]] = static_cast<float>(std::exp(static_cast<double>(logits[k]) - top) / z);
      if (logits[k] > logits[best]) best = k;
    }
    if (best < labels.size()) {
      r->set_label(labels[best]);
      r->set_score(static_cast<float>(std::exp(static_cast<double>(logits[best]) - top) / z));
    }
    if (return_logits_) r->mutable_logits()->Add(logits.begin(), logits.end());
    const batching::TaskReport& rep = task.report();
    FillPruningReport(task.plan, model_.layers, budget_.budget, rep, r->mutable_report());
    r->set_queue_seconds(Seconds(rep.queue_time));
    r->set_compute_seconds(Seconds(rep.compute_time));
    r->set_batch_size(rep.batch_size);
    r->set_batch_tokens(rep.batch_tokens);
    r->set_truncated(truncated_[static_cast<size_t>(task.index)]);
  }
  std::string Where(int index) const override { return absl::StrCat("inputs[", index, "]"); }

 private:
  v1::ClassifyResponse* response_;
  const bool return_logits_;
  const std::vector<bool> truncated_;
};

class AnswerJob final : public Job {
 public:
  AnswerJob(Runtime& rt, ServedModel& model, absl::Time start, Budget budget, absl::Time deadline,
            int32_t priority, batching::CancellationToken token, Runtime::DoneFn done,
            const v1::AnswerRequest* request, v1::AnswerResponse* response,
            std::vector<engine::Encoding> windows, engine::QaOptions options)
      : Job(rt, model, Method::kAnswer, start, budget, deadline, priority, std::move(token),
            std::move(done)),
        request_(request),
        response_(response),
        windows_(std::move(windows)),
        options_(options),
        starts_(windows_.size()),
        ends_(windows_.size()) {}

 protected:
  void SequenceDone(InferTask& task) override {
    const size_t w = static_cast<size_t>(task.index);
    starts_[w] = std::move(task.start_logits);
    ends_[w] = std::move(task.end_logits);
    v1::WindowReport* r = response_->mutable_windows(task.index);
    const batching::TaskReport& rep = task.report();
    FillPruningReport(task.plan, model_.layers, budget_.budget, rep, r->mutable_report());
    r->set_queue_seconds(Seconds(rep.queue_time));
    r->set_compute_seconds(Seconds(rep.compute_time));
    r->set_batch_size(rep.batch_size);
    r->set_batch_tokens(rep.batch_tokens);
  }

  absl::Status Assemble() override {
    const std::string& context = request_->context();
    std::vector<engine::AnswerSpan> spans =
        engine::BestSpans(context, windows_, starts_, ends_, options_);
    for (const engine::AnswerSpan& s : spans) {
      v1::AnswerSpan* a = response_->add_n_best();
      a->set_text(s.text);
      a->set_byte_start(s.begin);
      a->set_byte_end(s.end);
      const int32_t start = CodePoints(context, s.begin);
      a->set_start(start);
      a->set_end(start + CodePoints(std::string_view(context).substr(static_cast<size_t>(s.begin)),
                                    s.end - s.begin));
      a->set_score(s.score);
      a->set_window(s.window);
    }
    if (!spans.empty()) *response_->mutable_answer() = response_->n_best(0);
    int64_t flops = 0, unpruned = 0;
    double queue = 0, compute = 0;
    for (const v1::WindowReport& w : response_->windows()) {
      flops += w.report().flops();
      unpruned += w.report().unpruned_flops();
      queue = std::max(queue, w.queue_seconds());
      compute = std::max(compute, w.compute_seconds());
    }
    response_->set_flops(flops);
    response_->set_unpruned_flops(unpruned);
    response_->set_flops_fraction(
        unpruned > 0 ? static_cast<double>(flops) / static_cast<double>(unpruned) : 1.0);
    response_->set_queue_seconds(queue);
    response_->set_compute_seconds(compute);
    return absl::OkStatus();
  }
  std::string Where(int index) const override { return absl::StrCat("window ", index); }

 private:
  const v1::AnswerRequest* request_;
  v1::AnswerResponse* response_;
  const std::vector<engine::Encoding> windows_;
  const engine::QaOptions options_;
  std::vector<std::vector<float>> starts_, ends_;
};

absl::StatusOr<engine::Truncation> ToTruncation(v1::Truncation t) {
  switch (t) {
    case v1::TRUNCATION_UNSPECIFIED:
    case v1::TRUNCATION_LONGEST_FIRST: return engine::Truncation::kLongestFirst;
    case v1::TRUNCATION_NONE: return engine::Truncation::kNone;
    case v1::TRUNCATION_ONLY_FIRST: return engine::Truncation::kOnlyFirst;
    case v1::TRUNCATION_ONLY_SECOND: return engine::Truncation::kOnlySecond;
    default: break;
  }
  return Invalid("truncation", absl::StrCat("unknown value ", static_cast<int>(t)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------

absl::StatusOr<std::vector<std::unique_ptr<ServedModel>>> PrepareModels(
    const ServerConfig& config) {
  std::vector<std::unique_ptr<ServedModel>> models;
  for (const ModelConfig& mc : config.models) {
    auto bert = engine::LoadBertConfig(mc.path + "/config.json");
    if (!bert.ok()) return WithPrefix(bert.status(), absl::StrCat("model '", mc.name, "'"));
    // A layer count the weight file's header cannot back is a bad config.json: it stops start-up
    // here, before per-layer metrics and schedules are sized by it. (A missing or corrupt weight
    // file is the load's to report.)
    if (auto weights = engine::SafetensorsFile::Open(mc.path + "/model.safetensors");
        weights.ok()) {
      RETURN_IF_ERROR(WithPrefix(engine::CheckTensorCount(**weights, *bert),
                                 absl::StrCat("model '", mc.name, "'")));
    }
    if (bert->task == engine::Task::kFeatureExtraction) {
      return absl::InvalidArgumentError(
          absl::StrCat("model '", mc.name, "': ", mc.path,
                       "/config.json: architectures BertModel is a headless "
                       "encoder; the server serves classification and question-answering models"));
    }
    auto m = std::make_unique<ServedModel>();
    m->config = mc;
    m->qa = bert->task == engine::Task::kQuestionAnswering;
    m->layers = bert->num_layers;
    if (!mc.schedule.empty()) {
      auto schedule = engine::PruningSchedule::Load(mc.schedule, bert->num_layers);
      if (!schedule.ok()) {
        return WithPrefix(schedule.status(), absl::StrCat("model '", mc.name, "': schedule"));
      }
    }
    v1::ModelInfo& info = m->info;
    info.set_name(mc.name);
    info.set_task(m->qa ? v1::MODEL_TASK_QUESTION_ANSWERING : v1::MODEL_TASK_CLASSIFICATION);
    if (!m->qa) {
      for (const std::string& l : bert->labels) info.add_labels(l);
    }
    info.set_max_length(bert->max_position_embeddings);
    info.set_default_budget(mc.default_budget);
    info.set_max_budget(mc.max_budget);
    info.set_num_layers(static_cast<int32_t>(bert->num_layers));
    info.set_hidden_size(static_cast<int32_t>(bert->hidden_size));
    info.set_num_heads(static_cast<int32_t>(bert->num_heads));
    info.set_intermediate_size(static_cast<int32_t>(bert->intermediate_size));
    info.set_vocab_size(static_cast<int32_t>(bert->vocab_size));
    info.set_path(mc.path);
    info.set_precision(mc.precision);
    models.push_back(std::move(m));
  }
  return models;
}

Runtime::Runtime(ServerConfig config, std::vector<std::unique_ptr<ServedModel>> models,
                 Metrics* metrics, batching::Scheduler* scheduler)
    : config_(std::move(config)),
      models_(std::move(models)),
      metrics_(metrics),
      scheduler_(scheduler) {
  for (auto& m : models_) by_name_[m->config.name] = m.get();
}

absl::Status Runtime::LoadModel(ServedModel& m) {
  const ModelConfig& mc = m.config;
  auto fail = [&](const absl::Status& s) {
    return WithPrefix(s, absl::StrCat("model '", mc.name, "'"));
  };
  engine::EngineOptions eo;
  eo.num_threads = static_cast<int>(config_.batching.threads_per_worker);
  eo.precision = *engine::PrecisionFromName(mc.precision);  // NormalizeAndValidate checked it
  auto loaded = engine::BertModel::Load(mc.path, eo);
  if (!loaded.ok()) return fail(loaded.status());
  std::unique_ptr<engine::BertModel> bert = std::move(*loaded);
  // What runs, which differs from the config when the CPU lacks it (bf16 without native support).
  m.info.set_precision(std::string(engine::PrecisionName(bert->precision())));
  if (!mc.schedule.empty()) {
    auto schedule = engine::PruningSchedule::Load(mc.schedule, bert->config().num_layers);
    if (!schedule.ok()) return fail(schedule.status());
    m.own_planner = std::make_unique<engine::BudgetPlanner>(bert->shape(), std::move(*schedule));
    m.planner = m.own_planner.get();
  } else {
    m.planner = &bert->planner();
  }
  const QueueConfig& q = mc.batching;
  if (*q.max_batch_tokens < bert->max_length()) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "batching.max_batch_tokens (", *q.max_batch_tokens, ") is below the model's max_length (",
        bert->max_length(), "): long inputs could never run")));
  }
  if (m.qa && bert->config().type_vocab_size < 2) {
    return fail(absl::InvalidArgumentError(
        "question answering needs type_vocab_size >= 2 (question and context segments)"));
  }
  auto executor = std::make_shared<EngineExecutor>(
      *bert, *m.planner, static_cast<int>(config_.batching.workers),
      static_cast<int>(config_.batching.threads_per_worker));
  if (mc.warmup) {
    if (absl::Status s = executor->Warmup(); !s.ok()) return fail(s);
  }
  if (std::find(fail_models_.begin(), fail_models_.end(), mc.name) != fail_models_.end()) {
    executor->FailForTesting();
  }

  v1::ModelInfo& info = m.info;
  info.set_max_length(bert->max_length());
  const engine::PruningSchedule& sched = m.planner->schedule();
  v1::PruningSchedule* ps = info.mutable_schedule();
  ps->set_placement(std::string(engine::PlacementName(sched.placement)));
  for (double r : sched.keep_ratios) ps->add_keep_ratios(r);
  ps->set_method(sched.method);
  ps->set_source(sched.source);
  if (sched.target_flops) ps->set_target_flops(*sched.target_flops);

  batching::ModelOptions mo;
  mo.max_batch_tokens = *q.max_batch_tokens;
  mo.max_batch_size = static_cast<int>(*q.max_batch_size);
  mo.max_queue_delay = absl::Microseconds(*q.max_queue_delay_us);
  mo.max_queue_size = *q.max_queue_size;
  mo.max_queue_tokens = *q.max_queue_tokens;
  if (config_.batching.max_queue_wait_ms > 0) {
    mo.max_queue_wait = absl::Milliseconds(config_.batching.max_queue_wait_ms);
  }
  EngineExecutor* exec = executor.get();
  mo.cost = [exec](int64_t tokens, double budget) { return exec->Cost(tokens, budget); };
  // Prior for the compute-time model, in FLOPs: ~20 GFLOP/s per thread, 0.2 ms per batch; the
  // predictor refits it from measured batches.
  mo.predictor.prior_overhead_seconds = 0.0002;
  mo.predictor.prior_seconds_per_unit =
      1.0 / (2e10 * static_cast<double>(config_.batching.threads_per_worker));
  mo.predictor.prior_reference_units = std::max(1.0, 8 * exec->Cost(128, 1.0));
  if (absl::Status s = scheduler_->AddModel(mc.name, mo, executor); !s.ok()) return fail(s);
  m.executor = std::move(executor);
  m.engine = std::move(bert);
  m.state.store(draining() ? v1::MODEL_STATE_DRAINING : v1::MODEL_STATE_READY,
                std::memory_order_release);
  metrics_->SetModelReady(mc.name, !draining());
  return absl::OkStatus();
}

void Runtime::BeginDrain() {
  draining_.store(true, std::memory_order_release);
  for (auto& m : models_) {
    int expected = v1::MODEL_STATE_READY;
    m->state.compare_exchange_strong(expected, v1::MODEL_STATE_DRAINING, std::memory_order_acq_rel);
    metrics_->SetModelReady(m->config.name, false);
  }
}

absl::StatusOr<ServedModel*> Runtime::Resolve(const std::string& name, bool qa,
                                              std::string* label) const {
  const char* kind = qa ? "question-answering" : "classification";
  ServedModel* m = nullptr;
  if (name.empty()) {
    for (const auto& candidate : models_) {
      if (candidate->qa == qa) {
        m = candidate.get();
        break;
      }
    }
    if (m == nullptr) {
      return absl::NotFoundError(absl::StrCat("model: no ", kind, " model is configured"));
    }
  } else {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) {
      std::vector<std::string> names;
      for (const auto& c : models_) names.push_back(c->config.name);
      return absl::NotFoundError(absl::StrCat("model: no model named '", name.substr(0, 128),
                                              "' (models: ", absl::StrJoin(names, ", "), ")"));
    }
    m = it->second;
  }
  *label = m->config.name;
  if (m->qa != qa) {
    return Invalid("model", absl::StrCat("'", m->config.name, "' is a ",
                                         m->qa ? "question-answering model; use Answer"
                                               : "classification model; use Classify"));
  }
  switch (m->state.load(std::memory_order_acquire)) {
    case v1::MODEL_STATE_READY: return m;
    case v1::MODEL_STATE_LOADING:
      return absl::UnavailableError(absl::StrCat("model '", m->config.name, "' is still loading"));
    default: return absl::UnavailableError("the server is shutting down");
  }
}

void Runtime::StartClassify(const v1::ClassifyRequest& req, v1::ClassifyResponse* resp,
                            Method method, absl::Time deadline, batching::CancellationToken token,
                            DoneFn done) {
  const absl::Time start = absl::Now();
  std::string label(Metrics::kUnknownModel);
  auto reject = [&](const absl::Status& s) {
    metrics_->RecordRequest(label, method, s.code(), Seconds(absl::Now() - start));
    done(s);
  };
  if (draining()) return reject(absl::UnavailableError("the server is shutting down"));
  auto resolved = Resolve(req.model(), /*qa=*/false, &label);
  if (!resolved.ok()) return reject(resolved.status());
  ServedModel& model = **resolved;
  label = model.config.name;
  const LimitsConfig& limits = config_.limits;

  const int n = req.inputs_size();
  if (n == 0) return reject(Invalid("inputs", "at least one input is required"));
  if (n > limits.max_inputs_per_call) {
    return reject(Invalid(
        "inputs", absl::StrCat(n, " inputs is over the limit of ", limits.max_inputs_per_call,
                               " (limits.max_inputs_per_call)")));
  }
  auto budget = ResolveBudget(req.has_budget(), req.budget(), req.has_min_budget(),
                              req.min_budget(), model.config);
  if (!budget.ok()) return reject(budget.status());
  if (absl::Status s = CheckPriority(req.priority(), limits.max_priority); !s.ok()) {
    return reject(s);
  }
  auto truncation = ToTruncation(req.truncation());
  if (!truncation.ok()) return reject(truncation.status());
  // A full or overloaded queue refuses before the tokenizer runs: refusals stay cheap at 10x.
  if (absl::Status s = scheduler_->PreAdmit(model.config.name, n, req.priority(), deadline);
      !s.ok()) {
    return reject(s);
  }

  // Tokenize on this thread, outside the batch's critical path.
  const engine::Tokenizer& tok = model.engine->tokenizer();
  const size_t max_length = static_cast<size_t>(model.engine->max_length());
  std::vector<std::unique_ptr<InferTask>> tasks;
  std::vector<bool> truncated;
  tasks.reserve(static_cast<size_t>(n));
  int64_t total_tokens = 0;
  for (int i = 0; i < n; ++i) {
    const v1::TextInput& in = req.inputs(i);
    const std::string field = absl::StrCat("inputs[", i, "]");
    if (absl::Status s = CheckText(field + ".text", in.text(), limits.max_text_bytes, false);
        !s.ok()) {
      return reject(s);
    }
    if (in.has_text_pair()) {
      if (model.engine->config().type_vocab_size < 2) {
        return reject(Invalid(field + ".text_pair",
                              absl::StrCat("model '", model.config.name,
                                           "' takes single texts only (type_vocab_size 1)")));
      }
      if (absl::Status s =
              CheckText(field + ".text_pair", in.text_pair(), limits.max_text_bytes, true);
          !s.ok()) {
        return reject(s);
      }
    }
    auto a = tok.Tokenize(in.text());
    if (!a.ok()) return reject(Invalid(field + ".text", a.status().message()));
    std::optional<std::vector<engine::Piece>> b;
    if (in.has_text_pair()) {
      auto pb = tok.Tokenize(in.text_pair());
      if (!pb.ok()) return reject(Invalid(field + ".text_pair", pb.status().message()));
      b = std::move(*pb);
    }
    auto enc = tok.Build(*a, b ? &*b : nullptr, max_length, *truncation);
    if (!enc.ok()) return reject(Invalid(field, enc.status().message()));
    const size_t full = a->size() + (b ? b->size() + 3 : 2);
    truncated.push_back(enc->size() < full);
    total_tokens += static_cast<int64_t>(enc->size());
    auto task = std::make_unique<InferTask>();
    task->ids = std::move(enc->ids);
    task->type_ids = std::move(enc->type_ids);
    task->index = i;
    tasks.push_back(std::move(task));
  }
  if (absl::Status s = CheckTokens(total_tokens, limits.max_tokens_per_call); !s.ok()) {
    return reject(s);
  }
  if (absl::Status s = CheckFitsQueue(n, total_tokens, model.config); !s.ok()) return reject(s);

  resp->set_model(model.config.name);
  resp->clear_results();
  for (int i = 0; i < n; ++i) resp->add_results();
  auto job = std::make_shared<ClassifyJob>(*this, model, method, start, *budget, deadline,
                                           req.priority(), std::move(token), std::move(done), resp,
                                           req.return_logits(), std::move(truncated));
  job->Run(std::move(tasks));
}

void Runtime::StartAnswer(const v1::AnswerRequest& req, v1::AnswerResponse* resp,
                          absl::Time deadline, batching::CancellationToken token, DoneFn done) {
  const absl::Time start = absl::Now();
  std::string label(Metrics::kUnknownModel);
  auto reject = [&](const absl::Status& s) {
    metrics_->RecordRequest(label, Method::kAnswer, s.code(), Seconds(absl::Now() - start));
    done(s);
  };
  if (draining()) return reject(absl::UnavailableError("the server is shutting down"));
  auto resolved = Resolve(req.model(), /*qa=*/true, &label);
  if (!resolved.ok()) return reject(resolved.status());
  ServedModel& model = **resolved;
  label = model.config.name;
  const LimitsConfig& limits = config_.limits;
  const int64_t model_max = model.engine->max_length();

  if (absl::Status s = CheckText("question", req.question(), limits.max_text_bytes, false);
      !s.ok()) {
    return reject(s);
  }
  if (absl::Status s = CheckText("context", req.context(), limits.max_text_bytes, false); !s.ok()) {
    return reject(s);
  }
  auto budget = ResolveBudget(req.has_budget(), req.budget(), req.has_min_budget(),
                              req.min_budget(), model.config);
  if (!budget.ok()) return reject(budget.status());
  if (absl::Status s = CheckPriority(req.priority(), limits.max_priority); !s.ok()) {
    return reject(s);
  }
  engine::QaOptions qa;
  qa.max_length =
      req.max_length() == 0 ? std::min(kDefaultQaMaxLength, model_max) : req.max_length();
  if (qa.max_length < 8 || qa.max_length > model_max) {
    return reject(
        Invalid("max_length", absl::StrCat(req.max_length(), " is outside [8, ", model_max, "]")));
  }
  qa.max_query_tokens = req.max_query_tokens() == 0
                            ? std::min(kDefaultMaxQueryTokens, qa.max_length - 4)
                            : req.max_query_tokens();
  if (qa.max_query_tokens < 1 || qa.max_query_tokens > qa.max_length - 4) {
    return reject(Invalid("max_query_tokens",
                          absl::StrCat(req.max_query_tokens(), " is outside [1, max_length - 4 = ",
                                       qa.max_length - 4, "]")));
  }
  qa.max_answer_tokens =
      req.max_answer_tokens() == 0 ? kDefaultMaxAnswerTokens : req.max_answer_tokens();
  if (qa.max_answer_tokens < 1 || qa.max_answer_tokens > 512) {
    return reject(Invalid("max_answer_tokens",
                          absl::StrCat(req.max_answer_tokens(), " is outside [1, 512]")));
  }
  qa.n_best = req.n_best() == 0 ? 1 : req.n_best();
  if (qa.n_best < 1 || qa.n_best > 100) {
    return reject(Invalid("n_best", absl::StrCat(req.n_best(), " is outside [1, 100]")));
  }
  if (absl::Status s = scheduler_->PreAdmit(model.config.name, 1, req.priority(), deadline);
      !s.ok()) {
    return reject(s);
  }
  const engine::Tokenizer& tok = model.engine->tokenizer();
  // Tokenized once; the windows are counted before any is made, so a call that can never be
  // served costs its tokenization only.
  auto pieces = engine::TokenizeQa(tok, req.question(), req.context(), qa);
  if (!pieces.ok()) return reject(absl::InvalidArgumentError(pieces.status().message()));
  const int64_t room = qa.max_length - 3 - static_cast<int64_t>(pieces->question.size());
  if (req.has_doc_stride()) {
    if (req.doc_stride() < 0 || req.doc_stride() >= room) {
      return reject(Invalid("doc_stride", absl::StrCat(req.doc_stride(), " is outside [0, ", room,
                                                       ") (the context tokens per window)")));
    }
    qa.doc_stride = req.doc_stride();
  } else {
    // Hugging Face's 128, but never more than half a window (else windows crawl one token at a
    // time when max_length is small).
    qa.doc_stride = std::min(kDefaultDocStride, room / 2);
  }
  auto count = engine::CountQaWindows(*pieces, qa);
  if (!count.ok()) return reject(absl::InvalidArgumentError(count.status().message()));
  if (pieces->context.empty()) return reject(Invalid("context", "has no tokens"));
  if (absl::Status s = CheckTokens(count->tokens, limits.max_tokens_per_call); !s.ok()) {
    return reject(s);
  }
  if (absl::Status s = CheckFitsQueue(count->windows, count->tokens, model.config); !s.ok()) {
    return reject(s);
  }
  auto windows = engine::BuildQaWindows(tok, *pieces, qa);
  if (!windows.ok()) return reject(absl::InvalidArgumentError(windows.status().message()));

  // The context and token checks ran on the count above (it equals the windows built: qa_test).
  std::vector<std::unique_ptr<InferTask>> tasks;
  resp->set_model(model.config.name);
  resp->clear_windows();
  for (size_t w = 0; w < windows->size(); ++w) {
    const engine::Encoding& enc = (*windows)[w];
    v1::WindowReport* report = resp->add_windows();
    int32_t first = -1, last = -1;
    for (size_t i = 0; i < enc.size(); ++i) {
      if (enc.segment[i] != 1) continue;
      if (first < 0) first = enc.begin[i];
      last = enc.end[i];
    }
    if (first >= 0) {
      report->set_context_start(CodePoints(req.context(), first));
      report->set_context_end(CodePoints(req.context(), last));
    }
    auto task = std::make_unique<InferTask>();
    task->ids = enc.ids;
    task->type_ids = enc.type_ids;
    task->index = static_cast<int>(w);
    tasks.push_back(std::move(task));
  }
  auto job = std::make_shared<AnswerJob>(*this, model, start, *budget, deadline, req.priority(),
                                         std::move(token), std::move(done), &req, resp,
                                         std::move(*windows), qa);
  job->Run(std::move(tasks));
}

void Runtime::FillInfo(const ServedModel& m, v1::ModelInfo* out) const {
  // `info` is complete once the model left LOADING (written before the state's release store).
  // While loading, LoadModel() may be writing it, so only the immutable config is read.
  const int state = m.state.load(std::memory_order_acquire);
  if (state == v1::MODEL_STATE_LOADING) {
    out->set_name(m.config.name);
    out->set_task(m.qa ? v1::MODEL_TASK_QUESTION_ANSWERING : v1::MODEL_TASK_CLASSIFICATION);
    out->set_default_budget(m.config.default_budget);
    out->set_max_budget(m.config.max_budget);
    out->set_num_layers(static_cast<int32_t>(m.layers));
    out->set_path(m.config.path);
    out->set_precision(m.config.precision);
  } else {
    *out = m.info;
  }
  out->set_state(static_cast<v1::ModelState>(state));
}

std::string Runtime::ModelLabel(const std::string& name, std::optional<bool> qa) const {
  if (name.empty() && qa.has_value()) {
    for (const auto& m : models_) {
      if (m->qa == *qa) return m->config.name;
    }
  } else if (auto it = by_name_.find(name); it != by_name_.end()) {
    return it->second->config.name;
  }
  return std::string(Metrics::kUnknownModel);
}

absl::Status Runtime::ListModels(v1::ListModelsResponse* response) {
  const absl::Time start = absl::Now();
  for (const auto& m : models_) FillInfo(*m, response->add_models());
  metrics_->RecordRequest(Metrics::kAllModels, Method::kListModels, absl::StatusCode::kOk,
                          Seconds(absl::Now() - start));
  return absl::OkStatus();
}

absl::Status Runtime::GetModel(const v1::GetModelRequest& request, v1::ModelInfo* response) {
  const absl::Time start = absl::Now();
  absl::Status status;
  std::string label(Metrics::kUnknownModel);
  if (request.name().empty()) {
    status = Invalid("name", "must be set (ListModels lists the names)");
  } else if (auto it = by_name_.find(request.name()); it == by_name_.end()) {
    status = absl::NotFoundError(
        absl::StrCat("name: no model named '", request.name().substr(0, 128), "'"));
  } else {
    label = it->second->config.name;
    FillInfo(*it->second, response);
  }
  metrics_->RecordRequest(label, Method::kGetModel, status.code(), Seconds(absl::Now() - start));
  return status;
}

}  // namespace topserve::server
