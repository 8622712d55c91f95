// server_engine_ref: the engine's direct outputs for the server's end-to-end tests. Reads JSON
// requests (one per line) on stdin and writes one JSON result per line, running each sequence on
// its own with the same planner, placement and QA post-processing the server uses:
//
//   {"model": DIR, "text": "...", "pair": "..." (optional), "budget": 0.5}
//     -> {"logits": [...], "tokens_in": n, "kept": [...], "macs": m, "unpruned_macs": u}
//   {"model": DIR, "question": "...", "context": "...", "budget": 1, "max_length": 384,
//    "doc_stride": 128, "max_query_tokens": 64, "max_answer_tokens": 30, "n_best": 3}
//     -> {"answers": [{"text", "begin", "end", "score"}...], "windows": [{"kept": [...], ...}]}
//   with "logits": true, each window also carries its "ids", "type_ids", "start_logits" and
//   "end_logits" (tests/qa_reference compares them with transformers).
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/bert_model.h"
#include "engine/qa.h"

namespace {

using nlohmann::json;
using topserve::engine::BertModel;

json Plan(const topserve::engine::PruneReport& r) {
  return {{"tokens_in", r.tokens_in},
          {"kept", r.kept},
          {"macs", r.macs},
          {"unpruned_macs", r.unpruned_macs},
          {"over_budget", r.over_budget}};
}

}  // namespace

int main() {
  std::map<std::string, std::unique_ptr<BertModel>> models;
  std::map<std::string, std::unique_ptr<topserve::engine::Workspace>> workspaces;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    const json req = json::parse(line);
    const std::string dir = req.at("model");
    if (!models.count(dir)) {
      auto loaded = BertModel::Load(dir, {1});
      if (!loaded.ok()) {
        std::cerr << loaded.status().message() << "\n";
        return 1;
      }
      workspaces[dir] = std::make_unique<topserve::engine::Workspace>(**loaded);
      models[dir] = std::move(*loaded);
    }
    const BertModel& model = *models[dir];
    topserve::engine::Workspace& ws = *workspaces[dir];
    const double budget = req.value("budget", 1.0);
    topserve::engine::RunOptions options;
    options.placement = model.schedule().placement;
    json out;
    std::vector<topserve::engine::Encoding> encodings;
    topserve::engine::QaOptions qa;
    if (req.contains("text")) {
      std::optional<std::string> pair;
      if (req.contains("pair")) pair = req.at("pair").get<std::string>();
      auto enc = model.tokenizer().Encode(req.at("text").get<std::string>(), pair,
                                          static_cast<size_t>(model.max_length()),
                                          topserve::engine::Truncation::kLongestFirst);
      if (!enc.ok()) {
        std::cerr << enc.status().message() << "\n";
        return 1;
      }
      encodings.push_back(std::move(*enc));
    } else {
      qa.max_length = req.value("max_length", int64_t{384});
      qa.doc_stride = req.value("doc_stride", int64_t{128});
      qa.max_query_tokens = req.value("max_query_tokens", int64_t{64});
      qa.max_answer_tokens = req.value("max_answer_tokens", int64_t{30});
      qa.n_best = req.value("n_best", int64_t{1});
      auto windows =
          topserve::engine::BuildQaWindows(model.tokenizer(), req.at("question").get<std::string>(),
                                           req.at("context").get<std::string>(), qa);
      if (!windows.ok()) {
        std::cerr << windows.status().message() << "\n";
        return 1;
      }
      encodings = std::move(*windows);
    }
    std::vector<std::vector<float>> starts, ends;
    for (const auto& enc : encodings) {
      auto plan = model.planner().Plan(static_cast<int64_t>(enc.size()), budget);
      if (!plan.ok()) {
        std::cerr << plan.status().message() << "\n";
        return 1;
      }
      topserve::engine::SequenceInput in{enc.ids, enc.type_ids, plan->kept};
      std::vector<topserve::engine::SequenceOutput> res(1);
      if (auto s = model.Run({&in, 1}, res, ws, options); !s.ok()) {
        std::cerr << s.message() << "\n";
        return 1;
      }
      json p = Plan(*plan);
      if (req.contains("text")) {
        out = p;
        out["logits"] = res[0].logits;
      } else {
        if (req.value("logits", false)) {
          p["ids"] = enc.ids;
          p["type_ids"] = enc.type_ids;
          p["start_logits"] = res[0].start_logits;
          p["end_logits"] = res[0].end_logits;
        }
        out["windows"].push_back(p);
        starts.push_back(res[0].start_logits);
        ends.push_back(res[0].end_logits);
      }
    }
    if (!req.contains("text")) {
      const std::string context = req.at("context");
      out["answers"] = json::array();
      for (const auto& s : topserve::engine::BestSpans(context, encodings, starts, ends, qa)) {
        out["answers"].push_back(
            {{"text", s.text}, {"begin", s.begin}, {"end", s.end}, {"score", s.score}});
      }
    }
    std::cout << out.dump() << std::endl;
  }
  return 0;
}
