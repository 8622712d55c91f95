#include "server/service.h"

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/report.h"
#include "server/wire.h"

namespace topserve::server {
namespace {

// The call's deadline on absl's clock (the scheduler's RealClock); "none" -> InfiniteFuture.
absl::Time Deadline(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  const auto now = std::chrono::system_clock::now();
  if (deadline > now + std::chrono::hours(24 * 365)) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

constexpr size_t kMaxRequestIdBytes = 256;

// At most kMaxRequestIdBytes of `id`, cut at a UTF-8 character boundary.
std::string TruncatedId(const std::string& id) {
  if (id.size() <= kMaxRequestIdBytes) return id;
  size_t cut = kMaxRequestIdBytes;
  while (cut > 0 && (static_cast<unsigned char>(id[cut]) & 0xC0) == 0x80) --cut;
  return id.substr(0, cut);
}

// Whether a cancellation is the deadline's. gRPC's deadline timer and absl's clock may disagree
// by a few milliseconds, so a cancellation just before the deadline counts as the deadline.
bool DeadlineReached(absl::Time deadline) {
  return absl::Now() + absl::Milliseconds(20) >= deadline;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbering.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// A unary call: owns its parsed request and its response (the Runtime may keep pointers to both
// until it calls Done()), and writes the serialized response into gRPC's buffer when it finishes.
template <typename Request, typename Response>
class InferenceService::UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(InferenceService* service, grpc::CallbackServerContext* context, grpc::ByteBuffer* out)
      : service_(service), deadline_(Deadline(context)), out_(out) {
    service_->CallStarted();
  }

  Request request;
  Response response;

  absl::Time deadline() const { return deadline_; }
  const batching::CancellationToken& token() const { return token_; }
  // Finishes the call (with the response when `status` is OK); the reactor must not be touched
  // afterwards.
  void Complete(absl::Status status) {
    if (status.ok()) status = SerializeResponse(response, out_);
    Finish(ToGrpcStatus(status));
  }
  // The Runtime's completion callback.
  Runtime::DoneFn Done() {
    return [this](absl::Status status) { Complete(std::move(status)); };
  }

  void OnCancel() override {
    // At its deadline the call is the scheduler's to expire (DEADLINE_EXCEEDED, never run);
    // otherwise the client went away: drop its work from the queue or batch.
    if (!DeadlineReached(deadline_)) token_.Cancel();
  }
  void OnDone() override {
    InferenceService* service = service_;
    delete this;
    service->CallDone();
  }

 private:
  InferenceService* const service_;
  const absl::Time deadline_;
  grpc::ByteBuffer* const out_;
  batching::CancellationToken token_;
};

// A ClassifyStream refused before reading anything.
class InferenceService::RefusedStream final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  RefusedStream(InferenceService* service, const absl::Status& status) : service_(service) {
    service_->CallStarted();
    Finish(ToGrpcStatus(status));
  }
  void OnDone() override {
    InferenceService* service = service_;
    delete this;
    service->CallDone();
  }

 private:
  InferenceService* const service_;
};

absl::Status InferenceService::Authenticate(const grpc::CallbackServerContext* context,
                                            Method method, const std::string& model_label) {
  if (!auth_.enabled()) return absl::OkStatus();
  const absl::Time start = absl::Now();
  std::optional<std::string_view> authorization;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    authorization = std::string_view(it->second.data(), it->second.size());
  }
  absl::Status status = auth_.Check(authorization);
  if (!status.ok()) {
    rt_.metrics().RecordRequest(model_label, method, status.code(),
                                absl::ToDoubleSeconds(absl::Now() - start));
  }
  return status;
}

template <typename Call, typename LabelFn>
bool InferenceService::Admit(grpc::CallbackServerContext* context, const grpc::ByteBuffer& body,
                             Method method, LabelFn label, Call* call) {
  const absl::Time start = absl::Now();
  const absl::Status parsed = ParseRequest(body, &call->request);
  // A body that does not parse names no model it can be counted under.
  const std::string model =
      parsed.ok() ? label(call->request) : std::string(Metrics::kUnknownModel);
  // Authentication first: a caller without a token learns nothing about its request.
  if (absl::Status s = Authenticate(context, method, model); !s.ok()) {
    call->Complete(s);
    return false;
  }
  if (!parsed.ok()) {
    rt_.metrics().RecordRequest(model, method, parsed.code(), SecondsSince(start));
    call->Complete(parsed);
    return false;
  }
  return true;
}

grpc::ServerUnaryReactor* InferenceService::Classify(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<v1::ClassifyRequest, v1::ClassifyResponse>(this, context, response);
  const auto label = [this](const v1::ClassifyRequest& r) {
    return rt_.ModelLabel(r.model(), /*qa=*/false);
  };
  if (Admit(context, *request, Method::kClassify, label, call)) {
    rt_.StartClassify(call->request, &call->response, Method::kClassify, call->deadline(),
                      call->token(), call->Done());
  }
  return call;
}

grpc::ServerUnaryReactor* InferenceService::Answer(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<v1::AnswerRequest, v1::AnswerResponse>(this, context, response);
  const auto label = [this](const v1::AnswerRequest& r) {
    return rt_.ModelLabel(r.model(), /*qa=*/true);
  };
  if (Admit(context, *request, Method::kAnswer, label, call)) {
    rt_.StartAnswer(call->request, &call->response, call->deadline(), call->token(), call->Done());
  }
  return call;
}

grpc::ServerUnaryReactor* InferenceService::ListModels(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request,
                                                       grpc::ByteBuffer* response) {
  auto* call =
      new UnaryCall<v1::ListModelsRequest, v1::ListModelsResponse>(this, context, response);
  const auto label = [](const v1::ListModelsRequest&) { return std::string(Metrics::kAllModels); };
  if (Admit(context, *request, Method::kListModels, label, call)) {
    call->Complete(rt_.ListModels(&call->response));
  }
  return call;
}

grpc::ServerUnaryReactor* InferenceService::GetModel(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  auto* call = new UnaryCall<v1::GetModelRequest, v1::ModelInfo>(this, context, response);
  const auto label = [this](const v1::GetModelRequest& r) {
    return rt_.ModelLabel(r.name(), std::nullopt);
  };
  if (Admit(context, *request, Method::kGetModel, label, call)) {
    call->Complete(rt_.GetModel(call->request, &call->response));
  }
  return call;
}

// ClassifyStream: reads requests while fewer than limits.max_stream_inflight are in progress,
// runs them concurrently, writes responses one at a time in completion order.
//
// Locking: mu_ guards all state. Reactions never run inline from StartRead/StartWrite/Finish
// (this reactor is not "inlineable"), so those are called with mu_ held. After Finish() only
// OnDone() touches the object; it takes mu_ once so that the thread that called Finish() has let
// go of it first.
class InferenceService::StreamCall final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamCall(InferenceService* service, grpc::CallbackServerContext* context)
      : service_(service),
        deadline_(Deadline(context)),
        max_inflight_(service->rt_.config().limits.max_stream_inflight) {
    absl::MutexLock lock(&mu_);
    reading_ = true;
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    absl::ReleasableMutexLock lock(&mu_);
    reading_ = false;
    if (!ok) {
      read_done_ = true;
      MaybeFinishLocked();
      return;
    }
    const absl::Time start = absl::Now();
    auto item = std::make_shared<Item>();
    grpc::ByteBuffer body;
    body.Swap(&request_);  // Parsed below, without the lock.
    item->serial = next_serial_++;
    tokens_.emplace(item->serial, item->token);
    ++inflight_;
    if (inflight_ < max_inflight_ && !draining_) {
      reading_ = true;
      StartRead(&request_);
    }
    lock.Release();  // The Runtime may complete the item on this thread.

    Metrics& metrics = service_->rt_.metrics();
    if (const absl::Status parsed = ParseRequest(body, &item->request); !parsed.ok()) {
      // One bad message fails only itself; its request_id is echoed when it can be read, so the
      // client can tell which request failed.
      item->response.set_request_id(TruncatedId(ScanStringField(BufferBytes(body), 1)));
      metrics.RecordRequest(Metrics::kUnknownModel, Method::kClassifyStream, parsed.code(),
                            SecondsSince(start));
      Complete(item, parsed);
      return;
    }
    // Echo what fits, cut at a UTF-8 character boundary: an empty id would match no request.
    item->response.set_request_id(TruncatedId(item->request.request_id()));
    if (item->request.request_id().size() > kMaxRequestIdBytes) {
      const absl::Status status = absl::InvalidArgumentError(
          absl::StrCat("request_id: ", item->request.request_id().size(),
                       " bytes is over the limit of ", kMaxRequestIdBytes));
      metrics.RecordRequest(service_->rt_.ModelLabel(item->request.request().model(), false),
                            Method::kClassifyStream, status.code(), SecondsSince(start));
      Complete(item, status);
      return;
    }
    service_->rt_.StartClassify(item->request.request(), item->response.mutable_response(),
                                Method::kClassifyStream, deadline_, item->token,
                                [this, item](absl::Status status) { Complete(item, status); });
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    outbox_.pop_front();
    if (!ok) {
      broken_ = true;  // The client is gone; nothing more can be written.
      outbox_.clear();
    } else if (!outbox_.empty()) {
      writing_ = true;
      StartWrite(&outbox_.front());
    }
    MaybeFinishLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (DeadlineReached(deadline_)) return;  // Expired work is the scheduler's to fail.
    for (auto& [serial, token] : tokens_) token.Cancel();
    cancelled_ = true;
  }

  void OnDone() override {
    InferenceService* service = service_;
    service->Unregister(this);
    { absl::MutexLock lock(&mu_); }
    delete this;
    service->CallDone();
  }

  void BeginDrain() {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

 private:
  struct Item {
    v1::ClassifyStreamRequest request;
    v1::ClassifyStreamResponse response;
    batching::CancellationToken token;
    uint64_t serial = 0;
  };

  void Complete(const std::shared_ptr<Item>& item, const absl::Status& status) {
    if (!status.ok()) {
      item->response.clear_response();
      v1::RpcStatus* error = item->response.mutable_error();
      error->set_code(static_cast<int32_t>(status.code()));
      error->set_message(std::string(status.message()));
    }
    grpc::ByteBuffer out;
    if (absl::Status s = SerializeResponse(item->response, &out); !s.ok()) {
      v1::ClassifyStreamResponse failed;
      failed.set_request_id(item->response.request_id());
      failed.mutable_error()->set_code(static_cast<int32_t>(s.code()));
      failed.mutable_error()->set_message(std::string(s.message()));
      (void)SerializeResponse(failed, &out);
    }
    absl::MutexLock lock(&mu_);
    --inflight_;
    tokens_.erase(item->serial);
    if (!broken_ && !cancelled_ && !finished_) {
      outbox_.push_back(std::move(out));
      if (!writing_) {
        writing_ = true;
        StartWrite(&outbox_.front());
      }
    }
    if (!reading_ && !read_done_ && !draining_ && !finished_ && !broken_ &&
        inflight_ < max_inflight_) {
      reading_ = true;
      StartRead(&request_);
    }
    MaybeFinishLocked();
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || inflight_ > 0) return;
    if (broken_ || cancelled_) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled"));
    } else if (read_done_) {
      finished_ = true;
      Finish(grpc::Status::OK);
    } else if (draining_) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    }
  }

  InferenceService* const service_;
  const absl::Time deadline_;
  const int64_t max_inflight_;

  absl::Mutex mu_;
  grpc::ByteBuffer request_ ABSL_GUARDED_BY(mu_);  // Target of the outstanding read.
  // Serialized responses; front() is being written when writing_.
  std::deque<grpc::ByteBuffer> outbox_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, batching::CancellationToken> tokens_ ABSL_GUARDED_BY(mu_);  // In progress.
  uint64_t next_serial_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* InferenceService::ClassifyStream(
    grpc::CallbackServerContext* context) {
  // The stream's messages may name different models; a refused stream counts under "_unknown".
  if (absl::Status s =
          Authenticate(context, Method::kClassifyStream, std::string(Metrics::kUnknownModel));
      !s.ok()) {
    return new RefusedStream(this, s);
  }
  CallStarted();
  auto* call = new StreamCall(this, context);
  Register(call);
  if (rt_.draining()) call->BeginDrain();
  return call;
}

void InferenceService::Register(StreamCall* call) {
  absl::MutexLock lock(&streams_mu_);
  streams_.insert(call);
}

void InferenceService::Unregister(StreamCall* call) {
  absl::MutexLock lock(&streams_mu_);
  streams_.erase(call);
}

void InferenceService::CallStarted() {
  absl::MutexLock lock(&calls_mu_);
  ++live_calls_;
}

void InferenceService::CallDone() {
  absl::MutexLock lock(&calls_mu_);
  --live_calls_;  // WaitForCalls' condition is re-evaluated on unlock.
}

bool InferenceService::WaitForCalls(absl::Time deadline) {
  absl::MutexLock lock(&calls_mu_);
  auto none_left = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls_mu_) { return live_calls_ == 0; };
  return calls_mu_.AwaitWithDeadline(absl::Condition(&none_left), deadline);
}

void InferenceService::DrainStreams() {
  absl::MutexLock lock(&streams_mu_);
  for (StreamCall* call : streams_) call->BeginDrain();
}

}  // namespace topserve::server
