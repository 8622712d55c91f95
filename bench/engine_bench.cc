// Engine benchmark: latency and FLOPs of the pruned engine against budgets, lengths and threads.
//
//   build/bench/engine_bench --model DIR [--lengths 128,384] [--budgets 1,0.5,0.25,0.125]
//        [--threads 1,2] [--batch 8] [--sst2 ../shared/data/sst2/dev.tsv] [--repeats 5]
//        [--json out.json] [--precision fp32|int8|bf16] [--profile]
//
// For each (workload, threads, budget) it runs the same batch `repeats` times after a warm-up and
// reports the median wall time, the planned MACs (engine/cost_model.h, the same numbers the server
// reports), the speedup against budget 1 and that speedup's ratio to the FLOPs reduction.
// Workloads: `batch` sequences of each fixed length (random ids), and the SST-2 dev sentences as
// one batch of real lengths. A "mixed" row runs all budgets' sequences in one batch and compares
// its time with the sum of the single-budget batches (the groups' ideal cost).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "engine/bert_model.h"
#include "engine/cpu_info.h"
#include "engine/profile.h"

namespace {

using namespace topserve::engine;
using Clock = std::chrono::steady_clock;

struct Workload {
  std::string name;
  std::vector<std::vector<int32_t>> ids;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Timed {
  double seconds = 0;
  int64_t macs = 0, unpruned = 0;
  int64_t tokens = 0;
};

// Runs the sequences with per-sequence budgets, `repeats` times; returns the median time.
Timed RunBatch(const BertModel& model, Workspace& ws, const std::vector<std::vector<int32_t>>& ids,
               const std::vector<double>& budgets, int repeats) {
  std::vector<PruneReport> plans;
  std::vector<SequenceInput> in;
  Timed t;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto plan = model.planner().Plan(static_cast<int64_t>(ids[i].size()), budgets[i]);
    if (!plan.ok()) {
      std::cerr << plan.status() << "\n";
      std::exit(1);
    }
    plans.push_back(*plan);
    t.macs += plan->macs;
    t.unpruned += plan->unpruned_macs;
    t.tokens += static_cast<int64_t>(ids[i].size());
  }
  for (size_t i = 0; i < ids.size(); ++i) in.push_back({ids[i], {}, plans[i].kept});
  std::vector<SequenceOutput> out(in.size());
  RunOptions opts;
  opts.placement = model.schedule().placement;
  std::vector<double> times;
  for (int r = -1; r < repeats; ++r) {
    auto start = Clock::now();
    auto st = model.Run(in, out, ws, opts);
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (!st.ok()) {
      std::cerr << st << "\n";
      std::exit(1);
    }
    if (r >= 0) times.push_back(s);
  }
  t.seconds = Median(times);
  return t;
}

// Runs the batch `repeats` more times with a profile attached; returns seconds per op per run and
// prints the table. The profiled runs are separate from the timed ones (timers cost ~1 us per op).
nlohmann::json Profile(const BertModel& model, Workspace& ws,
                       const std::vector<std::vector<int32_t>>& ids, double budget, int repeats) {
  OpProfile prof;
  ws.set_profile(&prof);
  std::vector<SequenceInput> in;
  std::vector<PruneReport> plans;
  for (const auto& s : ids) {
    auto plan = model.planner().Plan(static_cast<int64_t>(s.size()), budget);
    if (!plan.ok()) {
      std::cerr << plan.status() << "\n";
      std::exit(1);
    }
    plans.push_back(*plan);
  }
  for (size_t i = 0; i < ids.size(); ++i) in.push_back({ids[i], {}, plans[i].kept});
  std::vector<SequenceOutput> out(in.size());
  RunOptions opts;
  opts.placement = model.schedule().placement;
  const int runs = std::max(1, repeats);
  auto start = Clock::now();
  for (int r = 0; r < runs; ++r) (void)model.Run(in, out, ws, opts);
  const double wall = std::chrono::duration<double>(Clock::now() - start).count() / runs;
  ws.set_profile(nullptr);
  nlohmann::json j;
  double dense = 0, gemm = 0;
  const double measured = prof.total() / runs;
  std::fprintf(stderr, "  profile (budget %g): %.1f ms per run (%.1f ms timed by ops)\n", budget,
               wall * 1e3, measured * 1e3);
  for (int o = 0; o < static_cast<int>(Op::kCount); ++o) {
    const Op op = static_cast<Op>(o);
    const double s = prof.seconds(op) / runs;
    if (prof.calls(op) == 0) continue;
    j["ops"][std::string(OpName(op))] = s;
    if (IsDenseGemm(op)) dense += s;
    if (IsGemm(op)) gemm += s;
    std::fprintf(stderr, "    %-14s %8.2f ms  %5.1f%%\n", std::string(OpName(op)).c_str(), s * 1e3,
                 100.0 * s / measured);
  }
  // Time the op timers did not cover (the loop itself, grouping) counts as "other".
  j["ops"]["other"] = j["ops"].value("other", 0.0) + std::max(0.0, wall - measured);
  j["seconds_per_run"] = wall;
  j["share_outside_dense_gemms"] = 1.0 - dense / wall;
  j["share_outside_gemms"] = 1.0 - gemm / wall;
  std::fprintf(stderr, "    outside the dense GEMMs: %.1f%%; outside all GEMMs: %.1f%%\n",
               100.0 * (1.0 - dense / wall), 100.0 * (1.0 - gemm / wall));
  return j;
}

std::vector<std::vector<int32_t>> Sst2(const BertModel& model, const std::string& path,
                                       size_t limit) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // header
  std::vector<std::vector<int32_t>> ids;
  while (ids.size() < limit && std::getline(in, line)) {
    const std::string text = line.substr(0, line.rfind('\t'));
    auto enc = model.tokenizer().Encode(text, std::nullopt, 128, Truncation::kLongestFirst);
    if (enc.ok()) ids.push_back(enc->ids);
  }
  return ids;
}

template <typename T>
std::vector<T> ParseList(const std::string& s) {
  std::vector<T> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(static_cast<T>(std::stod(item)));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"topserve engine benchmark"};
  std::string model_dir, lengths_s = "128,384", budgets_s = "1,0.5,0.25,0.125", threads_s = "1,2";
  std::string sst2, json_out, precision_s = "fp32";
  int batch = 8, repeats = 5;
  size_t sst2_limit = 128;
  app.add_option("--model", model_dir)->required();
  app.add_option("--lengths", lengths_s);
  app.add_option("--budgets", budgets_s);
  app.add_option("--threads", threads_s);
  app.add_option("--batch", batch);
  app.add_option("--repeats", repeats);
  app.add_option("--sst2", sst2, "SST-2 dev.tsv for the real length mix");
  app.add_option("--sst2-limit", sst2_limit, "first N SST-2 dev sentences as one batch");
  app.add_option("--json", json_out);
  app.add_option("--precision", precision_s, "encoder dense layers: fp32, int8 or bf16")
      ->check(CLI::IsMember({"fp32", "int8", "bf16"}));
  bool profile = false, skip_accuracy = false;
  std::string bf16_s = "if-faster";
  app.add_option(
         "--bf16-kernels", bf16_s,
         "where the CPU has native bf16: if-faster (the server's way: Load measures), always, "
         "never")
      ->check(CLI::IsMember({"if-faster", "always", "never"}));
  app.add_flag("--skip-accuracy", skip_accuracy,
               "do not compare a reduced precision's logits with fp32 (two more model loads)");
  app.add_flag("--profile", profile,
               "print (and write to the JSON) the time of each op per budget");
  CLI11_PARSE(app, argc, argv);
  const Precision precision = *PrecisionFromName(precision_s);  // IsMember checked the name
  const Bf16Kernels bf16_kernels = bf16_s == "always"  ? Bf16Kernels::kAlways
                                   : bf16_s == "never" ? Bf16Kernels::kNever
                                                       : Bf16Kernels::kIfFaster;

  auto model = BertModel::Load(model_dir);
  if (!model.ok()) {
    std::cerr << model.status() << "\n";
    return 1;
  }
  const BertModel& m = **model;
  std::vector<Workload> workloads;
  std::mt19937 rng(1);
  for (int len : ParseList<int>(lengths_s)) {
    Workload w{"len" + std::to_string(len), {}};
    for (int b = 0; b < batch; ++b) {
      std::vector<int32_t> ids(static_cast<size_t>(len));
      for (auto& x : ids) x = static_cast<int32_t>(1000 + rng() % 28000);
      ids.front() = 101;
      ids.back() = 102;
      w.ids.push_back(ids);
    }
    workloads.push_back(w);
  }
  if (!sst2.empty()) workloads.push_back({"sst2-dev", Sst2(m, sst2, sst2_limit)});
  const auto budgets = ParseList<double>(budgets_s);

  nlohmann::json out;
  out["model"] = model_dir;
  out["schedule"] = m.schedule().source;
  out["placement"] = std::string(PlacementName(m.schedule().placement));
  out["precision"] = precision_s;
  out["cpu"] = CpuModelName();
  // The OpenMP thread model decides small-batch latency on few cores; the server runs with
  // OMP_WAIT_POLICY=passive GOMP_SPINCOUNT=10000 (server/main.cc), and so should a benchmark of it.
  for (const char* var : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}) {
    const char* v = std::getenv(var);
    out["openmp"][var] = v != nullptr ? v : "";
  }
  out["isa"] = std::string(DnnlIsaName());
  std::fprintf(stderr, "CPU: %s; oneDNN ISA: %s; our kernels: %s\n", CpuModelName().c_str(),
               std::string(DnnlIsaName()).c_str(), GetCpuFeatures().avx512 ? "avx512" : "avx2");
  out["rows"] = nlohmann::json::array();
  for (int threads : ParseList<int>(threads_s)) {
    FlushDnnlPrimitiveCache();  // primitives made under another thread count must not be reused
    auto mt = BertModel::Load(
        model_dir, {.num_threads = threads, .precision = precision, .bf16_kernels = bf16_kernels});
    out["precision"] = std::string(PrecisionName((*mt)->precision()));  // after any fallback
    out["uses_bf16"] = (*mt)->uses_bf16();
    if (const auto& probe = (*mt)->bf16_probe(); probe.has_value()) {
      out["bf16_probe_ms"] = {{"fp32", probe->fp32_ms}, {"bf16", probe->bf16_ms}};
      std::fprintf(
          stderr, "bf16 probe (128 x %lld x %lld, %d threads): fp32 %.2f ms, bf16 %.2f ms -> %s\n",
          static_cast<long long>((*mt)->config().hidden_size),
          static_cast<long long>((*mt)->config().intermediate_size), threads, probe->fp32_ms,
          probe->bf16_ms, (*mt)->uses_bf16() ? "bf16 kernels" : "fp32 kernels");
    }
    Workspace ws(**mt);
    for (const Workload& w : workloads) {
      double base = 0;
      int64_t base_macs = 0;
      for (double b : budgets) {
        Timed t = RunBatch(**mt, ws, w.ids, std::vector<double>(w.ids.size(), b), repeats);
        nlohmann::json ops;
        if (profile) ops = Profile(**mt, ws, w.ids, b, repeats);
        if (b == 1.0) {
          base = t.seconds;
          base_macs = t.macs;
        }
        nlohmann::json row = {
            {"workload", w.name},
            {"threads", threads},
            {"budget", b},
            {"sequences", w.ids.size()},
            {"tokens", t.tokens},
            {"seconds", t.seconds},
            {"gmacs", static_cast<double>(t.macs) / 1e9},
            {"flops_fraction", static_cast<double>(t.macs) / static_cast<double>(t.unpruned)},
            {"gflops_per_s", 2.0 * static_cast<double>(t.macs) / t.seconds / 1e9}};
        if (base > 0) {
          const double speedup = base / t.seconds;
          const double reduction = static_cast<double>(base_macs) / static_cast<double>(t.macs);
          row["speedup"] = speedup;
          row["flops_reduction"] = reduction;
          row["speedup_over_reduction"] = speedup / reduction;
        }
        if (profile) row["profile"] = ops;
        out["rows"].push_back(row);
        std::fprintf(stderr, "%-9s threads=%d budget=%-6g %8.1f ms  flops=%.3f  %6.1f GFLOP/s%s\n",
                     w.name.c_str(), threads, b, t.seconds * 1e3,
                     static_cast<double>(t.macs) / static_cast<double>(t.unpruned),
                     2.0 * static_cast<double>(t.macs) / t.seconds / 1e9,
                     base > 0 ? ("  speedup/reduction=" +
                                 std::to_string(row["speedup_over_reduction"].get<double>()))
                                    .c_str()
                              : "");
      }
      // Mixed batch: sequence i gets budgets[i % n]; compare with the sum of its groups' times,
      // each group (the sequences of one budget) run as a batch of its own.
      std::vector<double> mixed(w.ids.size());
      double sum_groups = 0;
      for (size_t k = 0; k < budgets.size(); ++k) {
        std::vector<std::vector<int32_t>> group;
        for (size_t i = k; i < w.ids.size(); i += budgets.size()) group.push_back(w.ids[i]);
        for (size_t i = k; i < w.ids.size(); i += budgets.size()) mixed[i] = budgets[k];
        if (!group.empty()) {
          sum_groups +=
              RunBatch(**mt, ws, group, std::vector<double>(group.size(), budgets[k]), repeats)
                  .seconds;
        }
      }
      Timed t = RunBatch(**mt, ws, w.ids, mixed, repeats);
      out["rows"].push_back({{"workload", w.name},
                             {"threads", threads},
                             {"budget", "mixed"},
                             {"sequences", w.ids.size()},
                             {"seconds", t.seconds},
                             {"sum_of_groups_seconds", sum_groups},
                             {"mixed_over_groups", t.seconds / sum_groups}});
      std::fprintf(
          stderr, "%-9s threads=%d mixed budgets %8.1f ms vs groups %.1f ms (ratio %.3f)\n",
          w.name.c_str(), threads, t.seconds * 1e3, sum_groups * 1e3, t.seconds / sum_groups);
    }
  }
  // Accuracy of a reduced precision on this model: logits against the fp32 engine (itself within
  // 1e-5 of the float64 reference) on the first workload, unpruned.
  if (precision != Precision::kFloat32 && !workloads.empty() && !skip_accuracy) {
    FlushDnnlPrimitiveCache();
    auto ref = BertModel::Load(model_dir, {.num_threads = 2});
    auto low = BertModel::Load(
        model_dir, {.num_threads = 2, .precision = precision, .bf16_kernels = bf16_kernels});
    Workspace ws_ref(**ref), ws_low(**low);
    const auto& ids = workloads.front().ids;
    std::vector<SequenceInput> in;
    for (const auto& s : ids) in.push_back({s, {}, {}});
    std::vector<SequenceOutput> a(in.size()), b(in.size());
    (void)(*ref)->Run(in, a, ws_ref);
    (void)(*low)->Run(in, b, ws_low);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      for (size_t k = 0; k < a[i].logits.size(); ++k) {
        worst = std::max(worst, static_cast<double>(std::fabs(a[i].logits[k] - b[i].logits[k])));
        scale = std::max(scale, static_cast<double>(std::fabs(a[i].logits[k])));
      }
    }
    out["max_abs_logit_diff_vs_fp32"] = worst;
    out["max_abs_logit_fp32"] = scale;
    std::fprintf(stderr, "%s vs fp32 on %s, budget 1: max abs logit diff %.3g (max |logit| %.3g)\n",
                 precision_s.c_str(), workloads.front().name.c_str(), worst, scale);
  }
  const std::string text = out.dump(2);
  if (!json_out.empty()) std::ofstream(json_out) << text << "\n";
  std::cout << text << "\n";
  return 0;
}
