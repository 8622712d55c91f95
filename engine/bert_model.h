// A BERT encoder with a classification or QA head, or none (feature extraction), run on packed
// variable-length batches with
// optional per-sequence token pruning.
//
// Layout: the sequences of a batch are stored back to back in one [total_tokens x hidden] matrix,
// ordered by current length (longest first), so sequences of equal length are adjacent. Dense
// layers run once over all tokens; attention runs as one batched GEMM per group of equal-length
// sequences. There is no padding anywhere. When a sequence prunes at a layer, its survivors are
// gathered (keeping their order) and the batch is re-sorted by remaining length in the same pass.
//
// Thread-safety: a loaded BertModel is immutable and may be shared by any number of threads; each
// thread runs it with its own Workspace.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cost_model.h"
#include "engine/dnnl_ops.h"
#include "engine/encoder_layer.h"
#include "engine/model_config.h"
#include "engine/packed_batch.h"
#include "engine/pruning.h"
#include "engine/tokenizer.h"

namespace topserve::engine {

// Where the CPU has native bf16, whether the reduced precisions use it (EngineOptions).
enum class Bf16Kernels { kIfFaster, kAlways, kNever };

struct EngineOptions {
  int num_threads =
      0;  // threads per Run (OpenMP inside oneDNN and our kernels); 0 = AvailableCpus()
  // Arithmetic of the encoder's dense layers (engine/dnnl_ops.h). kFloat32 (default) matches the
  // reference to 1e-4; kInt8 and kBfloat16 trade that for speed (docs/benchmarks.md). Embeddings,
  // LayerNorm, softmax and the heads stay fp32 in every precision. kBfloat16 and kInt8 run the
  // attention products (Q K^T, P V) in bf16 where the CPU has native bf16 (fp32 accumulation);
  // kBfloat16 on a CPU without it runs fp32 (precision() then says kFloat32) after one line on
  // stderr. Native bf16 is not always faster than fp32 (without AMX it can be slower), so Load
  // times one matmul both ways (ProbeBf16Matmul) and uses bf16 only where it wins: kBfloat16 where
  // it loses runs fp32 after one line on stderr, kInt8 keeps fp32 attention products.
  Precision precision = Precision::kFloat32;
  // kAlways skips that measurement and runs bf16 wherever the CPU has it natively, slower or not;
  // kNever runs fp32 kernels instead (both for the tests of each path and benchmarks comparing
  // them).
  Bf16Kernels bf16_kernels = Bf16Kernels::kIfFaster;
};

struct SequenceInput {
  std::span<const int32_t> ids;       // [CLS] ... [SEP], at most max_position_embeddings tokens
  std::span<const int32_t> type_ids;  // same length, or empty for all zeros
  // Pruning plan: kept[l] = tokens remaining after layer l's pruning point; empty = unpruned.
  // Non-increasing, each in [1, tokens entering the layer].
  std::span<const int32_t> kept;
};

struct SequenceOutput {
  std::vector<float> logits;        // classification: one per label
  std::vector<float> start_logits;  // QA: one per input token (dropped tokens included)
  std::vector<float> end_logits;
  // Feature extraction (a headless BertModel): the last hidden state of every input token,
  // row-major [tokens x hidden]; a token dropped by pruning carries its state from the layer that
  // dropped it.
  std::vector<float> hidden;
  // With RunOptions::record_kept: for each layer, the positions (into the input) still present
  // after that layer's pruning point, ascending.
  std::vector<std::vector<int32_t>> kept_positions;
};

struct RunOptions {
  Placement placement =
      Placement::kAfterMha;  // where pruned tokens leave (the model's schedule says)
  bool record_kept = false;
};

class BertModel;

// Scratch memory and oneDNN state for one thread. Buffers grow to the largest batch seen and are
// reused, so steady-state runs do not allocate for activations.
class Workspace {
 public:
  explicit Workspace(const BertModel& model);
  // `threads` OpenMP threads per Run (0 = the model's default).
  Workspace(const BertModel& model, int threads);
  int threads() const { return threads_; }
  // Records the per-op time of every later Run in `profile` (null stops it); benchmarks only.
  void set_profile(OpProfile* profile) { cache_.set_profile(profile); }

 private:
  friend class BertModel;
  PrimitiveCache cache_;
  int threads_;
  PackedBatch batch_;
  LayerScratch layer_;
  std::vector<float> x_, y_, spare_, final_, heads_in_, heads_out_;
  std::vector<double> importance_;
  std::vector<int64_t> lengths_, keep_;
};

class BertModel {
 public:
  // Loads config.json, model.safetensors, the tokenizer (vocab.txt, or tokenizer.json when there is
  // no vocab.txt: Tokenizer::LoadFromModelDir) and tokenizer_config.json from `dir`.
  static absl::StatusOr<std::unique_ptr<BertModel>> Load(const std::string& dir,
                                                         const EngineOptions& options = {});

  // Runs a batch. outputs.size() must equal inputs.size(). Invalid inputs (ids out of range, too
  // long, bad plan) -> INVALID_ARGUMENT naming the sequence, before any compute.
  absl::Status Run(std::span<const SequenceInput> inputs, std::span<SequenceOutput> outputs,
                   Workspace& ws, const RunOptions& run_options = {}) const;

  const BertConfig& config() const { return config_; }
  const TokenizerConfig& tokenizer_config() const { return tokenizer_config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelShape& shape() const { return shape_; }
  const std::string& dir() const { return dir_; }
  const DnnlContext& dnnl() const { return dnnl_; }
  int num_threads() const { return num_threads_; }
  Precision precision() const { return precision_; }
  // The bf16-against-fp32 measurement Load made, when it made one (reduced precision requested on
  // a native-bf16 CPU, Bf16Kernels::kIfFaster).
  const std::optional<Bf16Probe>& bf16_probe() const { return bf16_probe_; }
  // Whether the bf16 kernels run (bf16 dense layers, or int8's attention products in bf16).
  bool uses_bf16() const { return uses_bf16_; }
  // Longest input (in tokens, specials included) the model accepts.
  int64_t max_length() const { return max_length_; }
  // The model's pruning schedule (pruning.yaml, or the default) and its budget planner.
  const BudgetPlanner& planner() const { return *planner_; }
  const PruningSchedule& schedule() const { return planner_->schedule(); }

 private:
  BertModel() = default;
  absl::Status Validate(std::span<const SequenceInput> inputs) const;

  std::string dir_;
  BertConfig config_;
  TokenizerConfig tokenizer_config_;
  ModelShape shape_;
  std::unique_ptr<Tokenizer> tokenizer_;
  DnnlContext dnnl_;
  int num_threads_ = 1;
  Precision precision_ = Precision::kFloat32;
  std::optional<Bf16Probe> bf16_probe_;
  bool uses_bf16_ = false;
  int64_t max_length_ = 0;
  std::vector<float> word_emb_, pos_emb_, type_emb_, emb_ln_gamma_, emb_ln_beta_;
  std::vector<EncoderLayer> layers_;
  std::unique_ptr<BudgetPlanner> planner_;
  Linear pooler_, classifier_, qa_;
};

}  // namespace topserve::engine
