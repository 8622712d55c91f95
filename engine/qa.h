// Extractive question answering around the model: splitting a long context into overlapping
// windows and picking the best answer span over all windows (SQuAD-style post-processing).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace topserve::engine {

struct QaOptions {
  int64_t max_length = 384;       // tokens per window, specials included
  int64_t doc_stride = 128;       // tokens shared by consecutive windows (Hugging Face's `stride`)
  int64_t max_query_tokens = 64;  // longer questions are truncated to this many pieces
  int64_t max_answer_tokens = 30;
  int64_t n_best = 1;
};

// The word pieces of a question (truncated to max_query_tokens) and its context.
struct QaPieces {
  std::vector<Piece> question, context;
};
absl::StatusOr<QaPieces> TokenizeQa(const Tokenizer& tokenizer, std::string_view question,
                                    std::string_view context, const QaOptions& options);

// How many windows BuildQaWindows will make and their tokens in all, computed without making them,
// so a caller can refuse a call that exceeds its limits before spending memory on it. Errors
// (max_length leaves no room, doc_stride out of range) are BuildQaWindows' own.
struct QaWindowCount {
  int64_t windows = 0, tokens = 0;
};
absl::StatusOr<QaWindowCount> CountQaWindows(const QaPieces& pieces, const QaOptions& options);

// [CLS] question [SEP] context-window [SEP] for every window needed to cover the context.
absl::StatusOr<std::vector<Encoding>> BuildQaWindows(const Tokenizer& tokenizer,
                                                     const QaPieces& pieces,
                                                     const QaOptions& options);
// TokenizeQa, then BuildQaWindows.
absl::StatusOr<std::vector<Encoding>> BuildQaWindows(const Tokenizer& tokenizer,
                                                     std::string_view question,
                                                     std::string_view context,
                                                     const QaOptions& options);

struct AnswerSpan {
  std::string text;
  int32_t begin = 0;  // byte offsets into the context
  int32_t end = 0;
  double score = 0;  // start logit + end logit
  int32_t window = 0;
};

// Best spans (highest first, at most n_best, distinct byte spans) over all windows, as SQuAD's
// reference post-processing: per window, every pair of the 20 highest start and 20 highest end
// logits (ranked over the whole window) with start <= end, both inside the context part of the
// window, at most max_answer_tokens long.
std::vector<AnswerSpan> BestSpans(std::string_view context, std::span<const Encoding> windows,
                                  std::span<const std::vector<float>> start_logits,
                                  std::span<const std::vector<float>> end_logits,
                                  const QaOptions& options);

}  // namespace topserve::engine
