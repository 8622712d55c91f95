#include "server/jobs.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <span>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/status_macros.h"
#include "server/report.h"

namespace topserve::server {
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

  // The per-sequence fields every response has (Classification and WindowReport alike): the
  // pruning report, queue and compute time, and the batch the sequence ran in.
  template <typename Out>
  void FillSequenceReport(const InferTask& task, Out* r) const {
    const batching::TaskReport& rep = task.report();
    FillPruningReport(task.plan, model_.layers, budget_.budget, rep, r->mutable_report());
    r->set_queue_seconds(absl::ToDoubleSeconds(rep.queue_time));
    r->set_compute_seconds(absl::ToDoubleSeconds(rep.compute_time));
    r->set_batch_size(rep.batch_size);
    r->set_batch_tokens(rep.batch_tokens);
  }

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
      absl::MutexLock lock(&mu_);
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
      absl::MutexLock lock(&mu_);
      status = error_;
    }
    if (status.ok()) status = Assemble();
    rt_.metrics().RecordRequest(model_.config.name, method_, status.code(), SecondsSince(start_));
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
  absl::Mutex mu_;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
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
    FillSequenceReport(task, r);
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
    FillSequenceReport(task, r);
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

}  // namespace

void StartClassifyJob(JobArgs args, v1::ClassifyResponse* response, bool return_logits,
                      std::vector<bool> truncated, std::vector<std::unique_ptr<InferTask>> tasks) {
  auto job = std::make_shared<ClassifyJob>(
      args.rt, args.model, args.method, args.start, args.budget, args.deadline, args.priority,
      std::move(args.token), std::move(args.done), response, return_logits, std::move(truncated));
  job->Run(std::move(tasks));
}

void StartAnswerJob(JobArgs args, const v1::AnswerRequest* request, v1::AnswerResponse* response,
                    std::vector<engine::Encoding> windows, engine::QaOptions options,
                    std::vector<std::unique_ptr<InferTask>> tasks) {
  auto job = std::make_shared<AnswerJob>(
      args.rt, args.model, args.start, args.budget, args.deadline, args.priority,
      std::move(args.token), std::move(args.done), request, response, std::move(windows), options);
  job->Run(std::move(tasks));
}

}  // namespace topserve::server
