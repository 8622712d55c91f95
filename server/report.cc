#include "server/report.h"

#include <algorithm>

namespace topserve::server {

void FillPruningReport(const engine::PruneReport& plan, int64_t num_layers, double budget_requested,
                       const batching::TaskReport& task, v1::PruningReport* out) {
  out->set_tokens_in(plan.tokens_in);
  out->clear_tokens_kept();
  for (int64_t l = 0; l < num_layers; ++l) {
    const size_t i = static_cast<size_t>(l);
    out->add_tokens_kept(i < plan.kept.size() ? plan.kept[i]
                                              : static_cast<int32_t>(plan.tokens_in));
  }
  out->set_flops(FlopsFromMacs(plan.macs));
  out->set_unpruned_flops(FlopsFromMacs(plan.unpruned_macs));
  out->set_flops_fraction(plan.flops_fraction());
  out->set_budget_requested(budget_requested);
  out->set_budget_used(task.budget_used);
  out->set_budget_lowered(task.budget_lowered);
  out->set_over_budget(plan.over_budget);
}

int32_t CodePoints(std::string_view text, int32_t bytes) {
  const size_t n = std::min(text.size(), static_cast<size_t>(std::max(0, bytes)));
  int32_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    // Count every byte that is not a UTF-8 continuation byte (10xxxxxx).
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) ++count;
  }
  return count;
}

}  // namespace topserve::server
