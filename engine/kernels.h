// Small CPU kernels of the encoder that oneDNN does not fuse for us. All work on row-major
// [rows x width] float matrices and parallelise over rows with OpenMP. The row functions are built
// twice, for AVX-512 (x86-64-v4) and for the binary's AVX2 baseline, and the CPU picks at run time
// (GCC target_clones).
#pragma once

#include <cstdint>

namespace topserve::engine {

// x = (x - mean) / sqrt(var + eps) * gamma + beta, per row, in place.
void LayerNormRows(float* x, int64_t rows, int64_t width, const float* gamma, const float* beta,
                   float eps);

// y = LayerNorm(y + residual) per row, in place in y: the residual connection and the norm in one
// pass (the dense layer before it writes y = x W + b without accumulating). Statistics in float,
// two passes over the row while it is in L1; the engine stays within ~5e-6 of a float64 reference.
void LayerNormResidualRows(float* y, const float* residual, int64_t rows, int64_t width,
                           const float* gamma, const float* beta, float eps);

// One row of LayerNormResidualRows (residual may be null: LayerNormRows), for callers that fuse
// the norm into their own pass over the rows.
void LayerNormRow(float* v, const float* residual, int64_t width, const float* gamma,
                  const float* beta, float eps);

// importance[g, j] = mean over heads h and query rows i of probs[g, h, i, j], for a group of
// `groups` sequences of `length` tokens: probs is [groups, heads, length, length].
// Accumulated in double so near-ties rank as they do in a float64 reference.
void AttentionReceived(const float* probs, int64_t groups, int64_t heads, int64_t length,
                       double* importance);

}  // namespace topserve::engine
