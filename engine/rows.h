// Two helpers of the engine's row-major buffers, shared by the model, its layers and the packed
// batch (internal to engine/).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace topserve::engine {

// Grows `v` to at least n elements (never shrinks: a Workspace keeps its largest batch's buffers)
// and returns its data.
template <typename T>
T* Grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// Copies one row of `width` floats (nothing when src == dst).
inline void CopyRow(const float* src, float* dst, int64_t width) {
  if (src != dst) std::memcpy(dst, src, static_cast<size_t>(width) * sizeof(float));
}

}  // namespace topserve::engine
