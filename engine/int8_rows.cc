#include "engine/int8_rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <immintrin.h>

#include "engine/cpu_info.h"
#include "engine/kernels.h"
#include "engine/simd_math.h"

namespace topserve::engine {
namespace {

// min(0, x[0..k)) and max(0, x[0..k)).
void RowRange(const float* x, int64_t k, float& lo, float& hi) {
  lo = 0.0f;
  hi = 0.0f;
  int64_t c = 0;
#ifdef __AVX2__
  __m256 vlo = _mm256_setzero_ps(), vhi = _mm256_setzero_ps();
  for (; c + 8 <= k; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    vlo = _mm256_min_ps(vlo, v);
    vhi = _mm256_max_ps(vhi, v);
  }
  alignas(32) float l[8], h[8];
  _mm256_store_ps(l, vlo);
  _mm256_store_ps(h, vhi);
  for (int i = 0; i < 8; ++i) {
    lo = std::min(lo, l[i]);
    hi = std::max(hi, h[i]);
  }
#endif
  for (; c < k; ++c) {
    lo = std::min(lo, x[c]);
    hi = std::max(hi, x[c]);
  }
}

// q[c] = clamp(round(x[c] inv + z), 0, 255), rounding to nearest even.
void QuantizeRow(const float* x, int64_t k, float inv, float z, uint8_t* q) {
  int64_t c = 0;
#ifdef __AVX2__
  const __m256 vinv = _mm256_set1_ps(inv), vz = _mm256_set1_ps(z);
  const __m256 v0 = _mm256_setzero_ps(), v255 = _mm256_set1_ps(255.0f);
  // The two packs interleave 128-bit lanes; this puts the 4-byte groups back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (; c + 32 <= k; c += 32) {
    __m256i i32[4];
    for (int u = 0; u < 4; ++u) {
      __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 8 * u), vinv, vz);
      v = _mm256_min_ps(_mm256_max_ps(v, v0), v255);
      i32[u] = _mm256_cvtps_epi32(v);
    }
    const __m256i i16a = _mm256_packus_epi32(i32[0], i32[1]);
    const __m256i i16b = _mm256_packus_epi32(i32[2], i32[3]);
    const __m256i u8 = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(i16a, i16b), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c), u8);
  }
#endif
  for (; c < k; ++c) {
    q[c] = static_cast<uint8_t>(std::clamp(std::nearbyint(std::fma(x[c], inv, z)), 0.0f, 255.0f));
  }
}

// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() as the unused merge source, which its own
// -Wmaybe-uninitialized then reports (GCC bug 105593); nothing here reads an undefined lane.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// The same two on AVX-512, chosen at run time (the baseline is x86-64-v3): 16 lanes, and the codes
// narrowed by one saturating vpmovusdb instead of two packs and a permute. Same arithmetic as the
// AVX2 code (fma, nearest even, clamp), so a row's codes do not depend on which one ran.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void RowRangeAvx512(const float* x,
                                                                                  int64_t k,
                                                                                  float& lo,
                                                                                  float& hi) {
  __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= k; c += 16) {
    const __m512 v = _mm512_loadu_ps(x + c);
    vlo = _mm512_min_ps(vlo, v);
    vhi = _mm512_max_ps(vhi, v);
  }
  if (c < k) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (k - c)) - 1);
    const __m512 v =
        _mm512_maskz_loadu_ps(tail, x + c);  // zeros elsewhere: the range includes 0 anyway
    vlo = _mm512_min_ps(vlo, v);
    vhi = _mm512_max_ps(vhi, v);
  }
  alignas(64) float l[16], h[16];
  _mm512_store_ps(l, vlo);
  _mm512_store_ps(h, vhi);
  lo = 0.0f;
  hi = 0.0f;
  for (int i = 0; i < 16; ++i) {
    lo = std::min(lo, l[i]);
    hi = std::max(hi, h[i]);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) void QuantizeRowAvx512(
    const float* x, int64_t k, float inv, float z, uint8_t* q) {
  const __m512 vinv = _mm512_set1_ps(inv), vz = _mm512_set1_ps(z);
  const __m512 v0 = _mm512_setzero_ps(), v255 = _mm512_set1_ps(255.0f);
  int64_t c = 0;
  for (; c + 16 <= k; c += 16) {
    __m512 v = _mm512_fmadd_ps(_mm512_loadu_ps(x + c), vinv, vz);
    v = _mm512_min_ps(_mm512_max_ps(v, v0), v255);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c),
                     _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  for (; c < k; ++c) {
    q[c] = static_cast<uint8_t>(std::clamp(std::nearbyint(std::fma(x[c], inv, z)), 0.0f, 255.0f));
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace

namespace {

// Row i of `out` from k floats whose range [lo, hi] (0 included) is known: scale, zero point and
// codes.
void QuantizeWithRange(const float* x, int64_t k, float lo, float hi, bool avx512,
                       const QuantizedRows& out, int64_t i) {
  const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
  const float z = std::clamp(std::nearbyint(-lo / s), 0.0f, 255.0f);
  if (avx512) {
    QuantizeRowAvx512(x, k, 1.0f / s, z, out.q + i * k);
  } else {
    QuantizeRow(x, k, 1.0f / s, z, out.q + i * k);
  }
  out.scale[i] = s;
  out.shift[i] = s * z;
}

// Row i of `out` from k floats: its range (widened to include 0), scale, zero point and codes.
void QuantizeOne(const float* x, int64_t k, const QuantizedRows& out, int64_t i, bool avx512) {
  float lo, hi;
  if (avx512) {
    RowRangeAvx512(x, k, lo, hi);
  } else {
    RowRange(x, k, lo, hi);
  }
  QuantizeWithRange(x, k, lo, hi, avx512, out, i);
}

}  // namespace

void QuantizeRows(const float* x, int64_t m, int64_t k, const QuantizedRows& out) {
  const bool avx512 = GetCpuFeatures().avx512;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) QuantizeOne(x + i * k, k, out, i, avx512);
}

namespace {

// One output row of an int8 layer, in place in d: d = act(s d - sz wc + b (+ acc when given)), as
// the fp32 matmul's sum-then-eltwise post-ops order it,
// 16 lanes at a time while the row is in registers (simd_math.h); the tail runs the same formula in
// scalar code with the library's functions.
__attribute__((target_clones("arch=x86-64-v4", "default"))) void DequantizeRow(
    float* d, int64_t n, float s, float sz, const float* wc, const float* b, Epilogue epilogue,
    const float* acc) {
  using simd::F16;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    F16 v, w, bb;
    std::memcpy(&v, d + j, sizeof(v));
    std::memcpy(&w, wc + j, sizeof(w));
    std::memcpy(&bb, b + j, sizeof(bb));
    v = s * v - sz * w + bb;
    if (acc != nullptr) {
      F16 a;
      std::memcpy(&a, acc + j, sizeof(a));
      v += a;
    }
    switch (epilogue) {
      case Epilogue::kNone: break;
      case Epilogue::kGeluErf: simd::GeluErfInPlace(v); break;
      case Epilogue::kGeluTanh: simd::GeluTanhInPlace(v); break;
      case Epilogue::kRelu: simd::ReluInPlace(v); break;
      case Epilogue::kTanh: simd::TanhInPlace(v); break;
    }
    std::memcpy(d + j, &v, sizeof(v));
  }
  for (; j < n; ++j) {
    float v = s * d[j] - sz * wc[j] + b[j] + (acc != nullptr ? acc[j] : 0.0f);
    switch (epilogue) {
      case Epilogue::kNone: break;
      case Epilogue::kGeluErf: v = 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f)); break;
      case Epilogue::kGeluTanh:
        v = 0.5f * v * (1.0f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        break;
      case Epilogue::kRelu: v = std::max(v, 0.0f); break;
      case Epilogue::kTanh: v = std::tanh(v); break;
    }
    d[j] = v;
  }
}

// Rounds fp32 to bf16, nearest even (what the AVX512-BF16 instruction does; NaN stays NaN).
uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void ToBf16RowNative(
    const float* x, int64_t k, uint16_t* out) {
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + c + 16), _mm512_loadu_ps(x + c));
    _mm512_storeu_si512(out + c, reinterpret_cast<const __m512i&>(v));
  }
  for (; c < k; ++c) out[c] = ToBf16(x[c]);
}

}  // namespace

void ToBf16Row(const float* x, int64_t k, bool native, uint16_t* out) {
  if (native) {
    ToBf16RowNative(x, k, out);
    return;
  }
  for (int64_t c = 0; c < k; ++c) out[c] = ToBf16(x[c]);
}

void RowToBf16Planes(const float* row, int64_t i, int64_t m, int64_t n, int64_t planes, bool native,
                     uint16_t* out) {
  const int64_t w = n / planes;
  for (int64_t p = 0; p < planes; ++p) {
    ToBf16Row(row + p * w, w, native, out + (p * m + i) * w);
  }
}

namespace {

// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() as the unused merge source, which its own
// -Wmaybe-uninitialized then reports (GCC bug 105593); nothing here reads an undefined lane.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define TOPSERVE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// Rows that need no fp32 copy in memory (the up projection's GELU output, which only its codes
// leave; Q|K|V that only bf16 planes leave) are made in a buffer of this many floats on the
// thread's stack, which stays in L1 from row to row, rather than in the matmul's output, whose
// dirtied lines would each be written back. Wider rows use the matmul's output.
constexpr int64_t kRowBufferFloats = 8192;

// The lanes of a row's last, partial vector.
TOPSERVE_AVX512 inline __mmask16 TailMask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
}

template <Epilogue kEpilogue>
[[gnu::always_inline]] TOPSERVE_AVX512 inline __m512 Activate(__m512 x) {
  simd::F16 v = x;
  if constexpr (kEpilogue == Epilogue::kGeluErf) simd::GeluErfInPlace(v);
  if constexpr (kEpilogue == Epilogue::kGeluTanh) simd::GeluTanhInPlace(v);
  if constexpr (kEpilogue == Epilogue::kRelu) simd::ReluInPlace(v);
  if constexpr (kEpilogue == Epilogue::kTanh) simd::TanhInPlace(v);
  return v;
}

// One row's own values in the fused pass.
struct RowIn {
  const float* d;         // the matmul's result row
  float s, sz;            // the input row's scale and scale x zero point
  const float* acc;       // added before the activation (accumulating layers), or null
  const float* residual;  // added after it, then LayerNorm (out.norm), or null
};

// act(s d - sz wc + b (+ acc)) for the lanes in `mask` (0 in the others: every activation maps 0
// to 0), in the order the portable DequantizeRow computes it.
template <Epilogue kEpilogue>
[[gnu::always_inline]] TOPSERVE_AVX512 inline __m512 Dequantize(const Int8Rows& layer,
                                                                const RowIn& row, int64_t j,
                                                                __mmask16 mask) {
  const __m512 dv = _mm512_maskz_loadu_ps(mask, row.d + j);
  const __m512 wc = _mm512_maskz_loadu_ps(mask, layer.w_colsum + j);
  __m512 x = _mm512_fmsub_ps(_mm512_set1_ps(row.s), dv, _mm512_mul_ps(_mm512_set1_ps(row.sz), wc));
  x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, layer.bias + j));
  if (row.acc != nullptr) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, row.acc + j));
  return Activate<kEpilogue>(x);
}

// The finished row into v[0, n) and its range (0 included) into lo, hi. Two vectors per step, each
// with its own sums and bounds, so the reductions' latency chains overlap. Without a norm this is
// one pass over the row; with it, three (the residual sum rides on the first).
template <Epilogue kEpilogue>
TOPSERVE_AVX512 void FinishRowAvx512(const Int8Rows& layer, const RowIn& row,
                                     const ResidualNorm* norm, float* v, float& lo, float& hi) {
  const int64_t n = layer.n;
  const __m512 zero = _mm512_setzero_ps();
  __m512 lo0 = zero, lo1 = zero, hi0 = zero, hi1 = zero, sum0 = zero, sum1 = zero;
  const bool normed = row.residual != nullptr;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    __m512 x0 = Dequantize<kEpilogue>(layer, row, j, 0xffff);
    __m512 x1 = Dequantize<kEpilogue>(layer, row, j + 16, 0xffff);
    if (normed) {
      x0 = _mm512_add_ps(x0, _mm512_loadu_ps(row.residual + j));
      x1 = _mm512_add_ps(x1, _mm512_loadu_ps(row.residual + j + 16));
      sum0 = _mm512_add_ps(sum0, x0);
      sum1 = _mm512_add_ps(sum1, x1);
    } else {
      lo0 = _mm512_min_ps(lo0, x0);
      hi0 = _mm512_max_ps(hi0, x0);
      lo1 = _mm512_min_ps(lo1, x1);
      hi1 = _mm512_max_ps(hi1, x1);
    }
    _mm512_storeu_ps(v + j, x0);
    _mm512_storeu_ps(v + j + 16, x1);
  }
  for (; j < n; j += 16) {
    const __mmask16 mask = TailMask(n - j);
    __m512 x = Dequantize<kEpilogue>(layer, row, j, mask);
    if (normed) {
      x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, row.residual + j));
      sum0 = _mm512_add_ps(sum0, x);
    } else {
      lo0 = _mm512_min_ps(lo0, x);
      hi0 = _mm512_max_ps(hi0, x);
    }
    _mm512_mask_storeu_ps(v + j, mask, x);
  }
  if (normed) {
    // LayerNorm in float, two passes as LayerNormRow does: the centred squares, then the scaled
    // row (whose range is taken on the way).
    const float width = static_cast<float>(n);
    const float mean = _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1)) / width;
    const __m512 vmean = _mm512_set1_ps(mean);
    __m512 sq0 = zero, sq1 = zero;
    for (j = 0; j + 32 <= n; j += 32) {
      const __m512 c0 = _mm512_sub_ps(_mm512_loadu_ps(v + j), vmean);
      const __m512 c1 = _mm512_sub_ps(_mm512_loadu_ps(v + j + 16), vmean);
      sq0 = _mm512_fmadd_ps(c0, c0, sq0);
      sq1 = _mm512_fmadd_ps(c1, c1, sq1);
    }
    for (; j < n; j += 16) {
      const __mmask16 mask = TailMask(n - j);
      const __m512 c = _mm512_maskz_sub_ps(mask, _mm512_maskz_loadu_ps(mask, v + j), vmean);
      sq0 = _mm512_fmadd_ps(c, c, sq0);
    }
    const float sq = _mm512_reduce_add_ps(_mm512_add_ps(sq0, sq1));
    const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(sq / width + norm->eps));
    for (j = 0; j < n; j += 16) {
      const __mmask16 mask = TailMask(n - j);
      const __m512 c = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, v + j), vmean), inv);
      const __m512 o = _mm512_maskz_fmadd_ps(mask, c, _mm512_maskz_loadu_ps(mask, norm->gamma + j),
                                             _mm512_maskz_loadu_ps(mask, norm->beta + j));
      lo0 = _mm512_min_ps(lo0, o);
      hi0 = _mm512_max_ps(hi0, o);
      _mm512_mask_storeu_ps(v + j, mask, o);
    }
  }
  lo = _mm512_reduce_min_ps(_mm512_min_ps(lo0, lo1));
  hi = _mm512_reduce_max_ps(_mm512_max_ps(hi0, hi1));
}

void FinishRowAvx512(const Int8Rows& layer, const RowIn& row, const ResidualNorm* norm, float* v,
                     float& lo, float& hi) {
  switch (layer.epilogue) {
    case Epilogue::kNone: return FinishRowAvx512<Epilogue::kNone>(layer, row, norm, v, lo, hi);
    case Epilogue::kGeluErf:
      return FinishRowAvx512<Epilogue::kGeluErf>(layer, row, norm, v, lo, hi);
    case Epilogue::kGeluTanh:
      return FinishRowAvx512<Epilogue::kGeluTanh>(layer, row, norm, v, lo, hi);
    case Epilogue::kRelu: return FinishRowAvx512<Epilogue::kRelu>(layer, row, norm, v, lo, hi);
    case Epilogue::kTanh: return FinishRowAvx512<Epilogue::kTanh>(layer, row, norm, v, lo, hi);
  }
}

#undef TOPSERVE_AVX512
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace

void FinishInt8Rows(const Int8Rows& layer, float* d, int64_t begin, int64_t rows,
                    const Int8Output& out, RowKernel kernel) {
  const int64_t m = layer.m, n = layer.n;
  const QuantizedRows& in = *layer.in;
  const bool avx512 = GetCpuFeatures().avx512 && kernel == RowKernel::kBest;
  const bool native_bf16 = out.bf16 != nullptr && GetCpuFeatures().avx512_bf16;
#pragma omp parallel
  {
    alignas(64) float buffer[kRowBufferFloats];
#pragma omp for schedule(static)
    for (int64_t i = begin; i < begin + rows; ++i) {
      float* di = d + (i - begin) * n;
      float* yi = out.y != nullptr ? out.y + i * n : nullptr;
      const float* acc = layer.accumulate ? yi : nullptr;
      const float* residual = out.norm != nullptr ? out.norm->residual + i * n : nullptr;
      if (avx512) {
        // One fused pass (three with a norm), straight into y's row or the buffer.
        float* v = yi != nullptr ? yi : (n <= kRowBufferFloats ? buffer : di);
        float lo, hi;
        FinishRowAvx512(layer, RowIn{di, in.scale[i], in.shift[i], acc, residual}, out.norm, v, lo,
                        hi);
        if (out.bf16 != nullptr)
          RowToBf16Planes(v, i, m, n, out.bf16_planes, native_bf16, out.bf16);
        if (out.quantized != nullptr) QuantizeWithRange(v, n, lo, hi, true, *out.quantized, i);
        continue;
      }
      // The same formulas one function at a time, in place in d.
      DequantizeRow(di, n, in.scale[i], in.shift[i], layer.w_colsum, layer.bias, layer.epilogue,
                    acc);
      if (out.norm != nullptr) {
        LayerNormRow(di, residual, n, out.norm->gamma, out.norm->beta, out.norm->eps);
      }
      if (yi != nullptr && yi != di) std::memcpy(yi, di, static_cast<size_t>(n) * sizeof(float));
      if (out.bf16 != nullptr) RowToBf16Planes(di, i, m, n, out.bf16_planes, native_bf16, out.bf16);
      if (out.quantized != nullptr) QuantizeOne(di, n, *out.quantized, i, false);
    }
  }
}

}  // namespace topserve::engine
