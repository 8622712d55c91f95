#include "engine/qa.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace topserve::engine {

absl::StatusOr<QaPieces> TokenizeQa(const Tokenizer& tokenizer, std::string_view question,
                                    std::string_view context, const QaOptions& options) {
  auto q = tokenizer.Tokenize(question);
  if (!q.ok()) return absl::InvalidArgumentError(absl::StrCat("question: ", q.status().message()));
  auto c = tokenizer.Tokenize(context);
  if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat("context: ", c.status().message()));
  QaPieces pieces{std::move(*q), std::move(*c)};
  if (pieces.question.empty()) return absl::InvalidArgumentError("question: no tokens");
  if (static_cast<int64_t>(pieces.question.size()) > options.max_query_tokens) {
    pieces.question.resize(static_cast<size_t>(options.max_query_tokens));
  }
  return pieces;
}

namespace {

// Context pieces per window, after checking the options leave room and a valid stride.
absl::StatusOr<int64_t> ContextRoom(const QaPieces& pieces, const QaOptions& options) {
  const int64_t room = options.max_length - 3 - static_cast<int64_t>(pieces.question.size());
  if (room < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_length ", options.max_length, " leaves no room for the context"));
  }
  if (options.doc_stride < 0 || options.doc_stride >= room) {
    return absl::InvalidArgumentError(
        absl::StrCat("doc_stride ", options.doc_stride, " must be in [0, ", room, ")"));
  }
  return room;
}

}  // namespace

absl::StatusOr<QaWindowCount> CountQaWindows(const QaPieces& pieces, const QaOptions& options) {
  ASSIGN_OR_RETURN(const int64_t room, ContextRoom(pieces, options));
  // The same walk as BuildQaWindows, on integers only.
  const int64_t n = static_cast<int64_t>(pieces.context.size());
  const int64_t fixed = 3 + static_cast<int64_t>(pieces.question.size());
  QaWindowCount count;
  for (int64_t start = 0;; start += room - options.doc_stride) {
    const int64_t len = std::min(room, n - start);
    ++count.windows;
    count.tokens += fixed + len;
    if (start + len >= n) break;
  }
  return count;
}

absl::StatusOr<std::vector<Encoding>> BuildQaWindows(const Tokenizer& tokenizer,
                                                     const QaPieces& pieces,
                                                     const QaOptions& options) {
  ASSIGN_OR_RETURN(const int64_t room, ContextRoom(pieces, options));
  const std::vector<Piece>& all = pieces.context;
  std::vector<Encoding> windows;
  int64_t start = 0;
  const int64_t n = static_cast<int64_t>(all.size());
  while (true) {
    const int64_t len = std::min(room, n - start);
    std::vector<Piece> part(all.begin() + start, all.begin() + start + len);
    ASSIGN_OR_RETURN(Encoding enc,
                     tokenizer.Build(pieces.question, &part,
                                     static_cast<size_t>(options.max_length), Truncation::kNone));
    windows.push_back(std::move(enc));
    if (start + len >= n) break;
    start += room - options.doc_stride;
  }
  return windows;
}

absl::StatusOr<std::vector<Encoding>> BuildQaWindows(const Tokenizer& tokenizer,
                                                     std::string_view question,
                                                     std::string_view context,
                                                     const QaOptions& options) {
  ASSIGN_OR_RETURN(const QaPieces pieces, TokenizeQa(tokenizer, question, context, options));
  return BuildQaWindows(tokenizer, pieces, options);
}

std::vector<AnswerSpan> BestSpans(std::string_view context, std::span<const Encoding> windows,
                                  std::span<const std::vector<float>> start_logits,
                                  std::span<const std::vector<float>> end_logits,
                                  const QaOptions& options) {
  struct Candidate {
    double score;
    int32_t begin, end, window;
  };
  std::vector<Candidate> candidates;
  // Candidate starts and ends per window, as in the SQuAD reference code (Google's run_squad.py,
  // transformers' postprocess_qa_predictions): the `top` highest logits over every position of the
  // window, specials and question included; those outside the context are then skipped. Ranking
  // the context positions alone would reach spans the reference never considers.
  const size_t top = 20;
  for (size_t w = 0; w < windows.size(); ++w) {
    const Encoding& enc = windows[w];
    const auto& sl = start_logits[w];
    const auto& el = end_logits[w];
    const size_t n = std::min({enc.size(), sl.size(), el.size()});
    auto best = [&](const std::vector<float>& logits) {
      std::vector<int32_t> idx(n);
      std::iota(idx.begin(), idx.end(), 0);
      const size_t k = std::min(top, idx.size());
      std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                        [&](int32_t a, int32_t b) {
                          return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
                        });
      idx.resize(k);
      return idx;
    };
    const std::vector<int32_t> ends = best(el);
    for (int32_t s : best(sl)) {
      if (enc.segment[s] != 1) continue;
      for (int32_t e : ends) {
        if (enc.segment[e] != 1) continue;
        if (e < s || e - s + 1 > options.max_answer_tokens) continue;
        candidates.push_back({static_cast<double>(sl[s]) + el[e], enc.begin[s], enc.end[e],
                              static_cast<int32_t>(w)});
      }
    }
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
  std::vector<AnswerSpan> spans;
  std::set<std::pair<int32_t, int32_t>> seen;
  for (const Candidate& c : candidates) {
    if (static_cast<int64_t>(spans.size()) >= options.n_best) break;
    if (!seen.insert({c.begin, c.end}).second) continue;
    spans.push_back({std::string(context.substr(static_cast<size_t>(c.begin),
                                                static_cast<size_t>(c.end - c.begin))),
                     c.begin, c.end, c.score, c.window});
  }
  return spans;
}

}  // namespace topserve::engine
