#include "engine/bert_model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu_info.h"
#include "engine/kernels.h"
#include "engine/safetensors.h"

namespace topserve::engine {
namespace {

// Scores of one attention chunk are bounded to this many floats (64 MiB).
constexpr int64_t kMaxScoreFloats = int64_t{16} << 20;

template <typename T>
T* Grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

Epilogue ActivationEpilogue(Activation a) {
  switch (a) {
    case Activation::kGelu: return Epilogue::kGeluErf;
    case Activation::kGeluTanh: return Epilogue::kGeluTanh;
    case Activation::kRelu: return Epilogue::kRelu;
  }
  return Epilogue::kGeluErf;
}

// Element `offset` of a float (fp32 attention) or bf16 buffer.
const void* Offset(const void* base, int64_t offset, bool bf16) {
  return static_cast<const char*>(base) + offset * (bf16 ? 2 : 4);
}

void CopyRow(const float* src, float* dst, int64_t width) {
  if (src != dst) std::memcpy(dst, src, static_cast<size_t>(width) * sizeof(float));
}

}  // namespace

Workspace::Workspace(const BertModel& model) : Workspace(model, 0) {}

Workspace::Workspace(const BertModel& model, int threads)
    : cache_(model.dnnl()), threads_(threads > 0 ? threads : model.num_threads()) {}

absl::StatusOr<std::unique_ptr<BertModel>> BertModel::Load(const std::string& dir,
                                                           const EngineOptions& options) {
  std::unique_ptr<BertModel> m(new BertModel());
  m->dir_ = dir;
  auto config = LoadBertConfig(dir + "/config.json");
  if (!config.ok()) return config.status();
  m->config_ = *config;
  auto tok_config = LoadTokenizerConfig(dir + "/tokenizer_config.json");
  if (!tok_config.ok()) return tok_config.status();
  m->tokenizer_config_ = *tok_config;
  auto tokenizer = Tokenizer::Load(dir + "/vocab.txt", m->tokenizer_config_);
  if (!tokenizer.ok()) return tokenizer.status();
  m->tokenizer_ = std::move(*tokenizer);
  if (static_cast<int64_t>(m->tokenizer_->vocab_size()) > m->config_.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, "/vocab.txt: ", m->tokenizer_->vocab_size(), " tokens but config.json vocab_size is ",
        m->config_.vocab_size));
  }
  m->shape_ = ModelShape::FromConfig(m->config_);
  m->num_threads_ = options.num_threads > 0 ? options.num_threads : AvailableCpus();
  m->precision_ = options.precision;
  if (m->precision_ == Precision::kBfloat16 && !CpuHasNativeBf16()) {
    // Emulated bf16 would be slower than fp32 and less exact: run fp32, and say so once per load.
    std::fprintf(stderr,
                 "topserve: %s: precision bf16 needs a CPU with AVX512-BF16 or AMX (oneDNN sees %s); "
                 "running fp32\n",
                 dir.c_str(), std::string(DnnlIsaName()).c_str());
    m->precision_ = Precision::kFloat32;
  }
  m->bf16_attention_ = m->precision_ != Precision::kFloat32 && CpuHasNativeBf16();
  m->max_length_ = std::min(m->config_.max_position_embeddings, m->tokenizer_config_.model_max_length);
  auto schedule = PruningSchedule::ForModelDir(dir, m->config_.num_layers);
  if (!schedule.ok()) return schedule.status();
  m->planner_ = std::make_unique<BudgetPlanner>(m->shape_, std::move(*schedule));

  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  if (!file.ok()) return file.status();
  const SafetensorsFile& st = **file;
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
  // Encoder layers use the model's precision; the heads stay fp32.
  auto linear = [&](const std::string& name, int64_t out, int64_t in, Epilogue epi, bool acc,
                    Precision precision = Precision::kFloat32) {
    std::vector<float> w = read(name + ".weight", {out, in});
    std::vector<float> b = read(name + ".bias", {out});
    if (!status.ok()) return Linear();
    auto lin = Linear::Create(m->dnnl_, w.data(), b.data(), out, in, epi, acc, precision);
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
    Layer layer;
    // Q, K and V are fused into one [3d, d] projection.
    std::vector<float> wqkv, bqkv;
    for (const char* part : {"query", "key", "value"}) {
      std::vector<float> w = read(p + "attention.self." + part + ".weight", {d, d});
      std::vector<float> b = read(p + "attention.self." + part + ".bias", {d});
      wqkv.insert(wqkv.end(), w.begin(), w.end());
      bqkv.insert(bqkv.end(), b.begin(), b.end());
    }
    if (!status.ok()) break;
    auto qkv = Linear::Create(m->dnnl_, wqkv.data(), bqkv.data(), 3 * d, d, Epilogue::kNone, false,
                              m->precision_);
    if (!qkv.ok()) return qkv.status();
    layer.qkv = std::move(*qkv);
    // The residual sums happen in LayerNormResidualRows, so these write x W + b only.
    layer.attn_out = linear(p + "attention.output.dense", d, d, Epilogue::kNone, false, m->precision_);
    layer.ln1_gamma = read(p + "attention.output.LayerNorm.weight", {d});
    layer.ln1_beta = read(p + "attention.output.LayerNorm.bias", {d});
    layer.ffn_in = linear(p + "intermediate.dense", f, d, ActivationEpilogue(c.activation), false,
                          m->precision_);
    layer.ffn_out = linear(p + "output.dense", d, f, Epilogue::kNone, false, m->precision_);
    layer.ln2_gamma = read(p + "output.LayerNorm.weight", {d});
    layer.ln2_beta = read(p + "output.LayerNorm.bias", {d});
    m->layers_.push_back(std::move(layer));
  }
  if (c.task == Task::kSequenceClassification) {
    m->pooler_ = linear(prefix + "pooler.dense", d, d, Epilogue::kTanh, false);
    m->classifier_ = linear("classifier", c.num_labels(), d, Epilogue::kNone, false);
  } else if (c.task == Task::kQuestionAnswering) {
    m->qa_ = linear("qa_outputs", 2, d, Epilogue::kNone, false);
  }  // a headless encoder has no head (its pooler, if saved, is not part of the output)
  if (!status.ok()) return status;
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
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s, ": ", in.type_ids.size(),
                                                     " type ids for ", n, " tokens"));
    }
    for (int64_t i = 0; i < n; ++i) {
      if (in.ids[i] < 0 || in.ids[i] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s, " token ", i, ": id ",
                                                       in.ids[i], " outside [0, ", c.vocab_size, ")"));
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
                                                         in.kept[l], " tokens at layer ", l,
                                                         " of ", prev, " entering it"));
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
  if (auto st = Validate(inputs); !st.ok()) return st;
  const int64_t batch = static_cast<int64_t>(inputs.size());
  if (batch == 0) return absl::OkStatus();
  omp_set_num_threads(ws.threads_);
  OpProfile* prof = ws.cache_.profile();

  const BertConfig& c = config_;
  const int64_t d = c.hidden_size, f = c.intermediate_size, heads = c.num_heads;
  const AttentionShape att{heads, c.head_dim()};
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim())));
  const float eps = static_cast<float>(c.layer_norm_eps);
  const bool qa = c.task == Task::kQuestionAnswering;
  // Tasks whose output is per token keep every token's last state, dropped tokens included.
  const bool per_token = qa || c.task == Task::kFeatureExtraction;

  // Per-sequence state, in the current packed order.
  struct Seq {
    int32_t index;   // position in `inputs`
    int64_t len;     // current token count
    int64_t offset;  // current first row
    int64_t orig_offset;  // first row in the original (unpruned) layout
  };
  std::vector<Seq> seqs(static_cast<size_t>(batch));
  for (int64_t s = 0; s < batch; ++s) {
    seqs[s] = {static_cast<int32_t>(s), static_cast<int64_t>(inputs[s].ids.size()), 0, 0};
  }
  std::stable_sort(seqs.begin(), seqs.end(), [](const Seq& a, const Seq& b) { return a.len > b.len; });
  int64_t total = 0;
  for (Seq& s : seqs) {
    s.offset = s.orig_offset = total;
    total += s.len;
  }
  const int64_t total_in = total;

  float* x = Grow(ws.x_, total * d);
  float* y = Grow(ws.y_, total * d);
  Grow(ws.spare_, total * d);
  float* qkv = Grow(ws.qkv_, total * 3 * d);
  float* ctx = Grow(ws.ctx_, total * d);
  float* hid = Grow(ws.ffn_, total * f);
  int32_t* pos = Grow(ws.pos_, total);
  Grow(ws.spare_pos_, total);
  double* importance = Grow(ws.importance_, total);
  float* final_rows = per_token ? Grow(ws.final_, total * d) : nullptr;

  // Embeddings + LayerNorm, one parallel region over all sequences.
  const int64_t nseq = static_cast<int64_t>(seqs.size());
  {
  ScopedOp timed(prof, Op::kEmbeddings);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t si = 0; si < nseq; ++si) {
    const Seq& s = seqs[static_cast<size_t>(si)];
    const SequenceInput& in = inputs[s.index];
    for (int64_t i = 0; i < s.len; ++i) {
      const int32_t type = in.type_ids.empty() ? 0 : in.type_ids[i];
      const float* we = word_emb_.data() + static_cast<int64_t>(in.ids[i]) * d;
      const float* pe = pos_emb_.data() + i * d;
      const float* te = type_emb_.data() + static_cast<int64_t>(type) * d;
      float* row = x + (s.offset + i) * d;
      for (int64_t k = 0; k < d; ++k) row[k] = we[k] + pe[k] + te[k];
      pos[s.offset + i] = static_cast<int32_t>(i);
    }
  }
  LayerNormRows(x, total, d, emb_ln_gamma_.data(), emb_ln_beta_.data(), eps);
  }

  if (run_options.record_kept) {
    for (int64_t s = 0; s < batch; ++s) outputs[s].kept_positions.assign(static_cast<size_t>(c.num_layers), {});
  }

  // Drops the tokens each sequence's plan removes at layer l from `rows` (current layout), keeping
  // the top tokens by attention received ([CLS] always, ties to the earlier position, survivors in
  // their original order), and re-sorts the batch by remaining length, all in one gather into the
  // spare buffer, which then takes the place of `rows`. `carried` holds each token's last full
  // hidden state; per-token tasks (QA, feature extraction) store it for the tokens dropped here.
  auto prune = [&](int64_t l, std::vector<float>& rows, const float* carried) {
    ScopedOp timed(prof, Op::kPruneGather);
    const float* src = rows.data();
    float* dst = ws.spare_.data();
    int32_t* dst_pos = ws.spare_pos_.data();
    std::vector<int32_t>& sel = ws.select_;
    sel.clear();
    struct Pick {
      int64_t begin, len;
    };
    std::vector<Pick> picks(seqs.size());
    for (size_t si = 0; si < seqs.size(); ++si) {
      const Seq& s = seqs[si];
      const auto& kept = inputs[s.index].kept;
      const int64_t k = kept.empty() ? s.len : std::min<int64_t>(kept[l], s.len);
      const size_t base = sel.size();
      picks[si] = {static_cast<int64_t>(base), k};
      for (int64_t i = 0; i < s.len; ++i) sel.push_back(static_cast<int32_t>(i));
      if (k < s.len) {
        const double* imp = importance + s.offset;
        auto first = sel.begin() + static_cast<std::ptrdiff_t>(base) + 1;  // [CLS] stays
        auto last = sel.begin() + static_cast<std::ptrdiff_t>(base + static_cast<size_t>(s.len));
        auto better = [imp](int32_t a, int32_t b) {
          return imp[a] > imp[b] || (imp[a] == imp[b] && a < b);
        };
        std::nth_element(first, first + (k - 1), last, better);
        std::sort(first, first + (k - 1));
        sel.resize(base + static_cast<size_t>(k));
      }
    }
    std::vector<int64_t>& gather = ws.gather_;
    gather.resize(static_cast<size_t>(total));
    std::vector<int32_t>& order = ws.order_;
    order.resize(seqs.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return picks[a].len > picks[b].len; });
    std::vector<Seq> next(seqs.size());
    int64_t row = 0;
    for (size_t oi = 0; oi < order.size(); ++oi) {
      const size_t si = static_cast<size_t>(order[oi]);
      const Seq& s = seqs[si];
      const int32_t* chosen = sel.data() + picks[si].begin;
      const int64_t k = picks[si].len;
      if (per_token && k < s.len) {
        int64_t j = 0;
        for (int64_t i = 0; i < s.len; ++i) {
          if (j < k && chosen[j] == i) {
            ++j;
            continue;
          }
          CopyRow(carried + (s.offset + i) * d,
                  final_rows + (s.orig_offset + pos[s.offset + i]) * d, d);
        }
      }
      for (int64_t j = 0; j < k; ++j) {
        gather[static_cast<size_t>(row + j)] = s.offset + chosen[j];
        dst_pos[row + j] = pos[s.offset + chosen[j]];
      }
      next[oi] = {s.index, k, row, s.orig_offset};
      row += k;
    }
    // One parallel copy of all surviving rows.
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < row; ++r) CopyRow(src + gather[static_cast<size_t>(r)] * d, dst + r * d, d);
    seqs = std::move(next);
    total = row;
    std::swap(ws.spare_, rows);
    std::swap(ws.spare_pos_, ws.pos_);
    pos = ws.pos_.data();
  };

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Layer& layer = layers_[static_cast<size_t>(l)];
    bool prunes_here = false;
    for (const Seq& s : seqs) {
      const auto& kept = inputs[s.index].kept;
      if (!kept.empty() && kept[l] < s.len) prunes_here = true;
    }

    // Self-attention.
    {
      ScopedOp timed(prof, Op::kQkvGemm);
      layer.qkv.Forward(ws.cache_, x, total, qkv);
    }
    const void* qkv_in = qkv;
    if (bf16_attention_) {
      ScopedOp timed(prof, Op::kConvert);
      uint16_t* qb = Grow(ws.qkv_bf16_, total * 3 * d);
      ConvertToBf16(qkv, total * 3 * d, qb);
      qkv_in = qb;
    }
    for (size_t gi = 0; gi < seqs.size();) {
      size_t ge = gi;
      while (ge < seqs.size() && seqs[ge].len == seqs[gi].len) ++ge;
      const int64_t len = seqs[gi].len;
      const int64_t per_seq = heads * len * len;
      const int64_t chunk = std::max<int64_t>(1, kMaxScoreFloats / per_seq);
      for (size_t cs = gi; cs < ge; cs += static_cast<size_t>(chunk)) {
        const int64_t g = std::min<int64_t>(chunk, static_cast<int64_t>(ge - cs));
        const int64_t off = seqs[cs].offset;
        float* scores = Grow(ws.scores_, g * per_seq);
        {
          ScopedOp timed(prof, Op::kAttnScores);
          AttentionScores(ws.cache_, att, Offset(qkv_in, off * 3 * d, bf16_attention_), bf16_attention_, g, len,
                          scale, scores);
        }
        {
          ScopedOp timed(prof, Op::kSoftmax);
          SoftmaxRows(ws.cache_, scores, g * heads * len, len);
        }
        if (prunes_here) {
          ScopedOp timed(prof, Op::kImportance);
          AttentionReceived(scores, g, heads, len, importance + off);
        }
        const void* probs = scores;
        if (bf16_attention_) {
          ScopedOp timed(prof, Op::kConvert);
          uint16_t* pb = Grow(ws.probs_bf16_, g * per_seq);
          ConvertToBf16(scores, g * per_seq, pb);
          probs = pb;
        }
        ScopedOp timed(prof, Op::kAttnContext);
        AttentionContext(ws.cache_, att, probs, Offset(qkv_in, off * 3 * d, bf16_attention_), bf16_attention_, g,
                         len, ctx + off * d);
      }
      gi = ge;
    }
    // y = LayerNorm(x + ctx W_o + b_o)
    {
      ScopedOp timed(prof, Op::kAttnOutGemm);
      layer.attn_out.Forward(ws.cache_, ctx, total, y);
    }
    {
      ScopedOp timed(prof, Op::kLayerNorm);
      LayerNormResidualRows(y, x, total, d, layer.ln1_gamma.data(), layer.ln1_beta.data(), eps);
    }

    if (prunes_here && run_options.placement == Placement::kAfterMha) {
      // x, the layer's input, is each dropped token's last full hidden state.
      prune(l, ws.y_, x);
      y = ws.y_.data();
    }
    // x = LayerNorm(y + act(y W_i + b_i) W_o + b_o)
    if (precision_ == Precision::kInt8) {
      // The hidden activations never exist in fp32 memory: the up projection's epilogue
      // quantizes them per token for the down projection in the same pass.
      float* scales = Grow(ws.q_scales_, 4 * total);
      const QuantizedRows qy{Grow(ws.q_in_, total * d), scales, scales + total};
      const QuantizedRows qh{Grow(ws.q_hid_, total * f), scales + 2 * total, scales + 3 * total};
      {
        ScopedOp timed(prof, Op::kQuantize);
        QuantizeRows(y, total, d, qy);
      }
      {
        ScopedOp timed(prof, Op::kFfnInGemm);
        layer.ffn_in.ForwardQuantized(ws.cache_, qy, total, hid, nullptr, &qh);
      }
      ScopedOp timed(prof, Op::kFfnOutGemm);
      layer.ffn_out.ForwardQuantized(ws.cache_, qh, total, nullptr, x, nullptr);
    } else {
      {
        ScopedOp timed(prof, Op::kFfnInGemm);
        layer.ffn_in.Forward(ws.cache_, y, total, hid);
      }
      ScopedOp timed(prof, Op::kFfnOutGemm);
      layer.ffn_out.Forward(ws.cache_, hid, total, x);
    }
    {
      ScopedOp timed(prof, Op::kLayerNorm);
      LayerNormResidualRows(x, y, total, d, layer.ln2_gamma.data(), layer.ln2_beta.data(), eps);
    }

    if (prunes_here && run_options.placement == Placement::kBetweenLayers) {
      prune(l, ws.x_, x);
      x = ws.x_.data();
    }
    if (run_options.record_kept) {
      for (const Seq& s : seqs) {
        auto& kp = outputs[s.index].kept_positions[static_cast<size_t>(l)];
        kp.assign(pos + s.offset, pos + s.offset + s.len);
      }
    }
  }

  // Heads.
  ScopedOp timed_heads(prof, Op::kHeads);
  if (!per_token) {
    const int64_t nl = c.num_labels();
    float* cls = Grow(ws.heads_in_, 2 * batch * d);
    float* pooled = cls + batch * d;
    for (const Seq& s : seqs) CopyRow(x + s.offset * d, cls + s.index * d, d);
    float* logits = Grow(ws.heads_out_, batch * nl);
    pooler_.Forward(ws.cache_, cls, batch, pooled);
    classifier_.Forward(ws.cache_, pooled, batch, logits);
    for (int64_t s = 0; s < batch; ++s) outputs[s].logits.assign(logits + s * nl, logits + (s + 1) * nl);
  } else {
    for (const Seq& s : seqs) {
      for (int64_t i = 0; i < s.len; ++i) {
        CopyRow(x + (s.offset + i) * d, final_rows + (s.orig_offset + pos[s.offset + i]) * d, d);
      }
    }
    if (!qa) {  // feature extraction: the final rows are the output
      for (const Seq& s : seqs) {
        const int64_t n = static_cast<int64_t>(inputs[s.index].ids.size());
        const float* first = final_rows + s.orig_offset * d;
        outputs[s.index].hidden.assign(first, first + n * d);
      }
      return absl::OkStatus();
    }
    float* logits = Grow(ws.heads_out_, total_in * 2);
    qa_.Forward(ws.cache_, final_rows, total_in, logits);
    for (const Seq& s : seqs) {
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
