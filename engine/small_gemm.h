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

// The same for int8 layers (dnnl_ops.h, Precision::kInt8): u8 activation rows times oneDNN's packed
// s8 weights, int32 sums (AVX512-VNNI vpdpbusd), times the per-column weight scale:
// y[m, n] = w_scale[n] x float(sum_c q[m, c] w[c, n]), what oneDNN's matmul with per-column output
// scales writes, bit for bit (the integer sum is exact). oneDNN 2.6's brgemm reads the weights at
// ~21 GB/s for 8 rows on a Sapphire Rapids (0.11 ms for 768 x 3072); this kernel streams them at
// what the cores can read. Layout BA16a64b4a: per 64-column block, for every 4 K rows, 64 columns
// x 4 bytes; SmallGemmInt8LayoutOf returns nullopt for any other (or without VNNI).
std::optional<SmallGemmLayout> SmallGemmInt8LayoutOf(const dnnl::memory::desc& packed);

// Up to how many rows SmallGemmInt8 beats oneDNN here. vpdpbusd does 64 multiply-adds a cycle, AMX
// tiles 16x more, so with AMX the kernel wins only while weight reads dominate: measured on a
// Sapphire Rapids with 36 layers' weights (85 MB, not in cache), 768 x 3072, 2 threads: 46 vs 59 us
// at 1 row, 52 vs 62 at 4, 71 vs 67 at 8, 139 vs 79 at 16. Without AMX oneDNN's int8 kernels are
// VNNI too and the crossover is later; 8 there is an estimate (no such machine measured yet).
int64_t SmallGemmInt8MaxRows();

// x: rows (<= SmallGemmInt8MaxRows()) of k codes, row stride k; y row stride n_cols.
void SmallGemmInt8(const SmallGemmLayout& layout, const int8_t* packed, const float* w_scale,
                   const uint8_t* x, int64_t rows, int64_t k, int64_t n_cols, float* y);

}  // namespace topserve::engine
