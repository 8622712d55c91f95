// Request validation and budget resolution (server/request_options.h) without a server: each rule
// of docs/api.md's request fields, with the status code and the field the message must name.
#include "server/request_options.h"

#include <string>

#include <gtest/gtest.h>

namespace topserve::server {
namespace {

ModelConfig Model() {
  ModelConfig m;
  m.name = "sst2";
  m.default_budget = 0.5;
  m.max_budget = 0.75;
  m.batching.max_queue_size = 10;
  m.batching.max_queue_tokens = 1000;
  return m;
}

void ExpectError(const absl::Status& s, absl::StatusCode code, const std::string& starts) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_EQ(std::string(s.message()).rfind(starts, 0), 0u) << s;
}

TEST(ResolveBudgetTest, DefaultsLimitsAndMinimum) {
  const ModelConfig m = Model();
  auto b = ResolveBudget(false, 0, false, 0, m);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->budget, 0.5);  // the model's default_budget
  EXPECT_FALSE(b->min_budget.has_value());

  b = ResolveBudget(true, 0.25, true, 0.125, m);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->budget, 0.25);
  EXPECT_EQ(b->min_budget, 0.125);

  ExpectError(ResolveBudget(true, 0, false, 0, m).status(), absl::StatusCode::kInvalidArgument,
              "budget: 0 is outside (0, 1]");
  ExpectError(ResolveBudget(true, 1.5, false, 0, m).status(), absl::StatusCode::kInvalidArgument,
              "budget:");
  // Valid but above what this model serves: never retryable.
  ExpectError(ResolveBudget(true, 0.9, false, 0, m).status(), absl::StatusCode::kResourceExhausted,
              "budget: 0.9 is above model 'sst2''s max_budget 0.75");
  // min_budget must lie in (0, budget], the default budget included.
  ExpectError(ResolveBudget(false, 0, true, 0.6, m).status(), absl::StatusCode::kInvalidArgument,
              "min_budget: 0.6 is outside (0, budget = 0.5]");
  ExpectError(ResolveBudget(true, 0.25, true, 0, m).status(), absl::StatusCode::kInvalidArgument,
              "min_budget:");
  b = ResolveBudget(true, 0.25, true, 0.25, m);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->min_budget, 0.25);
}

TEST(RequestChecksTest, TextPriorityQueueAndQuota) {
  EXPECT_TRUE(CheckText("text", "abc", 3, false).ok());
  ExpectError(CheckText("text", "abcd", 3, false), absl::StatusCode::kInvalidArgument,
              "text: 4 bytes is over the limit of 3");
  ExpectError(CheckText("question", "", 3, false), absl::StatusCode::kInvalidArgument,
              "question: must not be empty");
  EXPECT_TRUE(CheckText("text_pair", "", 3, true).ok());

  EXPECT_TRUE(CheckPriority(-5, 5).ok());
  ExpectError(CheckPriority(6, 5), absl::StatusCode::kInvalidArgument,
              "priority: 6 is outside [-5, 5]");
  ExpectError(CheckPriority(-6, 5), absl::StatusCode::kInvalidArgument, "priority:");

  const ModelConfig m = Model();
  EXPECT_TRUE(CheckFitsQueue(10, 1000, m).ok());
  ExpectError(CheckFitsQueue(11, 10, m), absl::StatusCode::kResourceExhausted,
              "the request needs 11 sequences; model 'sst2' queues at most 10");
  ExpectError(CheckFitsQueue(1, 1001, m), absl::StatusCode::kResourceExhausted,
              "the request has 1001 tokens; model 'sst2' queues at most 1000");
  ModelConfig unbounded = m;
  unbounded.batching.max_queue_size.reset();
  unbounded.batching.max_queue_tokens.reset();
  EXPECT_TRUE(CheckFitsQueue(1 << 20, 1 << 30, unbounded).ok());

  EXPECT_TRUE(CheckTokens(100, 100).ok());
  ExpectError(CheckTokens(101, 100), absl::StatusCode::kResourceExhausted,
              "the request has 101 tokens; the quota is 100");
}

TEST(ToTruncationTest, EveryValueAndAnUnknownOne) {
  EXPECT_EQ(*ToTruncation(v1::TRUNCATION_UNSPECIFIED), engine::Truncation::kLongestFirst);
  EXPECT_EQ(*ToTruncation(v1::TRUNCATION_LONGEST_FIRST), engine::Truncation::kLongestFirst);
  EXPECT_EQ(*ToTruncation(v1::TRUNCATION_NONE), engine::Truncation::kNone);
  EXPECT_EQ(*ToTruncation(v1::TRUNCATION_ONLY_FIRST), engine::Truncation::kOnlyFirst);
  EXPECT_EQ(*ToTruncation(v1::TRUNCATION_ONLY_SECOND), engine::Truncation::kOnlySecond);
  ExpectError(ToTruncation(static_cast<v1::Truncation>(99)).status(),
              absl::StatusCode::kInvalidArgument, "truncation: unknown value 99");
}

// Defaults as docs/api.md states them: max_length min(384, model), max_query_tokens
// min(64, max_length - 4), max_answer_tokens 30, n_best 1, doc_stride min(128, room / 2).
TEST(ResolveQaOptionsTest, DefaultsAndBounds) {
  auto qa = ResolveQaOptions(0, 0, 0, 0, 512);
  ASSERT_TRUE(qa.ok());
  EXPECT_EQ(qa->max_length, 384);
  EXPECT_EQ(qa->max_query_tokens, 64);
  EXPECT_EQ(qa->max_answer_tokens, 30);
  EXPECT_EQ(qa->n_best, 1);

  qa = ResolveQaOptions(0, 0, 0, 0, 128);  // a model shorter than the default window
  ASSERT_TRUE(qa.ok());
  EXPECT_EQ(qa->max_length, 128);
  qa = ResolveQaOptions(40, 0, 5, 7, 128);  // the query default shrinks to max_length - 4
  ASSERT_TRUE(qa.ok());
  EXPECT_EQ(qa->max_length, 40);
  EXPECT_EQ(qa->max_query_tokens, 36);
  EXPECT_EQ(qa->max_answer_tokens, 5);
  EXPECT_EQ(qa->n_best, 7);

  ExpectError(ResolveQaOptions(7, 0, 0, 0, 512).status(), absl::StatusCode::kInvalidArgument,
              "max_length: 7 is outside [8, 512]");
  ExpectError(ResolveQaOptions(513, 0, 0, 0, 512).status(), absl::StatusCode::kInvalidArgument,
              "max_length:");
  ExpectError(ResolveQaOptions(40, 37, 0, 0, 512).status(), absl::StatusCode::kInvalidArgument,
              "max_query_tokens: 37 is outside [1, max_length - 4 = 36]");
  ExpectError(ResolveQaOptions(0, -1, 0, 0, 512).status(), absl::StatusCode::kInvalidArgument,
              "max_query_tokens:");
  ExpectError(ResolveQaOptions(0, 0, 513, 0, 512).status(), absl::StatusCode::kInvalidArgument,
              "max_answer_tokens: 513 is outside [1, 512]");
  ExpectError(ResolveQaOptions(0, 0, 0, 101, 512).status(), absl::StatusCode::kInvalidArgument,
              "n_best: 101 is outside [1, 100]");
  ExpectError(ResolveQaOptions(0, 0, 0, -2, 512).status(), absl::StatusCode::kInvalidArgument,
              "n_best:");
}

TEST(ResolveDocStrideTest, DefaultIsAtMostHalfAWindow) {
  EXPECT_EQ(*ResolveDocStride(std::nullopt, 1000), 128);
  EXPECT_EQ(*ResolveDocStride(std::nullopt, 100), 50);
  EXPECT_EQ(*ResolveDocStride(std::nullopt, 1), 0);
  EXPECT_EQ(*ResolveDocStride(0, 10), 0);
  EXPECT_EQ(*ResolveDocStride(9, 10), 9);
  ExpectError(ResolveDocStride(10, 10).status(), absl::StatusCode::kInvalidArgument,
              "doc_stride: 10 is outside [0, 10) (the context tokens per window)");
  ExpectError(ResolveDocStride(-1, 10).status(), absl::StatusCode::kInvalidArgument, "doc_stride:");
}

}  // namespace
}  // namespace topserve::server
