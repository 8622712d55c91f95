// Bearer-token authentication of Inference calls. With server.auth_token_file set, every call of
// topserve.v1.Inference must carry the metadata `authorization: Bearer <token>` with one of the
// file's tokens; other calls fail with UNAUTHENTICATED before any work is done. grpc.health.v1 and
// reflection stay open (Kubernetes probes and ghz/grpcurl discovery send no credentials).
//
// The token file (for example a mounted Kubernetes Secret): one token per line; blank lines and
// lines starting with '#' are ignored; surrounding whitespace is trimmed. Tokens are at least
// kMinTokenBytes long, printable ASCII without spaces. The file is read once at start-up (rotate
// tokens with a rolling restart, listing old and new tokens during the change-over).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace topserve::server {

class Authenticator {
 public:
  static constexpr size_t kMinTokenBytes = 16;
  static constexpr size_t kMaxTokenBytes = 4096;

  // No authentication: Check() always succeeds.
  Authenticator() = default;

  // Parses token-file text; `origin` names the file in errors.
  static absl::StatusOr<Authenticator> FromText(std::string_view text, std::string_view origin);
  // Reads and parses the file; every defect is one INVALID_ARGUMENT line naming the file.
  static absl::StatusOr<Authenticator> FromFile(const std::string& path);

  bool enabled() const { return !tokens_.empty(); }
  size_t num_tokens() const { return tokens_.size(); }

  // `authorization`: the call's "authorization" metadata value, if present. OK when
  // authentication is off or the value is "Bearer <a configured token>" (scheme
  // case-insensitive); UNAUTHENTICATED with a message saying what is wrong otherwise. The message
  // never echoes the presented credential. Token comparison takes time independent of where the
  // presented token first differs.
  absl::Status Check(std::optional<std::string_view> authorization) const;

 private:
  std::vector<std::string> tokens_;
};

}  // namespace topserve::server
