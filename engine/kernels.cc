#include "engine/kernels.h"

#include <cmath>

namespace topserve::engine {

// One row: v = LayerNorm(v + r) (r may be null). Two passes in float: the sum for the mean, then
// the centred squares, each a SIMD reduction (omp simd reassociates the sums across lanes).
__attribute__((target_clones("arch=x86-64-v4", "default"))) void LayerNormRow(
    float* v, const float* r, int64_t width, const float* gamma, const float* beta, float eps) {
  float sum = 0.0f;
  if (r != nullptr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < width; ++i) {
      v[i] += r[i];
      sum += v[i];
    }
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < width; ++i) sum += v[i];
  }
  const float mean = sum / static_cast<float>(width);
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < width; ++i) {
    const float c = v[i] - mean;
    sq += c * c;
  }
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(width) + eps);
#pragma omp simd
  for (int64_t i = 0; i < width; ++i) v[i] = (v[i] - mean) * inv * gamma[i] + beta[i];
}

void LayerNormRows(float* x, int64_t rows, int64_t width, const float* gamma, const float* beta,
                   float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) LayerNormRow(x + r * width, nullptr, width, gamma, beta, eps);
}

void LayerNormResidualRows(float* y, const float* residual, int64_t rows, int64_t width,
                           const float* gamma, const float* beta, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    LayerNormRow(y + r * width, residual + r * width, width, gamma, beta, eps);
  }
}

void AttentionReceived(const float* probs, int64_t groups, int64_t heads, int64_t length,
                       double* importance) {
  const double norm = 1.0 / static_cast<double>(heads * length);
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    double* acc = importance + g * length;
    for (int64_t j = 0; j < length; ++j) acc[j] = 0.0;
    const float* base = probs + g * heads * length * length;
    for (int64_t r = 0; r < heads * length; ++r) {
      const float* row = base + r * length;
      for (int64_t j = 0; j < length; ++j) acc[j] += row[j];
    }
    for (int64_t j = 0; j < length; ++j) acc[j] *= norm;
  }
}

}  // namespace topserve::engine
