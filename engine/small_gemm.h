// Few-row GEMM on oneDNN's packed fp32 weights, for the rows a heavily pruned batch has left.
//
// With M <= kSmallGemmMaxRows rows (for example only the [CLS] tokens of a batch at a tight
// budget), a dense layer is bound by reading its weights from memory, not by arithmetic: a
// bert-base layer streams 28 MB for a few hundred MFLOP. oneDNN's brgemm reaches about 30 GB/s
// there on this 2-core machine; two threads can read about 48 GB/s. This kernel streams each weight
// byte once, split across the OpenMP team by 64-column blocks, and keeps every row's partial sums
// in registers.
//
// It reads oneDNN's own packed layout (BA16a64b for fp32 on AVX-512: for every block of 64 output
// columns, all K rows of 64 floats contiguous), so no second copy of the weights exists. Use is
// decided once per weight: SmallGemmLayout() returns nullopt unless the CPU has AVX-512 and the
// packed descriptor is exactly that layout.
#pragma once

#include <cstdint>
#include <optional>

#include <dnnl.hpp>

namespace topserve::engine {

inline constexpr int64_t kSmallGemmMaxRows = 16;

struct SmallGemmLayout {
  int64_t k_padded = 0;  // rows of each 64-column block
  int64_t n_padded = 0;  // columns, a multiple of 64
};

// The layout of `packed` if SmallGemm can read it (and the CPU can run it), else nullopt.
std::optional<SmallGemmLayout> SmallGemmLayoutOf(const dnnl::memory::desc& packed);

// y[m, n] = x[m, :] . W[:, n] + bias[n] (+ y[m, n] when accumulate), for m < rows <=
// kSmallGemmMaxRows, n < n_cols; x has row stride k (k <= layout.k_padded), y row stride n_cols.
// Runs on the calling thread's OpenMP team (call it outside a parallel region).
void SmallGemm(const SmallGemmLayout& layout, const float* packed, const float* bias,
               const float* x, int64_t rows, int64_t k, int64_t n_cols, bool accumulate, float* y);

}  // namespace topserve::engine
