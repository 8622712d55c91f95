#include "engine/kernels.h"

#include <cmath>

namespace topserve::engine {

void LayerNormRows(float* x, int64_t rows, int64_t width, const float* gamma, const float* beta,
                   float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* v = x + r * width;
    // Two passes in double: exact enough that the engine tracks a float64 reference to ~1e-6.
    double sum = 0;
    for (int64_t i = 0; i < width; ++i) sum += v[i];
    const double mean = sum / static_cast<double>(width);
    double sq = 0;
    for (int64_t i = 0; i < width; ++i) {
      const double c = v[i] - mean;
      sq += c * c;
    }
    const double inv = 1.0 / std::sqrt(sq / static_cast<double>(width) + eps);
    const float m = static_cast<float>(mean);
    const float s = static_cast<float>(inv);
    for (int64_t i = 0; i < width; ++i) v[i] = (v[i] - m) * s * gamma[i] + beta[i];
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
