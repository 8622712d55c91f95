#include "batching/clock.h"

#include <chrono>
#include <utility>

namespace topserve::batching {

RealClock* RealClock::Get() {
  static RealClock* const clock = new RealClock();
  return clock;
}

void RealClock::WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                          absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) {
    cv.wait(lock);
    return;
  }
  const absl::Duration remaining = deadline - Now();
  if (remaining <= absl::ZeroDuration()) return;
  // wait_for() runs on the steady clock, so a wall-clock step cannot stretch the wait.
  cv.wait_for(lock, absl::ToChronoNanoseconds(remaining));
}

FakeClock::FakeClock(absl::Time start) : now_(start) {}

absl::Time FakeClock::Now() const {
  std::lock_guard<std::mutex> lock(time_mu_);
  return now_;
}

void FakeClock::WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                          absl::Time deadline) {
  // No lost wake-up: Advance() sets the time before running the listeners, and a listener takes the
  // waiter's mutex (held here from this check until wait() releases it) before notifying.
  if (Now() >= deadline) return;
  cv.wait(lock);
}

Clock::ListenerId FakeClock::AddListener(std::function<void()> listener) {
  std::lock_guard<std::mutex> lock(listeners_mu_);
  const ListenerId id = next_id_++;
  listeners_.emplace(id, std::move(listener));
  return id;
}

void FakeClock::RemoveListener(ListenerId id) {
  std::lock_guard<std::mutex> lock(listeners_mu_);
  listeners_.erase(id);
}

void FakeClock::Advance(absl::Duration step) {
  if (step < absl::ZeroDuration()) return;
  {
    std::lock_guard<std::mutex> lock(time_mu_);
    now_ += step;
  }
  std::lock_guard<std::mutex> lock(listeners_mu_);
  for (auto& [id, listener] : listeners_) listener();
}

}  // namespace topserve::batching
