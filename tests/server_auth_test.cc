// Bearer-token authentication (server/auth.h): token-file parsing and the per-call check.
#include "server/auth.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace topserve::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kTokenA[] = "alpha-0123456789abcdef";
constexpr char kTokenB[] = "bravo-0123456789abcdef";

Authenticator Make(const std::string& text) {
  auto auth = Authenticator::FromText(text, "tokens.txt");
  EXPECT_TRUE(auth.ok()) << auth.status();
  return auth.ok() ? *std::move(auth) : Authenticator();
}

TEST(AuthTest, DisabledAcceptsEverything) {
  Authenticator open;
  EXPECT_FALSE(open.enabled());
  EXPECT_TRUE(open.Check(std::nullopt).ok());
  EXPECT_TRUE(open.Check("Bearer anything").ok());
}

TEST(AuthTest, ParsesTokensSkippingCommentsAndBlankLines) {
  Authenticator auth = Make(std::string("# rotated 2026-11\n\n  ") + kTokenA + "  \r\n" + kTokenB);
  EXPECT_TRUE(auth.enabled());
  EXPECT_EQ(auth.num_tokens(), 2u);
  EXPECT_TRUE(auth.Check(std::string("Bearer ") + kTokenA).ok());
  EXPECT_TRUE(auth.Check(std::string("Bearer ") + kTokenB).ok());
  // Scheme case and surrounding whitespace do not matter (RFC 6750 schemes are case-insensitive).
  EXPECT_TRUE(auth.Check(std::string("  bearer  ") + kTokenA + " ").ok());
  EXPECT_TRUE(auth.Check(std::string("BEARER ") + kTokenB).ok());
}

TEST(AuthTest, RejectsMissingMalformedAndWrongCredentials) {
  Authenticator auth = Make(kTokenA);
  const absl::Status missing = auth.Check(std::nullopt);
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(missing.message(), HasSubstr("authorization: Bearer <token>"));

  for (const std::string& bad : {std::string(kTokenA), std::string("Basic ") + kTokenA,
                                 std::string("Bearer"), std::string("Bearer "), std::string("")}) {
    const absl::Status s = auth.Check(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << bad;
  }
  // Near misses: a prefix, an extension, one byte changed, case changed.
  const std::string a(kTokenA);
  std::string flipped = a;
  flipped.back() = 'X';
  std::string upper = a;
  upper[0] = 'A';
  for (const std::string& wrong : {a.substr(0, a.size() - 1), a + "0", flipped, upper}) {
    const absl::Status s = auth.Check("Bearer " + wrong);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << wrong;
    EXPECT_EQ(s.message(), "invalid token");
    EXPECT_THAT(s.message(), Not(HasSubstr(wrong)));  // The credential is never echoed.
  }
}

TEST(AuthTest, TokenFileDefectsNameTheFileAndLine) {
  struct Case {
    std::string text;
    std::string want;
  } cases[] = {
      {"", "tokens.txt: no token in the file"},
      {"# only a comment\n\n", "tokens.txt: no token in the file"},
      {"short\n", "tokens.txt: line 1: a token must be 16..4096 bytes, not 5"},
      {std::string(kTokenA) + "\nwith a space in it!\n",
       "tokens.txt: line 2: a token may only hold printable ASCII without spaces"},
      {std::string("tab\tseparated-0123456789"),
       "tokens.txt: line 1: a token may only hold printable ASCII without spaces"},
      {std::string(5000, 'x'), "tokens.txt: line 1: a token must be 16..4096 bytes, not 5000"},
  };
  for (const Case& c : cases) {
    auto auth = Authenticator::FromText(c.text, "tokens.txt");
    ASSERT_FALSE(auth.ok()) << c.text;
    EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(auth.status().message(), c.want);
  }
}

TEST(AuthTest, FromFile) {
  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / "auth_test";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "tokens").string();
  {
    std::ofstream out(path);
    out << kTokenB << "\n";
  }
  auto auth = Authenticator::FromFile(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE(auth->Check(std::string("Bearer ") + kTokenB).ok());
  EXPECT_FALSE(auth->Check(std::string("Bearer ") + kTokenA).ok());

  auto missing = Authenticator::FromFile((dir / "absent").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(),
            "server.auth_token_file: " + (dir / "absent").string() + ": cannot open the file");
}

}  // namespace
}  // namespace topserve::server
