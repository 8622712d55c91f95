#include "engine/packed_batch.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "engine/rows.h"

namespace topserve::engine {
void PackedBatch::Reset(std::span<const int64_t> lengths) {
  seqs_.resize(lengths.size());
  for (size_t s = 0; s < lengths.size(); ++s) {
    seqs_[s] = {static_cast<int32_t>(s), lengths[s], 0, 0};
  }
  std::stable_sort(seqs_.begin(), seqs_.end(),
                   [](const Seq& a, const Seq& b) { return a.len > b.len; });
  int64_t total = 0;
  for (Seq& s : seqs_) {
    s.offset = s.orig_offset = total;
    total += s.len;
  }
  rows_ = rows_in_ = total;
  pos_.resize(static_cast<size_t>(total));
  for (const Seq& s : seqs_) {
    for (int64_t i = 0; i < s.len; ++i)
      pos_[static_cast<size_t>(s.offset + i)] = static_cast<int32_t>(i);
  }
  Group();
}

void PackedBatch::Group() {
  groups_.clear();
  for (size_t gi = 0; gi < seqs_.size();) {
    size_t ge = gi;
    while (ge < seqs_.size() && seqs_[ge].len == seqs_[gi].len) ++ge;
    groups_.push_back({seqs_[gi].offset, seqs_[gi].len, static_cast<int64_t>(ge - gi)});
    gi = ge;
  }
}

void PackedBatch::Prune(std::span<const int64_t> keep, const double* importance,
                        std::vector<float>& rows, std::vector<float>& spare, int64_t width,
                        const float* carried, float* final_rows) {
  const size_t n = seqs_.size();
  std::vector<int32_t>& sel = select_;
  sel.clear();
  pick_begin_.resize(n);
  pick_len_.resize(n);
  for (size_t si = 0; si < n; ++si) {
    const Seq& s = seqs_[si];
    const int64_t k = std::min<int64_t>(keep[static_cast<size_t>(s.index)], s.len);
    const size_t base = sel.size();
    pick_begin_[si] = static_cast<int64_t>(base);
    pick_len_[si] = k;
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
  gather_.resize(static_cast<size_t>(rows_));
  spare_pos_.resize(static_cast<size_t>(rows_));
  if (spare.size() < rows.size()) spare.resize(rows.size());
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), 0);
  std::stable_sort(order_.begin(), order_.end(),
                   [&](int32_t a, int32_t b) { return pick_len_[a] > pick_len_[b]; });
  next_.resize(n);
  int64_t row = 0;
  for (size_t oi = 0; oi < n; ++oi) {
    const size_t si = static_cast<size_t>(order_[oi]);
    const Seq& s = seqs_[si];
    const int32_t* chosen = sel.data() + pick_begin_[si];
    const int64_t k = pick_len_[si];
    if (final_rows != nullptr && k < s.len) {
      int64_t j = 0;
      for (int64_t i = 0; i < s.len; ++i) {
        if (j < k && chosen[j] == i) {
          ++j;
          continue;
        }
        CopyRow(carried + (s.offset + i) * width,
                final_rows + (s.orig_offset + pos_[static_cast<size_t>(s.offset + i)]) * width,
                width);
      }
    }
    for (int64_t j = 0; j < k; ++j) {
      gather_[static_cast<size_t>(row + j)] = s.offset + chosen[j];
      spare_pos_[static_cast<size_t>(row + j)] = pos_[static_cast<size_t>(s.offset + chosen[j])];
    }
    next_[oi] = {s.index, k, row, s.orig_offset};
    row += k;
  }
  // One parallel copy of all surviving rows.
  const float* src = rows.data();
  float* dst = spare.data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < row; ++r) {
    CopyRow(src + gather_[static_cast<size_t>(r)] * width, dst + r * width, width);
  }
  std::swap(seqs_, next_);
  std::swap(pos_, spare_pos_);
  std::swap(rows, spare);
  rows_ = row;
  Group();
}

}  // namespace topserve::engine
