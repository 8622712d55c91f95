// libFuzzer target: arbitrary bytes as the server's YAML config (server/config.h): ParseConfig,
// then NormalizeAndValidate, then the effective config printed at start-up (ConfigToYaml).
//
// Checked (besides no crash / ASan / UBSan): every error is INVALID_ARGUMENT with a message, and
// ParseConfig's errors name the origin; a config that validates prints as YAML that parses and
// validates again to the same printed text (what the server prints is what it runs).
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "fuzz/fuzz_util.h"
#include "server/config.h"

namespace {

using topserve::server::ConfigToYaml;
using topserve::server::NormalizeAndValidate;
using topserve::server::ParseConfig;

constexpr char kOrigin[] = "fuzz.yaml";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 16 * 1024) return -1;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto parsed = ParseConfig(text, kOrigin);
  if (!parsed.ok()) {
    topserve::fuzz::CheckInvalidArgument(parsed.status(), "ParseConfig");
    FUZZ_CHECK(absl::StartsWith(parsed.status().message(), std::string(kOrigin) + ": "),
               "error does not name the file: %s", parsed.status().ToString().c_str());
    return 0;
  }
  for (int cpus : {1, 2}) {
    topserve::server::ServerConfig config = *parsed;
    if (absl::Status s = NormalizeAndValidate(config, cpus); !s.ok()) {
      topserve::fuzz::CheckInvalidArgument(s, "NormalizeAndValidate");
      continue;
    }
    const std::string printed = ConfigToYaml(config);
    auto again = ParseConfig(printed, "printed.yaml");
    FUZZ_CHECK(again.ok(), "the printed config does not parse: %s\n%s",
               again.status().ToString().c_str(), printed.c_str());
    absl::Status s = NormalizeAndValidate(*again, cpus);
    FUZZ_CHECK(s.ok(), "the printed config does not validate: %s\n%s", s.ToString().c_str(),
               printed.c_str());
    const std::string reprinted = ConfigToYaml(*again);
    FUZZ_CHECK(reprinted == printed, "printing is not stable:\n%s\n---\n%s", printed.c_str(),
               reprinted.c_str());
  }
  return 0;
}
