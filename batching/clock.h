// Injected time source for the batching scheduler: a real clock for production and a FakeClock that
// tests advance by hand, so that every timing decision (queue delay, deadlines, grace periods,
// measured compute times) is deterministic in tests.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace topserve::batching {

// All times the scheduler handles (enqueue times, task deadlines, batch start and end) are
// absl::Time values read from one Clock. Implementations are thread-safe.
class Clock {
 public:
  using ListenerId = int64_t;

  virtual ~Clock() = default;

  virtual absl::Time Now() const = 0;

  // Like std::condition_variable::wait_until: the caller holds `lock` (on the mutex that guards the
  // state `cv` signals about); blocks with the lock released until `cv` is notified, until
  // Now() >= deadline, or spuriously. absl::InfiniteFuture() waits for a notification only.
  virtual void WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                         absl::Time deadline) = 0;

  // A clock whose time moves in jumps (FakeClock) calls every listener after each jump, so that
  // threads blocked in WaitUntil() re-check their deadlines: a listener notifies its condition
  // variables. A listener may take its own locks; it must not call AddListener/RemoveListener.
  // The real clock never jumps: these are no-ops. RemoveListener() returns only once the listener
  // is not running and will not run again.
  virtual ListenerId AddListener(std::function<void()> /*listener*/) { return 0; }
  virtual void RemoveListener(ListenerId /*id*/) {}
};

// Wall time (absl::Now(), the timebase of gRPC deadlines); waits are measured on the monotonic
// clock.
class RealClock final : public Clock {
 public:
  // The process-wide instance (stateless, never destroyed).
  static RealClock* Get();

  absl::Time Now() const override { return absl::Now(); }
  void WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                 absl::Time deadline) override;
};

// A clock that only moves when told to. Threads waiting in WaitUntil() wake when the time passes
// their deadline (through the listeners the scheduler registers).
class FakeClock final : public Clock {
 public:
  // Starts at an arbitrary fixed time, far from absl's infinite past/future.
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000));

  absl::Time Now() const override;
  void WaitUntil(std::unique_lock<std::mutex>& lock, std::condition_variable& cv,
                 absl::Time deadline) override;
  ListenerId AddListener(std::function<void()> listener) override;
  void RemoveListener(ListenerId id) override;

  // Moves the time forward (a negative step is ignored) and runs the listeners. Safe from any
  // thread that holds no lock a listener takes, including from inside BatchExecutor::Run().
  void Advance(absl::Duration step);

 private:
  mutable std::mutex time_mu_;  // Leaf lock.
  absl::Time now_;              // Guarded by time_mu_.

  std::mutex listeners_mu_;  // Held while listeners run; ordered before the listeners' own locks.
  ListenerId next_id_ = 1;   // Guarded by listeners_mu_.
  std::map<ListenerId, std::function<void()>> listeners_;  // Guarded by listeners_mu_.
};

}  // namespace topserve::batching
