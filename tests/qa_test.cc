// QA windowing: CountQaWindows (used to refuse oversized calls before any window exists) agrees
// with the windows BuildQaWindows makes, for every stride and length, and refuses what it refuses.
#include <gtest/gtest.h>

#include <string>

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

}  // namespace
}  // namespace topserve::engine
