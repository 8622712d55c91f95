// oneDNN-backed dense operations. Weights are packed once at load into the layout oneDNN's
// brgemm kernels want; primitives for each row count M are created on first use and cached per
// Workspace (creation costs ~25-50 us, a cache hit ~50 ns).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <dnnl.hpp>

#include "absl/status/statusor.h"
#include "engine/int8_rows.h"
#include "engine/profile.h"
#include "engine/small_gemm.h"

namespace topserve::engine {

// Empties oneDNN's process-wide primitive cache. oneDNN 2.6 does not key that cache on the thread
// count, so a primitive created under N OpenMP threads is handed back, still split N ways, to a
// later creation under M threads. A process that switches thread counts (benchmarks comparing
// 1 and 2 threads) calls this between configurations; the server uses one count per process.
void FlushDnnlPrimitiveCache();

// One oneDNN engine for the process' CPU; shared, immutable after creation.
class DnnlContext {
 public:
  DnnlContext();
  const dnnl::engine& engine() const { return engine_; }

 private:
  dnnl::engine engine_;
};

// Arithmetic of a dense layer. kInt8 is dynamic quantization: weights int8 per output channel
// (symmetric, fixed at load), activations uint8 per row (token) with the row's own scale and zero
// point, int32 accumulation (VNNI), result dequantized to fp32. ONNX Runtime's quantize_dynamic
// uses one activation scale per call instead; per row costs one more pass over the output but keeps
// every token's result independent of its batch-mates. Not exact: outputs differ from fp32 by the
// quantization error (tests bound it); the budget planner and the FLOPs reports are unchanged.
//
// kBfloat16: weights rounded to bf16 and packed at load, activations rounded to bf16 per call, fp32
// accumulation and output (bias and activation fused in the matmul, as fp32's are): AMX on Xeons,
// AVX512-BF16 on Zen 4. Needs a CPU with native bf16 (CpuHasNativeBf16); BertModel::Load falls back
// to fp32 on others, saying so.
enum class Precision { kFloat32, kInt8, kBfloat16 };

// True when oneDNN runs bf16 matmuls natively here (avx512_core_bf16 or AMX), not emulated.
bool CpuHasNativeBf16();
// bf16 against fp32 matmul speed on this CPU, measured rather than assumed: oneDNN 2.6 runs bf16
// natively wherever AVX512-BF16 exists, but without AMX that is not always faster. On a Zen 4 it
// ran our bert-base layers 2x faster than fp32; on an Intel Xeon (family 6 model 207) whose AMX the
// hypervisor hides, its avx512_core_bf16 kernels ran them at 0.56x fp32's speed (VDPBF16PS issues
// on one port there, fp32 FMAs on two).
struct Bf16Probe {
  double fp32_ms = 0.0, bf16_ms = 0.0;  // best of the timed runs of one m x k x n matmul
  bool bf16_faster() const { return bf16_ms < fp32_ms; }
};
// Times an m x k x n matmul (random weights, packed as Linear packs them) in fp32 and bf16,
// alternately, on `threads` OpenMP threads; best of 3 each after a warm-up. Needs native bf16.
// ~20 ms for bert-base's FFN at m = 128.
Bf16Probe ProbeBf16Matmul(const DnnlContext& ctx, int64_t m, int64_t k, int64_t n, int threads);
// The instruction set oneDNN dispatches its kernels for (dnnl::get_effective_cpu_isa()), by name.
std::string_view DnnlIsaName();

// "fp32" / "int8" / "bf16": the names the config, the CLIs and ModelInfo use.
std::string_view PrecisionName(Precision precision);
std::optional<Precision> PrecisionFromName(std::string_view name);  // nullopt for any other name

// Per-thread execution state: a stream and the primitive cache. Not thread-safe; one per worker.
class PrimitiveCache {
 public:
  explicit PrimitiveCache(const DnnlContext& ctx);
  dnnl::stream& stream() { return stream_; }
  // Scratch owned by this cache (one per worker), grown on demand, never shrunk: the int8 path's
  // quantized activations, per-row scales and (accumulating layers) matmul output.
  uint8_t* Bytes(size_t n) {
    if (bytes_.size() < n) bytes_.resize(n);
    return bytes_.data();
  }
  float* Floats(size_t n) {
    if (floats_.size() < n) floats_.resize(n);
    return floats_.data();
  }
  const dnnl::engine& engine() const { return engine_; }
  // Where the ops run with this cache record their time (engine/profile.h); null = not profiled.
  OpProfile* profile() const { return profile_; }
  void set_profile(OpProfile* profile) { profile_ = profile; }

  // The primitives shared by every layer, cached by kind and shape (a Linear's own primitives are
  // cached under its address).
  enum class Shared : int { kNone = 0, kScores, kContext, kSoftmax, kActivation };

  // Returns the cached primitive for (owner, key) or creates it with make(). The key holds every
  // value the primitive's descriptors depend on (up to kKeyInts, the rest zero), so two shapes
  // never share an entry.
  static constexpr size_t kKeyInts = 5;
  using KeyInts = std::array<int64_t, kKeyInts>;
  template <typename Make>
  const dnnl::primitive& Get(const void* owner, const KeyInts& key, Make&& make) {
    return Lookup(Key{owner, Shared::kNone, key}, std::forward<Make>(make));
  }
  template <typename Make>
  const dnnl::primitive& Get(Shared kind, const KeyInts& key, Make&& make) {
    return Lookup(Key{nullptr, kind, key}, std::forward<Make>(make));
  }
  size_t size() const { return cache_.size(); }

 private:
  struct Key {
    const void* owner;
    Shared kind;
    KeyInts ints;
    bool operator==(const Key&) const = default;
  };
  template <typename Make>
  const dnnl::primitive& Lookup(const Key& key, Make&& make) {
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    if (cache_.size() >= kMaxEntries) cache_.clear();  // bounded; shapes repeat, so this is rare
    return cache_.emplace(key, make()).first->second;
  }
  struct KeyHash {
    size_t operator()(const Key& k) const {
      size_t h = std::hash<const void*>()(k.owner) ^ static_cast<size_t>(k.kind);
      for (int64_t v : k.ints)
        h ^= std::hash<int64_t>()(v) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
      return h;
    }
  };
  static constexpr size_t kMaxEntries = 4096;
  dnnl::engine engine_;
  dnnl::stream stream_;
  OpProfile* profile_ = nullptr;
  std::vector<uint8_t> bytes_;
  std::vector<float> floats_;
  std::unordered_map<Key, dnnl::primitive, KeyHash> cache_;
};

// y[M,N] = epilogue(x[M,K] W^T + b) (+ y when accumulate). W is given as [N,K] row-major (the
// PyTorch/HF Linear layout) and packed at construction.
class Linear {
 public:
  Linear() = default;
  static absl::StatusOr<Linear> Create(const DnnlContext& ctx, const float* weight,
                                       const float* bias, int64_t n, int64_t k, Epilogue epilogue,
                                       bool accumulate, Precision precision = Precision::kFloat32);

  // x: M rows of K floats (row stride K); y: M rows of N floats (row stride N). Up to
  // kSmallGemmMaxRows rows run on SmallGemm (engine/small_gemm.h) when it can read the packed
  // weights, more on oneDNN's matmul.
  void Forward(PrimitiveCache& cache, const float* x, int64_t m, float* y) const;

  // int8 layers only: `in` holds this layer's quantized input (from QuantizeRows or another
  // layer's output); `out` says where each result row goes, all in the pass that dequantizes it
  // (Int8Output). `scratch` is [m x n] floats, used when out.y is null or the layer accumulates.
  void ForwardQuantized(PrimitiveCache& cache, const QuantizedRows& in, int64_t m, float* scratch,
                        const Int8Output& out) const;

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  Precision precision() const { return precision_; }
  // Whether up to kSmallGemmMaxRows rows run on our few-row kernel (engine/small_gemm.h).
  bool has_small_gemm() const { return small_.has_value(); }

 private:
  void ForwardInt8(PrimitiveCache& cache, const float* x, int64_t m, float* y) const;
  void ForwardBf16(PrimitiveCache& cache, const float* x, int64_t m, float* y) const;
  // oneDNN's matmul on m rows of fp32 or bf16 (x) with bias and the fused post-ops, into y.
  void RunMatmul(PrimitiveCache& cache, const void* x, bool bf16, int64_t m, float* y) const;
  // The epilogue's activation in place on m rows (paths that cannot fuse it into the matmul).
  void ApplyEpilogue(PrimitiveCache& cache, float* y, int64_t m) const;

  int64_t n_ = 0, k_ = 0;
  Epilogue epilogue_ = Epilogue::kNone;
  bool accumulate_ = false;
  dnnl::memory::desc packed_desc_;
  std::shared_ptr<float> packed_;  // owned buffer behind the packed weights
  std::shared_ptr<float> bias_;
  int64_t packed_floats_ = 0;
  // Set when SmallGemm (fp32) or SmallGemmInt8 (int8) can read packed_.
  std::optional<SmallGemmLayout> small_;
  // kInt8: packed_ holds int8 weights (packed_desc_ is s8); per output channel, the weight scale
  // and scale x the sum of the quantized weights (for the activations' zero point).
  Precision precision_ = Precision::kFloat32;
  std::shared_ptr<float> w_scale_;
  std::shared_ptr<float> w_colsum_;
};

// Rounds n floats to bf16 (nearest even), in parallel; AVX512-BF16 where the CPU has it.
void ConvertToBf16(const float* x, int64_t n, uint16_t* out);
// The same for m rows of n floats, written as `planes` planes [m x n/planes] (Int8Output's
// bf16_planes layout).
void ConvertToBf16Planes(const float* x, int64_t m, int64_t n, int64_t planes, uint16_t* out);

// Batched attention over a group of G sequences of equal length L. Q, K and V are [G*L, d] matrices
// (heads of width dh side by side) whose rows are `row_stride` elements apart: 3d when they
// interleave in one [G*L, 3d] QKV buffer, d when each is a plane of its own (which lets oneDNN 2.6
// pick its brgemm kernels, AMX among them, instead of gemm:jit: 2x faster in bf16 on a Sapphire
// Rapids).
//   scores[g,h] = Q[g,h] K[g,h]^T           (G x H x L x L, dense; 1/sqrt(dh) is already in Q)
//   context[g,h] = P[g,h] V[g,h]            (written into ctx [G*L, d] at columns h*dh)
// One oneDNN call per product for the whole group. `bf16`: Q, K, V (and probs) are bf16
// (uint16_t) and the products run in bf16 with fp32 accumulation; scores and context are fp32
// either way.
struct AttentionShape {
  int64_t heads = 0, head_dim = 0;
  int64_t hidden() const { return heads * head_dim; }
};
struct HeadRows {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t row_stride = 0;  // elements from one token's row to the next
  bool bf16 = false;
};
void AttentionScores(PrimitiveCache& cache, const AttentionShape& shape, const HeadRows& qkv,
                     int64_t groups, int64_t length, float* scores);
void AttentionContext(PrimitiveCache& cache, const AttentionShape& shape, const void* probs,
                      const HeadRows& qkv, int64_t groups, int64_t length, float* ctx);
// In-place softmax over the last axis of rows x length.
void SoftmaxRows(PrimitiveCache& cache, float* data, int64_t rows, int64_t length);

}  // namespace topserve::engine
