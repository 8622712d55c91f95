// In-process serving benchmark: the batcher (batching/) driving the engine through the server's
// executor, on a realistic length mix (SST-2 dev sentences plus SQuAD dev question+context
// windows).
//
//   build-bench/bench/serving_bench --model DIR --shared ../shared [--sst2 192] [--squad 48]
//        [--json out.json]
//
// 1. Throughput, same requests and batcher: packed + regrouped (our engine) vs every batch padded
//    to its longest sequence ([PAD] appended, as a padding framework computes it).
// 2. Worker/thread split at the CPUs available: 1 worker x N threads vs N workers x 1 thread.
// 3. Overload: open-loop arrivals at 3x the measured capacity with per-request deadlines, fixed
//    budget 1.0 vs adaptive budgets (min_budget 0.2): share of requests answered within deadline.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "batching/scheduler.h"
#include "engine/bert_model.h"
#include "engine/qa.h"
#include "server/executor.h"

namespace {

using namespace topserve;
using Clock = std::chrono::steady_clock;

// Pads every sequence of a batch to the batch's longest before running the real executor.
class PaddingExecutor final : public batching::BatchExecutor {
 public:
  explicit PaddingExecutor(std::shared_ptr<server::EngineExecutor> inner)
      : inner_(std::move(inner)) {}
  absl::Status Run(const batching::Batch& batch) override {
    size_t longest = 0;
    for (batching::Task* t : batch.tasks)
      longest = std::max(longest, batching::TaskAs<server::InferTask>(*t).ids.size());
    for (batching::Task* t : batch.tasks) {
      auto& task = batching::TaskAs<server::InferTask>(*t);
      task.ids.resize(longest, 0);
      task.type_ids.resize(longest, 0);
    }
    return inner_->Run(batch);
  }

 private:
  std::shared_ptr<server::EngineExecutor> inner_;
};

struct Request {
  std::vector<int32_t> ids, types;
};

std::vector<Request> Workload(const engine::BertModel& model, const std::string& shared, int n_sst2,
                              int n_squad) {
  std::vector<Request> out;
  std::ifstream sst(shared + "/data/sst2/dev.tsv");
  std::string line;
  std::getline(sst, line);
  while (static_cast<int>(out.size()) < n_sst2 && std::getline(sst, line)) {
    auto enc = model.tokenizer().Encode(line.substr(0, line.rfind('\t')), std::nullopt,
                                        static_cast<size_t>(model.max_length()),
                                        engine::Truncation::kLongestFirst);
    if (enc.ok()) out.push_back({enc->ids, enc->type_ids});
  }
  std::ifstream squad_file(shared + "/data/squad/dev-v1.1.json");
  const auto squad = nlohmann::json::parse(squad_file);
  engine::QaOptions qa;
  qa.max_length = std::min<int64_t>(384, model.max_length());
  int added = 0;
  for (const auto& article : squad["data"]) {
    for (const auto& para : article["paragraphs"]) {
      if (added >= n_squad) break;
      auto windows =
          engine::BuildQaWindows(model.tokenizer(), para["qas"][0]["question"].get<std::string>(),
                                 para["context"].get<std::string>(), qa);
      if (!windows.ok()) continue;
      for (auto& w : *windows) out.push_back({w.ids, w.type_ids});
      ++added;
    }
  }
  std::shuffle(out.begin(), out.end(), std::mt19937(5));
  return out;
}

struct Outcome {
  double seconds = 0;
  int ok = 0, deadline_exceeded = 0, other = 0, within_deadline = 0;
  double mean_budget = 0;
  int64_t tokens = 0;
};

// Submits requests (all at once when rate == 0, else open loop at `rate` per second) and waits.
Outcome Drive(batching::Scheduler& sched, const std::vector<Request>& reqs, double rate,
              double deadline_s, std::optional<double> min_budget) {
  std::mutex mu;
  std::condition_variable cv;
  int pending = static_cast<int>(reqs.size());
  Outcome out;
  double budget_sum = 0;
  const auto start = Clock::now();
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (rate > 0)
      std::this_thread::sleep_until(start +
                                    std::chrono::duration<double>(static_cast<double>(i) / rate));
    auto task = std::make_unique<server::InferTask>();
    task->model = "m";
    task->ids = reqs[i].ids;
    task->type_ids = reqs[i].types;
    task->tokens = static_cast<int64_t>(reqs[i].ids.size());
    task->min_budget = min_budget;
    const auto submitted = Clock::now();
    if (deadline_s > 0) task->deadline = absl::Now() + absl::Seconds(deadline_s);
    out.tokens += task->tokens;
    task->done = [&, submitted, deadline_s](std::unique_ptr<batching::Task> t, absl::Status s) {
      const double took = std::chrono::duration<double>(Clock::now() - submitted).count();
      std::lock_guard<std::mutex> lock(mu);
      if (s.ok()) {
        ++out.ok;
        budget_sum += t->report().budget_used;
        if (deadline_s <= 0 || took <= deadline_s) ++out.within_deadline;
      } else if (s.code() == absl::StatusCode::kDeadlineExceeded) {
        ++out.deadline_exceeded;
      } else {
        ++out.other;
      }
      if (--pending == 0) cv.notify_all();
    };
    if (absl::Status s = sched.Schedule(&task); !s.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      ++out.other;
      --pending;
    }
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return pending == 0; });
  out.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  out.mean_budget = out.ok > 0 ? budget_sum / out.ok : 0;
  return out;
}

double g_safety_factor = batching::ModelOptions{}.deadline_safety_factor;  // --safety; set in main

std::unique_ptr<batching::Scheduler> MakeScheduler(const engine::BertModel& model, int workers,
                                                   int threads, bool padded) {
  engine::FlushDnnlPrimitiveCache();  // each configuration creates its primitives for its threads
  batching::SchedulerOptions so;
  so.num_workers = workers;
  so.threads_per_worker = threads;
  so.on_worker_start = [](int, int t) { omp_set_num_threads(t); };
  auto sched = batching::Scheduler::Create(so);
  if (!sched.ok()) {
    std::cerr << sched.status() << "\n";
    std::exit(1);
  }
  auto exec = std::make_shared<server::EngineExecutor>(model, model.planner(), workers, threads);
  if (auto s = exec->Warmup(); !s.ok()) {
    std::cerr << s << "\n";
    std::exit(1);
  }
  batching::ModelOptions mo;
  mo.max_batch_tokens = 4096;
  mo.max_batch_size = 32;
  mo.max_queue_size = 100000;
  mo.max_queue_tokens = int64_t{1} << 30;
  mo.deadline_safety_factor = g_safety_factor;
  mo.cost = [exec](int64_t tokens, double budget) { return exec->Cost(tokens, budget); };
  std::shared_ptr<batching::BatchExecutor> runner = exec;
  if (padded) runner = std::make_shared<PaddingExecutor>(exec);
  if (auto s = (*sched)->AddModel("m", mo, runner); !s.ok()) {
    std::cerr << s << "\n";
    std::exit(1);
  }
  return std::move(*sched);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"topserve in-process serving benchmark"};
  std::string model_dir, shared = "../shared", json_out;
  int n_sst2 = 192, n_squad = 48, cpus = 0;
  double overload_seconds = 20;
  app.add_option("--model", model_dir)->required();
  app.add_option("--shared", shared);
  app.add_option("--sst2", n_sst2);
  app.add_option("--squad", n_squad);
  app.add_option("--cpus", cpus, "CPUs to use (default: available)");
  app.add_option("--overload-seconds", overload_seconds);
  app.add_option("--json", json_out);
  app.add_option("--safety", g_safety_factor,
                 "ModelOptions::deadline_safety_factor for the overload runs");
  CLI11_PARSE(app, argc, argv);
  auto model = engine::BertModel::Load(model_dir);
  if (!model.ok()) {
    std::cerr << model.status() << "\n";
    return 1;
  }
  const engine::BertModel& m = **model;
  if (cpus <= 0) cpus = m.num_threads();
  const auto reqs = Workload(m, shared, n_sst2, n_squad);
  nlohmann::json out;
  out["model"] = model_dir;
  out["requests"] = reqs.size();
  out["deadline_safety_factor"] = g_safety_factor;
  int64_t tokens = 0, longest = 0;
  for (const auto& r : reqs) {
    tokens += static_cast<int64_t>(r.ids.size());
    longest = std::max<int64_t>(longest, static_cast<int64_t>(r.ids.size()));
  }
  out["tokens"] = tokens;
  std::cerr << reqs.size() << " requests, " << tokens << " tokens, longest " << longest << "\n";

  // 1. Packed vs padded, and 2. the worker/thread split.
  auto run_closed = [&](const char* name, int workers, int threads, bool padded) {
    auto sched = MakeScheduler(m, workers, threads, padded);
    Outcome o = Drive(*sched, reqs, 0, 0, std::nullopt);
    sched->Shutdown();
    const double rps = static_cast<double>(o.ok) / o.seconds;
    out["throughput"][name] = {{"workers", workers},   {"threads", threads},    {"padded", padded},
                               {"seconds", o.seconds}, {"requests_per_s", rps}, {"ok", o.ok}};
    std::cerr << name << ": " << o.seconds << " s, " << rps << " req/s\n";
    return rps;
  };
  const double packed = run_closed("packed", 1, cpus, false);
  const double padded = run_closed("padded", 1, cpus, true);
  out["packed_over_padded"] = packed / padded;
  if (cpus > 1) run_closed("packed_workers", cpus, 1, false);

  // 3. Overload at 3x capacity with deadlines.
  const double capacity = packed;
  const double rate = 3 * capacity;
  const size_t n = static_cast<size_t>(rate * overload_seconds);
  std::vector<Request> stream;
  for (size_t i = 0; i < n; ++i) stream.push_back(reqs[i % reqs.size()]);
  // Deadline: generous for one batch at full budget, far too short to clear a 3x backlog.
  double mean_batch = 32.0 / capacity;
  const double deadline = std::max(0.25, 4 * mean_batch);
  for (bool adaptive : {false, true}) {
    auto sched = MakeScheduler(m, 1, cpus, false);
    Outcome o =
        Drive(*sched, stream, rate, deadline, adaptive ? std::optional<double>(0.2) : std::nullopt);
    sched->Shutdown();
    const double share =
        static_cast<double>(o.within_deadline) / static_cast<double>(stream.size());
    out["overload"][adaptive ? "adaptive" : "fixed"] = {{"rate", rate},
                                                        {"requests", stream.size()},
                                                        {"deadline_s", deadline},
                                                        {"within_deadline", share},
                                                        {"deadline_exceeded", o.deadline_exceeded},
                                                        {"mean_budget", o.mean_budget},
                                                        {"other_errors", o.other}};
    std::cerr << (adaptive ? "adaptive" : "fixed") << ": " << share * 100 << "% within " << deadline
              << " s, mean budget " << o.mean_budget << "\n";
  }
  const std::string text = out.dump(2);
  if (!json_out.empty()) std::ofstream(json_out) << text << "\n";
  std::cout << text << "\n";
  return 0;
}
