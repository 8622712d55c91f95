// libFuzzer target: the server's request path without the network. The first byte picks the
// message (Classify, Answer, ClassifyStream, GetModel, ListModels); the rest is the request body,
// parsed exactly as the Inference service parses it (server/wire.h), then run through the Runtime
// that the handlers call: model resolution, validation, budget resolution, tokenization, QA window
// counting and building, scheduling on a real batcher and the tiny models' engine, and response
// assembly (then serialization).
//
// Models: TOPSERVE_FUZZ_CLS_MODEL and TOPSERVE_FUZZ_QA_MODEL (tiny model directories;
// scripts/fuzz.sh generates them with tools/gen_model.py), else the paths compiled in
// (TOPSERVE_FUZZ_MODELS/cls, /qa).
//
// Checked (besides no crash / ASan / UBSan / hang):
//   - a body that does not parse is INVALID_ARGUMENT with a message; one that parses is also clean
//     for the diagnosis walker (it agrees with libprotobuf), and an invalid-UTF-8 string is named;
//   - every call completes exactly once, with a code a client may get for its own input (OK,
//     INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND): never INTERNAL, UNKNOWN or a hang;
//   - an OK Classify has one result per input with a label of the model; an OK Answer's spans lie
//     inside the context on the reported byte offsets, with one window report per window;
//   - every OK response serializes.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "batching/scheduler.h"
#include "fuzz/fuzz_util.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/runtime.h"
#include "server/wire.h"
#include "topserve/v1/inference.pb.h"

#ifndef TOPSERVE_FUZZ_MODELS
#define TOPSERVE_FUZZ_MODELS "fuzz-models"
#endif

namespace {

namespace server = topserve::server;
namespace v1 = topserve::v1;

struct World {
  std::unique_ptr<server::Metrics> metrics;
  std::unique_ptr<topserve::batching::Scheduler> scheduler;
  std::unique_ptr<server::Runtime> runtime;
};

std::string ModelDir(const char* env, const char* fallback) {
  const char* v = std::getenv(env);
  return v != nullptr && *v != '\0' ? v : std::string(TOPSERVE_FUZZ_MODELS) + "/" + fallback;
}

World* MakeWorld() {
  server::ServerConfig config;
  config.limits.max_inputs_per_call = 8;
  config.limits.max_text_bytes = 4096;
  config.limits.max_tokens_per_call = 2048;
  config.batching.workers = 1;
  config.batching.threads_per_worker = 1;
  config.batching.max_queue_delay_us = 0;
  for (const auto& [name, dir, budget] :
       {std::tuple{"cls", ModelDir("TOPSERVE_FUZZ_CLS_MODEL", "cls"), 1.0},
        std::tuple{"qa", ModelDir("TOPSERVE_FUZZ_QA_MODEL", "qa"), 1.0},
        std::tuple{"capped", ModelDir("TOPSERVE_FUZZ_CLS_MODEL", "cls"), 0.5}}) {
    server::ModelConfig m;
    m.name = name;
    m.path = dir;
    m.default_budget = budget;
    m.max_budget = budget;
    m.warmup = false;
    config.models.push_back(m);
  }
  // A small queue so that "can never fit" (RESOURCE_EXHAUSTED) is reachable too.
  config.models[1].batching.max_queue_size = 16;
  auto die = [](const absl::Status& s) {
    std::fprintf(stderr,
                 "fuzz_request: set-up failed: %s\n(set TOPSERVE_FUZZ_CLS_MODEL and "
                 "TOPSERVE_FUZZ_QA_MODEL to tiny model dirs; scripts/fuzz.sh makes them)\n",
                 s.ToString().c_str());
    std::abort();
  };
  if (absl::Status s = server::NormalizeAndValidate(config, 1); !s.ok()) die(s);
  auto models = server::PrepareModels(config);
  if (!models.ok()) die(models.status());
  std::vector<server::ModelMetricsSpec> specs;
  for (const auto& m : *models) specs.push_back({m->config.name, m->layers, m->qa});
  auto* w = new World;
  w->metrics = std::make_unique<server::Metrics>(specs, "fuzz");
  topserve::batching::SchedulerOptions so;
  so.num_workers = 1;
  so.threads_per_worker = 1;
  so.observer = w->metrics.get();
  auto scheduler = topserve::batching::Scheduler::Create(std::move(so));
  if (!scheduler.ok()) die(scheduler.status());
  w->scheduler = std::move(*scheduler);
  w->runtime = std::make_unique<server::Runtime>(config, std::move(*models), w->metrics.get(),
                                                 w->scheduler.get());
  for (const auto& m : w->runtime->models()) {
    if (absl::Status s = w->runtime->LoadModel(*m); !s.ok()) die(s);
  }
  return w;
}

World& GetWorld() {
  static World* world = MakeWorld();
  return *world;
}

// Runs `start(done)` and waits for `done`, which must come exactly once.
template <typename Start>
absl::Status RunCall(Start start) {
  struct Result {
    std::mutex mu;
    std::condition_variable cv;
    int calls = 0;
    absl::Status status;
  };
  auto result = std::make_shared<Result>();
  start([result](absl::Status s) {
    std::lock_guard<std::mutex> lock(result->mu);
    ++result->calls;
    result->status = std::move(s);
    result->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(result->mu);
  const bool done =
      result->cv.wait_for(lock, std::chrono::seconds(20), [&] { return result->calls > 0; });
  FUZZ_CHECK(done, "the call never completed");
  FUZZ_CHECK(result->calls == 1, "done called %d times", result->calls);
  return result->status;
}

void CheckClientCode(const absl::Status& s, const char* what) {
  const absl::StatusCode c = s.code();
  FUZZ_CHECK(c == absl::StatusCode::kOk || c == absl::StatusCode::kInvalidArgument ||
                 c == absl::StatusCode::kResourceExhausted || c == absl::StatusCode::kNotFound,
             "%s: %s", what, s.ToString().c_str());
  FUZZ_CHECK(s.ok() || !s.message().empty(), "%s: error without a message", what);
}

void CheckSerializes(const google::protobuf::Message& m) {
  grpc::ByteBuffer out;
  absl::Status s = server::SerializeResponse(m, &out);
  FUZZ_CHECK(s.ok(), "response does not serialize: %s", s.ToString().c_str());
}

// Parses like the service. Returns whether the body parsed.
bool Parse(std::string_view body, google::protobuf::Message* message) {
  const absl::Status s = server::ParseRequest(body, message);
  if (s.ok()) {
    const std::string why = server::DiagnoseMalformed(body, message->GetDescriptor());
    FUZZ_CHECK(why.empty(), "libprotobuf parsed the body but the walker says: %s", why.c_str());
    return true;
  }
  topserve::fuzz::CheckInvalidArgument(s, "parse failure");
  return false;
}

void Classify(server::Runtime& rt, const v1::ClassifyRequest& req, server::Method method) {
  v1::ClassifyResponse resp;
  topserve::batching::CancellationToken token;
  const absl::Status s = RunCall([&](server::Runtime::DoneFn done) {
    rt.StartClassify(req, &resp, method, absl::Now() + absl::Seconds(30), token, std::move(done));
  });
  CheckClientCode(s, "Classify");
  if (!s.ok()) return;
  FUZZ_CHECK(resp.results_size() == req.inputs_size(), "%d results for %d inputs",
             resp.results_size(), req.inputs_size());
  for (const v1::Classification& c : resp.results()) {
    FUZZ_CHECK(!c.label().empty(), "a result without a label");
  }
  CheckSerializes(resp);
}

void Answer(server::Runtime& rt, const v1::AnswerRequest& req) {
  v1::AnswerResponse resp;
  topserve::batching::CancellationToken token;
  const absl::Status s = RunCall([&](server::Runtime::DoneFn done) {
    rt.StartAnswer(req, &resp, absl::Now() + absl::Seconds(30), token, std::move(done));
  });
  CheckClientCode(s, "Answer");
  if (!s.ok()) return;
  FUZZ_CHECK(resp.windows_size() > 0, "an answer from no window");
  const std::string& context = req.context();
  for (const v1::AnswerSpan& a : resp.n_best()) {
    FUZZ_CHECK(a.byte_start() >= 0 && a.byte_start() <= a.byte_end() &&
                   static_cast<size_t>(a.byte_end()) <= context.size(),
               "span [%d, %d) outside a context of %zu bytes", a.byte_start(), a.byte_end(),
               context.size());
    FUZZ_CHECK(a.text() == context.substr(static_cast<size_t>(a.byte_start()),
                                          static_cast<size_t>(a.byte_end() - a.byte_start())),
               "span text differs from the context bytes it names");
    FUZZ_CHECK(a.window() >= 0 && a.window() < resp.windows_size(), "window %d of %d", a.window(),
               resp.windows_size());
    FUZZ_CHECK(server::IsValidUtf8(a.text()), "answer text is not UTF-8");
  }
  CheckSerializes(resp);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  server::InstallProtobufLogLimiter();
  GetWorld();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 64 * 1024) return -1;
  server::Runtime& rt = *GetWorld().runtime;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0: {
      v1::ClassifyRequest req;
      if (Parse(body, &req)) Classify(rt, req, server::Method::kClassify);
      break;
    }
    case 1: {
      v1::AnswerRequest req;
      if (Parse(body, &req)) Answer(rt, req);
      break;
    }
    case 2: {
      v1::ClassifyStreamRequest req;
      if (Parse(body, &req)) {
        Classify(rt, req.request(), server::Method::kClassifyStream);
      } else {
        // What the stream echoes from a message that does not parse must be UTF-8.
        FUZZ_CHECK(server::IsValidUtf8(server::ScanStringField(body, 1)), "echoed id not UTF-8");
      }
      break;
    }
    case 3: {
      v1::GetModelRequest req;
      if (Parse(body, &req)) {
        v1::ModelInfo info;
        const absl::Status s = rt.GetModel(req, &info);
        CheckClientCode(s, "GetModel");
        if (s.ok()) CheckSerializes(info);
      }
      break;
    }
    default: {
      v1::ListModelsRequest req;
      if (Parse(body, &req)) {
        v1::ListModelsResponse resp;
        FUZZ_CHECK(rt.ListModels(&resp).ok(), "ListModels failed");
        FUZZ_CHECK(resp.models_size() == 3, "%d models", resp.models_size());
      }
      break;
    }
  }
  return 0;
}
