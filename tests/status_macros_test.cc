#include "base/status_macros.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace topserve {
namespace {

absl::StatusOr<int> IntOr(absl::Status status, int value) {
  if (!status.ok()) return status;
  return value;
}

// Runs RETURN_IF_ERROR on `status`; `reached` says whether the line after it ran.
absl::Status ReturnIfError(absl::Status status, bool& reached) {
  reached = false;
  RETURN_IF_ERROR(status);
  reached = true;
  return absl::OkStatus();
}

TEST(StatusMacrosTest, ReturnIfErrorReturnsTheError) {
  bool reached = true;
  const absl::Status st = ReturnIfError(absl::NotFoundError("no such file"), reached);
  EXPECT_EQ(st, absl::NotFoundError("no such file"));
  EXPECT_FALSE(reached);
}

TEST(StatusMacrosTest, ReturnIfErrorContinuesOnOk) {
  bool reached = false;
  EXPECT_TRUE(ReturnIfError(absl::OkStatus(), reached).ok());
  EXPECT_TRUE(reached);
}

TEST(StatusMacrosTest, ReturnIfErrorInAFunctionReturningStatusOr) {
  auto f = [](absl::Status status) -> absl::StatusOr<std::string> {
    RETURN_IF_ERROR(status);
    return std::string("ok");
  };
  EXPECT_EQ(f(absl::InvalidArgumentError("bad")).status(), absl::InvalidArgumentError("bad"));
  EXPECT_EQ(*f(absl::OkStatus()), "ok");
}

TEST(StatusMacrosTest, ReturnIfErrorEvaluatesItsArgumentOnce) {
  int calls = 0;
  auto f = [&]() -> absl::Status {
    RETURN_IF_ERROR([&] {
      ++calls;
      return absl::OkStatus();
    }());
    return absl::OkStatus();
  };
  EXPECT_TRUE(f().ok());
  EXPECT_EQ(calls, 1);
}

TEST(StatusMacrosTest, AssignOrReturnDeclaresAndAssignsOnOk) {
  auto f = []() -> absl::StatusOr<int> {
    ASSIGN_OR_RETURN(const int a, IntOr(absl::OkStatus(), 20));
    ASSIGN_OR_RETURN(auto b, IntOr(absl::OkStatus(), 22));  // twice in one scope
    return a + b;
  };
  EXPECT_EQ(*f(), 42);
}

TEST(StatusMacrosTest, AssignOrReturnToAnExistingVariable) {
  auto f = [](absl::Status status) -> absl::Status {
    int x = 1;
    ASSIGN_OR_RETURN(x, IntOr(absl::OkStatus(), 7));
    if (x != 7) return absl::InternalError("not assigned");
    ASSIGN_OR_RETURN(x, IntOr(std::move(status), 8));
    return x == 8 ? absl::OkStatus() : absl::InternalError("not assigned");
  };
  EXPECT_TRUE(f(absl::OkStatus()).ok());
  EXPECT_EQ(f(absl::UnavailableError("down")), absl::UnavailableError("down"));
}

TEST(StatusMacrosTest, AssignOrReturnReturnsTheErrorAndSkipsTheRest) {
  bool reached = false;
  auto f = [&]() -> absl::StatusOr<int> {
    ASSIGN_OR_RETURN(const int a, IntOr(absl::OkStatus(), 1));
    ASSIGN_OR_RETURN(const int b, IntOr(absl::ResourceExhaustedError("full"), 2));
    reached = true;
    return a + b;
  };
  EXPECT_EQ(f().status(), absl::ResourceExhaustedError("full"));
  EXPECT_FALSE(reached);
}

TEST(StatusMacrosTest, AssignOrReturnMovesMoveOnlyValues) {
  auto make = [](int v) -> absl::StatusOr<std::unique_ptr<int>> {
    return std::make_unique<int>(v);
  };
  auto f = [&]() -> absl::StatusOr<int> {
    ASSIGN_OR_RETURN(std::unique_ptr<int> p, make(3));
    std::unique_ptr<int> q;
    ASSIGN_OR_RETURN(q, make(4));
    return *p + *q;
  };
  EXPECT_EQ(*f(), 7);
}

TEST(StatusMacrosTest, WithPrefixKeepsTheCode) {
  const absl::Status st = WithPrefix(absl::NotFoundError("no such file"), "model 'm'");
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(st.message(), "model 'm': no such file");
  EXPECT_EQ(WithPrefix(absl::InternalError("x"), std::string("a: b")),
            absl::InternalError("a: b: x"));
}

TEST(StatusMacrosTest, WithPrefixLeavesOkAlone) {
  EXPECT_EQ(WithPrefix(absl::OkStatus(), "model 'm'"), absl::OkStatus());
  EXPECT_TRUE(WithPrefix(absl::OkStatus(), "model 'm'").message().empty());
}

}  // namespace
}  // namespace topserve
