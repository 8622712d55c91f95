// Dense layers (engine/dnnl_ops.h): the few-row path (engine/small_gemm.h) against a float64
// reference and against oneDNN's matmul on the same packed weights, for every row count it takes,
// odd shapes (K not a multiple of 16, N not a multiple of 16 or 64), accumulation and activations.
#include "engine/dnnl_ops.h"

#include <cmath>
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

class LinearTest : public ::testing::TestWithParam<std::tuple<Shape, Epilogue, bool>> {};

TEST_P(LinearTest, EveryRowCountMatchesReferenceAndLargeBatchPath) {
  const auto [shape, epilogue, accumulate] = GetParam();
  const int64_t n = shape.n, k = shape.k;
  std::mt19937 rng(static_cast<unsigned>(n * 131 + k));
  std::normal_distribution<float> dist(0.0f, 0.5f);
  std::vector<float> w(static_cast<size_t>(n * k)), b(static_cast<size_t>(n));
  for (float& v : w) v = dist(rng);
  for (float& v : b) v = dist(rng);
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
        worst_big = std::max(worst_big, std::abs(got - double(y_big[r * n + j])) /
                                            (1.0 + std::abs(want)));
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

TEST(SmallGemmTest, TakesOneDnnsPackedLayoutOnAvx512) {
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "no AVX-512: oneDNN packs differently";
  // The few-row path must actually be in use here (otherwise the tests above compare oneDNN with
  // itself): oneDNN 2.6 packs f32 weights for brgemm as BA16a64b on AVX-512.
  DnnlContext ctx;
  for (const Shape s : {Shape{2304, 768}, Shape{768, 3072}, Shape{2, 768}, Shape{100, 37}}) {
    dnnl::memory::desc any({s.k, s.n}, dnnl::memory::data_type::f32,
                           dnnl::memory::format_tag::any);
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
