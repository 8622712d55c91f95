// The packed layout of a batch and its pruning (CTranslate2's Padder is the precedent for keeping
// the layout in one class): the sequences are stored back to back, longest first, so equal lengths
// are adjacent and attention runs once per length group, with no padding anywhere. Pruning drops a
// sequence's least-attended tokens and re-sorts the batch by remaining length in one gather.
//
// One per Workspace; its buffers grow to the largest batch and are reused, so steady-state runs do
// not allocate.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/encoder_layer.h"

namespace topserve::engine {

class PackedBatch {
 public:
  struct Seq {
    int32_t index = 0;        // position in the caller's batch
    int64_t len = 0;          // current token count
    int64_t offset = 0;       // current first row
    int64_t orig_offset = 0;  // first row in the original (unpruned) layout
  };

  // Lays out sequences of these lengths (index i has lengths[i] tokens); every row's position is
  // its token's index in its sequence.
  void Reset(std::span<const int64_t> lengths);

  int64_t rows() const { return rows_; }
  int64_t rows_in() const { return rows_in_; }
  const std::vector<Seq>& seqs() const { return seqs_; }
  // The equal-length runs of the current layout.
  std::span<const LengthGroup> groups() const { return groups_; }
  // positions()[r] = the input position of the token in row r.
  const int32_t* positions() const { return pos_.data(); }

  // Keeps keep[seq.index] tokens of each sequence (all when >= its length): [CLS] (position 0 of
  // the current rows) always, then the most important by `importance` (per row; ties to the earlier
  // row), in their original order. `rows` ([rows() x width]) is gathered into `spare`, which then
  // takes its place (the two are swapped). With `final_rows` set, each dropped token's row of
  // `carried` (same layout) is copied to final_rows at its original row.
  void Prune(std::span<const int64_t> keep, const double* importance, std::vector<float>& rows,
             std::vector<float>& spare, int64_t width, const float* carried, float* final_rows);

 private:
  void Group();

  std::vector<Seq> seqs_, next_;
  std::vector<LengthGroup> groups_;
  std::vector<int32_t> pos_, spare_pos_, select_, order_;
  std::vector<int64_t> gather_, pick_begin_, pick_len_;
  int64_t rows_ = 0, rows_in_ = 0;
};

}  // namespace topserve::engine
