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
#include "server/jobs.h"
#include "server/report.h"
#include "server/request_options.h"

namespace topserve::server {
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
    metrics_->RecordRequest(label, method, s.code(), SecondsSince(start));
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
  StartClassifyJob({*this, model, method, start, *budget, deadline, req.priority(),
                    std::move(token), std::move(done)},
                   resp, req.return_logits(), std::move(truncated), std::move(tasks));
}

void Runtime::StartAnswer(const v1::AnswerRequest& req, v1::AnswerResponse* resp,
                          absl::Time deadline, batching::CancellationToken token, DoneFn done) {
  const absl::Time start = absl::Now();
  std::string label(Metrics::kUnknownModel);
  auto reject = [&](const absl::Status& s) {
    metrics_->RecordRequest(label, Method::kAnswer, s.code(), SecondsSince(start));
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
  auto resolved_qa = ResolveQaOptions(req.max_length(), req.max_query_tokens(),
                                      req.max_answer_tokens(), req.n_best(), model_max);
  if (!resolved_qa.ok()) return reject(resolved_qa.status());
  engine::QaOptions qa = *resolved_qa;
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
  auto stride = ResolveDocStride(
      req.has_doc_stride() ? std::optional<int64_t>(req.doc_stride()) : std::nullopt, room);
  if (!stride.ok()) return reject(stride.status());
  qa.doc_stride = *stride;
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
  StartAnswerJob({*this, model, Method::kAnswer, start, *budget, deadline, req.priority(),
                  std::move(token), std::move(done)},
                 &req, resp, std::move(*windows), qa, std::move(tasks));
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
                          SecondsSince(start));
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
  metrics_->RecordRequest(label, Method::kGetModel, status.code(), SecondsSince(start));
  return status;
}

}  // namespace topserve::server
