#ifndef TOPSERVE_SERVER_MEMORY_TRIMMER_H_
#define TOPSERVE_SERVER_MEMORY_TRIMMER_H_

#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace topserve::server {

// Gives memory that a burst of calls freed back to the system once the load stops: glibc keeps
// freed heap (in every thread's arena: gRPC's, the tokenizer's, the batcher's) for reuse. After
// 10 s at 10x capacity (tools/overload.py) RSS came back to 131 MB instead of 142 MB (idle ~105 MB;
// the rest is memory still in use, not yet identified; the main heap is under 4 MB). Notify()
// (from the scheduler's on_idle) wakes a thread of its own that calls malloc_trim(0), at most once
// per `min_interval`, so neither a worker nor an RPC thread ever waits for it.
class MemoryTrimmer {
 public:
  explicit MemoryTrimmer(absl::Duration min_interval = absl::Seconds(1));
  ~MemoryTrimmer();
  MemoryTrimmer(const MemoryTrimmer&) = delete;
  MemoryTrimmer& operator=(const MemoryTrimmer&) = delete;

  void Notify();

 private:
  void Loop();

  const absl::Duration min_interval_;
  absl::Mutex mu_;
  bool pending_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // Last: starts once the rest is set up.
};

}  // namespace topserve::server

#endif  // TOPSERVE_SERVER_MEMORY_TRIMMER_H_
