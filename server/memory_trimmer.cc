#include "server/memory_trimmer.h"

#include <malloc.h>

#include "absl/time/clock.h"

namespace topserve::server {

MemoryTrimmer::MemoryTrimmer(absl::Duration min_interval)
    : min_interval_(min_interval), thread_([this] { Loop(); }) {}

MemoryTrimmer::~MemoryTrimmer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void MemoryTrimmer::Notify() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ = true;
  }
  cv_.notify_one();
}

void MemoryTrimmer::Loop() {
  absl::Time last = absl::InfinitePast();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return pending_ || stop_; });
    if (stop_) return;
    // Rate limit: a notice inside the interval waits for its end (a later notice merges into it).
    const absl::Time due = last + min_interval_;
    if (absl::Now() < due) {
      cv_.wait_for(lock, absl::ToChronoNanoseconds(due - absl::Now()), [this] { return stop_; });
      if (stop_) return;
    }
    pending_ = false;
    lock.unlock();
    malloc_trim(0);
    last = absl::Now();
    lock.lock();
  }
}

}  // namespace topserve::server
