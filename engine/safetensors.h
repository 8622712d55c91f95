// Memory-mapped safetensors reader with full header validation.
//
// Ownership: SafetensorsFile owns the mapping; TensorView pointers stay valid for the file's
// lifetime. Every defect (short file, header length past the end, bad JSON, unknown dtype, offsets
// out of bounds or overlapping, byte size not matching the shape) is reported as an error naming
// the file and the tensor, never a crash.
//
// Validation done by Open (each failure is INVALID_ARGUMENT "<path>: <what>", naming the
// tensor/field):
//   - the file is a regular file of at least 8 bytes; the 8-byte little-endian header length N is
//     at most 100 MB (kMaxHeaderBytes) and 8 + N <= file size;
//   - the header is a JSON object without duplicate keys; the optional "__metadata__" entry is an
//     object of string -> string; every other entry is an object with "dtype" (a safetensors dtype
//     name), "shape" (array of non-negative integers) and "data_offsets" ([begin, end], integers,
//     begin <= end <= size of the data section), end - begin == numel * dtype size, and no two
//     non-empty tensors share a byte. Gaps between tensors are allowed; unknown extra keys of an
//     entry are ignored.
//   - every dtype of the safetensors format is accepted and listed (BERT checkpoints may carry the
//   I64
//     buffer "bert.embeddings.position_ids"), but only F32, F16 and BF16 can be read with ReadF32;
//     a dtype name outside the format (e.g. "F33", "Q4_0") is an error at Open.
// The mapping is private and read-only. Like any mmap reader, truncating the file on disk while it
// is mapped is undefined (SIGBUS); model files are expected to be immutable while served.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace topserve::engine {

// The three float dtypes come first; the others are only listed (ReadF32 rejects them).
enum class DType {
  kF32,
  kF16,
  kBF16,
  kF64,
  kI64,
  kI32,
  kI16,
  kI8,
  kU64,
  kU32,
  kU16,
  kU8,
  kBool,
  kF8E4M3,
  kF8E5M2
};

std::string_view DTypeName(DType dtype);  // the safetensors spelling: "F32", "BF16", "I64", ...
size_t DTypeSize(DType dtype);
// Parses a safetensors dtype name (case-sensitive, as the format writes it); nullopt when unknown.
std::optional<DType> ParseDType(std::string_view name);
// True for F32, F16 and BF16: the dtypes ReadF32 converts.
bool IsFloatDType(DType dtype);

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping; not aligned in general (use memcpy)
  size_t nbytes = 0;

  int64_t NumElements() const;
};

class SafetensorsFile {
 public:
  // Largest header accepted (the format's own readers use the same bound).
  static constexpr uint64_t kMaxHeaderBytes = 100'000'000;

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return path_; }
  // Sorted by name.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // The "__metadata__" entry (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when absent.
  const TensorView* Find(std::string_view name) const;

  // Reads a tensor converted to float32 after checking its shape. Errors name the file and tensor:
  // missing tensor -> NOT_FOUND "<path>: tensor '<name>' is missing", wrong shape ->
  // INVALID_ARGUMENT
  // "<path>: tensor '<name>' has shape [a, b], expected [c, d]", a dtype other than F32/F16/BF16 ->
  // INVALID_ARGUMENT naming the dtype. F16 and BF16 are converted exactly.
  absl::StatusOr<std::vector<float>> ReadF32(std::string_view name,
                                             const std::vector<int64_t>& expected_shape) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Half-precision conversions (exact, round-trip safe for finite values; infinities and NaN payloads
// are kept).
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);

// "[768, 3072]": how errors print shapes.
std::string ShapeToString(const std::vector<int64_t>& shape);

}  // namespace topserve::engine
