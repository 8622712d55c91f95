#include "engine/small_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "engine/cpu_info.h"

namespace topserve::engine {
namespace {

constexpr int64_t kBlockCols = 64;  // oneDNN's inner N block ("64b")
constexpr int64_t kBlockRows = 16;  // oneDNN's inner K block ("16a")

constexpr int64_t kChunk = 64;         // K rows per pass over the row groups (16 KB of weights: L1)
constexpr int kGroupRows = 6;          // rows per register block: 6 x 4 accumulators + 4 weights
constexpr int64_t kPrefetchRows = 16;  // software prefetch distance, in weight rows (4 KB)

// acc[r][0..63] += sum over kk < k_len of x[r][kk] * w[kk][0..63], for kRows rows of x (row stride
// ldx) and a chunk of weight rows 64 floats apart.
template <int kRows, bool kPrefetch>
__attribute__((target("avx512f"))) void Accumulate(const float* w, const float* x, int64_t ldx,
                                                   int64_t k_len, float* acc_buf) {
  __m512 acc[kRows][4];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_load_ps(acc_buf + r * kBlockCols + 16 * v);
  }
  for (int64_t kk = 0; kk < k_len; ++kk) {
    const float* wr = w + kk * kBlockCols;
    if constexpr (kPrefetch) {
      // The first row group pulls the weights in: ask for rows kPrefetchRows ahead so memory
      // latency overlaps the arithmetic (the hardware prefetcher alone leaves them serialised).
      const char* ahead = reinterpret_cast<const char*>(wr + kPrefetchRows * kBlockCols);
      for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    }
    const __m512 w0 = _mm512_load_ps(wr), w1 = _mm512_load_ps(wr + 16);
    const __m512 w2 = _mm512_load_ps(wr + 32), w3 = _mm512_load_ps(wr + 48);
    for (int r = 0; r < kRows; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * ldx + kk]);
      acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(xv, w2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(xv, w3, acc[r][3]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < 4; ++v) _mm512_store_ps(acc_buf + r * kBlockCols + 16 * v, acc[r][v]);
  }
}

template <bool kPrefetch>
void AccumulateRows(int rows, const float* w, const float* x, int64_t ldx, int64_t k_len,
                    float* acc_buf) {
  switch (rows) {
    case 1: return Accumulate<1, kPrefetch>(w, x, ldx, k_len, acc_buf);
    case 2: return Accumulate<2, kPrefetch>(w, x, ldx, k_len, acc_buf);
    case 3: return Accumulate<3, kPrefetch>(w, x, ldx, k_len, acc_buf);
    case 4: return Accumulate<4, kPrefetch>(w, x, ldx, k_len, acc_buf);
    case 5: return Accumulate<5, kPrefetch>(w, x, ldx, k_len, acc_buf);
    default: return Accumulate<kGroupRows, kPrefetch>(w, x, ldx, k_len, acc_buf);
  }
}

// One 64-column block for all rows: the block's K x 64 weights are read from memory once, in
// order, in chunks of kChunk rows that each row group then reuses from L1.
void Block(const float* w_block, const float* bias, const float* x, int64_t rows, int64_t k,
           int64_t col, int64_t n_cols, bool accumulate, float* y) {
  alignas(64) float acc_buf[kSmallGemmMaxRows * kBlockCols] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kChunk) {
    const int64_t k_len = std::min(kChunk, k - k0);
    for (int64_t r0 = 0; r0 < rows; r0 += kGroupRows) {
      const int group = static_cast<int>(std::min<int64_t>(kGroupRows, rows - r0));
      (r0 == 0 ? AccumulateRows<true> : AccumulateRows<false>)(group, w_block + k0 * kBlockCols,
                                                               x + r0 * k + k0, k, k_len,
                                                               acc_buf + r0 * kBlockCols);
    }
  }
  const int64_t width = std::min(kBlockCols, n_cols - col);
  for (int64_t r = 0; r < rows; ++r) {
    float* out = y + r * n_cols + col;
    const float* a = acc_buf + r * kBlockCols;
    for (int64_t j = 0; j < width; ++j) {
      out[j] = accumulate ? (a[j] + bias[col + j]) + out[j] : a[j] + bias[col + j];
    }
  }
}

}  // namespace
std::optional<SmallGemmLayout> SmallGemmLayoutOf(const dnnl::memory::desc& packed) {
  if (!__builtin_cpu_supports("avx512f")) return std::nullopt;
  const dnnl_memory_desc_t& md = packed.data;
  if (md.ndims != 2 || md.data_type != dnnl_f32 || md.format_kind != dnnl_blocked) {
    return std::nullopt;
  }
  const auto& bl = md.format_desc.blocking;
  const int64_t kp = md.padded_dims[0], np = md.padded_dims[1];
  // BA16a64b: inner blocks 16 (dim 0, K) then 64 (dim 1, N); K blocks 1024 floats apart, N blocks
  // k_padded * 64 apart, so each 64-column block is K rows of 64 contiguous floats.
  const bool ok = bl.inner_nblks == 2 && bl.inner_idxs[0] == 0 && bl.inner_blks[0] == kBlockRows &&
                  bl.inner_idxs[1] == 1 && bl.inner_blks[1] == kBlockCols &&
                  bl.strides[0] == kBlockRows * kBlockCols && bl.strides[1] == kp * kBlockCols &&
                  kp % kBlockRows == 0 && np % kBlockCols == 0 && md.offset0 == 0;
  if (!ok) return std::nullopt;
  return SmallGemmLayout{kp, np};
}

void SmallGemm(const SmallGemmLayout& layout, const float* packed, const float* bias,
               const float* x, int64_t rows, int64_t k, int64_t n_cols, bool accumulate, float* y) {
  if (rows <= 0) return;
  const int64_t blocks = (n_cols + kBlockCols - 1) / kBlockCols;
  const int64_t block_floats = layout.k_padded * kBlockCols;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    Block(packed + b * block_floats, bias, x, rows, k, b * kBlockCols, n_cols, accumulate, y);
  }
}

namespace {

constexpr int64_t kInt8GroupBytes = 4 * kBlockCols;  // 4 K rows of a 64-column block
constexpr int64_t kInt8ChunkGroups = 64;  // K groups per pass over the row groups (16 KB: L1)

// The 4 codes of row x at K rows [4g, 4g + 4) as one int32 (zeros past k).
inline int32_t FourCodes(const uint8_t* x, int64_t g, int64_t k) {
  int32_t v = 0;
  const int64_t c = 4 * g;
  std::memcpy(&v, x + c, static_cast<size_t>(std::min<int64_t>(4, k - c)));
  return v;
}

// acc[r][0..63] += sum over K groups [g0, g1) of row r's codes times the block's weights, for
// kRows rows (row stride ldx). Each group's 256 weight bytes are 4 vectors of 16 columns x 4 K
// rows, vpdpbusd's operand as it stands.
template <int kRows, bool kPrefetch>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void AccumulateInt8(const int8_t* w_block,
                                                                           const uint8_t* x,
                                                                           int64_t ldx, int64_t g0,
                                                                           int64_t g1, int64_t k,
                                                                           int32_t* acc_buf) {
  __m512i acc[kRows][4];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < 4; ++v) {
      acc[r][v] = _mm512_load_si512(acc_buf + r * kBlockCols + 16 * v);
    }
  }
  const bool whole = 4 * g1 <= k;  // no group reaches past k: read the codes directly
  for (int64_t g = g0; g < g1; ++g) {
    const int8_t* wg = w_block + g * kInt8GroupBytes;
    if constexpr (kPrefetch) {
      const char* ahead = reinterpret_cast<const char*>(wg + 8 * kInt8GroupBytes);
      for (int line = 0; line < 4; ++line) _mm_prefetch(ahead + 64 * line, _MM_HINT_T0);
    }
    const __m512i w0 = _mm512_load_si512(wg), w1 = _mm512_load_si512(wg + 64);
    const __m512i w2 = _mm512_load_si512(wg + 128), w3 = _mm512_load_si512(wg + 192);
    for (int r = 0; r < kRows; ++r) {
      int32_t four;
      if (whole) {
        std::memcpy(&four, x + r * ldx + 4 * g, sizeof(four));
      } else {
        four = FourCodes(x + r * ldx, g, k);
      }
      const __m512i a = _mm512_set1_epi32(four);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, w0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, w1);
      acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], a, w2);
      acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], a, w3);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < 4; ++v) {
      _mm512_store_si512(acc_buf + r * kBlockCols + 16 * v, acc[r][v]);
    }
  }
}

template <bool kPrefetch>
void AccumulateInt8Rows(int rows, const int8_t* w, const uint8_t* x, int64_t ldx, int64_t g0,
                        int64_t g1, int64_t k, int32_t* acc_buf) {
  switch (rows) {
    case 1: return AccumulateInt8<1, kPrefetch>(w, x, ldx, g0, g1, k, acc_buf);
    case 2: return AccumulateInt8<2, kPrefetch>(w, x, ldx, g0, g1, k, acc_buf);
    case 3: return AccumulateInt8<3, kPrefetch>(w, x, ldx, g0, g1, k, acc_buf);
    case 4: return AccumulateInt8<4, kPrefetch>(w, x, ldx, g0, g1, k, acc_buf);
    case 5: return AccumulateInt8<5, kPrefetch>(w, x, ldx, g0, g1, k, acc_buf);
    default: return AccumulateInt8<kGroupRows, kPrefetch>(w, x, ldx, g0, g1, k, acc_buf);
  }
}

void BlockInt8(const int8_t* w_block, const float* w_scale, const uint8_t* x, int64_t rows,
               int64_t k, int64_t col, int64_t n_cols, float* y) {
  alignas(64) int32_t acc_buf[kSmallGemmMaxRows * kBlockCols] = {};
  const int64_t groups = (k + 3) / 4;
  for (int64_t g0 = 0; g0 < groups; g0 += kInt8ChunkGroups) {
    const int64_t g1 = std::min(groups, g0 + kInt8ChunkGroups);
    for (int64_t r0 = 0; r0 < rows; r0 += kGroupRows) {
      const int group = static_cast<int>(std::min<int64_t>(kGroupRows, rows - r0));
      (r0 == 0 ? AccumulateInt8Rows<true> : AccumulateInt8Rows<false>)(group, w_block, x + r0 * k,
                                                                       k, g0, g1, k,
                                                                       acc_buf + r0 * kBlockCols);
    }
  }
  const int64_t width = std::min(kBlockCols, n_cols - col);
  for (int64_t r = 0; r < rows; ++r) {
    float* out = y + r * n_cols + col;
    const int32_t* a = acc_buf + r * kBlockCols;
    for (int64_t j = 0; j < width; ++j) out[j] = static_cast<float>(a[j]) * w_scale[col + j];
  }
}

}  // namespace

std::optional<SmallGemmLayout> SmallGemmInt8LayoutOf(const dnnl::memory::desc& packed) {
  if (!GetCpuFeatures().avx512_vnni) return std::nullopt;
  const dnnl_memory_desc_t& md = packed.data;
  if (md.ndims != 2 || md.data_type != dnnl_s8 || md.format_kind != dnnl_blocked ||
      md.extra.flags != 0 || md.offset0 != 0) {
    return std::nullopt;
  }
  const auto& bl = md.format_desc.blocking;
  const int64_t kp = md.padded_dims[0], np = md.padded_dims[1];
  // BA16a64b4a: inner blocks 16 (K), 64 (N), 4 (K); K blocks of 64 rows 4096 bytes apart, N blocks
  // k_padded * 64 apart: each 64-column block is k_padded / 4 groups of 256 bytes in K order.
  const bool ok = bl.inner_nblks == 3 && bl.inner_idxs[0] == 0 && bl.inner_blks[0] == 16 &&
                  bl.inner_idxs[1] == 1 && bl.inner_blks[1] == kBlockCols &&
                  bl.inner_idxs[2] == 0 && bl.inner_blks[2] == 4 &&
                  bl.strides[0] == 64 * kBlockCols && bl.strides[1] == kp * kBlockCols &&
                  kp % 64 == 0 && np % kBlockCols == 0;
  if (!ok) return std::nullopt;
  return SmallGemmLayout{kp, np};
}

int64_t SmallGemmInt8MaxRows() { return GetCpuFeatures().amx ? 4 : 8; }

void SmallGemmInt8(const SmallGemmLayout& layout, const int8_t* packed, const float* w_scale,
                   const uint8_t* x, int64_t rows, int64_t k, int64_t n_cols, float* y) {
  if (rows <= 0) return;
  const int64_t blocks = (n_cols + kBlockCols - 1) / kBlockCols;
  const int64_t block_bytes = layout.k_padded * kBlockCols;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    BlockInt8(packed + b * block_bytes, w_scale, x, rows, k, b * kBlockCols, n_cols, y);
  }
}

}  // namespace topserve::engine
