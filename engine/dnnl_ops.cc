#include "engine/dnnl_ops.h"

#include <cstring>
#include <new>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace topserve::engine {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;
using dims = dnnl::memory::dims;

void FlushDnnlPrimitiveCache() {
  const int capacity = dnnl::get_primitive_cache_capacity();
  dnnl::set_primitive_cache_capacity(0);
  dnnl::set_primitive_cache_capacity(capacity);
}

DnnlContext::DnnlContext() : engine_(dnnl::engine::kind::cpu, 0) {}

PrimitiveCache::PrimitiveCache(const DnnlContext& ctx)
    : engine_(ctx.engine()), stream_(ctx.engine()) {}

namespace {

std::shared_ptr<float> AllocFloats(int64_t n) {
  auto* p = static_cast<float*>(::operator new[](static_cast<size_t>(n) * sizeof(float),
                                                 std::align_val_t(64)));
  return std::shared_ptr<float>(p, [](float* q) { ::operator delete[](q, std::align_val_t(64)); });
}

dnnl::primitive_attr MakeAttr(Epilogue epilogue, bool accumulate) {
  dnnl::post_ops ops;
  if (accumulate) ops.append_sum(1.0f);
  switch (epilogue) {
    case Epilogue::kNone: break;
    case Epilogue::kGeluErf: ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0, 0); break;
    case Epilogue::kGeluTanh: ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_tanh, 0, 0); break;
    case Epilogue::kRelu: ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0, 0); break;
    case Epilogue::kTanh: ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_tanh, 0, 0); break;
  }
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  return attr;
}

dnnl::matmul::primitive_desc LinearDesc(const dnnl::engine& eng, int64_t m, int64_t k, int64_t n,
                                        const dnnl::memory::desc& weights, Epilogue epilogue,
                                        bool accumulate) {
  dnnl::memory::desc src({m, k}, dt::f32, tag::ab);
  dnnl::memory::desc bias({1, n}, dt::f32, tag::ab);
  dnnl::memory::desc dst({m, n}, dt::f32, tag::ab);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, bias, dst),
                                      MakeAttr(epilogue, accumulate), eng);
}

}  // namespace

absl::StatusOr<Linear> Linear::Create(const DnnlContext& ctx, const float* weight,
                                      const float* bias, int64_t n, int64_t k, Epilogue epilogue,
                                      bool accumulate) {
  if (n <= 0 || k <= 0) return absl::InvalidArgumentError(absl::StrCat("bad linear shape ", n, "x", k));
  Linear lin;
  lin.n_ = n;
  lin.k_ = k;
  lin.epilogue_ = epilogue;
  lin.accumulate_ = accumulate;
  try {
    // The packed layout oneDNN picks does not depend on M (checked for every M up to 2048 on
    // bert-base shapes), so one packing serves all batch sizes.
    dnnl::memory::desc any({k, n}, dt::f32, tag::any);
    auto pd = LinearDesc(ctx.engine(), 64, k, n, any, epilogue, accumulate);
    lin.packed_desc_ = pd.weights_desc();
    lin.small_ = SmallGemmLayoutOf(lin.packed_desc_);
    lin.packed_floats_ = static_cast<int64_t>(lin.packed_desc_.get_size() / sizeof(float)) + 1;
    lin.packed_ = AllocFloats(lin.packed_floats_);
    // W is [N,K] row-major, i.e. the K x N matrix with strides {1, K}.
    dnnl::memory src({{k, n}, dt::f32, dims{1, k}}, ctx.engine(), const_cast<float*>(weight));
    dnnl::memory dst(lin.packed_desc_, ctx.engine(), lin.packed_.get());
    dnnl::stream s(ctx.engine());
    dnnl::reorder(src, dst).execute(s, src, dst);
    s.wait();
    lin.bias_ = AllocFloats(n);
    if (bias != nullptr) {
      std::memcpy(lin.bias_.get(), bias, static_cast<size_t>(n) * sizeof(float));
    } else {
      std::memset(lin.bias_.get(), 0, static_cast<size_t>(n) * sizeof(float));
    }
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("oneDNN could not pack a ", n, "x", k,
                                            " weight: ", e.what()));
  }
  return lin;
}

namespace {

// Distinct address naming the activation primitives of the small-M path in the cache.
constexpr char kSmallEpilogueTag = 0;

dnnl::algorithm EltwiseOf(Epilogue e) {
  switch (e) {
    case Epilogue::kGeluErf: return dnnl::algorithm::eltwise_gelu_erf;
    case Epilogue::kGeluTanh: return dnnl::algorithm::eltwise_gelu_tanh;
    case Epilogue::kRelu: return dnnl::algorithm::eltwise_relu;
    case Epilogue::kTanh: return dnnl::algorithm::eltwise_tanh;
    case Epilogue::kNone: break;
  }
  return dnnl::algorithm::undef;
}

}  // namespace

void Linear::Forward(PrimitiveCache& cache, const float* x, int64_t m, float* y) const {
  if (m <= 0) return;
  if (small_.has_value() && m <= kSmallGemmMaxRows) {
    SmallGemm(*small_, packed_.get(), bias_.get(), x, m, k_, n_, accumulate_, y);
    if (epilogue_ != Epilogue::kNone) {
      // The same oneDNN activation the matmul's post-op applies, in place on the few rows.
      dnnl::memory::desc md({m * n_}, dt::f32, tag::a);
      const auto& act = cache.Get(&kSmallEpilogueTag, m * n_, static_cast<int64_t>(epilogue_), [&] {
        dnnl::eltwise_forward::desc desc(dnnl::prop_kind::forward_inference, EltwiseOf(epilogue_),
                                         md, 0.0f, 0.0f);
        return dnnl::eltwise_forward(dnnl::eltwise_forward::primitive_desc(desc, cache.engine()));
      });
      dnnl::memory mem(md, cache.engine(), y);
      act.execute(cache.stream(), {{DNNL_ARG_SRC, mem}, {DNNL_ARG_DST, mem}});
      cache.stream().wait();
    }
    return;
  }
  const auto& prim = cache.Get(this, m, 0, [&] {
    return dnnl::matmul(LinearDesc(cache.engine(), m, k_, n_, packed_desc_, epilogue_, accumulate_));
  });
  const auto& eng = cache.engine();
  dnnl::memory src({{m, k_}, dt::f32, tag::ab}, eng, const_cast<float*>(x));
  dnnl::memory w(packed_desc_, eng, packed_.get());
  dnnl::memory b({{1, n_}, dt::f32, tag::ab}, eng, bias_.get());
  dnnl::memory dst({{m, n_}, dt::f32, tag::ab}, eng, y);
  prim.execute(cache.stream(), {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b},
                                {DNNL_ARG_DST, dst}});
  cache.stream().wait();
}

namespace {

// Distinct addresses that name the attention primitives in the cache.
constexpr char kScoresTag = 0, kContextTag = 0, kSoftmaxTag = 0;

// Q (or V) of a group as a 4-D view [G, H, L, dh] into the [G*L, 3d] QKV buffer.
dnnl::memory::desc HeadView(const AttentionShape& s, int64_t groups, int64_t length) {
  const int64_t row = 3 * s.hidden();
  return dnnl::memory::desc({groups, s.heads, length, s.head_dim}, dt::f32,
                            dims{length * row, s.head_dim, row, 1});
}

}  // namespace

void AttentionScores(PrimitiveCache& cache, const AttentionShape& s, const float* qkv,
                     int64_t groups, int64_t length, float scale, float* scores) {
  const int64_t row = 3 * s.hidden();
  dnnl::memory::desc q = HeadView(s, groups, length);
  // K^T as the weights [G, H, dh, L]: element (dh_i, l) sits at l*row + dh_i.
  dnnl::memory::desc kt({groups, s.heads, s.head_dim, length}, dt::f32,
                        dims{length * row, s.head_dim, 1, row});
  dnnl::memory::desc out({groups, s.heads, length, length}, dt::f32, tag::abcd);
  const auto& prim = cache.Get(&kScoresTag, groups, length, [&] {
    dnnl::primitive_attr attr;
    attr.set_output_scales(0, {scale});
    return dnnl::matmul(
        dnnl::matmul::primitive_desc(dnnl::matmul::desc(q, kt, out), attr, cache.engine()));
  });
  const auto& eng = cache.engine();
  float* base = const_cast<float*>(qkv);
  dnnl::memory mq(q, eng, base), mk(kt, eng, base + s.hidden()), mo(out, eng, scores);
  prim.execute(cache.stream(), {{DNNL_ARG_SRC, mq}, {DNNL_ARG_WEIGHTS, mk}, {DNNL_ARG_DST, mo}});
  cache.stream().wait();
}

void AttentionContext(PrimitiveCache& cache, const AttentionShape& s, const float* probs,
                      const float* qkv, int64_t groups, int64_t length, float* ctx) {
  const int64_t d = s.hidden();
  dnnl::memory::desc p({groups, s.heads, length, length}, dt::f32, tag::abcd);
  dnnl::memory::desc v = HeadView(s, groups, length);
  dnnl::memory::desc out({groups, s.heads, length, s.head_dim}, dt::f32,
                         dims{length * d, s.head_dim, d, 1});
  const auto& prim = cache.Get(&kContextTag, groups, length, [&] {
    return dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(p, v, out), cache.engine()));
  });
  const auto& eng = cache.engine();
  dnnl::memory mp(p, eng, const_cast<float*>(probs));
  dnnl::memory mv(v, eng, const_cast<float*>(qkv) + 2 * d);
  dnnl::memory mo(out, eng, ctx);
  prim.execute(cache.stream(), {{DNNL_ARG_SRC, mp}, {DNNL_ARG_WEIGHTS, mv}, {DNNL_ARG_DST, mo}});
  cache.stream().wait();
}

void SoftmaxRows(PrimitiveCache& cache, float* data, int64_t rows, int64_t length) {
  dnnl::memory::desc md({rows, length}, dt::f32, tag::ab);
  const auto& prim = cache.Get(&kSoftmaxTag, rows, length, [&] {
    dnnl::softmax_forward::desc desc(dnnl::prop_kind::forward_inference, md, 1);
    return dnnl::softmax_forward(dnnl::softmax_forward::primitive_desc(desc, cache.engine()));
  });
  dnnl::memory m(md, cache.engine(), data);
  prim.execute(cache.stream(), {{DNNL_ARG_SRC, m}, {DNNL_ARG_DST, m}});
  cache.stream().wait();
}

}  // namespace topserve::engine
