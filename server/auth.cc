#include "server/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace topserve::server {
namespace {

// Equal iff same length and bytes; the time depends only on the lengths, not on the contents.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = a.size();
  for (size_t i = 0; i < n; ++i) {
    // Compare against b's byte when it exists, else against a's own (diff is already set).
    const unsigned char other = static_cast<unsigned char>(i < b.size() ? b[i] : a[i]);
    diff |= static_cast<unsigned char>(static_cast<unsigned char>(a[i]) ^ other);
  }
  return diff == 0;
}

bool ValidTokenChar(char c) { return c > ' ' && c < 0x7f; }

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

std::string_view StripLeading(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  return s;
}

std::string_view Strip(std::string_view s) {
  s = StripLeading(s);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

bool StartsWithIgnoreCase(std::string_view s, std::string_view lower_prefix) {
  if (s.size() < lower_prefix.size()) return false;
  for (size_t i = 0; i < lower_prefix.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != lower_prefix[i]) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<Authenticator> Authenticator::FromText(std::string_view text,
                                                      std::string_view origin) {
  Authenticator auth;
  const std::string name(origin);
  int line_no = 0;
  while (!text.empty()) {
    const size_t eol = text.find('\n');
    std::string_view line = Strip(text.substr(0, eol));
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    ++line_no;
    if (line.empty() || line.front() == '#') continue;
    const std::string where = absl::StrCat(name, ": line ", line_no, ": ");
    if (line.size() < kMinTokenBytes || line.size() > kMaxTokenBytes) {
      return absl::InvalidArgumentError(absl::StrCat(where, "a token must be ", kMinTokenBytes,
                                                     "..", kMaxTokenBytes, " bytes, not ",
                                                     line.size()));
    }
    for (char c : line) {
      if (!ValidTokenChar(c)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "a token may only hold printable ASCII without spaces"));
      }
    }
    auth.tokens_.emplace_back(line);
  }
  if (auth.tokens_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": no token in the file"));
  }
  return auth;
}

absl::StatusOr<Authenticator> Authenticator::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.auth_token_file: ", path, ": cannot open the file"));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().size() > (size_t{1} << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.auth_token_file: ", path, ": over 1 MiB"));
  }
  return FromText(text.str(), absl::StrCat("server.auth_token_file: ", path));
}

absl::Status Authenticator::Check(std::optional<std::string_view> authorization) const {
  if (!enabled()) return absl::OkStatus();
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        "missing credentials: send the metadata 'authorization: Bearer <token>'");
  }
  const std::string_view value = Strip(*authorization);
  constexpr std::string_view kScheme = "bearer ";
  if (!StartsWithIgnoreCase(value, kScheme)) {
    return absl::UnauthenticatedError(
        "the 'authorization' metadata must have the form 'Bearer <token>'");
  }
  const std::string_view presented = StripLeading(value.substr(kScheme.size()));
  bool match = false;
  for (const std::string& token : tokens_) match |= ConstantTimeEquals(token, presented);
  if (!match) return absl::UnauthenticatedError("invalid token");
  return absl::OkStatus();
}

}  // namespace topserve::server
