// A call in progress (Classify, ClassifyStream's messages, Answer): its sequences are scheduled on
// the batcher as separate tasks, all or none; each finished sequence writes its part of the
// response, and the last one to finish assembles it, records the call's metrics and calls `done`.
// A failure of one sequence cancels the rest and answers the call with it ("inputs[3]: ...").
#pragma once

#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "batching/task.h"
#include "engine/qa.h"
#include "engine/tokenizer.h"
#include "server/executor.h"
#include "server/metrics.h"
#include "server/request_options.h"
#include "server/runtime.h"
#include "topserve/v1/inference.pb.h"

namespace topserve::server {

// What every call's job needs: where it runs and how it is answered.
struct JobArgs {
  Runtime& rt;
  ServedModel& model;
  Method method;
  absl::Time start;
  Budget budget;
  absl::Time deadline;
  int32_t priority;
  batching::CancellationToken token;
  Runtime::DoneFn done;
};

// Schedules a Classify call's sequences (one task per input, task.index = its position);
// `truncated[i]` says whether input i was shortened. The call may complete before this returns.
void StartClassifyJob(JobArgs args, v1::ClassifyResponse* response, bool return_logits,
                      std::vector<bool> truncated, std::vector<std::unique_ptr<InferTask>> tasks);
// Schedules an Answer call's windows (one task per window) and picks the answer from all of them
// when the last finishes. `request` must outlive the call.
void StartAnswerJob(JobArgs args, const v1::AnswerRequest* request, v1::AnswerResponse* response,
                    std::vector<engine::Encoding> windows, engine::QaOptions options,
                    std::vector<std::unique_ptr<InferTask>> tasks);

}  // namespace topserve::server
