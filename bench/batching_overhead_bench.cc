// Scheduling overhead of the batcher: Schedule() -> done callback with a no-op executor, real
// clock, max_queue_delay 0 (so any latency is the scheduler's own: locking, planning, thread
// hand-off).
//
//   build-batch/batching/batching_overhead_bench --benchmark_out=overhead.json
//       --benchmark_out_format=json
//
// BM_Paced is the target: requests arriving at a fixed rate (1,000/s), latency per request
// and process CPU time per request (all threads). BM_Overload simulates 3x overload with deadlines
// on an executor that sleeps for a linear cost model, adaptive vs fixed budgets.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include "batching/scheduler.h"

namespace topserve::batching {
namespace {

using SteadyClock = std::chrono::steady_clock;

class NoopExecutor : public BatchExecutor {
 public:
  absl::Status Run(const Batch&) override { return absl::OkStatus(); }
};

const std::string kModel = "m";

struct BenchTask : Task {
  SteadyClock::time_point submitted;
};

std::unique_ptr<Scheduler> MakeScheduler(int workers) {
  auto s = Scheduler::Create({.num_workers = workers});
  if (!s.ok()) std::abort();
  ModelOptions o;
  o.max_queue_delay = absl::ZeroDuration();
  o.max_batch_size = 32;
  o.max_queue_size = 1 << 20;
  o.max_queue_tokens = int64_t{1} << 40;
  if (!(*s)->AddModel("m", o, std::make_shared<NoopExecutor>()).ok()) std::abort();
  return std::move(*s);
}

// Collects Schedule()->callback latencies.
struct Latencies {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<double> micros;
  size_t done = 0;

  Task::DoneCallback Callback() {
    return [this](std::unique_ptr<Task> task, absl::Status) {
      const auto now = SteadyClock::now();
      const auto& t = static_cast<BenchTask&>(*task);
      std::lock_guard<std::mutex> lock(mu);
      micros.push_back(std::chrono::duration<double, std::micro>(now - t.submitted).count());
      ++done;
      cv.notify_all();
    };
  }
  void WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done >= n; });
  }
};

void Submit(Scheduler& s, Latencies& lat, int64_t tokens) {
  auto t = std::make_unique<BenchTask>();
  t->model = kModel;
  t->tokens = tokens;
  t->done = lat.Callback();
  t->submitted = SteadyClock::now();
  std::unique_ptr<Task> base = std::move(t);
  if (!s.Schedule(&base).ok()) std::abort();
}

void Report(benchmark::State& state, std::vector<double> us) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (double v : us) sum += v;
  auto pct = [&](double p) {
    return us[std::min(us.size() - 1, static_cast<size_t>(p * static_cast<double>(us.size())))];
  };
  state.counters["mean_us"] = sum / static_cast<double>(us.size());
  state.counters["p50_us"] = pct(0.50);
  state.counters["p99_us"] = pct(0.99);
  state.counters["max_us"] = us.back();
}

double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

// Open loop at `rate` requests/s: the latency each request sees from Schedule() to its callback.
void BM_Paced(benchmark::State& state) {
  const double rate = static_cast<double>(state.range(0));
  const int workers = static_cast<int>(state.range(1));
  constexpr int kRequests = 1000;
  auto scheduler = MakeScheduler(workers);
  Latencies lat;
  size_t expected = 0;
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    const auto start = SteadyClock::now();
    for (int i = 0; i < kRequests; ++i) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<SteadyClock::duration>(
                                                std::chrono::duration<double>(i / rate)));
      Submit(*scheduler, lat, 16 + i % 100);
    }
    expected += kRequests;
    lat.WaitFor(expected);
  }
  state.counters["cpu_us_per_req"] =
      (ProcessCpuSeconds() - cpu0) * 1e6 / static_cast<double>(expected);
  state.SetItemsProcessed(static_cast<int64_t>(expected));
  Report(state, lat.micros);
}
BENCHMARK(BM_Paced)
    ->Args({1000, 1})
    ->Args({1000, 2})
    ->Iterations(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The pacing loop alone (sleep_until + a task allocation, no scheduler): its CPU per request is
// the benchmark's own cost, to subtract from BM_Paced's cpu_us_per_req.
void BM_PacedBaseline(benchmark::State& state) {
  const double rate = static_cast<double>(state.range(0));
  constexpr int kRequests = 1000;
  int64_t n = 0;
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    const auto start = SteadyClock::now();
    for (int i = 0; i < kRequests; ++i) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<SteadyClock::duration>(
                                                std::chrono::duration<double>(i / rate)));
      auto t = std::make_unique<BenchTask>();
      t->model = kModel;
      t->submitted = SteadyClock::now();
      benchmark::DoNotOptimize(t.get());
    }
    n += kRequests;
  }
  state.counters["cpu_us_per_req"] = (ProcessCpuSeconds() - cpu0) * 1e6 / static_cast<double>(n);
}
BENCHMARK(BM_PacedBaseline)->Arg(1000)->Iterations(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// Closed loop, one request in flight: the full round trip including waking an idle worker.
void BM_RoundTrip(benchmark::State& state) {
  auto scheduler = MakeScheduler(1);
  Latencies lat;
  size_t expected = 0;
  for (auto _ : state) {
    Submit(*scheduler, lat, 64);
    lat.WaitFor(++expected);
  }
  Report(state, lat.micros);
}
BENCHMARK(BM_RoundTrip)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Saturation: 1,000 requests submitted back to back; time per request = CPU cost of scheduling
// (Schedule() + batch formation + completion) when batching amortises the hand-offs.
void BM_Burst(benchmark::State& state) {
  auto scheduler = MakeScheduler(static_cast<int>(state.range(0)));
  Latencies lat;
  size_t expected = 0;
  constexpr int kRequests = 1000;
  for (auto _ : state) {
    for (int i = 0; i < kRequests; ++i) Submit(*scheduler, lat, 16 + i % 100);
    expected += kRequests;
    lat.WaitFor(expected);
  }
  state.SetItemsProcessed(static_cast<int64_t>(expected));
}
BENCHMARK(BM_Burst)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();

// ---- Overload with deadlines: adaptive vs fixed budgets ----
// Simulated model: a batch takes 1 ms + 10 us per token at budget 1 (cost = tokens x budget), as a
// sleep; requests of 20..120 tokens, deadline 100 ms, budget 1, min budget 0.25 when adaptive.
// Capacity at budget 1 with 32-request batches: 32 / (1 ms + 32 * 70 * 10 us) = ~1,370 requests/s.
class SleepExecutor : public BatchExecutor {
 public:
  absl::Status Run(const Batch& batch) override {
    double tokens = 0;
    for (Task* t : batch.tasks) tokens += static_cast<double>(t->tokens) * t->report().budget_used;
    std::this_thread::sleep_for(std::chrono::duration<double>(0.001 + 10e-6 * tokens));
    return absl::OkStatus();
  }
};

void BM_Overload(benchmark::State& state) {
  const bool adaptive = state.range(0) != 0;
  const double overload = static_cast<double>(state.range(1));
  constexpr double kCapacity = 32.0 / (0.001 + 32 * 70 * 10e-6);
  const double rate = overload * kCapacity;
  const absl::Duration deadline = absl::Milliseconds(100);
  const double seconds = 2.0;
  const char* safety_env = std::getenv("SAFETY");
  int64_t total = 0;
  std::atomic<int64_t> in_time{0}, done{0}, late{0}, expired{0};
  int64_t refused = 0;
  std::atomic<double> budget_sum{0};
  for (auto _ : state) {
    auto s = Scheduler::Create({.num_workers = 1});
    ModelOptions o;
    o.max_batch_size = 32;
    o.max_queue_delay = absl::Milliseconds(1);
    o.max_queue_size = 1024;
    if (safety_env != nullptr) o.deadline_safety_factor = std::atof(safety_env);
    o.predictor = {.prior_overhead_seconds = 0.002,
                   .prior_seconds_per_unit = 20e-6,
                   .prior_reference_units = 1000};
    if (!s.ok() || !(*s)->AddModel("m", o, std::make_shared<SleepExecutor>()).ok()) std::abort();
    Scheduler& scheduler = **s;
    const auto start = SteadyClock::now();
    const int n = static_cast<int>(seconds * rate);
    for (int i = 0; i < n; ++i) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<SteadyClock::duration>(
                                                std::chrono::duration<double>(i / rate)));
      auto t = std::make_unique<BenchTask>();
      t->model = kModel;
      t->tokens = 20 + (i * 7919) % 101;
      t->deadline = absl::Now() + deadline;
      if (adaptive) t->min_budget = 0.25;
      const absl::Time dl = t->deadline;
      t->done = [&, dl](std::unique_ptr<Task> task, absl::Status st) {
        if (st.ok() && task->report().end_time <= dl) in_time.fetch_add(1);
        if (st.ok() && task->report().end_time > dl) late.fetch_add(1);
        if (st.code() == absl::StatusCode::kDeadlineExceeded) expired.fetch_add(1);
        if (st.ok()) {
          double cur = budget_sum.load();
          while (!budget_sum.compare_exchange_weak(cur, cur + task->report().budget_used)) {
          }
          done.fetch_add(1);
        }
      };
      std::unique_ptr<Task> base = std::move(t);
      if (!scheduler.Schedule(&base).ok()) ++refused;  // Refused (queue full) counts as a miss.
      ++total;
    }
    scheduler.Shutdown({.mode = ShutdownOptions::Mode::kDrain, .grace = absl::Seconds(10)});
  }
  state.counters["offered_per_s"] = rate;
  state.counters["late"] = static_cast<double>(late.load()) / static_cast<double>(total);
  state.counters["expired"] = static_cast<double>(expired.load()) / static_cast<double>(total);
  state.counters["refused"] = static_cast<double>(refused) / static_cast<double>(total);
  state.counters["within_deadline"] =
      static_cast<double>(in_time.load()) / static_cast<double>(total);
  state.counters["mean_budget"] =
      done.load() > 0 ? budget_sum.load() / static_cast<double>(done.load()) : 0;
}
BENCHMARK(BM_Overload)
    ->ArgNames({"adaptive", "overload"})
    ->Args({0, 3})
    ->Args({1, 3})
    ->Args({1, 1})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace topserve::batching

BENCHMARK_MAIN();
