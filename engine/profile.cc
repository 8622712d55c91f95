#include "engine/profile.h"

namespace topserve::engine {

std::string_view OpName(Op op) {
  switch (op) {
    case Op::kEmbeddings: return "embeddings";
    case Op::kQkvGemm: return "gemm_qkv";
    case Op::kAttnOutGemm: return "gemm_attn_out";
    case Op::kFfnInGemm: return "gemm_ffn_in";
    case Op::kFfnOutGemm: return "gemm_ffn_out";
    case Op::kAttnScores: return "attn_scores";
    case Op::kSoftmax: return "softmax";
    case Op::kAttnContext: return "attn_context";
    case Op::kImportance: return "importance";
    case Op::kLayerNorm: return "layernorm";
    case Op::kActivation: return "activation";
    case Op::kQuantize: return "quantize";
    case Op::kDequantize: return "dequantize";
    case Op::kConvert: return "convert_bf16";
    case Op::kPruneGather: return "prune_gather";
    case Op::kHeads: return "heads";
    case Op::kOther: return "other";
    case Op::kCount: break;
  }
  return "?";
}

bool IsDenseGemm(Op op) {
  return op == Op::kQkvGemm || op == Op::kAttnOutGemm || op == Op::kFfnInGemm ||
         op == Op::kFfnOutGemm;
}

bool IsGemm(Op op) { return IsDenseGemm(op) || op == Op::kAttnScores || op == Op::kAttnContext; }

}  // namespace topserve::engine
