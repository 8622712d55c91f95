#include "engine/dnnl_ops.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <immintrin.h>
#include <omp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu_info.h"
#include "engine/kernels.h"
#include "engine/simd_math.h"

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
  auto* p = static_cast<float*>(
      ::operator new[](static_cast<size_t>(n) * sizeof(float), std::align_val_t(64)));
  return std::shared_ptr<float>(p, [](float* q) { ::operator delete[](q, std::align_val_t(64)); });
}

void AppendEpilogue(dnnl::post_ops& ops, Epilogue epilogue) {
  switch (epilogue) {
    case Epilogue::kNone: break;
    case Epilogue::kGeluErf:
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0, 0);
      break;
    case Epilogue::kGeluTanh:
      ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_tanh, 0, 0);
      break;
    case Epilogue::kRelu: ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0, 0); break;
    case Epilogue::kTanh: ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_tanh, 0, 0); break;
  }
}

dnnl::primitive_attr MakeAttr(Epilogue epilogue, bool accumulate) {
  dnnl::post_ops ops;
  if (accumulate) ops.append_sum(1.0f);
  AppendEpilogue(ops, epilogue);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  return attr;
}

// fp32 (src_type f32) or bf16 (src_type bf16: bf16 x bf16 weights, fp32 accumulation and dst).
dnnl::matmul::primitive_desc LinearDesc(const dnnl::engine& eng, int64_t m, int64_t k, int64_t n,
                                        const dnnl::memory::desc& weights, Epilogue epilogue,
                                        bool accumulate, dt src_type = dt::f32) {
  dnnl::memory::desc src({m, k}, src_type, tag::ab);
  dnnl::memory::desc bias({1, n}, dt::f32, tag::ab);
  dnnl::memory::desc dst({m, n}, dt::f32, tag::ab);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, bias, dst),
                                      MakeAttr(epilogue, accumulate), eng);
}

// int8: u8 activations x s8 weights -> f32, the per-output-channel weight scales as the output
// scales and nothing else: the per-row activation scales, the zero-point correction, the bias, the
// residual sum and the activation run in Linear::ForwardInt8's own pass (oneDNN 2.6 has no per-row
// scale its int8 brgemm accepts; a per-row binary post-op falls back to its reference kernel).
dnnl::matmul::primitive_desc Int8LinearDesc(const dnnl::engine& eng, int64_t m, int64_t k,
                                            int64_t n, const dnnl::memory::desc& weights,
                                            const float* w_scale) {
  dnnl::memory::desc src({m, k}, dt::u8, tag::ab);
  dnnl::memory::desc dst({m, n}, dt::f32, tag::ab);
  dnnl::primitive_attr attr;
  attr.set_output_scales(2, std::vector<float>(w_scale, w_scale + n));
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, dst), attr, eng);
}

// Weights are quantized to [-Int8WeightMax(), Int8WeightMax()]. Without VNNI, oneDNN's u8 x s8 path
// adds pairs of products in int16 (vpmaddubsw), which saturates at full range: 7-bit weights keep
// 2 x 255 x 63 below 32767 (ONNX Runtime's reduce_range does the same).
// TOPSERVE_SMALL_GEMM=0 leaves every row count to oneDNN, for A/B benchmarks of the few-row
// kernels in one binary.
bool SmallGemmEnabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("TOPSERVE_SMALL_GEMM");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

int Int8WeightMax() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  const bool vnni = isa == dnnl::cpu_isa::avx512_core_vnni ||
                    isa == dnnl::cpu_isa::avx512_core_bf16 ||
                    isa == dnnl::cpu_isa::avx512_core_amx || isa == dnnl::cpu_isa::avx2_vnni;
  return vnni ? 127 : 63;
}

}  // namespace

absl::StatusOr<Linear> Linear::Create(const DnnlContext& ctx, const float* weight,
                                      const float* bias, int64_t n, int64_t k, Epilogue epilogue,
                                      bool accumulate, Precision precision) {
  if (n <= 0 || k <= 0)
    return absl::InvalidArgumentError(absl::StrCat("bad linear shape ", n, "x", k));
  Linear lin;
  lin.n_ = n;
  lin.k_ = k;
  lin.epilogue_ = epilogue;
  lin.accumulate_ = accumulate;
  lin.precision_ = precision;
  try {
    // W is [N,K] row-major, i.e. the K x N matrix with strides {1, K}; it is packed once into the
    // layout oneDNN picks, which does not depend on M (checked for every M up to 2048 on bert-base
    // shapes), so one packing serves all batch sizes.
    std::vector<int8_t> q;
    dnnl::memory::desc src_desc({k, n}, dt::f32, dims{1, k});
    void* src_data = const_cast<float*>(weight);
    if (precision == Precision::kInt8) {
      // Per output channel j: scale_j = max |w_j| / wmax, w_q = round(w / scale_j). wc_j = scale_j
      // x the sum of the quantized column, for the activations' zero point.
      const int wmax = Int8WeightMax();
      lin.w_scale_ = AllocFloats(n);
      lin.w_colsum_ = AllocFloats(n);
      q.resize(static_cast<size_t>(n * k));
      for (int64_t j = 0; j < n; ++j) {
        const float* row = weight + j * k;
        float amax = 0.0f;
        for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
        const float scale = amax > 0.0f ? amax / static_cast<float>(wmax) : 1.0f;
        int64_t sum = 0;
        for (int64_t i = 0; i < k; ++i) {
          const long v = std::lround(row[i] / scale);
          const int8_t qv = static_cast<int8_t>(std::clamp<long>(v, -wmax, wmax));
          q[static_cast<size_t>(j * k + i)] = qv;
          sum += qv;
        }
        lin.w_scale_.get()[j] = scale;
        lin.w_colsum_.get()[j] = scale * static_cast<float>(sum);
      }
      dnnl::memory::desc any({k, n}, dt::s8, tag::any);
      lin.packed_desc_ =
          Int8LinearDesc(ctx.engine(), 64, k, n, any, lin.w_scale_.get()).weights_desc();
      if (SmallGemmEnabled()) lin.small_ = SmallGemmInt8LayoutOf(lin.packed_desc_);
      src_desc = dnnl::memory::desc({k, n}, dt::s8, dims{1, k});
      src_data = q.data();
    } else if (precision == Precision::kBfloat16) {
      // Rounded to bf16 (nearest even) by the reorder that packs them.
      dnnl::memory::desc any({k, n}, dt::bf16, tag::any);
      lin.packed_desc_ =
          LinearDesc(ctx.engine(), 64, k, n, any, epilogue, accumulate, dt::bf16).weights_desc();
    } else {
      dnnl::memory::desc any({k, n}, dt::f32, tag::any);
      lin.packed_desc_ =
          LinearDesc(ctx.engine(), 64, k, n, any, epilogue, accumulate).weights_desc();
      if (SmallGemmEnabled()) lin.small_ = SmallGemmLayoutOf(lin.packed_desc_);
    }
    lin.packed_floats_ = static_cast<int64_t>(lin.packed_desc_.get_size() / sizeof(float)) + 1;
    lin.packed_ = AllocFloats(lin.packed_floats_);
    dnnl::memory src(src_desc, ctx.engine(), src_data);
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
    return absl::InternalError(absl::StrCat("oneDNN could not pack a ", n, "x", k, " ",
                                            std::string(PrecisionName(precision)),
                                            " weight: ", e.what()));
  }
  return lin;
}

std::string_view PrecisionName(Precision precision) {
  switch (precision) {
    case Precision::kInt8: return "int8";
    case Precision::kBfloat16: return "bf16";
    case Precision::kFloat32: break;
  }
  return "fp32";
}

std::optional<Precision> PrecisionFromName(std::string_view name) {
  if (name == "fp32") return Precision::kFloat32;
  if (name == "int8") return Precision::kInt8;
  if (name == "bf16") return Precision::kBfloat16;
  return std::nullopt;
}

bool CpuHasNativeBf16() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

std::string_view DnnlIsaName() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic: return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: break;
  }
  return "other";
}

namespace {

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

namespace {

// The int8 GEMM runs on chunks of rows whose fp32 output (rows x n floats) fits in about this many
// bytes, and the output pass follows each chunk while it is still in L2: on a large batch the
// whole [m x n] fp32 output would go to memory and come back. TOPSERVE_INT8_CHUNK_KB overrides
// it, for benchmarks; 0 turns chunking off.
int64_t Int8ChunkBytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("TOPSERVE_INT8_CHUNK_KB");
    return env != nullptr ? std::max<int64_t>(0, std::atoll(env)) * 1024 : int64_t{1536} * 1024;
  }();
  return bytes;
}

}  // namespace

void Linear::ForwardQuantized(PrimitiveCache& cache, const QuantizedRows& in, int64_t m,
                              float* scratch, const Int8Output& out) const {
  const int64_t k = k_, n = n_;
  const int64_t bytes = Int8ChunkBytes();
  // At least 64 rows per chunk: the GEMM re-reads the packed weights once per chunk.
  const int64_t chunk =
      bytes == 0 ? m : std::max<int64_t>(64, bytes / (n * static_cast<int64_t>(sizeof(float))));
  // The fp32 GEMM output goes straight into y's rows when nothing else needs y's old contents,
  // else into `scratch`, reused by every chunk (so it stays in cache).
  const bool in_place = out.y != nullptr && !accumulate_;
  const auto& eng = cache.engine();
  const dnnl::memory w(packed_desc_, eng, packed_.get());
  const Int8Rows rows_of{.in = &in,
                         .w_colsum = w_colsum_.get(),
                         .bias = bias_.get(),
                         .epilogue = epilogue_,
                         .accumulate = accumulate_,
                         .m = m,
                         .n = n};
  OpProfile* prof = cache.profile();
  for (int64_t begin = 0; begin < m; begin += chunk) {
    const int64_t rows = std::min(chunk, m - begin);
    float* d = in_place ? out.y + begin * n : scratch;
    // d[i, j] = w_scale[j] x sum_c q[i, c] w_q[c, j]: a few rows on SmallGemmInt8 (the same
    // floats, bit for bit; engine/small_gemm.h says up to how many), more on oneDNN's matmul.
    if (small_.has_value() && rows <= SmallGemmInt8MaxRows()) {
      SmallGemmInt8(*small_, reinterpret_cast<const int8_t*>(packed_.get()), w_scale_.get(),
                    in.q + begin * k, rows, k, n, d);
    } else {
      const auto& prim = cache.Get(this, {rows, 1}, [&] {
        return dnnl::matmul(Int8LinearDesc(eng, rows, k, n, packed_desc_, w_scale_.get()));
      });
      dnnl::memory src({{rows, k}, dt::u8, tag::ab}, eng, in.q + begin * k);
      dnnl::memory dst({{rows, n}, dt::f32, tag::ab}, eng, d);
      prim.execute(cache.stream(),
                   {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst}});
      cache.stream().wait();
    }
    // Then the output pass over the chunk's rows while they are in L2 (engine/int8_rows.h).
    ScopedOp timed(prof, Op::kDequantize);
    FinishInt8Rows(rows_of, d, begin, rows, out);
  }
}

void Linear::ForwardInt8(PrimitiveCache& cache, const float* x, int64_t m, float* y) const {
  // Each row i (one token) is quantized with its own range, widened to include 0 so that 0 is
  // exact. Per row, not per call: a token's result never depends on which other tokens share the
  // batch (the int32 accumulation is exact), so batching cannot change a sequence's logits or its
  // pruning decisions.
  const int64_t k = k_, n = n_;
  QuantizedRows in;
  in.q = cache.Bytes(static_cast<size_t>(m * k));
  in.scale = cache.Floats(static_cast<size_t>(2 * m + (accumulate_ ? m * n : 0)));
  in.shift = in.scale + m;
  {
    ScopedOp timed(cache.profile(), Op::kQuantize);
    QuantizeRows(x, m, k, in);
  }
  ForwardQuantized(cache, in, m, accumulate_ ? in.shift + m : nullptr, Int8Output{.y = y});
}

void Linear::ApplyEpilogue(PrimitiveCache& cache, float* y, int64_t m) const {
  ScopedOp timed(cache.profile(), Op::kActivation);
  // The same oneDNN activation the fp32 matmul's post-op applies, in place.
  dnnl::memory::desc md({m * n_}, dt::f32, tag::a);
  const auto& act = cache.Get(
      PrimitiveCache::Shared::kActivation, {m * n_, static_cast<int64_t>(epilogue_)}, [&] {
        dnnl::eltwise_forward::desc desc(dnnl::prop_kind::forward_inference, EltwiseOf(epilogue_),
                                         md, 0.0f, 0.0f);
        return dnnl::eltwise_forward(dnnl::eltwise_forward::primitive_desc(desc, cache.engine()));
      });
  dnnl::memory mem(md, cache.engine(), y);
  act.execute(cache.stream(), {{DNNL_ARG_SRC, mem}, {DNNL_ARG_DST, mem}});
  cache.stream().wait();
}

void Linear::ForwardBf16(PrimitiveCache& cache, const float* x, int64_t m, float* y) const {
  const int64_t k = k_;
  auto* xb = reinterpret_cast<uint16_t*>(cache.Bytes(static_cast<size_t>(m * k) * 2));
  {
    ScopedOp timed(cache.profile(), Op::kConvert);
    ConvertToBf16Planes(x, m, k, 1, xb);
  }
  RunMatmul(cache, xb, true, m, y);
}

void Linear::RunMatmul(PrimitiveCache& cache, const void* x, bool bf16, int64_t m, float* y) const {
  const dt type = bf16 ? dt::bf16 : dt::f32;
  const auto& prim = cache.Get(this, {m, bf16 ? 2 : 0}, [&] {
    return dnnl::matmul(
        LinearDesc(cache.engine(), m, k_, n_, packed_desc_, epilogue_, accumulate_, type));
  });
  const auto& eng = cache.engine();
  dnnl::memory src({{m, k_}, type, tag::ab}, eng, const_cast<void*>(x));
  dnnl::memory w(packed_desc_, eng, packed_.get());
  dnnl::memory b({{1, n_}, dt::f32, tag::ab}, eng, bias_.get());
  dnnl::memory dst({{m, n_}, dt::f32, tag::ab}, eng, y);
  prim.execute(
      cache.stream(),
      {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, dst}});
  cache.stream().wait();
}

void Linear::Forward(PrimitiveCache& cache, const float* x, int64_t m, float* y) const {
  if (m <= 0) return;
  if (precision_ == Precision::kInt8) return ForwardInt8(cache, x, m, y);
  if (precision_ == Precision::kBfloat16) return ForwardBf16(cache, x, m, y);
  if (small_.has_value() && m <= kSmallGemmMaxRows) {
    SmallGemm(*small_, packed_.get(), bias_.get(), x, m, k_, n_, accumulate_, y);
    if (epilogue_ != Epilogue::kNone) ApplyEpilogue(cache, y, m);
    return;
  }
  RunMatmul(cache, x, false, m, y);
}

namespace {

// Q (or V) of a group as a 4-D view [G, H, L, dh] of rows `row_stride` apart.
dnnl::memory::desc HeadView(const AttentionShape& s, const HeadRows& r, int64_t groups,
                            int64_t length) {
  return dnnl::memory::desc({groups, s.heads, length, s.head_dim}, r.bf16 ? dt::bf16 : dt::f32,
                            dims{length * r.row_stride, s.head_dim, r.row_stride, 1});
}

// Everything an attention product's descriptors depend on: the group's shape, the heads, the row
// stride and the data type.
PrimitiveCache::KeyInts AttentionKey(const AttentionShape& s, const HeadRows& r, int64_t groups,
                                     int64_t length) {
  return {groups, length, r.row_stride * 2 + (r.bf16 ? 1 : 0), s.heads, s.head_dim};
}

void* Mutable(const void* p) { return const_cast<void*>(p); }

}  // namespace

Bf16Probe ProbeBf16Matmul(const DnnlContext& ctx, int64_t m, int64_t k, int64_t n, int threads) {
  // Values of BERT-like magnitude; what they are does not change the time.
  std::vector<float> w(static_cast<size_t>(n * k)), b(static_cast<size_t>(n), 0.0f),
      x(static_cast<size_t>(m * k)), y(static_cast<size_t>(m * n));
  for (size_t i = 0; i < w.size(); ++i)
    w[i] = 0.02f * static_cast<float>(static_cast<int>(i % 17) - 8);
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = static_cast<float>(static_cast<int>(i % 13) - 6) * 0.1f;
  auto fp32 =
      Linear::Create(ctx, w.data(), b.data(), n, k, Epilogue::kNone, false, Precision::kFloat32);
  auto bf16 =
      Linear::Create(ctx, w.data(), b.data(), n, k, Epilogue::kNone, false, Precision::kBfloat16);
  Bf16Probe probe;
  if (!fp32.ok() || !bf16.ok())
    return probe;  // unreachable for valid shapes; reads as "not faster"
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(threads);
  PrimitiveCache cache(ctx);
  auto time = [&](const Linear& lin) {
    const auto start = std::chrono::steady_clock::now();
    lin.Forward(cache, x.data(), m, y.data());
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
        .count();
  };
  time(*fp32);
  time(*bf16);  // warm-up: primitive creation, first touch
  probe.fp32_ms = probe.bf16_ms = 1e300;
  for (int r = 0; r < 3; ++r) {
    probe.fp32_ms = std::min(probe.fp32_ms, time(*fp32));
    probe.bf16_ms = std::min(probe.bf16_ms, time(*bf16));
  }
  omp_set_num_threads(saved_threads);
  return probe;
}

void ConvertToBf16(const float* x, int64_t n, uint16_t* out) {
  constexpr int64_t kChunk = 4096;
  const bool native = CpuHasNativeBf16();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    RowToBf16Planes(x + begin, 0, 1, len, 1, native, out + begin);
  }
}

void ConvertToBf16Planes(const float* x, int64_t m, int64_t n, int64_t planes, uint16_t* out) {
  const bool native = CpuHasNativeBf16();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) RowToBf16Planes(x + i * n, i, m, n, planes, native, out);
}

void AttentionScores(PrimitiveCache& cache, const AttentionShape& s, const HeadRows& r,
                     int64_t groups, int64_t length, float* scores) {
  const int64_t rs = r.row_stride;
  dnnl::memory::desc q = HeadView(s, r, groups, length);
  // K^T as the weights [G, H, dh, L]: element (dh_i, l) sits at l*rs + dh_i.
  dnnl::memory::desc kt({groups, s.heads, s.head_dim, length}, r.bf16 ? dt::bf16 : dt::f32,
                        dims{length * rs, s.head_dim, 1, rs});
  dnnl::memory::desc out({groups, s.heads, length, length}, dt::f32, tag::abcd);
  // No output scale: with one, oneDNN 2.6's bf16 gemm:jit ran 6x slower on a Sapphire Rapids (4.1
  // vs 0.67 ms at 8 x 12 x 128 x 64), so EncoderLayer folds 1/sqrt(dh) into W_q and b_q instead.
  const auto& prim =
      cache.Get(PrimitiveCache::Shared::kScores, AttentionKey(s, r, groups, length), [&] {
        return dnnl::matmul(
            dnnl::matmul::primitive_desc(dnnl::matmul::desc(q, kt, out), cache.engine()));
      });
  const auto& eng = cache.engine();
  dnnl::memory mq(q, eng, Mutable(r.q)), mk(kt, eng, Mutable(r.k)), mo(out, eng, scores);
  prim.execute(cache.stream(), {{DNNL_ARG_SRC, mq}, {DNNL_ARG_WEIGHTS, mk}, {DNNL_ARG_DST, mo}});
  cache.stream().wait();
}

void AttentionContext(PrimitiveCache& cache, const AttentionShape& s, const void* probs,
                      const HeadRows& r, int64_t groups, int64_t length, float* ctx) {
  const int64_t d = s.hidden();
  dnnl::memory::desc p({groups, s.heads, length, length}, r.bf16 ? dt::bf16 : dt::f32, tag::abcd);
  dnnl::memory::desc v = HeadView(s, r, groups, length);
  dnnl::memory::desc out({groups, s.heads, length, s.head_dim}, dt::f32,
                         dims{length * d, s.head_dim, d, 1});
  const auto& prim =
      cache.Get(PrimitiveCache::Shared::kContext, AttentionKey(s, r, groups, length), [&] {
        return dnnl::matmul(
            dnnl::matmul::primitive_desc(dnnl::matmul::desc(p, v, out), cache.engine()));
      });
  const auto& eng = cache.engine();
  dnnl::memory mp(p, eng, Mutable(probs)), mv(v, eng, Mutable(r.v)), mo(out, eng, ctx);
  prim.execute(cache.stream(), {{DNNL_ARG_SRC, mp}, {DNNL_ARG_WEIGHTS, mv}, {DNNL_ARG_DST, mo}});
  cache.stream().wait();
}

void SoftmaxRows(PrimitiveCache& cache, float* data, int64_t rows, int64_t length) {
  dnnl::memory::desc md({rows, length}, dt::f32, tag::ab);
  const auto& prim = cache.Get(PrimitiveCache::Shared::kSoftmax, {rows, length}, [&] {
    dnnl::softmax_forward::desc desc(dnnl::prop_kind::forward_inference, md, 1);
    return dnnl::softmax_forward(dnnl::softmax_forward::primitive_desc(desc, cache.engine()));
  });
  dnnl::memory m(md, cache.engine(), data);
  prim.execute(cache.stream(), {{DNNL_ARG_SRC, m}, {DNNL_ARG_DST, m}});
  cache.stream().wait();
}

}  // namespace topserve::engine
