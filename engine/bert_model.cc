#include "engine/bert_model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/cpu_info.h"
#include "engine/kernels.h"
#include "engine/rows.h"
#include "engine/safetensors.h"

namespace topserve::engine {
namespace {}  // namespace

Workspace::Workspace(const BertModel& model) : Workspace(model, 0) {}

Workspace::Workspace(const BertModel& model, int threads)
    : cache_(model.dnnl()), threads_(threads > 0 ? threads : model.num_threads()) {}

absl::StatusOr<std::unique_ptr<BertModel>> BertModel::Load(const std::string& dir,
                                                           const EngineOptions& options) {
  std::unique_ptr<BertModel> m(new BertModel());
  m->dir_ = dir;
  ASSIGN_OR_RETURN(m->config_, LoadBertConfig(dir + "/config.json"));
  ASSIGN_OR_RETURN(m->tokenizer_config_, LoadTokenizerConfig(dir + "/tokenizer_config.json"));
  ASSIGN_OR_RETURN(m->tokenizer_, Tokenizer::LoadFromModelDir(dir, m->tokenizer_config_));
  if (static_cast<int64_t>(m->tokenizer_->vocab_size()) > m->config_.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": the tokenizer has ", m->tokenizer_->vocab_size(),
                     " tokens but config.json vocab_size is ", m->config_.vocab_size));
  }
  // The weights back the config's sizes before anything is sized by them (the schedule, the
  // planner, the layers): a config claiming 1e9 layers stops here, at once.
  ASSIGN_OR_RETURN(const std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::Open(dir + "/model.safetensors"));
  RETURN_IF_ERROR(ValidateBertTensors(*file, m->config_));
  m->shape_ = ModelShape::FromConfig(m->config_);
  m->num_threads_ = options.num_threads > 0 ? options.num_threads : AvailableCpus();
  m->precision_ = options.precision;
  if (m->precision_ == Precision::kBfloat16 && !CpuHasNativeBf16()) {
    // Emulated bf16 would be slower than fp32 and less exact: run fp32, and say so once per load.
    std::fprintf(
        stderr,
        "topserve: %s: precision bf16 needs a CPU with AVX512-BF16 or AMX (oneDNN sees %s); "
        "running fp32\n",
        dir.c_str(), std::string(DnnlIsaName()).c_str());
    m->precision_ = Precision::kFloat32;
  }
  if (m->precision_ != Precision::kFloat32 && CpuHasNativeBf16() &&
      options.bf16_kernels != Bf16Kernels::kNever) {
    m->uses_bf16_ = true;
    if (options.bf16_kernels == Bf16Kernels::kIfFaster) {
      // One FFN-shaped matmul, at the row count of a typical batch slice.
      m->bf16_probe_ = ProbeBf16Matmul(m->dnnl_, 128, m->config_.hidden_size,
                                       m->config_.intermediate_size, m->num_threads_);
      m->uses_bf16_ = m->bf16_probe_->bf16_faster();
    }
  }
  if (m->precision_ == Precision::kBfloat16 && !m->uses_bf16_) {
    // The measurement lost (said once per load), or the caller asked for Bf16Kernels::kNever.
    if (m->bf16_probe_.has_value()) {
      std::fprintf(
          stderr,
          "topserve: %s: precision bf16: this CPU's bf16 matmul ran slower than fp32 (%.2f vs "
          "%.2f ms, oneDNN %s); running fp32\n",
          dir.c_str(), m->bf16_probe_->bf16_ms, m->bf16_probe_->fp32_ms,
          std::string(DnnlIsaName()).c_str());
    }
    m->precision_ = Precision::kFloat32;
  }
  m->max_length_ =
      std::min(m->config_.max_position_embeddings, m->tokenizer_config_.model_max_length);
  ASSIGN_OR_RETURN(PruningSchedule schedule,
                   PruningSchedule::ForModelDir(dir, m->config_.num_layers));
  m->planner_ = std::make_unique<BudgetPlanner>(m->shape_, std::move(schedule));

  const SafetensorsFile& st = *file;
  const BertConfig& c = m->config_;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const std::string prefix = st.Find("bert.embeddings.word_embeddings.weight") ? "bert." : "";

  absl::Status status;
  auto read = [&](const std::string& name, std::vector<int64_t> shape) -> std::vector<float> {
    if (!status.ok()) return {};
    auto r = st.ReadF32(name, shape);
    if (!r.ok()) {
      status = r.status();
      return {};
    }
    return std::move(*r);
  };
  // The heads (the encoder layers are EncoderLayer's): fp32 in every precision.
  auto linear = [&](const std::string& name, int64_t out, int64_t in, Epilogue epi) {
    std::vector<float> w = read(name + ".weight", {out, in});
    std::vector<float> b = read(name + ".bias", {out});
    if (!status.ok()) return Linear();
    auto lin = Linear::Create(m->dnnl_, w.data(), b.data(), out, in, epi, false);
    if (!lin.ok()) {
      status = lin.status();
      return Linear();
    }
    return std::move(*lin);
  };

  const std::string e = prefix + "embeddings.";
  m->word_emb_ = read(e + "word_embeddings.weight", {c.vocab_size, d});
  m->pos_emb_ = read(e + "position_embeddings.weight", {c.max_position_embeddings, d});
  m->type_emb_ = read(e + "token_type_embeddings.weight", {c.type_vocab_size, d});
  m->emb_ln_gamma_ = read(e + "LayerNorm.weight", {d});
  m->emb_ln_beta_ = read(e + "LayerNorm.bias", {d});
  for (int64_t l = 0; l < c.num_layers && status.ok(); ++l) {
    const std::string p = absl::StrCat(prefix, "encoder.layer.", l, ".");
    LayerWeights w;
    // Q, K and V are fused into one [3d, d] projection.
    for (const char* part : {"query", "key", "value"}) {
      std::vector<float> wp = read(p + "attention.self." + part + ".weight", {d, d});
      std::vector<float> bp = read(p + "attention.self." + part + ".bias", {d});
      w.wqkv.insert(w.wqkv.end(), wp.begin(), wp.end());
      w.bqkv.insert(w.bqkv.end(), bp.begin(), bp.end());
    }
    w.w_attn_out = read(p + "attention.output.dense.weight", {d, d});
    w.b_attn_out = read(p + "attention.output.dense.bias", {d});
    w.ln1_gamma = read(p + "attention.output.LayerNorm.weight", {d});
    w.ln1_beta = read(p + "attention.output.LayerNorm.bias", {d});
    w.w_ffn_in = read(p + "intermediate.dense.weight", {f, d});
    w.b_ffn_in = read(p + "intermediate.dense.bias", {f});
    w.w_ffn_out = read(p + "output.dense.weight", {d, f});
    w.b_ffn_out = read(p + "output.dense.bias", {d});
    w.ln2_gamma = read(p + "output.LayerNorm.weight", {d});
    w.ln2_beta = read(p + "output.LayerNorm.bias", {d});
    if (!status.ok()) break;
    ASSIGN_OR_RETURN(EncoderLayer layer,
                     EncoderLayer::Create(m->dnnl_, c, std::move(w), m->precision_, m->uses_bf16_));
    m->layers_.push_back(std::move(layer));
  }
  if (c.task == Task::kSequenceClassification) {
    m->pooler_ = linear(prefix + "pooler.dense", d, d, Epilogue::kTanh);
    m->classifier_ = linear("classifier", c.num_labels(), d, Epilogue::kNone);
  } else if (c.task == Task::kQuestionAnswering) {
    m->qa_ = linear("qa_outputs", 2, d, Epilogue::kNone);
  }  // a headless encoder has no head (its pooler, if saved, is not part of the output)
  RETURN_IF_ERROR(status);
  return m;
}

absl::Status BertModel::Validate(std::span<const SequenceInput> inputs) const {
  const BertConfig& c = config_;
  for (size_t s = 0; s < inputs.size(); ++s) {
    const SequenceInput& in = inputs[s];
    const int64_t n = static_cast<int64_t>(in.ids.size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " is empty"));
    if (n > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " has ", n,
                                                     " tokens; the model takes at most ",
                                                     c.max_position_embeddings));
    }
    if (!in.type_ids.empty() && in.type_ids.size() != in.ids.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, ": ", in.type_ids.size(), " type ids for ", n, " tokens"));
    }
    for (int64_t i = 0; i < n; ++i) {
      if (in.ids[i] < 0 || in.ids[i] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sequence ", s, " token ", i, ": id ", in.ids[i], " outside [0, ", c.vocab_size, ")"));
      }
      if (!in.type_ids.empty() && (in.type_ids[i] < 0 || in.type_ids[i] >= c.type_vocab_size)) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " token ", i, ": type id ",
                                                       in.type_ids[i], " outside [0, ",
                                                       c.type_vocab_size, ")"));
      }
    }
    if (!in.kept.empty()) {
      if (static_cast<int64_t>(in.kept.size()) != c.num_layers) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": pruning plan has ",
                                                       in.kept.size(), " layers, model has ",
                                                       c.num_layers));
      }
      int64_t prev = n;
      for (size_t l = 0; l < in.kept.size(); ++l) {
        if (in.kept[l] < 1 || in.kept[l] > prev) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": pruning plan keeps ",
                                                         in.kept[l], " tokens at layer ", l, " of ",
                                                         prev, " entering it"));
        }
        prev = in.kept[l];
      }
    }
  }
  return absl::OkStatus();
}

absl::Status BertModel::Run(std::span<const SequenceInput> inputs,
                            std::span<SequenceOutput> outputs, Workspace& ws,
                            const RunOptions& run_options) const {
  if (outputs.size() != inputs.size()) {
    return absl::InvalidArgumentError("Run: outputs and inputs differ in size");
  }
  RETURN_IF_ERROR(Validate(inputs));
  const int64_t batch = static_cast<int64_t>(inputs.size());
  if (batch == 0) return absl::OkStatus();
  omp_set_num_threads(ws.threads_);
  OpProfile* prof = ws.cache_.profile();

  const BertConfig& c = config_;
  const int64_t d = c.hidden_size;
  const float eps = static_cast<float>(c.layer_norm_eps);
  const bool qa = c.task == Task::kQuestionAnswering;
  // Tasks whose output is per token keep every token's last state, dropped tokens included.
  const bool per_token = qa || c.task == Task::kFeatureExtraction;

  PackedBatch& pb = ws.batch_;
  ws.lengths_.resize(static_cast<size_t>(batch));
  for (int64_t s = 0; s < batch; ++s) ws.lengths_[s] = static_cast<int64_t>(inputs[s].ids.size());
  pb.Reset(ws.lengths_);
  const int64_t total_in = pb.rows();
  float* x = Grow(ws.x_, total_in * d);
  float* y = Grow(ws.y_, total_in * d);
  Grow(ws.spare_, total_in * d);
  double* importance = Grow(ws.importance_, total_in);
  float* final_rows = per_token ? Grow(ws.final_, total_in * d) : nullptr;

  // Embeddings + LayerNorm, one parallel region over all sequences.
  {
    ScopedOp timed(prof, Op::kEmbeddings);
    const int64_t nseq = static_cast<int64_t>(pb.seqs().size());
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t si = 0; si < nseq; ++si) {
      const PackedBatch::Seq& s = pb.seqs()[static_cast<size_t>(si)];
      const SequenceInput& in = inputs[s.index];
      for (int64_t i = 0; i < s.len; ++i) {
        const int32_t type = in.type_ids.empty() ? 0 : in.type_ids[i];
        const float* we = word_emb_.data() + static_cast<int64_t>(in.ids[i]) * d;
        const float* pe = pos_emb_.data() + i * d;
        const float* te = type_emb_.data() + static_cast<int64_t>(type) * d;
        float* row = x + (s.offset + i) * d;
        for (int64_t k = 0; k < d; ++k) row[k] = we[k] + pe[k] + te[k];
      }
    }
    LayerNormRows(x, total_in, d, emb_ln_gamma_.data(), emb_ln_beta_.data(), eps);
  }
  if (run_options.record_kept) {
    for (int64_t s = 0; s < batch; ++s)
      outputs[s].kept_positions.assign(static_cast<size_t>(c.num_layers), {});
  }

  std::vector<int64_t>& keep = ws.keep_;
  keep.resize(static_cast<size_t>(batch));
  bool x_from_feed_forward = false;  // the embeddings wrote x
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const EncoderLayer& layer = layers_[static_cast<size_t>(l)];
    // Tokens each sequence keeps at this layer's pruning point.
    bool prunes_here = false;
    for (const PackedBatch::Seq& s : pb.seqs()) {
      const auto& kept = inputs[s.index].kept;
      keep[s.index] = kept.empty() ? s.len : kept[l];
      prunes_here |= keep[s.index] < s.len;
    }
    // x is each dropped token's last full hidden state when it leaves after attention; the layer's
    // output when it leaves between layers.
    auto prune = [&](std::vector<float>& rows, const float* carried) {
      ScopedOp timed(prof, Op::kPruneGather);
      pb.Prune(keep, importance, rows, ws.spare_, d, carried, final_rows);
    };
    layer.Attention(ws.cache_, ws.layer_, pb.groups(), x, pb.rows(), y,
                    prunes_here ? importance : nullptr, x_from_feed_forward);
    const bool prune_after_mha = prunes_here && run_options.placement == Placement::kAfterMha;
    if (prune_after_mha) {
      prune(ws.y_, x);
      y = ws.y_.data();
    }
    layer.FeedForward(ws.cache_, ws.layer_, y, pb.rows(), x, !prune_after_mha);
    const bool prune_between = prunes_here && run_options.placement == Placement::kBetweenLayers;
    if (prune_between) {
      prune(ws.x_, x);
      x = ws.x_.data();
    }
    x_from_feed_forward = !prune_between;
    if (run_options.record_kept) {
      for (const PackedBatch::Seq& s : pb.seqs()) {
        auto& kp = outputs[s.index].kept_positions[static_cast<size_t>(l)];
        kp.assign(pb.positions() + s.offset, pb.positions() + s.offset + s.len);
      }
    }
  }
  const std::vector<PackedBatch::Seq>& seqs = pb.seqs();
  const int32_t* pos = pb.positions();

  // Heads.
  ScopedOp timed_heads(prof, Op::kHeads);
  if (!per_token) {
    const int64_t nl = c.num_labels();
    float* cls = Grow(ws.heads_in_, 2 * batch * d);
    float* pooled = cls + batch * d;
    for (const PackedBatch::Seq& s : seqs) CopyRow(x + s.offset * d, cls + s.index * d, d);
    float* logits = Grow(ws.heads_out_, batch * nl);
    pooler_.Forward(ws.cache_, cls, batch, pooled);
    classifier_.Forward(ws.cache_, pooled, batch, logits);
    for (int64_t s = 0; s < batch; ++s)
      outputs[s].logits.assign(logits + s * nl, logits + (s + 1) * nl);
  } else {
    for (const PackedBatch::Seq& s : seqs) {
      for (int64_t i = 0; i < s.len; ++i) {
        CopyRow(x + (s.offset + i) * d, final_rows + (s.orig_offset + pos[s.offset + i]) * d, d);
      }
    }
    if (!qa) {  // feature extraction: the final rows are the output
      for (const PackedBatch::Seq& s : seqs) {
        const int64_t n = static_cast<int64_t>(inputs[s.index].ids.size());
        const float* first = final_rows + s.orig_offset * d;
        outputs[s.index].hidden.assign(first, first + n * d);
      }
      return absl::OkStatus();
    }
    float* logits = Grow(ws.heads_out_, total_in * 2);
    qa_.Forward(ws.cache_, final_rows, total_in, logits);
    for (const PackedBatch::Seq& s : seqs) {
      const int64_t n = static_cast<int64_t>(inputs[s.index].ids.size());
      SequenceOutput& out = outputs[s.index];
      out.start_logits.resize(static_cast<size_t>(n));
      out.end_logits.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        out.start_logits[i] = logits[(s.orig_offset + i) * 2];
        out.end_logits[i] = logits[(s.orig_offset + i) * 2 + 1];
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace topserve::engine
