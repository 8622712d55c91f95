// Memory-mapped safetensors reader with full header validation.
//
// Ownership: SafetensorsFile owns the mapping; TensorView pointers stay valid for the file's lifetime.
// Every defect (short file, header length past the end, bad JSON, unknown dtype, offsets out of bounds
// or overlapping, byte size not matching the shape) is reported as an error naming the file and the
// tensor, never a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace topserve::engine {

enum class DType { kF32, kF16, kBF16 };

std::string_view DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping
  size_t nbytes = 0;

  int64_t NumElements() const;
};

class SafetensorsFile {
 public:
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorView* Find(std::string_view name) const;

  // Reads a tensor converted to float32 after checking its shape. Errors name the file and tensor:
  // missing tensor -> NOT_FOUND-style message, wrong shape -> INVALID_ARGUMENT.
  absl::StatusOr<std::vector<float>> ReadF32(std::string_view name,
                                             const std::vector<int64_t>& expected_shape) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
};

// Half-precision conversions (exact, round-trip safe for finite values).
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);

}  // namespace topserve::engine
