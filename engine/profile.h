// Per-op wall time of engine runs, for `engine_bench --profile`. A Workspace with a profile
// attached records every op of its runs; without one (the server), a ScopedOp costs one branch.
//
// Times are exclusive: an op timed inside another (the int8 quantization inside a GEMM's Linear)
// is subtracted from the outer one, so the ops add up to the run's time.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string_view>

namespace topserve::engine {

enum class Op {
  kEmbeddings,
  kQkvGemm,      // Q, K, V projections (one fused GEMM)
  kAttnOutGemm,  // attention output projection (+ residual)
  kFfnInGemm,    // FFN up projection (+ its activation when fused into the GEMM)
  kFfnOutGemm,   // FFN down projection (+ residual)
  kAttnScores,   // Q K^T per equal-length group
  kSoftmax,
  kAttnContext,  // P V
  kImportance,   // attention received per token (pruning layers only)
  kLayerNorm,
  kActivation,   // GELU / ReLU / tanh run as a pass of their own
  kQuantize,     // int8: activations to u8 per token
  kDequantize,   // int8: scales, zero point, bias, residual
  kConvert,      // bf16: activations to bf16
  kPruneGather,  // pruning: top-k and the gather that regroups the batch
  kHeads,        // pooler + classifier, or the QA projection
  kOther,
  kCount,
};

std::string_view OpName(Op op);
// The dense-layer GEMMs (the four projections of each encoder layer).
bool IsDenseGemm(Op op);
// Any matrix product: the dense GEMMs and the attention products.
bool IsGemm(Op op);

class OpProfile {
 public:
  void Clear() {
    seconds_.fill(0);
    calls_.fill(0);
  }
  double seconds(Op op) const { return seconds_[static_cast<size_t>(op)]; }
  int64_t calls(Op op) const { return calls_[static_cast<size_t>(op)]; }
  double total() const {
    double t = 0;
    for (double s : seconds_) t += s;
    return t;
  }

 private:
  friend class ScopedOp;
  std::array<double, static_cast<size_t>(Op::kCount)> seconds_{};
  std::array<int64_t, static_cast<size_t>(Op::kCount)> calls_{};
  Op active_ = Op::kOther;
  bool nested_ = false;
};

// Times its scope as `op` on `profile` (a no-op when profile is null).
class ScopedOp {
 public:
  ScopedOp(OpProfile* profile, Op op) : profile_(profile), op_(op) {
    if (profile_ == nullptr) return;
    parent_ = profile_->active_;
    parent_timed_ = profile_->nested_;
    profile_->active_ = op;
    profile_->nested_ = true;
    start_ = std::chrono::steady_clock::now();
  }
  ~ScopedOp() {
    if (profile_ == nullptr) return;
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    profile_->seconds_[static_cast<size_t>(op_)] += s;
    profile_->calls_[static_cast<size_t>(op_)] += 1;
    if (parent_timed_) profile_->seconds_[static_cast<size_t>(parent_)] -= s;
    profile_->active_ = parent_;
    profile_->nested_ = parent_timed_;
  }
  ScopedOp(const ScopedOp&) = delete;
  ScopedOp& operator=(const ScopedOp&) = delete;

 private:
  OpProfile* profile_;
  Op op_;
  Op parent_ = Op::kOther;
  bool parent_timed_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace topserve::engine
