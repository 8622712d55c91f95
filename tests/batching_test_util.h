// Helpers shared by the batching tests: a task type, a completion recorder, a controllable
// executor.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <gtest/gtest.h>

#include "batching/scheduler.h"

namespace topserve::batching::testing {

struct TestTask : Task {
  int id = 0;
};

inline int IdOf(const Task& t) { return static_cast<const TestTask&>(t).id; }

// Records every completion; fails the test if a task completes twice.
class Recorder {
 public:
  struct Done {
    int id = 0;
    absl::Status status;
    TaskReport report;
    double budget = 0;
  };

  Task::DoneCallback Callback() {
    return [this](std::unique_ptr<Task> task, absl::Status status) {
      std::lock_guard<std::mutex> lock(mu_);
      const int id = IdOf(*task);
      for (const Done& d : done_) EXPECT_NE(d.id, id) << "task " << id << " completed twice";
      done_.push_back({id, std::move(status), task->report(), task->budget});
      cv_.notify_all();
    };
  }

  // Waits (real time, bounded) until at least n tasks completed.
  bool WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return done_.size() >= n; });
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return done_.size();
  }
  std::optional<Done> Find(int id) const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Done& d : done_) {
      if (d.id == id) return d;
    }
    return std::nullopt;
  }
  std::vector<Done> All() const {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Done> done_;
};

// Records batches (task ids, budgets). Hold() makes Run() block until Release(). With a clock set,
// each Run() advances it by compute_seconds(planned_cost) (deterministic measured compute times).
class TestExecutor : public BatchExecutor {
 public:
  struct Seen {
    std::vector<int> ids{};
    std::vector<double> budgets{};
    int worker = 0;
    int threads = 0;
    double planned_cost = 0;
  };

  explicit TestExecutor(FakeClock* clock = nullptr) : clock_(clock) {}

  absl::Status Run(const Batch& batch) override {
    Seen seen{
        .worker = batch.worker_index, .threads = batch.threads, .planned_cost = batch.planned_cost};
    for (Task* t : batch.tasks) {
      seen.ids.push_back(IdOf(*t));
      seen.budgets.push_back(t->report().budget_used);
    }
    std::function<absl::Status(const Batch&)> hook;
    {
      std::unique_lock<std::mutex> lock(mu_);
      batches_.push_back(seen);
      ++running_;
      ++blocked_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !held_; });
      --blocked_;
      hook = hook_;
    }
    if (clock_ != nullptr && compute_seconds_) {
      clock_->Advance(absl::Seconds(compute_seconds_(batch.planned_cost)));
    }
    absl::Status status = hook ? hook(batch) : absl::OkStatus();
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
    cv_.notify_all();
    return status;
  }

  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }
  // Waits (real time, bounded) until n Run() calls are in progress.
  bool WaitRunning(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return running_ >= n; });
  }
  // Run() calls blocked by Hold() (0 once released, even before they wake).
  int blocked() const {
    std::lock_guard<std::mutex> lock(mu_);
    return held_ ? blocked_ : 0;
  }
  void SetHook(std::function<absl::Status(const Batch&)> hook) {
    std::lock_guard<std::mutex> lock(mu_);
    hook_ = std::move(hook);
  }
  void SetComputeSeconds(std::function<double(double planned_cost)> f) { compute_seconds_ = f; }
  std::vector<Seen> batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }

 private:
  FakeClock* const clock_;
  std::function<double(double)> compute_seconds_;  // Set before the scheduler runs batches.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  int running_ = 0;
  int blocked_ = 0;
  std::function<absl::Status(const Batch&)> hook_;
  std::vector<Seen> batches_;
};

}  // namespace topserve::batching::testing
