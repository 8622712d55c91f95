#include "server/memory_trimmer.h"

#include <malloc.h>

#include "absl/time/clock.h"

namespace topserve::server {

MemoryTrimmer::MemoryTrimmer(absl::Duration min_interval)
    : min_interval_(min_interval), thread_([this] { Loop(); }) {}

MemoryTrimmer::~MemoryTrimmer() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;  // Loop's conditions are re-evaluated on unlock.
  }
  thread_.join();
}

void MemoryTrimmer::Notify() {
  absl::MutexLock lock(&mu_);
  pending_ = true;
}

void MemoryTrimmer::Loop() {
  absl::Time last = absl::InfinitePast();
  auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_ || stop_; };
  auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
  mu_.Lock();
  while (true) {
    mu_.Await(absl::Condition(&woken));
    if (stop_) break;
    // Rate limit: a notice inside the interval waits for its end (a later notice merges into it).
    const absl::Time due = last + min_interval_;
    if (absl::Now() < due && mu_.AwaitWithDeadline(absl::Condition(&stopped), due)) break;
    pending_ = false;
    mu_.Unlock();
    malloc_trim(0);
    last = absl::Now();
    mu_.Lock();
  }
  mu_.Unlock();
}

}  // namespace topserve::server
