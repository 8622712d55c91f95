// libFuzzer target: arbitrary bytes, written to a per-process scratch file ->
// SafetensorsFile::Open, then Find and ReadF32 on every listed tensor (with its own shape, a wrong
// shape and a missing name).
//
// Checked (besides no crash / ASan / UBSan): errors are INVALID_ARGUMENT (Open) / NOT_FOUND
// (missing tensor); on success the tensors are sorted by unique name, nbytes == elements x dtype
// size, every non-empty tensor lies inside the data section of the mapped file (its bytes equal the
// input's bytes at that offset; checked when the input fits one page, so the page-aligned mapping's
// start is known), no two non-empty tensors overlap, and ReadF32 returns the converted values of
// exactly those bytes.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/safetensors.h"
#include "fuzz/fuzz_util.h"

namespace {

using topserve::engine::DType;
using topserve::engine::SafetensorsFile;
using topserve::engine::TensorView;

bool SameBits(float x, float y) { return std::memcmp(&x, &y, sizeof(float)) == 0; }

void CheckFile(const SafetensorsFile& file, const uint8_t* input, size_t size) {
  const auto& tensors = file.tensors();
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | input[i];
  const size_t data_start = 8 + static_cast<size_t>(header_len);
  FUZZ_CHECK(data_start <= size, "opened a file whose header (%zu bytes) runs past its end (%zu)",
             static_cast<size_t>(header_len), size);

  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const bool know_base = size <= page;
  std::vector<std::pair<const uint8_t*, const uint8_t*>> extents;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = tensors[i];
    if (i > 0)
      FUZZ_CHECK(tensors[i - 1].name < t.name, "tensors not sorted by unique name at %zu", i);
    FUZZ_CHECK(file.Find(t.name) == &t, "Find('%s') does not return the listed tensor",
               t.name.c_str());
    int64_t numel = 1;
    for (const int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0, "negative dimension");
      FUZZ_CHECK(!__builtin_mul_overflow(numel, d, &numel), "element count overflows");
    }
    FUZZ_CHECK(numel == t.NumElements(), "NumElements %lld != %lld",
               static_cast<long long>(t.NumElements()), static_cast<long long>(numel));
    const size_t elem = topserve::engine::DTypeSize(t.dtype);
    FUZZ_CHECK(static_cast<uint64_t>(numel) * elem == t.nbytes,
               "tensor '%s': %zu bytes for %lld x %zu", t.name.c_str(), t.nbytes,
               static_cast<long long>(numel), elem);
    FUZZ_CHECK(t.nbytes <= size - data_start, "tensor '%s': %zu bytes but the data section has %zu",
               t.name.c_str(), t.nbytes, size - data_start);
    if (t.nbytes == 0) continue;
    if (know_base) {
      const auto base =
          reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(t.data) & ~(page - 1));
      const auto offset = static_cast<size_t>(t.data - base);
      FUZZ_CHECK(
          offset >= data_start && offset + t.nbytes <= size,
          "tensor '%s': bytes [%zu, %zu) of the file are outside the data section [%zu, %zu)",
          t.name.c_str(), offset, offset + t.nbytes, data_start, size);
      FUZZ_CHECK(std::memcmp(t.data, input + offset, t.nbytes) == 0,
                 "tensor '%s' does not point into the mapped file", t.name.c_str());
    }
    extents.emplace_back(t.data, t.data + t.nbytes);
  }
  std::sort(extents.begin(), extents.end());
  for (size_t i = 1; i < extents.size(); ++i) {
    FUZZ_CHECK(extents[i].first >= extents[i - 1].second, "two non-empty tensors overlap");
  }

  for (const TensorView& t : tensors) {
    auto values = file.ReadF32(t.name, t.shape);
    if (!topserve::engine::IsFloatDType(t.dtype)) {
      FUZZ_CHECK(!values.ok() && values.status().code() == absl::StatusCode::kInvalidArgument,
                 "ReadF32 of a %s tensor: %s",
                 std::string(topserve::engine::DTypeName(t.dtype)).c_str(),
                 values.status().ToString().c_str());
      continue;
    }
    FUZZ_CHECK(values.ok(), "ReadF32('%s') failed: %s", t.name.c_str(),
               values.status().ToString().c_str());
    FUZZ_CHECK(static_cast<int64_t>(values->size()) == t.NumElements(),
               "ReadF32('%s'): %zu values for %lld", t.name.c_str(), values->size(),
               static_cast<long long>(t.NumElements()));
    for (size_t i = 0; i < values->size(); ++i) {
      float expected;
      if (t.dtype == DType::kF32) {
        std::memcpy(&expected, t.data + 4 * i, 4);
      } else {
        uint16_t bits;
        std::memcpy(&bits, t.data + 2 * i, 2);
        expected = t.dtype == DType::kF16 ? topserve::engine::HalfToFloat(bits)
                                          : topserve::engine::BFloat16ToFloat(bits);
      }
      FUZZ_CHECK(SameBits((*values)[i], expected), "ReadF32('%s')[%zu] differs from the file",
                 t.name.c_str(), i);
    }
    // A wrong shape is refused, not read.
    std::vector<int64_t> wrong = t.shape;
    wrong.push_back(1);
    auto refused = file.ReadF32(t.name, wrong);
    FUZZ_CHECK(!refused.ok() && refused.status().code() == absl::StatusCode::kInvalidArgument,
               "ReadF32 with a wrong shape: %s", refused.status().ToString().c_str());
  }
  std::string missing = tensors.empty() ? std::string("x") : tensors.back().name + "\x01";
  auto absent = file.ReadF32(missing, {});
  FUZZ_CHECK(!absent.ok() && absent.status().code() == absl::StatusCode::kNotFound,
             "ReadF32 of a missing tensor: %s", absent.status().ToString().c_str());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto& scratch = topserve::fuzz::Scratch(".safetensors");
  const std::string& path = scratch.Write(data, size);
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    FUZZ_CHECK(file.status().code() == absl::StatusCode::kInvalidArgument,
               "Open error with code %s", file.status().ToString().c_str());
    return 0;
  }
  CheckFile(**file, data, size);
  return 0;  // the file is unmapped here, before the next input rewrites it
}
