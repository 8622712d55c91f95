// QA windowing: CountQaWindows (used to refuse oversized calls before any window exists) agrees
// with the windows BuildQaWindows makes, for every stride and length, and refuses what it refuses.
// BestSpans: the SQuAD reference's candidate rules on hand-made windows and logits (the full
// comparison with transformers is tests/qa_reference).
#include <gtest/gtest.h>

#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "engine/model_config.h"
#include "engine/qa.h"
#include "engine/tokenizer.h"

namespace topserve::engine {
namespace {

std::unique_ptr<Tokenizer> LoadTokenizer() {
  auto tok = Tokenizer::Load(std::string(TOPSERVE_SHARED_DIR) + "/data/bert-base-uncased/vocab.txt",
                             TokenizerConfig{});
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(*tok);
}

TEST(QaWindows, CountEqualsTheWindowsBuilt) {
  auto tok = LoadTokenizer();
  std::string context;
  for (int i = 0; i < 300; ++i) context += "the broncos defeated the panthers ";
  int checked = 0;
  for (int64_t max_length : {16, 64, 384}) {
    for (int64_t words : {1, 7, 100, 1500}) {
      std::string c;
      for (int64_t i = 0; i < words; ++i) c += "word" + std::to_string(i % 50) + " ";
      QaOptions opt;
      opt.max_length = max_length;
      auto pieces = TokenizeQa(*tok, "who won the game?", c, opt);
      ASSERT_TRUE(pieces.ok());
      const int64_t room = max_length - 3 - static_cast<int64_t>(pieces->question.size());
      for (int64_t stride : {int64_t{0}, room / 2, room - 1}) {
        opt.doc_stride = stride;
        auto count = CountQaWindows(*pieces, opt);
        auto windows = BuildQaWindows(*tok, *pieces, opt);
        ASSERT_TRUE(count.ok() && windows.ok()) << max_length << " " << words << " " << stride;
        int64_t tokens = 0;
        for (const Encoding& w : *windows) tokens += static_cast<int64_t>(w.size());
        EXPECT_EQ(count->windows, static_cast<int64_t>(windows->size()));
        EXPECT_EQ(count->tokens, tokens);
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 36);
}

TEST(QaWindows, CountRefusesWhatBuildRefuses) {
  auto tok = LoadTokenizer();
  QaOptions opt;
  opt.max_length = 8;
  auto pieces = TokenizeQa(*tok, "one two three four five", "context", opt);
  ASSERT_TRUE(pieces.ok());
  EXPECT_FALSE(CountQaWindows(*pieces, opt).ok());  // no room for the context
  opt.max_length = 64;
  opt.doc_stride = 64;
  EXPECT_FALSE(CountQaWindows(*pieces, opt).ok());  // stride >= room
  EXPECT_FALSE(BuildQaWindows(*tok, *pieces, opt).ok());
}

// The oversized call of the reliability issue: 65,536 dots, max_length 512, doc_stride 507. Its
// count is known without building ~65,000 windows (33 M tokens).
TEST(QaWindows, HugeCallIsCountedNotBuilt) {
  auto tok = LoadTokenizer();
  QaOptions opt;
  opt.max_length = 512;
  opt.doc_stride = 507;
  auto pieces = TokenizeQa(*tok, "q", std::string(65536, '.'), opt);
  ASSERT_TRUE(pieces.ok());
  auto count = CountQaWindows(*pieces, opt);
  ASSERT_TRUE(count.ok());
  EXPECT_GT(count->windows, 65000);
  EXPECT_GT(count->tokens, 33'000'000);
}

// BestSpans on hand-made windows: [CLS] q... [SEP] t0 t1 ... [SEP] over the context "t0 t1 ...",
// one token per word. Context token i sits at position questions + 2 + i.
struct Window {
  std::string context;
  Encoding enc;
};

Window MakeWindow(int questions, int first_word, int words, int total_words) {
  Window w;
  std::vector<std::pair<int32_t, int32_t>> spans;
  for (int i = 0; i < total_words; ++i) {
    if (i > 0) w.context += ' ';
    const auto begin = static_cast<int32_t>(w.context.size());
    w.context += 't';
    w.context += std::to_string(i);
    spans.emplace_back(begin, static_cast<int32_t>(w.context.size()));
  }
  auto add = [&w](int32_t type, std::pair<int32_t, int32_t> span, int8_t segment) {
    w.enc.ids.push_back(100);
    w.enc.type_ids.push_back(type);
    w.enc.begin.push_back(span.first);
    w.enc.end.push_back(span.second);
    w.enc.segment.push_back(segment);
  };
  add(0, {0, 0}, -1);
  for (int i = 0; i < questions; ++i) add(0, {0, 0}, 0);
  add(0, {0, 0}, -1);
  for (int i = first_word; i < first_word + words; ++i) add(1, spans[static_cast<size_t>(i)], 1);
  add(1, {0, 0}, -1);
  return w;
}

// Start/end logits of a window: `rest` everywhere, then context word i (window-relative) = v.
std::vector<float> Logits(const Window& w, int questions, float rest,
                          std::vector<std::pair<int, float>> context_values) {
  std::vector<float> out(w.enc.size(), rest);
  for (auto [i, v] : context_values) out[static_cast<size_t>(questions + 2 + i)] = v;
  return out;
}

TEST(BestSpans, SkipsBackwardAndOverlongSpans) {
  const Window w = MakeWindow(1, 0, 10, 10);
  // Start t5 = 10, t2 = 3; end t3 = 10 (before t5), t9 = 9 (t5..t9 is 5 tokens), t7 = 5.
  std::vector<std::vector<float>> starts{Logits(w, 1, 0, {{5, 10}, {2, 3}})};
  std::vector<std::vector<float>> ends{Logits(w, 1, 0, {{3, 10}, {9, 9}, {7, 5}})};
  QaOptions opt;
  opt.max_answer_tokens = 4;
  opt.n_best = 2;
  const auto spans = BestSpans(w.context, std::span(&w.enc, 1), starts, ends, opt);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].text, "t5 t6 t7");
  EXPECT_DOUBLE_EQ(spans[0].score, 15);
  EXPECT_EQ(spans[1].text, "t2 t3");
  EXPECT_DOUBLE_EQ(spans[1].score, 13);
  EXPECT_EQ(spans[1].begin, 6);
  EXPECT_EQ(spans[1].end, 11);
}

// Hugging Face's postprocess_qa_predictions (and Google's run_squad.py before it) take the 20 best
// start and end indexes over every position of the window, then drop those outside the context;
// ranking the context positions alone would reach starts the reference never considers.
TEST(BestSpans, RanksStartsAndEndsOverTheWholeWindow) {
  const int questions = 5;
  const Window w = MakeWindow(questions, 0, 20, 20);
  // Every special and question position has start logit 10: they take 8 of the 20 best starts,
  // leaving t0..t11 (start 5 - 0.1 i). The only good end, t19, is 7 tokens from t13.
  std::vector<std::pair<int, float>> start_values;
  for (int i = 0; i < 20; ++i) start_values.emplace_back(i, 5.0f - 0.1f * static_cast<float>(i));
  std::vector<std::vector<float>> starts{Logits(w, questions, 10, start_values)};
  std::vector<std::vector<float>> ends{Logits(w, questions, -10, {{19, 5}})};
  QaOptions opt;
  opt.max_answer_tokens = 7;
  const auto spans = BestSpans(w.context, std::span(&w.enc, 1), starts, ends, opt);
  ASSERT_EQ(spans.size(), 1u);
  // t13..t19 (score 8.7) is not a candidate: t13 is the 21st best start of the window.
  EXPECT_EQ(spans[0].text, "t0");
  EXPECT_DOUBLE_EQ(spans[0].score, -5);
}

TEST(BestSpans, DistinctSpansAcrossOverlappingWindows) {
  // Two windows over "t0 .. t5": t0..t3 and t2..t5; both find t2 t3, the first with the higher
  // score.
  const Window a = MakeWindow(1, 0, 4, 6), b = MakeWindow(1, 2, 4, 6);
  const std::vector<Encoding> windows{a.enc, b.enc};
  std::vector<std::vector<float>> starts{Logits(a, 1, 0, {{2, 5}}), Logits(b, 1, 0, {{0, 4}})};
  std::vector<std::vector<float>> ends{Logits(a, 1, 0, {{3, 5}}), Logits(b, 1, 0, {{1, 4}})};
  QaOptions opt;
  opt.n_best = 100;
  const auto spans = BestSpans(a.context, windows, starts, ends, opt);
  ASSERT_FALSE(spans.empty());
  EXPECT_EQ(spans[0].text, "t2 t3");
  EXPECT_DOUBLE_EQ(spans[0].score, 10);
  EXPECT_EQ(spans[0].window, 0);
  std::set<std::pair<int32_t, int32_t>> seen;
  for (size_t i = 0; i < spans.size(); ++i) {
    EXPECT_TRUE(seen.insert({spans[i].begin, spans[i].end}).second) << spans[i].text;
    if (i > 0) {
      EXPECT_LE(spans[i].score, spans[i - 1].score);
    }
    EXPECT_EQ(spans[i].text, a.context.substr(static_cast<size_t>(spans[i].begin),
                                              static_cast<size_t>(spans[i].end - spans[i].begin)));
  }
  // Window 0 has 4 context tokens (10 spans), window 1 the same; they share t2, t3 (3 spans).
  EXPECT_EQ(spans.size(), 17u);
}

}  // namespace
}  // namespace topserve::engine
