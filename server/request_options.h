// A request's options, checked and resolved before anything is tokenized or queued: budgets, text
// and priority limits, the queue and quota bounds, truncation, and the QA window options (starting
// from the engine's own defaults, engine::QaOptions). Pure functions of the request's fields and
// the model's configuration, so they are unit-tested without a server
// (tests/server_request_options_test.cc). Every failure is INVALID_ARGUMENT naming the field, or
// RESOURCE_EXHAUSTED for what can never be served (do not retry).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/qa.h"
#include "engine/tokenizer.h"
#include "server/config.h"
#include "topserve/v1/inference.pb.h"

namespace topserve::server {

// INVALID_ARGUMENT "field: why".
absl::Status Invalid(absl::string_view field, absl::string_view why);

struct Budget {
  double budget = 1;
  std::optional<double> min_budget;
};
// The budget a call runs at: its own (in (0, 1], at most the model's max_budget) or the model's
// default_budget, and its min_budget (in (0, budget]) when it sets one.
absl::StatusOr<Budget> ResolveBudget(bool has_budget, double budget, bool has_min,
                                     double min_budget, const ModelConfig& model);

absl::Status CheckText(absl::string_view field, const std::string& text, int64_t max_bytes,
                       bool allow_empty);
absl::Status CheckPriority(int32_t priority, int64_t max_priority);
// A call whose sequences or tokens exceed the model's whole queue can never be admitted: that is
// RESOURCE_EXHAUSTED (do not retry), not the UNAVAILABLE of a queue that is full right now.
absl::Status CheckFitsQueue(int64_t sequences, int64_t tokens, const ModelConfig& model);
absl::Status CheckTokens(int64_t tokens, int64_t quota);

absl::StatusOr<engine::Truncation> ToTruncation(v1::Truncation t);

// The QA options of an Answer call, from engine::QaOptions' defaults: 0 in a field means "the
// default" (max_length: min(default, model_max); max_query_tokens: min(default, max_length - 4)).
// doc_stride is resolved later (ResolveDocStride), once the question's length is known.
absl::StatusOr<engine::QaOptions> ResolveQaOptions(int64_t max_length, int64_t max_query_tokens,
                                                   int64_t max_answer_tokens, int64_t n_best,
                                                   int64_t model_max);
// doc_stride for windows with `room` context tokens each: the call's own (in [0, room)) or the
// engine's default, never more than half a window (else windows crawl one token at a time when
// max_length is small).
absl::StatusOr<int64_t> ResolveDocStride(std::optional<int64_t> doc_stride, int64_t room);

}  // namespace topserve::server
