// Helpers shared by the libFuzzer targets: invariant checks that abort (libFuzzer then saves the
// input as crash-<sha1>) and a per-process scratch file for APIs that only take a path.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"

// FUZZ_CHECK(cond, fmt, ...): an invariant of the code under test; a violation is a finding.
#define FUZZ_CHECK(cond, ...)                                                             \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                  \
      std::fprintf(stderr, "\n");                                                         \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

namespace topserve::fuzz {

// The error every parser under fuzzing owes bad input: INVALID_ARGUMENT with a message. `what`
// names the call in the report.
inline void CheckInvalidArgument(const absl::Status& s, const char* what) {
  FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument, "%s: %s", what, s.ToString().c_str());
  FUZZ_CHECK(!s.message().empty(), "%s: error without a message", what);
}

// A file this process owns, rewritten for every input. Created in $TOPSERVE_FUZZ_TMPDIR, else
// /dev/shm (no disk I/O), else $TMPDIR or /tmp, and unlinked at once: it is reached as
// /proc/self/fd/N, so a crash leaves nothing behind and parallel jobs (-jobs/-fork) never collide.
class ScratchFile {
 public:
  explicit ScratchFile(const char* suffix) {
    std::string dir;
    for (const char* candidate :
         {static_cast<const char*>(std::getenv("TOPSERVE_FUZZ_TMPDIR")), "/dev/shm",
          static_cast<const char*>(std::getenv("TMPDIR")), "/tmp"}) {
      if (candidate != nullptr && *candidate != '\0' && access(candidate, W_OK) == 0) {
        dir = candidate;
        break;
      }
    }
    std::string pattern = dir + "/topserve-fuzz-XXXXXX" + suffix;
    fd_ = mkstemps(pattern.data(), static_cast<int>(std::strlen(suffix)));
    if (fd_ < 0) {
      std::fprintf(stderr, "cannot create a scratch file %s: %s\n", pattern.c_str(),
                   std::strerror(errno));
      std::abort();
    }
    unlink(pattern.c_str());
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~ScratchFile() { close(fd_); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  // Replaces the file's contents with data (the file must not be mapped by anyone at this point).
  const std::string& Write(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0) Die("ftruncate");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) Die("pwrite");
      done += static_cast<size_t>(n);
    }
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void Die(const char* what) const {
    std::fprintf(stderr, "%s %s: %s\n", what, path_.c_str(), std::strerror(errno));
    std::abort();
  }
  int fd_ = -1;
  std::string path_;
};

// The process-wide scratch file (the suffix of the first call names it).
inline ScratchFile& Scratch(const char* suffix) {
  static ScratchFile file(suffix);
  return file;
}

}  // namespace topserve::fuzz
