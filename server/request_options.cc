#include "server/request_options.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "engine/pruning.h"

namespace topserve::server {

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::StatusOr<Budget> ResolveBudget(bool has_budget, double budget, bool has_min,
                                     double min_budget, const ModelConfig& model) {
  Budget b;
  b.budget = has_budget ? budget : model.default_budget;
  if (has_budget) {
    if (absl::Status s = engine::ValidateBudget(budget); !s.ok()) {
      return Invalid("budget", absl::StrCat(budget, " is outside (0, 1]"));
    }
    if (budget > model.max_budget) {
      return absl::ResourceExhaustedError(absl::StrCat("budget: ", budget, " is above model '",
                                                       model.name, "''s max_budget ",
                                                       model.max_budget));
    }
  }
  if (has_min) {
    if (!(min_budget > 0 && min_budget <= b.budget)) {
      return Invalid("min_budget",
                     absl::StrCat(min_budget, " is outside (0, budget = ", b.budget, "]"));
    }
    b.min_budget = min_budget;
  }
  return b;
}

absl::Status CheckText(absl::string_view field, const std::string& text, int64_t max_bytes,
                       bool allow_empty) {
  if (!allow_empty && text.empty()) return Invalid(field, "must not be empty");
  if (static_cast<int64_t>(text.size()) > max_bytes) {
    return Invalid(field, absl::StrCat(text.size(), " bytes is over the limit of ", max_bytes,
                                       " (limits.max_text_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status CheckPriority(int32_t priority, int64_t max_priority) {
  if (std::abs(static_cast<int64_t>(priority)) > max_priority) {
    return Invalid("priority", absl::StrCat(priority, " is outside [", -max_priority, ", ",
                                            max_priority, "] (limits.max_priority)"));
  }
  return absl::OkStatus();
}

absl::Status CheckFitsQueue(int64_t sequences, int64_t tokens, const ModelConfig& model) {
  const QueueConfig& q = model.batching;
  if (q.max_queue_size && sequences > *q.max_queue_size) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request needs ", sequences, " sequences; model '", model.name,
                     "' queues at most ", *q.max_queue_size, " (batching.max_queue_size)"));
  }
  if (q.max_queue_tokens && tokens > *q.max_queue_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request has ", tokens, " tokens; model '", model.name,
                     "' queues at most ", *q.max_queue_tokens, " (batching.max_queue_tokens)"));
  }
  return absl::OkStatus();
}

absl::Status CheckTokens(int64_t tokens, int64_t quota) {
  if (tokens > quota) {
    return absl::ResourceExhaustedError(absl::StrCat("the request has ", tokens,
                                                     " tokens; the quota is ", quota,
                                                     " per call (limits.max_tokens_per_call)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<engine::Truncation> ToTruncation(v1::Truncation t) {
  switch (t) {
    case v1::TRUNCATION_UNSPECIFIED:
    case v1::TRUNCATION_LONGEST_FIRST: return engine::Truncation::kLongestFirst;
    case v1::TRUNCATION_NONE: return engine::Truncation::kNone;
    case v1::TRUNCATION_ONLY_FIRST: return engine::Truncation::kOnlyFirst;
    case v1::TRUNCATION_ONLY_SECOND: return engine::Truncation::kOnlySecond;
    default: break;
  }
  return Invalid("truncation", absl::StrCat("unknown value ", static_cast<int>(t)));
}

absl::StatusOr<engine::QaOptions> ResolveQaOptions(int64_t max_length, int64_t max_query_tokens,
                                                   int64_t max_answer_tokens, int64_t n_best,
                                                   int64_t model_max) {
  const engine::QaOptions defaults;
  engine::QaOptions qa;
  qa.max_length = max_length == 0 ? std::min(defaults.max_length, model_max) : max_length;
  if (qa.max_length < 8 || qa.max_length > model_max) {
    return Invalid("max_length", absl::StrCat(max_length, " is outside [8, ", model_max, "]"));
  }
  qa.max_query_tokens = max_query_tokens == 0
                            ? std::min(defaults.max_query_tokens, qa.max_length - 4)
                            : max_query_tokens;
  if (qa.max_query_tokens < 1 || qa.max_query_tokens > qa.max_length - 4) {
    return Invalid("max_query_tokens",
                   absl::StrCat(max_query_tokens,
                                " is outside [1, max_length - 4 = ", qa.max_length - 4, "]"));
  }
  qa.max_answer_tokens = max_answer_tokens == 0 ? defaults.max_answer_tokens : max_answer_tokens;
  if (qa.max_answer_tokens < 1 || qa.max_answer_tokens > 512) {
    return Invalid("max_answer_tokens", absl::StrCat(max_answer_tokens, " is outside [1, 512]"));
  }
  qa.n_best = n_best == 0 ? defaults.n_best : n_best;
  if (qa.n_best < 1 || qa.n_best > 100) {
    return Invalid("n_best", absl::StrCat(n_best, " is outside [1, 100]"));
  }
  return qa;
}

absl::StatusOr<int64_t> ResolveDocStride(std::optional<int64_t> doc_stride, int64_t room) {
  if (doc_stride.has_value()) {
    if (*doc_stride < 0 || *doc_stride >= room) {
      return Invalid("doc_stride", absl::StrCat(*doc_stride, " is outside [0, ", room,
                                                ") (the context tokens per window)"));
    }
    return *doc_stride;
  }
  return std::min(engine::QaOptions{}.doc_stride, room / 2);
}

}  // namespace topserve::server
