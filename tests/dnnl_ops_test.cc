// Dense layers (engine/dnnl_ops.h): the few-row path (engine/small_gemm.h) against a float64
// reference and against oneDNN's matmul on the same packed weights, for every row count it takes,
// odd shapes (K not a multiple of 16, N not a multiple of 16 or 64), accumulation and activations.
#include "engine/dnnl_ops.h"
#include "engine/simd_math.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace topserve::engine {
namespace {

struct Shape {
  int64_t n, k;
};

double Activate(Epilogue e, double v) {
  switch (e) {
    case Epilogue::kNone: return v;
    case Epilogue::kGeluErf: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    case Epilogue::kGeluTanh:
      return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    case Epilogue::kRelu: return v > 0 ? v : 0.0;
    case Epilogue::kTanh: return std::tanh(v);
  }
  return v;
}

// Random weights and bias (normal, sd 0.5) for an n x k layer.
struct RandomLayer {
  RandomLayer(int64_t n, int64_t k, unsigned seed)
      : rng(seed), w(static_cast<size_t>(n * k)), b(static_cast<size_t>(n)) {
    for (float& v : w) v = dist(rng);
    for (float& v : b) v = dist(rng);
  }
  std::mt19937 rng;
  std::normal_distribution<float> dist{0.0f, 0.5f};
  std::vector<float> w, b;
};

class LinearTest : public ::testing::TestWithParam<std::tuple<Shape, Epilogue, bool>> {};

TEST_P(LinearTest, EveryRowCountMatchesReferenceAndLargeBatchPath) {
  const auto [shape, epilogue, accumulate] = GetParam();
  const int64_t n = shape.n, k = shape.k;
  RandomLayer layer(n, k, static_cast<unsigned>(n * 131 + k));
  auto& [rng, dist, w, b] = layer;
  DnnlContext ctx;
  PrimitiveCache cache(ctx);
  auto lin = Linear::Create(ctx, w.data(), b.data(), n, k, epilogue, accumulate);
  ASSERT_TRUE(lin.ok()) << lin.status();

  // Rows beyond kSmallGemmMaxRows make oneDNN's matmul run; the first m of them are the small
  // path's input below.
  const int64_t big = kSmallGemmMaxRows + 24;
  std::vector<float> x(static_cast<size_t>(big * k)), y0(static_cast<size_t>(big * n));
  for (float& v : x) v = dist(rng);
  for (float& v : y0) v = dist(rng);
  std::vector<float> y_big = y0;
  lin->Forward(cache, x.data(), big, y_big.data());

  for (int64_t m = 1; m <= kSmallGemmMaxRows; ++m) {
    std::vector<float> y(y0.begin(), y0.begin() + m * n);
    lin->Forward(cache, x.data(), m, y.data());
    double worst_ref = 0, worst_big = 0;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = b[j];
        for (int64_t i = 0; i < k; ++i) acc += double(x[r * k + i]) * double(w[j * k + i]);
        if (accumulate) acc += y0[r * n + j];
        const double want = Activate(epilogue, acc);
        const double got = y[r * n + j];
        worst_ref = std::max(worst_ref, std::abs(got - want) / (1.0 + std::abs(want)));
        worst_big =
            std::max(worst_big, std::abs(got - double(y_big[r * n + j])) / (1.0 + std::abs(want)));
      }
    }
    EXPECT_LT(worst_ref, 2e-5) << "m=" << m;
    EXPECT_LT(worst_big, 2e-5) << "m=" << m;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LinearTest,
    ::testing::Combine(::testing::Values(Shape{64, 64}, Shape{2, 48}, Shape{100, 37},
                                         Shape{200, 768}, Shape{768, 96}),
                       ::testing::Values(Epilogue::kNone, Epilogue::kGeluErf, Epilogue::kTanh),
                       ::testing::Bool()));

// kInt8: per-output-channel int8 weights, per-row uint8 activations. Every output is within the
// worst case of the two roundings, 0.5 s_row sum_i |w_ij| + 0.5 s_j sum_i |x_i| (+ their product),
// which a wrong zero-point or scale correction far exceeds; a row's result is bit-identical alone
// and among others; rows of different magnitude, all-positive rows and an all-zero row included.
class Int8LinearTest : public ::testing::TestWithParam<std::tuple<Shape, Epilogue, bool>> {};

TEST_P(Int8LinearTest, WithinQuantizationErrorAndRowIndependent) {
  const auto [shape, epilogue, accumulate] = GetParam();
  const int64_t n = shape.n, k = shape.k, m = 40;
  RandomLayer layer(n, k, static_cast<unsigned>(n * 7 + k));
  auto& [rng, dist, w, b] = layer;
  DnnlContext ctx;
  PrimitiveCache cache(ctx);
  auto lin = Linear::Create(ctx, w.data(), b.data(), n, k, epilogue, accumulate, Precision::kInt8);
  ASSERT_TRUE(lin.ok()) << lin.status();
  EXPECT_EQ(lin->precision(), Precision::kInt8);
  std::vector<float> x(static_cast<size_t>(m * k)), y0(static_cast<size_t>(m * n));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      float v = dist(rng) * 0.2f * static_cast<float>(r + 1);
      if (r % 5 == 1) v = std::abs(v);  // no negative values: zero point 0
      if (r == 7) v = 0.0f;             // nothing to scale
      x[r * k + i] = v;
    }
  }
  for (float& v : y0) v = dist(rng);
  std::vector<float> y = y0;
  lin->Forward(cache, x.data(), m, y.data());
  double wmax_seen = 0;
  for (float v : w) wmax_seen = std::max(wmax_seen, double(std::abs(v)));
  double worst = 0;
  for (int64_t r = 0; r < m; ++r) {
    double lo = 0, hi = 0, sum_x = 0;
    for (int64_t i = 0; i < k; ++i) {
      lo = std::min(lo, double(x[r * k + i]));
      hi = std::max(hi, double(x[r * k + i]));
      sum_x += std::abs(x[r * k + i]);
    }
    const double s_row = (hi - lo) / 255.0;
    for (int64_t j = 0; j < n; ++j) {
      double acc = b[j], sum_w = 0, amax = 0;
      for (int64_t i = 0; i < k; ++i) {
        acc += double(x[r * k + i]) * double(w[j * k + i]);
        sum_w += std::abs(w[j * k + i]);
        amax = std::max(amax, double(std::abs(w[j * k + i])));
      }
      const double s_w = amax / 127.0 * 2.0;  // 7-bit weights without VNNI: up to twice the step
      const double bound =
          1.13 * (0.5 * s_row * sum_w + 0.5 * s_w * sum_x + 0.25 * s_row * s_w * double(k)) +
          1e-4 * (1.0 + std::abs(acc));
      if (accumulate) acc += y0[r * n + j];
      const double got = y[r * n + j];
      const double err = std::abs(got - Activate(epilogue, acc));
      worst = std::max(worst, err / bound);
      ASSERT_LE(err, bound) << "row " << r << " col " << j;
    }
    // Alone equals among the others, bit for bit.
    std::vector<float> alone(y0.begin() + r * n, y0.begin() + (r + 1) * n);
    lin->Forward(cache, x.data() + r * k, 1, alone.data());
    for (int64_t j = 0; j < n; ++j)
      ASSERT_EQ(alone[j], y[r * n + j]) << "row " << r << " col " << j;
  }
  std::cout << n << "x" << k << ": worst error " << worst << " of the rounding bound\n";
  EXPECT_GT(worst, 0.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Int8LinearTest,
                         ::testing::Combine(::testing::Values(Shape{64, 64}, Shape{100, 37},
                                                              Shape{200, 768}, Shape{33, 70},
                                                              Shape{768, 96}),
                                            ::testing::Values(Epilogue::kNone, Epilogue::kGeluErf),
                                            ::testing::Bool()));

// The int8 few-row kernel (SmallGemmInt8) against oneDNN's matmul: every row count it takes, run
// alone, gives the same floats bit for bit as the same rows inside a 40-row call (oneDNN), for K
// not a multiple of 4 or 64 and N not a multiple of 64, with activations and accumulation. On a
// CPU with AVX512-VNNI the kernel must be in use, or this compares oneDNN with itself.
TEST(SmallGemmInt8Test, EveryRowCountBitExactAgainstOneDnn) {
  const bool vnni = __builtin_cpu_supports("avx512vnni");
  DnnlContext ctx;
  for (const Shape s :
       {Shape{2304, 768}, Shape{3072, 768}, Shape{768, 3072}, Shape{100, 37}, Shape{70, 130}}) {
    for (const bool accumulate : {false, true}) {
      SCOPED_TRACE(testing::Message() << s.n << "x" << s.k << (accumulate ? " accumulate" : ""));
      // A cache per layer: it keys a layer's primitives by the layer's address, which the next
      // iteration's layer may reuse.
      PrimitiveCache cache(ctx);
      RandomLayer layer(s.n, s.k, static_cast<unsigned>(s.n + 3 * s.k));
      auto lin = Linear::Create(ctx, layer.w.data(), layer.b.data(), s.n, s.k, Epilogue::kGeluErf,
                                accumulate, Precision::kInt8);
      ASSERT_TRUE(lin.ok()) << lin.status();
      EXPECT_EQ(lin->has_small_gemm(), vnni);
      const int64_t m = 40;
      std::vector<float> x(static_cast<size_t>(m * s.k)), y0(static_cast<size_t>(m * s.n));
      for (float& v : x) v = layer.dist(layer.rng);
      for (float& v : y0) v = layer.dist(layer.rng);
      std::vector<float> all = y0;
      lin->Forward(cache, x.data(), m, all.data());
      for (int64_t rows = 1; rows <= SmallGemmInt8MaxRows(); ++rows) {
        const int64_t first = rows % 7;
        std::vector<float> few(y0.begin() + first * s.n, y0.begin() + (first + rows) * s.n);
        lin->Forward(cache, x.data() + first * s.k, rows, few.data());
        for (int64_t e = 0; e < rows * s.n; ++e) {
          ASSERT_EQ(few[e], all[first * s.n + e]) << rows << " rows, element " << e;
        }
      }
    }
  }
}

TEST(SmallGemmTest, TakesOneDnnsPackedLayoutOnAvx512) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512: oneDNN packs differently";
  // The few-row path must actually be in use here (otherwise the tests above compare oneDNN with
  // itself): oneDNN 2.6 packs f32 weights for brgemm as BA16a64b on AVX-512.
  DnnlContext ctx;
  for (const Shape s : {Shape{2304, 768}, Shape{768, 3072}, Shape{2, 768}, Shape{100, 37}}) {
    dnnl::memory::desc any({s.k, s.n}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::any);
    dnnl::matmul::primitive_desc pd(
        dnnl::matmul::desc(dnnl::memory::desc({64, s.k}, dnnl::memory::data_type::f32,
                                              dnnl::memory::format_tag::ab),
                           any,
                           dnnl::memory::desc({64, s.n}, dnnl::memory::data_type::f32,
                                              dnnl::memory::format_tag::ab)),
        ctx.engine());
    auto layout = SmallGemmLayoutOf(pd.weights_desc());
    ASSERT_TRUE(layout.has_value()) << s.n << "x" << s.k;
    EXPECT_EQ(layout->n_padded % 64, 0);
    EXPECT_GE(layout->k_padded, s.k);
  }
  // A plain row-major matrix is not that layout.
  EXPECT_FALSE(SmallGemmLayoutOf(dnnl::memory::desc({768, 768}, dnnl::memory::data_type::f32,
                                                    dnnl::memory::format_tag::ab))
                   .has_value());
}

}  // namespace
}  // namespace topserve::engine

// The vectorized activations of the fused int8 epilogue (engine/simd_math.h) against the library.
TEST(SimdMathTest, MatchesTheLibraryFunctions) {
  using topserve::engine::simd::F16;
  double worst_exp = 0, worst_erf = 0, worst_tanh = 0, worst_gelu = 0;
  for (int i = -200000; i <= 200000; i += 16) {
    F16 x;
    for (int l = 0; l < 16; ++l) x[l] = static_cast<float>(i + l) * 1e-4f;  // [-20, 20]
    const F16 e = topserve::engine::simd::ExpNonPositive(-topserve::engine::simd::Abs(x));
    const F16 erf = topserve::engine::simd::Erf(x);
    const F16 th = topserve::engine::simd::Tanh(x);
    const F16 g = topserve::engine::simd::GeluErf(x);
    for (int l = 0; l < 16; ++l) {
      const double v = x[l];
      const double want_exp = std::exp(-std::fabs(v));
      worst_exp = std::max(worst_exp, std::fabs(e[l] - want_exp) / want_exp);
      worst_erf = std::max(worst_erf, std::fabs(erf[l] - std::erf(v)));
      worst_tanh = std::max(worst_tanh, std::fabs(th[l] - std::tanh(v)));
      const double gelu = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
      worst_gelu = std::max(worst_gelu, std::fabs(g[l] - gelu) / std::max(1.0, std::fabs(v)));
    }
  }
  EXPECT_LT(worst_exp, 3e-7);
  EXPECT_LT(worst_erf, 6e-7);  // A&S 7.1.26 is 1.5e-7; float arithmetic adds the rest
  EXPECT_LT(worst_tanh, 3e-7);
  EXPECT_LT(worst_gelu, 1e-6);
  std::printf("exp rel %.2g, erf abs %.2g, tanh abs %.2g, gelu %.2g\n", worst_exp, worst_erf,
              worst_tanh, worst_gelu);
}

namespace topserve::engine {
namespace {

// Q K^T and P V of two sequences of 5 tokens, 3 heads of width 4, against a float64 loop: once
// with fp32 Q|K|V interleaved in rows of 3d, once with bf16 planes (the layout int8 and bf16
// attention use), whose inputs are exactly representable in bf16 so only accumulation differs.
TEST(AttentionTest, BothLayoutsMatchAFloat64Loop) {
  const AttentionShape shape{3, 4};
  const int64_t d = shape.hidden(), len = 5, groups = 2, rows = groups * len;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(-16, 16);
  std::vector<float> qkv(static_cast<size_t>(rows * 3 * d));       // [rows, 3d]: Q | K | V
  for (float& v : qkv) v = static_cast<float>(small(rng)) / 8.0f;  // exact in bf16
  auto at = [&](int64_t t, int part, int64_t h, int64_t c) {
    return static_cast<double>(
        qkv[static_cast<size_t>(t * 3 * d + part * d + h * shape.head_dim + c)]);
  };
  DnnlContext ctx;
  PrimitiveCache cache(ctx);
  for (const bool bf16 : {false, true}) {
    if (bf16 && !CpuHasNativeBf16()) continue;
    SCOPED_TRACE(bf16 ? "bf16 planes" : "fp32 interleaved");
    std::vector<uint16_t> planes(qkv.size());
    HeadRows r{qkv.data(), qkv.data() + d, qkv.data() + 2 * d, 3 * d, false};
    if (bf16) {
      ConvertToBf16Planes(qkv.data(), rows, 3 * d, 3, planes.data());
      r = HeadRows{planes.data(), planes.data() + rows * d, planes.data() + 2 * rows * d, d, true};
    }
    std::vector<float> scores(static_cast<size_t>(groups * shape.heads * len * len));
    AttentionScores(cache, shape, r, groups, len, scores.data());
    // Probabilities: any fixed values exact in bf16 will do for P V.
    std::vector<float> probs(scores.size());
    for (size_t i = 0; i < probs.size(); ++i) probs[i] = static_cast<float>(i % 7) / 8.0f;
    std::vector<uint16_t> probs_bf16(probs.size());
    if (bf16) ConvertToBf16(probs.data(), static_cast<int64_t>(probs.size()), probs_bf16.data());
    std::vector<float> out(static_cast<size_t>(rows * d), -1.0f);
    AttentionContext(cache, shape,
                     bf16 ? static_cast<const void*>(probs_bf16.data()) : probs.data(), r, groups,
                     len, out.data());
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t h = 0; h < shape.heads; ++h) {
        for (int64_t i = 0; i < len; ++i) {
          for (int64_t j = 0; j < len; ++j) {
            double want = 0;
            for (int64_t c = 0; c < shape.head_dim; ++c) {
              want += at(g * len + i, 0, h, c) * at(g * len + j, 1, h, c);
            }
            const size_t s = static_cast<size_t>(((g * shape.heads + h) * len + i) * len + j);
            ASSERT_NEAR(scores[s], want, 1e-5) << g << " " << h << " " << i << " " << j;
          }
          for (int64_t c = 0; c < shape.head_dim; ++c) {
            double want = 0;
            for (int64_t j = 0; j < len; ++j) {
              const size_t p = static_cast<size_t>(((g * shape.heads + h) * len + i) * len + j);
              want += static_cast<double>(probs[p]) * at(g * len + j, 2, h, c);
            }
            ASSERT_NEAR(out[static_cast<size_t>((g * len + i) * d + h * shape.head_dim + c)], want,
                        1e-5)
                << g << " " << h << " " << i << " " << c;
          }
        }
      }
    }
  }
}

// Per-row quantization (QuantizeRows: the AVX-512 or the AVX2 code, whichever this CPU runs)
// against the formula written out in scalar code: range widened to include 0, s = (hi - lo) / 255,
// z = round(-lo / s), q = clamp(round(x / s + z)), rounding to nearest even. Widths cover both
// vector loops' tails; rows cover all-positive, all-negative, all-zero and mixed values.
TEST(QuantizeRowsTest, MatchesTheFormulaForEveryWidth) {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  for (int64_t k : {1, 7, 15, 16, 17, 31, 32, 33, 47, 768, 3072, 3077}) {
    SCOPED_TRACE(k);
    const int64_t m = 5;
    std::vector<float> x(static_cast<size_t>(m * k));
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t c = 0; c < k; ++c) {
        float v = dist(rng);
        if (i == 0) v = std::fabs(v) + 0.5f;   // all positive
        if (i == 1) v = -std::fabs(v) - 0.5f;  // all negative
        if (i == 2) v = 0.0f;
        if (i == 4 && c == k - 1) v = 40.0f;  // the maximum in the last element (a tail)
        x[static_cast<size_t>(i * k + c)] = v;
      }
    }
    std::vector<uint8_t> q(x.size(), 77);
    std::vector<float> scale(m), shift(m);
    QuantizeRows(x.data(), m, k, QuantizedRows{q.data(), scale.data(), shift.data()});
    for (int64_t i = 0; i < m; ++i) {
      float lo = 0.0f, hi = 0.0f;
      for (int64_t c = 0; c < k; ++c) {
        lo = std::min(lo, x[static_cast<size_t>(i * k + c)]);
        hi = std::max(hi, x[static_cast<size_t>(i * k + c)]);
      }
      const float sc = hi > lo ? (hi - lo) / 255.0f : 1.0f;
      const float z = std::clamp(std::nearbyint(-lo / sc), 0.0f, 255.0f);
      ASSERT_EQ(scale[static_cast<size_t>(i)], sc) << "row " << i;
      ASSERT_EQ(shift[static_cast<size_t>(i)], sc * z) << "row " << i;
      for (int64_t c = 0; c < k; ++c) {
        const float v = std::fma(x[static_cast<size_t>(i * k + c)], 1.0f / sc, z);
        const auto want = static_cast<uint8_t>(std::clamp(std::nearbyint(v), 0.0f, 255.0f));
        ASSERT_EQ(q[static_cast<size_t>(i * k + c)], want) << "row " << i << " col " << c;
      }
    }
  }
}

// One cache serving two attention shapes of the same width, group, length and row stride (3 heads
// of 4, then 2 heads of 6): each gets its own primitive, so the second is not computed with the
// first's head split.
TEST(AttentionTest, CacheKeepsHeadSplitsApart) {
  const int64_t d = 12, len = 3, groups = 1, rows = groups * len;
  std::vector<float> qkv(static_cast<size_t>(rows * 3 * d));
  for (size_t i = 0; i < qkv.size(); ++i)
    qkv[i] = static_cast<float>(static_cast<int>(i % 9) - 4) / 4.0f;
  DnnlContext ctx;
  PrimitiveCache cache(ctx);
  for (const AttentionShape shape : {AttentionShape{3, 4}, AttentionShape{2, 6}}) {
    SCOPED_TRACE(shape.heads);
    const HeadRows r{qkv.data(), qkv.data() + d, qkv.data() + 2 * d, 3 * d, false};
    std::vector<float> scores(static_cast<size_t>(groups * shape.heads * len * len));
    AttentionScores(cache, shape, r, groups, len, scores.data());
    for (int64_t h = 0; h < shape.heads; ++h) {
      for (int64_t i = 0; i < len; ++i) {
        for (int64_t j = 0; j < len; ++j) {
          double want = 0;
          for (int64_t c = 0; c < shape.head_dim; ++c) {
            want +=
                static_cast<double>(qkv[static_cast<size_t>(i * 3 * d + h * shape.head_dim + c)]) *
                qkv[static_cast<size_t>(j * 3 * d + d + h * shape.head_dim + c)];
          }
          ASSERT_NEAR(scores[static_cast<size_t>((h * len + i) * len + j)], want, 1e-5)
              << h << " " << i << " " << j;
        }
      }
    }
  }
}

// The int8 output pass (engine/int8_rows.h), the fused AVX-512 kernel and the portable functions
// each against the formula in float64: v = act(s d - sz colsum + b (+ y_old)), then
// LayerNorm(v + residual) when normed. Every output form is checked against the fp32 row the pass
// wrote: the codes and scale against QuantizeRowsTest's formula, bf16 planes against rounding to
// nearest even. Widths cover the vector tails, and one row is wider than the fused kernel's stack
// buffer. The two kernels agree within float rounding.
struct RowPassCase {
  int64_t n;
  Epilogue epilogue;
  bool accumulate, norm, fp32_out, quantized, bf16;
};

class Int8RowsTest : public ::testing::TestWithParam<RowPassCase> {};

uint16_t Bf16Nearest(float f) {  // written out here, not the engine's
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t lsb = (u >> 16) & 1u;
  return static_cast<uint16_t>((u + 0x7fffu + lsb) >> 16);
}

TEST_P(Int8RowsTest, MatchesTheFormulaInEveryOutputForm) {
  const RowPassCase c = GetParam();
  const int64_t n = c.n, m = 6, planes = c.bf16 ? 3 : 1;
  std::mt19937 rng(static_cast<unsigned>(n * 31 + static_cast<int>(c.epilogue)));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto randoms = [&](int64_t count, float sd) {
    std::vector<float> v(static_cast<size_t>(count));
    for (float& x : v) x = sd * dist(rng);
    return v;
  };
  const std::vector<float> d0 = randoms(m * n, 20.0f), colsum = randoms(n, 3.0f),
                           bias = randoms(n, 0.5f), residual = randoms(m * n, 1.0f),
                           gamma = randoms(n, 1.0f), beta = randoms(n, 0.2f),
                           y_old = randoms(m * n, 1.0f);
  std::vector<float> scale(m), shift(m);
  for (int64_t i = 0; i < m; ++i) {
    scale[i] = 0.01f * static_cast<float>(i + 1);
    shift[i] = scale[i] * static_cast<float>(17 * i);
  }
  QuantizedRows in{nullptr, scale.data(), shift.data()};
  const ResidualNorm ln{residual.data(), gamma.data(), beta.data(), 1e-12f};
  // Reference in float64.
  std::vector<double> want(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    double mean = 0;
    for (int64_t j = 0; j < n; ++j) {
      const size_t e = static_cast<size_t>(i * n + j);
      double v = double(scale[i]) * d0[e] - double(shift[i]) * colsum[j] + bias[j];
      if (c.accumulate) v += y_old[e];
      v = Activate(c.epilogue, v);
      if (c.norm) v += residual[e];
      want[e] = v;
      mean += v;
    }
    if (!c.norm) continue;
    mean /= double(n);
    double var = 0;
    for (int64_t j = 0; j < n; ++j) var += std::pow(want[i * n + j] - mean, 2);
    const double inv = 1.0 / std::sqrt(var / double(n) + 1e-12);
    for (int64_t j = 0; j < n; ++j) {
      double& v = want[i * n + j];
      v = (v - mean) * inv * gamma[j] + beta[j];
    }
  }
  const Int8Rows layer{.in = &in,
                       .w_colsum = colsum.data(),
                       .bias = bias.data(),
                       .epilogue = c.epilogue,
                       .accumulate = c.accumulate,
                       .m = m,
                       .n = n};
  std::vector<std::vector<float>> fp32_of_kernel;
  for (RowKernel kernel : {RowKernel::kBest, RowKernel::kPortable}) {
    SCOPED_TRACE(kernel == RowKernel::kBest ? "best kernel" : "portable kernel");
    std::vector<float> d = d0, y = c.accumulate ? y_old : std::vector<float>(d0.size(), -7.0f);
    std::vector<uint8_t> codes(d0.size(), 1);
    std::vector<float> qscale(m, -1.0f), qshift(m, -1.0f);
    std::vector<uint16_t> bf16(d0.size(), 1);
    const QuantizedRows q{codes.data(), qscale.data(), qshift.data()};
    Int8Output out;
    // In place when the fp32 rows are wanted and nothing else needs y's old contents.
    const bool in_place = c.fp32_out && !c.accumulate;
    if (c.fp32_out) out.y = y.data();
    if (c.quantized) out.quantized = &q;
    if (c.bf16) {
      out.bf16 = bf16.data();
      out.bf16_planes = planes;
    }
    if (c.norm) out.norm = &ln;
    // Two calls of three rows each: rows are placed by their index in the whole output.
    for (int64_t begin = 0; begin < m; begin += 3) {
      float* rows = in_place ? y.data() + begin * n : d.data() + begin * n;
      if (in_place) std::copy(d0.begin() + begin * n, d0.begin() + (begin + 3) * n, rows);
      FinishInt8Rows(layer, rows, begin, 3, out, kernel);
    }
    // The fp32 row each form came from: y when written, else the reference rounded to float.
    std::vector<float> got(d0.size());
    for (size_t e = 0; e < got.size(); ++e) got[e] = static_cast<float>(want[e]);
    if (c.fp32_out) got = y;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const size_t e = static_cast<size_t>(i * n + j);
        if (c.fp32_out) {
          ASSERT_NEAR(y[e], want[e], 2e-5 * (1.0 + std::fabs(want[e]))) << i << "," << j;
        }
      }
      if (c.quantized) {
        // Codes against the formula, from the row the pass had (y when written).
        float lo = 0.0f, hi = 0.0f;
        double worst = 0;
        for (int64_t j = 0; j < n; ++j) {
          lo = std::min(lo, got[i * n + j]);
          hi = std::max(hi, got[i * n + j]);
        }
        const float sc = hi > lo ? (hi - lo) / 255.0f : 1.0f;
        const float z = std::clamp(std::nearbyint(-lo / sc), 0.0f, 255.0f);
        if (c.fp32_out) {
          ASSERT_EQ(qscale[i], sc) << "row " << i;
          ASSERT_EQ(qshift[i], sc * z) << "row " << i;
        } else {
          ASSERT_NEAR(qscale[i], sc, 1e-5 * sc) << "row " << i;
        }
        for (int64_t j = 0; j < n; ++j) {
          // What the codes stand for is the reference value within a step of the scale.
          const double back = double(qscale[i]) * codes[i * n + j] - qshift[i];
          worst = std::max(worst, std::fabs(back - want[i * n + j]) / qscale[i]);
          if (c.fp32_out) {
            const float v = std::fma(got[i * n + j], 1.0f / sc, z);
            ASSERT_EQ(codes[i * n + j], std::clamp(std::nearbyint(v), 0.0f, 255.0f))
                << i << "," << j;
          }
        }
        ASSERT_LE(worst, 0.5 + 1e-3) << "row " << i;
      }
      if (c.bf16) {
        const int64_t w = n / planes;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t p = j / w;
          const uint16_t b = bf16[static_cast<size_t>((p * m + i) * w + j % w)];
          if (c.fp32_out) {
            ASSERT_EQ(b, Bf16Nearest(y[i * n + j])) << i << "," << j;
          } else {
            uint32_t u = static_cast<uint32_t>(b) << 16;
            float back;
            std::memcpy(&back, &u, sizeof(back));
            ASSERT_NEAR(back, want[i * n + j], 1e-2 * (1.0 + std::fabs(want[i * n + j])))
                << i << "," << j;
          }
        }
      }
    }
    fp32_of_kernel.push_back(y);
  }
  if (c.fp32_out) {
    for (size_t e = 0; e < fp32_of_kernel[0].size(); ++e) {
      ASSERT_NEAR(fp32_of_kernel[0][e], fp32_of_kernel[1][e],
                  1e-5 * (1.0 + std::fabs(fp32_of_kernel[1][e])))
          << e;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Forms, Int8RowsTest,
    ::testing::Values(
        // The encoder's four uses: Q|K|V to bf16 planes or fp32, the up projection to codes only,
        // the out/down projections normed to fp32 and codes.
        RowPassCase{768 * 3, Epilogue::kNone, false, false, false, false, true},
        RowPassCase{768 * 3, Epilogue::kNone, false, false, true, false, false},
        RowPassCase{3072, Epilogue::kGeluErf, false, false, false, true, false},
        RowPassCase{768, Epilogue::kNone, false, true, true, true, false},
        // Tails, every activation, accumulation, and a row wider than the stack buffer.
        RowPassCase{37, Epilogue::kGeluTanh, false, true, true, true, false},
        RowPassCase{100, Epilogue::kRelu, true, false, true, true, false},
        RowPassCase{33, Epilogue::kTanh, true, true, true, true, false},
        RowPassCase{51, Epilogue::kGeluErf, false, false, false, true, true},
        RowPassCase{8200, Epilogue::kGeluErf, false, false, false, true, false},
        // bf16 planes beside fp32 rows (exact), planes of 17 columns.
        RowPassCase{51, Epilogue::kGeluErf, false, false, true, true, true},
        RowPassCase{768 * 3, Epilogue::kNone, true, false, true, false, true},
        RowPassCase{51, Epilogue::kNone, false, true, true, false, true}));

}  // namespace
}  // namespace topserve::engine
