// topserve-cli: loads a model directory and classifies texts or answers a question, printing JSON
// with per-stage timings. The server does the same work behind gRPC; this is the quickest way to
// check a model directory by hand.
//
//   topserve-cli classify --model DIR "a text" "another text" [--pair "second text"]
//   topserve-cli answer --model DIR --question "..." --context "..." [--n-best 3]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "engine/bert_model.h"
#include "engine/qa.h"

namespace {

using topserve::engine::BertModel;
using topserve::engine::Encoding;
using topserve::engine::SequenceInput;
using topserve::engine::SequenceOutput;
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

int Fail(const std::string& message) {
  std::cerr << "topserve-cli: " << message << "\n";
  return 1;
}

std::vector<SequenceInput> Inputs(const std::vector<Encoding>& encodings) {
  std::vector<SequenceInput> in;
  for (const Encoding& e : encodings) in.push_back({e.ids, e.type_ids, {}});
  return in;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"topserve-cli: run a BERT model directory on texts"};
  app.require_subcommand(1);
  std::string model_dir;
  int threads = 0;
  app.add_option("--model", model_dir, "model directory (Hugging Face layout)")->required();
  app.add_option("--threads", threads, "threads (default: CPUs available to the process)");
  std::string precision = "fp32";
  app.add_option("--precision", precision, "encoder dense layers: fp32, int8 or bf16")
      ->check(CLI::IsMember({"fp32", "int8", "bf16"}));

  auto* classify = app.add_subcommand("classify", "classify texts (or text pairs with --pair)");
  std::vector<std::string> texts;
  std::vector<std::string> pairs;
  classify->add_option("texts", texts, "texts to classify")->required();
  classify->add_option("--pair", pairs, "second texts, one per text");

  auto* answer = app.add_subcommand("answer", "answer a question over a context");
  std::string question, context;
  topserve::engine::QaOptions qa;
  answer->add_option("--question", question)->required();
  answer->add_option("--context", context)->required();
  answer->add_option("--n-best", qa.n_best, "answers to return")->check(CLI::Range(1, 100));
  answer->add_option("--max-answer-tokens", qa.max_answer_tokens)->check(CLI::Range(1, 512));
  answer->add_option("--doc-stride", qa.doc_stride, "tokens shared by consecutive windows");
  answer->add_option("--max-length", qa.max_length, "tokens per window")->check(CLI::Range(8, 512));
  CLI11_PARSE(app, argc, argv);

  nlohmann::json out;
  auto t = Clock::now();
  // IsMember checked the name.
  auto loaded = BertModel::Load(
      model_dir,
      {.num_threads = threads, .precision = *topserve::engine::PrecisionFromName(precision)});
  if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
  const BertModel& model = **loaded;
  out["timings_ms"]["load"] = MsSince(t);
  topserve::engine::Workspace ws(model);
  const bool is_qa = model.config().task == topserve::engine::Task::kQuestionAnswering;
  if (model.config().task == topserve::engine::Task::kFeatureExtraction) {
    return Fail(
        "this model is a headless encoder (BertModel): it has no classification or QA head");
  }

  if (classify->parsed()) {
    if (is_qa) return Fail("this model answers questions; use 'answer'");
    if (!pairs.empty() && pairs.size() != texts.size()) return Fail("give one --pair per text");
    t = Clock::now();
    std::vector<Encoding> encodings;
    for (size_t i = 0; i < texts.size(); ++i) {
      std::optional<std::string_view> b;
      if (!pairs.empty()) b = pairs[i];
      auto enc = model.tokenizer().Encode(texts[i], b, static_cast<size_t>(model.max_length()),
                                          topserve::engine::Truncation::kLongestFirst);
      if (!enc.ok())
        return Fail("text " + std::to_string(i) + ": " + std::string(enc.status().message()));
      encodings.push_back(std::move(*enc));
    }
    out["timings_ms"]["tokenize"] = MsSince(t);
    std::vector<SequenceInput> in = Inputs(encodings);
    std::vector<SequenceOutput> res(in.size());
    t = Clock::now();
    if (auto st = model.Run(in, res, ws); !st.ok()) return Fail(std::string(st.message()));
    out["timings_ms"]["compute"] = MsSince(t);
    for (size_t i = 0; i < res.size(); ++i) {
      const auto& logits = res[i].logits;
      double mx = *std::max_element(logits.begin(), logits.end()), z = 0;
      for (float v : logits) z += std::exp(v - mx);
      nlohmann::json r;
      size_t best = 0;
      for (size_t k = 0; k < logits.size(); ++k) {
        const double p = std::exp(logits[k] - mx) / z;
        r["probabilities"][model.config().labels[k]] = p;
        if (logits[k] > logits[best]) best = k;
      }
      r["text"] = texts[i];
      r["label"] = model.config().labels[best];
      r["score"] = r["probabilities"][model.config().labels[best]];
      r["logits"] = logits;
      r["tokens"] = encodings[i].size();
      out["results"].push_back(r);
    }
  } else {
    if (!is_qa) return Fail("this model classifies; use 'classify'");
    qa.max_length = std::min<int64_t>(qa.max_length, model.max_length());
    t = Clock::now();
    auto windows = topserve::engine::BuildQaWindows(model.tokenizer(), question, context, qa);
    if (!windows.ok()) return Fail(std::string(windows.status().message()));
    out["timings_ms"]["tokenize"] = MsSince(t);
    std::vector<SequenceInput> in = Inputs(*windows);
    std::vector<SequenceOutput> res(in.size());
    t = Clock::now();
    if (auto st = model.Run(in, res, ws); !st.ok()) return Fail(std::string(st.message()));
    out["timings_ms"]["compute"] = MsSince(t);
    t = Clock::now();
    std::vector<std::vector<float>> starts, ends;
    for (auto& r : res) {
      starts.push_back(std::move(r.start_logits));
      ends.push_back(std::move(r.end_logits));
    }
    auto spans = topserve::engine::BestSpans(context, *windows, starts, ends, qa);
    out["timings_ms"]["postprocess"] = MsSince(t);
    out["windows"] = windows->size();
    out["answers"] = nlohmann::json::array();
    for (const auto& s : spans) {
      out["answers"].push_back(
          {{"text", s.text}, {"begin", s.begin}, {"end", s.end}, {"score", s.score}});
    }
  }
  out["model"] = model.dir();
  out["threads"] = model.num_threads();
  out["precision"] = std::string(topserve::engine::PrecisionName(model.precision()));
  std::cout << out.dump(2) << "\n";
  return 0;
}
