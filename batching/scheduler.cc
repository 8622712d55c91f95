// The scheduler: admission, the per-model queues (entries, sweep, candidates), batch forming and
// the worker loop. Why one file of ~1,100 lines: all of it runs under the scheduler's one mutex,
// and the queue operations and the worker loop share the *Locked helpers that read the whole
// scheduler state (running work, sleepers, the clock). The pure arithmetic is already apart
// (budget_level.h, cost_predictor.h); moving the per-model queue into a class of its own file,
// behind its own interface, is still to do.
#include "batching/scheduler.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <exception>
#include <map>
#include <utility>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "batching/budget_level.h"

namespace topserve::batching {
namespace {

// This absl build has its own string_view type.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

double DefaultCost(int64_t tokens, double budget) { return static_cast<double>(tokens) * budget; }

absl::Status ValidateModelOptions(const ModelOptions& o) {
  auto bad = [](const char* field, auto value, const char* want) {
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, ", must be ", want));
  };
  if (o.max_batch_tokens < 1) return bad("max_batch_tokens", o.max_batch_tokens, ">= 1");
  if (o.max_batch_size < 1) return bad("max_batch_size", o.max_batch_size, ">= 1");
  if (!std::isfinite(o.max_batch_cost) || o.max_batch_cost < 0) {
    return bad("max_batch_cost", o.max_batch_cost, ">= 0 (0 = no limit)");
  }
  if (o.max_queue_delay < absl::ZeroDuration() || o.max_queue_delay == absl::InfiniteDuration()) {
    return bad("max_queue_delay", absl::FormatDuration(o.max_queue_delay), "finite and >= 0");
  }
  if (o.max_queue_size < 1) return bad("max_queue_size", o.max_queue_size, ">= 1");
  if (o.max_queue_tokens < 1) return bad("max_queue_tokens", o.max_queue_tokens, ">= 1");
  if (o.max_queue_wait <= absl::ZeroDuration()) {
    return bad("max_queue_wait", absl::FormatDuration(o.max_queue_wait),
               "> 0 (infinite = no limit)");
  }
  if (o.grouping_window < 1) return bad("grouping_window", o.grouping_window, ">= 1");
  if (!(o.deadline_safety_factor >= 1) || !std::isfinite(o.deadline_safety_factor)) {
    return bad("deadline_safety_factor", o.deadline_safety_factor, "finite and >= 1");
  }
  return ValidateCostPredictorOptions(o.predictor);
}

absl::Status ValidateTask(const Task& t, const ModelOptions& o) {
  if (!t.done) return absl::InvalidArgumentError("task has no done callback");
  if (t.tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("task tokens = ", t.tokens, ", must be >= 1"));
  }
  if (!(t.budget > 0 && t.budget <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("budget = ", t.budget, ", must be in (0, 1]"));
  }
  if (t.min_budget && !(*t.min_budget > 0 && *t.min_budget <= t.budget)) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_budget = ", *t.min_budget, ", must be in (0, budget = ", t.budget, "]"));
  }
  if (t.tokens > o.max_batch_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request has ", t.tokens, " tokens, more than max_batch_tokens = ", o.max_batch_tokens,
        " of model '", t.model, "'"));
  }
  return absl::OkStatus();
}

absl::Status RunExecutor(BatchExecutor& executor, const Batch& batch) {
  try {
    return executor.Run(batch);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("batch executor threw: ", e.what()));
  } catch (...) {
    return absl::InternalError("batch executor threw a non-standard exception");
  }
}

// When a sweep first finds a task of `alone` predicted seconds late (now + alone > deadline), or
// its deadline, whichever is first. Strictly after the last instant it still fits, so that a worker
// woken then finds it late (and does not wake again and again at the same time).
absl::Time SweepTime(absl::Time deadline, double alone) {
  return std::min(deadline, deadline - absl::Seconds(alone) + absl::Nanoseconds(1));
}

std::string Ms(double seconds) { return absl::StrCat(std::round(seconds * 1e4) / 10.0, " ms"); }

}  // namespace

double PredictWaitSeconds(const AdmissionEstimate& e) {
  const double workers = static_cast<double>(std::max(1, e.workers));
  const int64_t size = std::max<int64_t>(1, e.max_batch_size);
  const int64_t tokens = std::max<int64_t>(1, e.max_batch_tokens);
  // Full batches ahead of the new work; the partial one left over is the new work's own batch.
  const int64_t batches_ahead = std::max(e.tasks_ahead / size, e.tokens_ahead / tokens);
  return (std::max(0.0, e.running_seconds) +
          e.overhead_seconds * static_cast<double>(batches_ahead) +
          e.seconds_per_unit * std::max(0.0, e.cost_ahead)) /
         workers;
}

double PredictFinishSeconds(const AdmissionEstimate& e) {
  const double workers = static_cast<double>(std::max(1, e.workers));
  const int64_t size = std::max<int64_t>(1, e.max_batch_size);
  const int64_t tokens = std::max<int64_t>(1, e.max_batch_tokens);
  const double wait = PredictWaitSeconds(e);
  // The new work itself: one batch, or several that may run side by side on the workers.
  const int64_t own_batches =
      std::max<int64_t>({1, (e.tasks + size - 1) / size, (e.tokens + tokens - 1) / tokens});
  const double own = (e.overhead_seconds * static_cast<double>(own_batches) +
                      e.seconds_per_unit * std::max(0.0, e.cost)) /
                     std::min(workers, static_cast<double>(own_batches));
  return wait + own;
}

struct Scheduler::Entry {
  std::unique_ptr<Task> task;  // Null once taken into a batch (until compacted away).
  uint64_t seq = 0;
  int64_t tokens = 0;
  double cost_full = 0;  // cost(tokens, budget)
  double cost_min = 0;   // cost(tokens, min_budget); == cost_full if the budget cannot be lowered
  absl::Time enqueue_time;
  absl::Time deadline;
};

// One priority level of a model queue: FIFO (by seq), with running sums for admission.
struct Scheduler::Level : std::deque<Entry> {
  double cost_min = 0;  // Sum of the entries' cost_min.
  int64_t tokens = 0;   // Sum of the entries' tokens.
};

struct Scheduler::ModelQueue {
  // Deadline shedding needs predictions from measured batches: a prior that is far off (before the
  // first batch) must not refuse every call with a tight deadline, which would keep it unmeasured.
  bool ShedsLate() const { return options.shed_late && predictor.num_observations() > 0; }
  // UNAVAILABLE for a call predicted to wait `wait` seconds, past max_queue_wait (e: the estimate
  // that predicted it).
  absl::Status WaitTooLong(const AdmissionEstimate& e, double wait) const {
    return absl::UnavailableError(absl::StrCat(
        "queue of model '", name, "' is full (", e.tasks_ahead, " requests, predicted wait ",
        Ms(wait), ", limit ", absl::FormatDuration(options.max_queue_wait), ")"));
  }
  // The one queue-full test of admission (Schedule and PreAdmit): UNAVAILABLE when `tasks` more
  // sequences holding `tokens` more tokens would overflow max_queue_size or max_queue_tokens
  // (PreAdmit passes 0 tokens: it does not know them yet); OK when they fit.
  absl::Status RoomFor(int64_t tasks, int64_t tokens) const {
    if (queued_tasks + tasks > options.max_queue_size) {
      return absl::UnavailableError(
          absl::StrCat("queue of model '", name, "' is full (", queued_tasks, " requests)"));
    }
    if (queued_tokens + tokens > options.max_queue_tokens) {
      return absl::UnavailableError(absl::StrCat("queue of model '", name, "' is full (",
                                                 queued_tokens, " tokens queued, limit ",
                                                 options.max_queue_tokens, ")"));
    }
    return absl::OkStatus();
  }

  ModelQueue(std::string n, ModelOptions o, std::shared_ptr<BatchExecutor> e)
      : name(std::move(n)),
        options(std::move(o)),
        executor(std::move(e)),
        predictor(options.predictor) {}

  const std::string name;
  const ModelOptions options;
  const std::shared_ptr<BatchExecutor> executor;

  // Everything below is guarded by Scheduler::mu_.
  CostPredictor predictor;
  // Priority levels, highest first; FIFO (by seq) within a level.
  std::map<int, Level, std::greater<int>> levels;
  int64_t queued_tasks = 0;
  int64_t queued_tokens = 0;
  double queued_cost = 0;  // At requested budgets.
  int64_t in_flight_tasks = 0;
  int64_t in_flight_batches = 0;
  // Lower bounds (may be early, never late) of the earliest time a task must be swept (its
  // deadline, or with shed_late the time its predicted finish alone at its minimum budget passes
  // it) and of the latest time a task can start alone at its minimum budget and still meet its
  // deadline (with the safety factor).
  absl::Time deadline_hint = absl::InfiniteFuture();
  absl::Time latest_start_hint = absl::InfiniteFuture();
  TaskCounts counts;
};

struct Scheduler::Finished {
  ModelQueue* queue = nullptr;
  std::unique_ptr<Task> task;
  absl::Status status;
  std::optional<ShedReason> shed{};  // Dropped without compute for load (deadline).
};

struct Scheduler::Picked {
  int64_t tokens;
  double cost_full;
  double cost_min;
  absl::Time deadline;
};

struct Scheduler::FormedBatch {
  ModelQueue* queue = nullptr;
  std::vector<std::unique_ptr<Task>> tasks;
  double level = 1;
  double predicted_seconds = 0;
  int lowered = 0;
  int64_t tokens = 0;
};

struct Scheduler::Work {
  std::vector<Finished> finished;
  FormedBatch batch;
  // Scratch space reused across batches.
  std::vector<Picked> picked;
};

struct Scheduler::Worker {
  WorkerState state = WorkerState::kPlanning;
  uint64_t seen_epoch = 0;
  uint64_t sleep_seq = 0;  // When it last went to sleep.
  // While sleeping: when it will look again (InfinitePast once notified).
  absl::Time wake = absl::InfiniteFuture();
  absl::Time busy_until = absl::InfinitePast();  // Predicted end of the running batch.
  std::condition_variable cv;                    // The worker waits here.
};

// ---------------------------------------------------------------------------------------------
// Construction, models, shutdown.

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(SchedulerOptions options) {
  if (options.num_workers < 1 || options.num_workers > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_workers = ", options.num_workers, ", must be in [1, 1024]"));
  }
  if (options.threads_per_worker < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads_per_worker = ", options.threads_per_worker, ", must be >= 1"));
  }
  if (options.clock == nullptr) options.clock = RealClock::Get();
  std::unique_ptr<Scheduler> scheduler(new Scheduler(std::move(options)));
  scheduler->Start();
  return scheduler;
}

Scheduler::Scheduler(SchedulerOptions options)
    : options_(std::move(options)),
      clock_(options_.clock),
      observer_(options_.observer),
      workers_(static_cast<size_t>(options_.num_workers)) {
  listener_ = clock_->AddListener([this] {
    std::lock_guard<std::mutex> lock(mu_);
    ++epoch_;
    WakeAllLocked();
    drained_cv_.notify_all();
  });
}

void Scheduler::Start() {
  threads_.reserve(workers_.size());
  for (size_t i = 0; i < workers_.size(); ++i) {
    threads_.emplace_back(&Scheduler::WorkerLoop, this, static_cast<int>(i));
  }
}

Scheduler::~Scheduler() {
  Shutdown({.mode = ShutdownOptions::Mode::kFail, .grace = absl::ZeroDuration()});
  clock_->RemoveListener(listener_);
}

absl::Status Scheduler::AddModel(std::string name, ModelOptions options,
                                 std::shared_ptr<BatchExecutor> executor) {
  if (name.empty()) return absl::InvalidArgumentError("model name is empty");
  if (executor == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("model '", name, "': executor is null"));
  }
  if (!options.cost) options.cost = DefaultCost;
  if (absl::Status s = ValidateModelOptions(options); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model '", name, "': ", s.message()));
  }
  std::unique_lock<std::shared_mutex> models_lock(models_mu_);
  if (models_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("model '", name, "' is already registered"));
  }
  auto queue = std::make_unique<ModelQueue>(name, std::move(options), std::move(executor));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_started_) {
      return absl::FailedPreconditionError("scheduler is shut down; cannot add models");
    }
    queues_.push_back(queue.get());
    NotifyDepthLocked(*queue);
  }
  models_.emplace(std::move(name), std::move(queue));
  return absl::OkStatus();
}

void Scheduler::Shutdown(const ShutdownOptions& options) {
  std::vector<Finished> rest;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (shutdown_started_) {
      drained_cv_.wait(lock, [this] { return joined_; });
      return;
    }
    shutdown_started_ = true;
    accepting_ = false;
    ++epoch_;
    if (options.mode == ShutdownOptions::Mode::kDrain) {
      draining_ = true;  // Every queued task is due now.
      WakeAllLocked();
      const absl::Time grace_end = clock_->Now() + options.grace;
      while ((queued_total_ > 0 || in_flight_total_ > 0) && clock_->Now() < grace_end) {
        clock_->WaitUntil(lock, drained_cv_, grace_end);
      }
      TakeAllQueuedLocked(rest, "scheduler shut down before the task ran (grace period over)");
    } else {
      TakeAllQueuedLocked(rest, "scheduler shut down before the task ran");
    }
    stop_ = true;
    WakeAllLocked();
  }
  const absl::Time now = clock_->Now();
  for (Finished& f : rest) Complete(std::move(f), now);
  for (std::thread& t : threads_) t.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    joined_ = true;
  }
  drained_cv_.notify_all();
}

void Scheduler::TakeAllQueuedLocked(std::vector<Finished>& out, std::string_view reason) {
  for (ModelQueue* q : queues_) {
    for (auto& [priority, level] : q->levels) {
      for (Entry& e : level) {
        out.push_back({q, std::move(e.task), absl::UnavailableError(AV(reason))});
        ++q->counts.failed;
      }
    }
    q->levels.clear();
    queued_total_ -= q->queued_tasks;
    q->queued_tasks = 0;
    q->queued_tokens = 0;
    q->queued_cost = 0;
    q->deadline_hint = absl::InfiniteFuture();
    q->latest_start_hint = absl::InfiniteFuture();
    NotifyDepthLocked(*q);
  }
}

// ---------------------------------------------------------------------------------------------
// Schedule.

Scheduler::ModelQueue* Scheduler::FindQueue(std::string_view model) const {
  std::shared_lock<std::shared_mutex> lock(models_mu_);
  auto it = models_.find(AV(model));
  return it == models_.end() ? nullptr : it->second.get();
}

absl::Status Scheduler::Reject(ModelQueue* queue, std::string_view model, absl::Status status) {
  if (queue != nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    ++queue->counts.rejected;
  }
  if (observer_ != nullptr) observer_->OnRejected(model, status);
  return status;
}

absl::Status Scheduler::Schedule(std::unique_ptr<Task>* task_ptr) {
  if (task_ptr == nullptr || *task_ptr == nullptr) {
    return absl::InvalidArgumentError("Schedule() was given a null task");
  }
  return ScheduleAll(std::span<std::unique_ptr<Task>>(task_ptr, 1));
}

absl::Status Scheduler::ScheduleAll(std::span<std::unique_ptr<Task>> tasks, int* failed_index) {
  if (failed_index != nullptr) *failed_index = -1;
  if (tasks.empty()) return absl::InvalidArgumentError("ScheduleAll() was given no tasks");
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i] == nullptr) {
      if (failed_index != nullptr) *failed_index = static_cast<int>(i);
      return absl::InvalidArgumentError("Schedule() was given a null task");
    }
  }
  const std::string& model = tasks[0]->model;
  ModelQueue* q = FindQueue(model);
  if (q == nullptr) {
    return Reject(nullptr, model, absl::NotFoundError(absl::StrCat("unknown model '", model, "'")));
  }
  const ModelOptions& o = q->options;
  const int64_t n = static_cast<int64_t>(tasks.size());
  struct Costs {
    double full;
    double min;
  };
  absl::InlinedVector<Costs, 4> costs(tasks.size());
  int64_t group_tokens = 0;
  double group_cost_min = 0;
  int group_priority = tasks[0]->priority;
  absl::Time group_deadline = absl::InfiniteFuture();
  for (size_t i = 0; i < tasks.size(); ++i) {
    Task& task = *tasks[i];
    auto refuse = [&](absl::Status status) {
      if (failed_index != nullptr) *failed_index = static_cast<int>(i);
      return Reject(q, model, std::move(status));
    };
    if (task.model != model) {
      return refuse(absl::InvalidArgumentError(absl::StrCat(
          "the tasks of one call name different models ('", model, "', '", task.model, "')")));
    }
    if (absl::Status s = ValidateTask(task, o); !s.ok()) return refuse(std::move(s));
    if (task.cancellation.IsCancelled()) {
      return refuse(absl::CancelledError("request was cancelled before queueing"));
    }
    // The cost function is user code: call it outside the lock.
    const double cost_full = o.cost(task.tokens, task.budget);
    const double cost_min = task.min_budget ? o.cost(task.tokens, *task.min_budget) : cost_full;
    if (!std::isfinite(cost_full) || !std::isfinite(cost_min) || cost_min < 0 ||
        cost_full < cost_min) {
      return refuse(absl::InternalError(
          absl::StrCat("cost function of model '", q->name, "' returned ", cost_full, " at budget ",
                       task.budget, " and ", cost_min, " at min_budget")));
    }
    costs[i] = {cost_full, cost_min};
    group_tokens += task.tokens;
    group_cost_min += cost_min;
    group_priority = std::min(group_priority, task.priority);
    group_deadline = std::min(group_deadline, task.deadline);
  }
  // More than the whole queue holds can never be admitted: not the retryable UNAVAILABLE.
  if (n > o.max_queue_size || group_tokens > o.max_queue_tokens) {
    return Reject(q, model,
                  absl::ResourceExhaustedError(
                      absl::StrCat("the request needs ", n, " sequences and ", group_tokens,
                                   " tokens; the queue of model '", q->name, "' holds at most ",
                                   o.max_queue_size, " and ", o.max_queue_tokens)));
  }
  const absl::Time now = clock_->Now();
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i]->deadline <= now) {
      if (failed_index != nullptr) *failed_index = static_cast<int>(i);
      return Reject(q, model,
                    absl::DeadlineExceededError("deadline passed before the request was queued"));
    }
  }

  std::unique_lock<std::mutex> lock(mu_);
  absl::Status refused;
  std::optional<ShedReason> shed;
  if (!accepting_) {
    refused = absl::UnavailableError("server is shutting down");
  } else if (absl::Status room = q->RoomFor(n, group_tokens); !room.ok()) {
    refused = std::move(room);
    shed = ShedReason::kQueueFull;
  } else if ((q->ShedsLate() && group_deadline != absl::InfiniteFuture()) ||
             o.max_queue_wait != absl::InfiniteDuration()) {
    AdmissionEstimate e = EstimateLocked(*q, group_priority, now);
    e.cost = group_cost_min;
    e.tasks = n;
    e.tokens = group_tokens;
    const double wait = PredictWaitSeconds(e);
    const double finish = PredictFinishSeconds(e);
    if (q->ShedsLate() && now + absl::Seconds(finish - wait) > group_deadline) {
      // Too short a deadline for the work itself, however idle the server: not worth retrying.
      refused = absl::DeadlineExceededError(absl::StrCat(
          "the request needs about ", Ms(finish - wait), " of compute on model '", q->name,
          "' at its minimum budget; its deadline is in ", Ms(Seconds(group_deadline - now))));
      shed = ShedReason::kPredictedLate;
      q->counts.shed_at_admission += n;
    } else if (q->ShedsLate() && now + absl::Seconds(finish) > group_deadline) {
      // Late because of the work queued ahead: retryable (later, or on another replica).
      refused = absl::UnavailableError(absl::StrCat(
          "model '", q->name, "' is overloaded: the request is predicted to finish in ", Ms(finish),
          " (", e.tasks_ahead, " sequences queued ahead), after its deadline in ",
          Ms(Seconds(group_deadline - now))));
      shed = ShedReason::kPredictedLate;
      q->counts.shed_at_admission += n;
    } else if (absl::Seconds(wait) > o.max_queue_wait) {
      refused = q->WaitTooLong(e, wait);
      shed = ShedReason::kQueueFull;
    }
  }
  if (!refused.ok()) {
    lock.unlock();
    absl::Status status = Reject(q, model, std::move(refused));
    if (shed && observer_ != nullptr) observer_->OnShed(model, *shed, n);
    return status;
  }

  absl::Time wake = absl::InfiniteFuture();
  for (size_t i = 0; i < tasks.size(); ++i) {
    Task& task = *tasks[i];
    const auto [cost_full, cost_min] = costs[i];
    task.report_ = TaskReport{};
    task.report_.enqueue_time = now;
    task.error_ = absl::OkStatus();
    absl::Time latest_start = absl::InfiniteFuture();
    absl::Time sweep_at = absl::InfiniteFuture();
    if (task.deadline != absl::InfiniteFuture()) {
      const double alone = q->predictor.PredictSeconds(cost_min);
      latest_start = task.deadline - absl::Seconds(o.deadline_safety_factor * alone);
      sweep_at = q->ShedsLate() ? SweepTime(task.deadline, alone) : task.deadline;
    }
    Entry entry;
    entry.seq = next_seq_++;
    entry.tokens = task.tokens;
    entry.cost_full = cost_full;
    entry.cost_min = cost_min;
    entry.enqueue_time = now;
    entry.deadline = task.deadline;
    const absl::Time deadline = task.deadline;
    Level& level = q->levels[task.priority];
    entry.task = std::move(tasks[i]);  // Ownership moves here; `task` stays valid.
    level.push_back(std::move(entry));
    level.cost_min += cost_min;
    level.tokens += task.tokens;
    ++q->queued_tasks;
    q->queued_tokens += task.tokens;
    q->queued_cost += cost_full;
    ++queued_total_;
    ++q->counts.scheduled;
    q->deadline_hint = std::min(q->deadline_hint, sweep_at);
    q->latest_start_hint = std::min(q->latest_start_hint, latest_start);
    wake = std::min({wake, latest_start, deadline, sweep_at});
  }
  NotifyDepthLocked(*q);

  // When do these tasks make the queue due? Wake a sleeping worker only if none will look by then.
  const bool full = q->queued_tasks >= o.max_batch_size || q->queued_tokens >= o.max_batch_tokens ||
                    (o.max_batch_cost > 0 && q->queued_cost >= o.max_batch_cost);
  const absl::Time due = full ? now : std::min(now + o.max_queue_delay, wake);
  WakeOneSleeperLocked(due);
  return absl::OkStatus();
}

absl::Status Scheduler::PreAdmit(std::string_view model, int64_t tasks, int priority,
                                 absl::Time deadline) {
  ModelQueue* q = FindQueue(model);
  if (q == nullptr || tasks < 1) return absl::OkStatus();
  const ModelOptions& o = q->options;
  if (tasks > o.max_queue_size) return absl::OkStatus();  // Schedule(): RESOURCE_EXHAUSTED.
  const absl::Time now = clock_->Now();
  std::unique_lock<std::mutex> lock(mu_);
  absl::Status refused;
  std::optional<ShedReason> shed;
  if (!accepting_) {
    refused = absl::UnavailableError("server is shutting down");
  } else if (absl::Status room = q->RoomFor(tasks, 0); !room.ok()) {
    refused = std::move(room);
    shed = ShedReason::kQueueFull;
  } else if ((q->ShedsLate() && deadline != absl::InfiniteFuture()) ||
             o.max_queue_wait != absl::InfiniteDuration()) {
    AdmissionEstimate e = EstimateLocked(*q, priority, now);
    e.cost = 0;
    e.tasks = tasks;
    const double wait = PredictWaitSeconds(e);
    if (q->ShedsLate() && now + absl::Seconds(wait) > deadline) {
      refused = absl::UnavailableError(absl::StrCat(
          "model '", q->name, "' is overloaded: the request would wait about ", Ms(wait), " (",
          e.tasks_ahead, " sequences queued ahead), past its deadline in ",
          Ms(Seconds(deadline - now))));
      shed = ShedReason::kPredictedLate;
      q->counts.shed_at_admission += tasks;
    } else if (absl::Seconds(wait) > o.max_queue_wait) {
      refused = q->WaitTooLong(e, wait);
      shed = ShedReason::kQueueFull;
    }
  }
  lock.unlock();
  if (refused.ok()) return refused;
  absl::Status status = Reject(q, model, std::move(refused));
  if (shed && observer_ != nullptr) observer_->OnShed(model, *shed, tasks);
  return status;
}

double Scheduler::RunningSecondsLocked(absl::Time now) const {
  double seconds = 0;
  for (const Worker& w : workers_) {
    if (w.state == WorkerState::kRunning) seconds += std::max(0.0, Seconds(w.busy_until - now));
  }
  return seconds;
}

AdmissionEstimate Scheduler::EstimateLocked(const ModelQueue& q, int priority,
                                            absl::Time now) const {
  AdmissionEstimate e;
  e.overhead_seconds = q.predictor.overhead_seconds();
  e.seconds_per_unit = q.predictor.seconds_per_unit();
  e.workers = static_cast<int>(workers_.size());
  e.running_seconds = RunningSecondsLocked(now);
  for (const auto& [level_priority, level] : q.levels) {
    if (level_priority < priority) break;  // Levels are highest first.
    e.tasks_ahead += static_cast<int64_t>(level.size());
    e.tokens_ahead += level.tokens;
    e.cost_ahead += level.cost_min;
  }
  e.max_batch_size = q.options.max_batch_size;
  e.max_batch_tokens = q.options.max_batch_tokens;
  return e;
}

// Wakes the most recently idled worker (warm cache; idle workers that stay idle stay asleep) unless
// a sleeping worker will look by `due` anyway.
void Scheduler::WakeOneSleeperLocked(absl::Time due) {
  Worker* pick = nullptr;
  for (Worker& w : workers_) {
    if (w.state != WorkerState::kSleeping) continue;
    if (w.wake <= due) return;  // It will look in time anyway (or was already notified).
    if (pick == nullptr || w.sleep_seq > pick->sleep_seq) pick = &w;
  }
  if (pick != nullptr) {
    pick->wake = absl::InfinitePast();
    pick->cv.notify_one();
  }
}

void Scheduler::WakeAllLocked() {
  for (Worker& w : workers_) {
    if (w.state != WorkerState::kSleeping) continue;
    w.wake = absl::InfinitePast();
    w.cv.notify_one();
  }
}

// ---------------------------------------------------------------------------------------------
// Workers.

void Scheduler::SetWorkerStateLocked(int worker, WorkerState state) {
  workers_[static_cast<size_t>(worker)].state = state;
  if (idle_waiters_ > 0) idle_cv_.notify_all();
}

void Scheduler::NotifyDepthLocked(const ModelQueue& q) {
  if (observer_ == nullptr) return;
  observer_->OnQueueDepth(q.name, QueueDepth{.queued_tasks = q.queued_tasks,
                                             .queued_tokens = q.queued_tokens,
                                             .in_flight_tasks = q.in_flight_tasks,
                                             .in_flight_batches = q.in_flight_batches});
}

void Scheduler::NotifyIfDrainedLocked() {
  if (shutdown_started_ && queued_total_ == 0 && in_flight_total_ == 0) drained_cv_.notify_all();
}

void Scheduler::WorkerLoop(int index) {
  if (options_.worker_nice != 0) {
    // Linux nice values are per thread: this one's (and what it starts) only.
    const auto tid = static_cast<id_t>(syscall(SYS_gettid));
    errno = 0;
    const int current = getpriority(PRIO_PROCESS, tid);
    if (errno == 0) {
      (void)setpriority(PRIO_PROCESS, tid, std::clamp(current + options_.worker_nice, -20, 19));
    }
  }
  if (options_.on_worker_start) options_.on_worker_start(index, options_.threads_per_worker);
  Worker& self = workers_[static_cast<size_t>(index)];
  Work work;
  bool worked = false;  // Since this worker last found nothing to do.
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    SetWorkerStateLocked(index, WorkerState::kPlanning);
    const absl::Time now = clock_->Now();
    const absl::Time wake = PlanLocked(index, now, work);
    if (!work.finished.empty() || work.batch.queue != nullptr) {
      SetWorkerStateLocked(index, WorkerState::kCompleting);
      lock.unlock();
      for (Finished& f : work.finished) Complete(std::move(f), now);
      work.finished.clear();
      if (work.batch.queue != nullptr) RunBatch(index, work.batch, lock);
      lock.lock();
      worked = true;
      continue;
    }
    if (stop_) break;
    if (worked && wake == absl::InfiniteFuture() && options_.on_idle) {
      worked = false;
      lock.unlock();
      options_.on_idle();
      lock.lock();
      continue;  // Work may have arrived meanwhile.
    }
    self.wake = wake;
    self.seen_epoch = epoch_;
    self.sleep_seq = ++sleep_seq_;
    SetWorkerStateLocked(index, WorkerState::kSleeping);
    clock_->WaitUntil(lock, self.cv, wake);
  }
  SetWorkerStateLocked(index, WorkerState::kExited);
}

absl::Time Scheduler::DueLocked(const ModelQueue& q, absl::Time now) const {
  if (q.queued_tasks == 0) return absl::InfiniteFuture();
  const ModelOptions& o = q.options;
  if (draining_ || q.queued_tasks >= o.max_batch_size || q.queued_tokens >= o.max_batch_tokens ||
      (o.max_batch_cost > 0 && q.queued_cost >= o.max_batch_cost)) {
    return now;
  }
  absl::Time oldest = absl::InfiniteFuture();
  for (const auto& [priority, level] : q.levels) {
    oldest = std::min(oldest, level.front().enqueue_time);
  }
  return std::min(oldest + o.max_queue_delay, q.latest_start_hint);
}

absl::Time Scheduler::PlanLocked(int worker, absl::Time now, Work& work) {
  absl::Time wake = absl::InfiniteFuture();
  ModelQueue* best = nullptr;
  for (ModelQueue* q : queues_) {
    if (q->queued_tasks == 0) continue;
    if (now >= q->deadline_hint) SweepLocked(*q, now, work.finished);
    if (q->queued_tasks == 0) continue;
    const absl::Time due = DueLocked(*q, now);
    if (due <= now) {
      // Serve the queue whose head has the highest priority, then the one waiting longest.
      const auto& head = q->levels.begin();
      if (best == nullptr || head->first > best->levels.begin()->first ||
          (head->first == best->levels.begin()->first &&
           head->second.front().seq < best->levels.begin()->second.front().seq)) {
        best = q;
      }
    } else {
      wake = std::min({wake, due, q->deadline_hint});
    }
  }
  if (best != nullptr && !stop_) {
    FormBatchLocked(worker, *best, now, work);
    // Someone else should look at what is left.
    for (ModelQueue* q : queues_) {
      if (q->queued_tasks > 0) {
        WakeOneSleeperLocked(now);
        break;
      }
    }
  }
  return wake;
}

void Scheduler::SweepLocked(ModelQueue& q, absl::Time now, std::vector<Finished>& out) {
  bool changed = false;
  for (auto it = q.levels.begin(); it != q.levels.end();) {
    Level& level = it->second;
    size_t kept = 0;
    level.cost_min = 0;
    level.tokens = 0;
    for (size_t i = 0; i < level.size(); ++i) {
      Entry& e = level[i];
      absl::Status status;
      std::optional<ShedReason> shed;
      // With shed_late, a task that cannot finish in time even alone at its minimum budget,
      // starting now, is failed now rather than computed in vain (or left to expire).
      const double alone = q.ShedsLate() && e.deadline != absl::InfiniteFuture()
                               ? q.predictor.PredictSeconds(e.cost_min)
                               : 0.0;
      if (e.task->cancellation.IsCancelled()) {
        status = absl::CancelledError("request was cancelled while queued");
        ++q.counts.cancelled;
      } else if (e.deadline <= now) {
        status = absl::DeadlineExceededError(
            absl::StrCat("deadline exceeded after ", absl::FormatDuration(now - e.enqueue_time),
                         " in the queue of model '", q.name, "'"));
        ++q.counts.deadline_exceeded;
        shed = ShedReason::kExpired;
      } else if (alone > 0 && now + absl::Seconds(alone) > e.deadline) {
        status = absl::DeadlineExceededError(
            absl::StrCat("deadline would be missed: computing the request takes about ", Ms(alone),
                         " and ", Ms(Seconds(e.deadline - now)), " are left after ",
                         absl::FormatDuration(now - e.enqueue_time), " in the queue of model '",
                         q.name, "'; not started"));
        ++q.counts.deadline_exceeded;
        ++q.counts.shed_in_queue;
        shed = ShedReason::kLateInQueue;
      } else {
        level.cost_min += e.cost_min;
        level.tokens += e.tokens;
        if (kept != i) level[kept] = std::move(e);
        ++kept;
        continue;
      }
      --q.queued_tasks;
      --queued_total_;
      q.queued_tokens -= e.tokens;
      q.queued_cost -= e.cost_full;
      out.push_back({&q, std::move(e.task), std::move(status), shed});
      changed = true;
    }
    level.resize(kept);
    it = level.empty() ? q.levels.erase(it) : std::next(it);
  }
  if (q.queued_tasks == 0) q.queued_cost = 0;
  RecomputeHintsLocked(q);
  if (changed) {
    NotifyDepthLocked(q);
    NotifyIfDrainedLocked();
  }
}

void Scheduler::RecomputeHintsLocked(ModelQueue& q) {
  q.deadline_hint = absl::InfiniteFuture();
  q.latest_start_hint = absl::InfiniteFuture();
  for (const auto& [priority, level] : q.levels) {
    for (const Entry& e : level) {
      if (e.deadline == absl::InfiniteFuture()) continue;
      const double alone = q.predictor.PredictSeconds(e.cost_min);
      q.deadline_hint =
          std::min(q.deadline_hint, q.ShedsLate() ? SweepTime(e.deadline, alone) : e.deadline);
      q.latest_start_hint =
          std::min(q.latest_start_hint,
                   e.deadline - absl::Seconds(q.options.deadline_safety_factor * alone));
    }
  }
}

void Scheduler::FormBatchLocked(int worker, ModelQueue& q, absl::Time now, Work& work) {
  SweepLocked(q, now, work.finished);  // Drops cancelled and expired tasks.
  if (q.queued_tasks == 0) return;
  const ModelOptions& o = q.options;

  // Candidates: the first `grouping_window` tasks in service order. The seed (oldest task of the
  // top priority) comes first; then by priority, closeness in length to the seed, age.
  struct Candidate {
    int rank;
    int64_t distance;
    uint64_t seq;
    Entry* entry;
  };
  std::vector<Candidate> candidates;
  candidates.reserve(static_cast<size_t>(std::min<int64_t>(o.grouping_window, q.queued_tasks)));
  const int64_t seed_tokens = q.levels.begin()->second.front().tokens;
  int rank = 0;
  for (auto& [priority, level] : q.levels) {
    for (Entry& e : level) {
      if (candidates.size() >= static_cast<size_t>(o.grouping_window)) break;
      candidates.push_back({rank, std::abs(e.tokens - seed_tokens), e.seq, &e});
    }
    ++rank;
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.rank != b.rank) return a.rank < b.rank;
    if (a.distance != b.distance) return a.distance < b.distance;
    return a.seq < b.seq;
  });

  FormedBatch& batch = work.batch;
  batch = FormedBatch{};
  batch.queue = &q;
  work.picked.clear();
  double cost = 0;
  double cost_min = 0;                           // Of the tasks taken, at minimum budgets.
  absl::Time earliest = absl::InfiniteFuture();  // Their earliest deadline.
  for (const Candidate& c : candidates) {
    if (batch.tasks.size() >= static_cast<size_t>(o.max_batch_size)) break;
    Entry& e = *c.entry;
    if (!batch.tasks.empty()) {
      if (batch.tokens + e.tokens > o.max_batch_tokens) continue;
      if (o.max_batch_cost > 0 && cost + e.cost_full > o.max_batch_cost) continue;
      // Never make the batch (so it or a task already in it) predicted to finish late, even at
      // minimum budgets: the task waits for a later batch instead. (The seed fits alone: the
      // sweep above dropped it otherwise.)
      if (q.ShedsLate()) {
        const absl::Time deadline = std::min(earliest, e.deadline);
        if (deadline != absl::InfiniteFuture() &&
            now + absl::Seconds(q.predictor.PredictSeconds(cost_min + e.cost_min)) > deadline) {
          continue;
        }
      }
    }
    batch.tokens += e.tokens;
    cost += e.cost_full;
    cost_min += e.cost_min;
    earliest = std::min(earliest, e.deadline);
    work.picked.push_back({e.tokens, e.cost_full, e.cost_min, e.deadline});
    batch.tasks.push_back(std::move(e.task));
  }
  // Compact the levels (taken entries have a null task) and redo their sums.
  for (auto it = q.levels.begin(); it != q.levels.end();) {
    Level& level = it->second;
    std::erase_if(static_cast<std::deque<Entry>&>(level),
                  [](const Entry& e) { return e.task == nullptr; });
    level.cost_min = 0;
    level.tokens = 0;
    for (const Entry& e : level) {
      level.cost_min += e.cost_min;
      level.tokens += e.tokens;
    }
    it = level.empty() ? q.levels.erase(it) : std::next(it);
  }
  const int64_t n = static_cast<int64_t>(batch.tasks.size());
  q.queued_tasks -= n;
  queued_total_ -= n;
  q.queued_tokens -= batch.tokens;
  q.queued_cost = q.queued_tasks == 0 ? 0 : q.queued_cost - cost;
  q.in_flight_tasks += n;
  ++q.in_flight_batches;
  in_flight_total_ += n;
  RecomputeHintsLocked(q);

  // Budgets: one load level for the batch; reducible tasks run at min + level * (budget - min).
  batch.level = BudgetLevelLocked(q, work.picked, now);
  double planned = 0;
  for (size_t i = 0; i < batch.tasks.size(); ++i) {
    Task& t = *batch.tasks[i];
    TaskReport& r = t.report_;
    r.budget_used = t.budget;
    if (t.min_budget && *t.min_budget < t.budget && batch.level < 1) {
      r.budget_used = *t.min_budget + batch.level * (t.budget - *t.min_budget);
      r.budget_lowered = true;
      ++batch.lowered;
    }
    r.batch_size = static_cast<int>(n);
    r.batch_tokens = batch.tokens;
    r.worker_index = worker;
    const Picked& p = work.picked[i];
    planned += p.cost_min + batch.level * (p.cost_full - p.cost_min);
  }
  q.counts.budget_lowered += batch.lowered;
  batch.predicted_seconds = q.predictor.PredictSeconds(planned);
  workers_[static_cast<size_t>(worker)].busy_until = now + absl::Seconds(batch.predicted_seconds);
  NotifyDepthLocked(q);
}

// The budget level of a batch: the largest level in [0, 1] such that, by the predictor, (a) the
// batch finishes before the earliest deadline in it, and (b) every queued task with a deadline
// still finishes in time, assuming the queue is served in order at the same level by all workers
// after the batches now running, in batches of max_batch_size/max_batch_tokens that each pay the
// predictor's per-batch overhead; predicted times are inflated by deadline_safety_factor. Tasks
// that would miss even at their minimum budgets do not pull the level down (they cannot be saved;
// the others can). Costs are interpolated linearly between a task's minimum and requested budget.
double Scheduler::BudgetLevelLocked(const ModelQueue& q, const std::vector<Picked>& picked,
                                    absl::Time now) const {
  const double safety = q.options.deadline_safety_factor;
  BudgetLevelParams params{.alpha = q.predictor.overhead_seconds() * safety,
                           .beta = q.predictor.seconds_per_unit() * safety,
                           .workers = static_cast<double>(workers_.size()),
                           .max_batch_size = q.options.max_batch_size,
                           .max_batch_tokens = q.options.max_batch_tokens,
                           .now = now};
  if (!(params.beta > 0)) return 1.0;
  params.backlog_seconds = safety * RunningSecondsLocked(now);
  BudgetLevelCalculator calc(params);
  for (const Picked& p : picked) calc.AddBatchTask(p.cost_min, p.cost_full, p.deadline);
  for (const auto& [priority, queue_level] : q.levels) {
    for (const Entry& e : queue_level)
      calc.AddQueued(e.cost_min, e.cost_full, e.tokens, e.deadline);
  }
  return calc.level();
}

void Scheduler::RunBatch(int worker, FormedBatch& formed, std::unique_lock<std::mutex>& lock) {
  ModelQueue& q = *formed.queue;
  const size_t n = formed.tasks.size();
  std::vector<Task*> raw;
  raw.reserve(n);
  double planned = 0;
  for (std::unique_ptr<Task>& t : formed.tasks) {
    t->report_.planned_cost = q.options.cost(t->tokens, t->report_.budget_used);
    planned += t->report_.planned_cost;
    raw.push_back(t.get());
  }
  lock.lock();
  SetWorkerStateLocked(worker, WorkerState::kRunning);
  lock.unlock();

  const absl::Time start = clock_->Now();
  absl::Duration max_wait;
  absl::Duration total_wait;
  for (Task* t : raw) {
    t->report_.start_time = start;
    t->report_.queue_time = start - t->report_.enqueue_time;
    max_wait = std::max(max_wait, t->report_.queue_time);
    total_wait += t->report_.queue_time;
  }
  const Batch batch{.model = q.name,
                    .tasks = std::span<Task* const>(raw),
                    .worker_index = worker,
                    .threads = options_.threads_per_worker,
                    .planned_cost = planned,
                    .budget_level = formed.level};
  const absl::Status status = RunExecutor(*q.executor, batch);
  const absl::Time end = clock_->Now();

  std::vector<absl::Status> statuses(n);
  int64_t ok = 0, cancelled = 0, failed = 0;
  for (size_t i = 0; i < n; ++i) {
    Task& t = *raw[i];
    t.report_.compute_time = end - start;
    if (!status.ok()) {
      statuses[i] = status;
      ++failed;
    } else if (t.cancellation.IsCancelled()) {
      statuses[i] = absl::CancelledError("request was cancelled while running; result discarded");
      ++cancelled;
    } else if (!t.error_.ok()) {
      statuses[i] = std::move(t.error_);
      t.error_ = absl::OkStatus();
      ++failed;
    } else {
      ++ok;
    }
  }

  lock.lock();
  if (status.ok()) q.predictor.Observe(planned, Seconds(end - start));
  q.in_flight_tasks -= static_cast<int64_t>(n);
  --q.in_flight_batches;
  in_flight_total_ -= static_cast<int64_t>(n);
  q.counts.ok += ok;
  q.counts.cancelled += cancelled;
  q.counts.failed += failed;
  ++q.counts.batches;
  workers_[static_cast<size_t>(worker)].busy_until = absl::InfinitePast();
  SetWorkerStateLocked(worker, WorkerState::kCompleting);
  NotifyDepthLocked(q);
  NotifyIfDrainedLocked();
  lock.unlock();

  if (observer_ != nullptr) {
    observer_->OnBatchDone(BatchStats{
        .model = q.name,
        .worker_index = worker,
        .size = static_cast<int>(n),
        .tokens = formed.tokens,
        .planned_cost = planned,
        .budget_level = formed.level,
        .lowered_tasks = formed.lowered,
        .max_queue_time = max_wait,
        .mean_queue_time = n > 0 ? total_wait / static_cast<int64_t>(n) : absl::ZeroDuration(),
        .predicted_compute_time = absl::Seconds(formed.predicted_seconds),
        .compute_time = end - start,
        .status = status});
  }
  for (size_t i = 0; i < n; ++i) {
    Complete({&q, std::move(formed.tasks[i]), std::move(statuses[i])}, end);
  }
  formed = FormedBatch{};
}

void Scheduler::Complete(Finished f, absl::Time now) {
  TaskReport& r = f.task->report_;
  r.end_time = now;
  if (r.start_time == absl::InfinitePast()) r.queue_time = now - r.enqueue_time;
  if (observer_ != nullptr) {
    if (f.shed) observer_->OnShed(f.queue->name, *f.shed, 1);
    observer_->OnTaskDone(f.queue->name, *f.task, f.status);
  }
  // Move the callback out first: it receives (and may destroy) the task that holds it.
  Task::DoneCallback done = std::move(f.task->done);
  done(std::move(f.task), std::move(f.status));
}

// ---------------------------------------------------------------------------------------------
// Introspection.

absl::StatusOr<ModelStats> Scheduler::GetModelStats(std::string_view model) const {
  const ModelQueue* q = FindQueue(model);
  if (q == nullptr) return absl::NotFoundError(absl::StrCat("unknown model '", AV(model), "'"));
  std::lock_guard<std::mutex> lock(mu_);
  return ModelStats{.depth = {.queued_tasks = q->queued_tasks,
                              .queued_tokens = q->queued_tokens,
                              .in_flight_tasks = q->in_flight_tasks,
                              .in_flight_batches = q->in_flight_batches},
                    .counts = q->counts,
                    .predictor_overhead_seconds = q->predictor.overhead_seconds(),
                    .predictor_seconds_per_unit = q->predictor.seconds_per_unit(),
                    .predictor_observations = q->predictor.num_observations()};
}

bool Scheduler::IsAccepting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return accepting_;
}

void Scheduler::WaitForIdleForTesting() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t epoch = ++epoch_;
  ++idle_waiters_;
  WakeAllLocked();
  idle_cv_.wait(lock, [&] {
    for (const Worker& w : workers_) {
      const bool idle = (w.state == WorkerState::kSleeping && w.seen_epoch >= epoch) ||
                        w.state == WorkerState::kRunning || w.state == WorkerState::kExited;
      if (!idle) return false;
    }
    return true;
  });
  --idle_waiters_;
}

}  // namespace topserve::batching
