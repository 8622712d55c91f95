#include "server/service.h"

#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <string_view>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

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

// A unary inference call: finished from the Runtime's completion callback.
class InferenceService::UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryCall(grpc::CallbackServerContext* context) : deadline_(Deadline(context)) {}

  absl::Time deadline() const { return deadline_; }
  const batching::CancellationToken& token() const { return token_; }
  // The Runtime's completion callback; the reactor must not be touched after Finish().
  Runtime::DoneFn Done() {
    return [this](absl::Status status) { Finish(ToGrpcStatus(status)); };
  }

  void OnCancel() override {
    // At its deadline the call is the scheduler's to expire (DEADLINE_EXCEEDED, never run);
    // otherwise the client went away: drop its work from the queue or batch.
    if (!DeadlineReached(deadline_)) token_.Cancel();
  }
  void OnDone() override { delete this; }

 private:
  const absl::Time deadline_;
  batching::CancellationToken token_;
};

namespace {

// A unary call refused before any work: finished at once.
grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

// A ClassifyStream refused before reading anything.
class InferenceService::RefusedStream final
    : public grpc::ServerBidiReactor<v1::ClassifyStreamRequest, v1::ClassifyStreamResponse> {
 public:
  explicit RefusedStream(const absl::Status& status) { Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
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

grpc::ServerUnaryReactor* InferenceService::Classify(grpc::CallbackServerContext* context,
                                                     const v1::ClassifyRequest* request,
                                                     v1::ClassifyResponse* response) {
  if (absl::Status s = Authenticate(context, Method::kClassify,
                                    rt_.ModelLabel(request->model(), /*qa=*/false));
      !s.ok()) {
    return Refuse(context, s);
  }
  auto* call = new UnaryCall(context);
  rt_.StartClassify(*request, response, Method::kClassify, call->deadline(), call->token(),
                    call->Done());
  return call;
}

grpc::ServerUnaryReactor* InferenceService::Answer(grpc::CallbackServerContext* context,
                                                   const v1::AnswerRequest* request,
                                                   v1::AnswerResponse* response) {
  if (absl::Status s = Authenticate(context, Method::kAnswer,
                                    rt_.ModelLabel(request->model(), /*qa=*/true));
      !s.ok()) {
    return Refuse(context, s);
  }
  auto* call = new UnaryCall(context);
  rt_.StartAnswer(*request, response, call->deadline(), call->token(), call->Done());
  return call;
}

grpc::ServerUnaryReactor* InferenceService::ListModels(grpc::CallbackServerContext* context,
                                                       const v1::ListModelsRequest* /*request*/,
                                                       v1::ListModelsResponse* response) {
  if (absl::Status s = Authenticate(context, Method::kListModels,
                                    std::string(Metrics::kAllModels));
      !s.ok()) {
    return Refuse(context, s);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(rt_.ListModels(response)));
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::GetModel(grpc::CallbackServerContext* context,
                                                     const v1::GetModelRequest* request,
                                                     v1::ModelInfo* response) {
  if (absl::Status s = Authenticate(context, Method::kGetModel,
                                    rt_.ModelLabel(request->name(), std::nullopt));
      !s.ok()) {
    return Refuse(context, s);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(rt_.GetModel(*request, response)));
  return reactor;
}

// ClassifyStream: reads requests while fewer than limits.max_stream_inflight are in progress,
// runs them concurrently, writes responses one at a time in completion order.
//
// Locking: mu_ guards all state. Reactions never run inline from StartRead/StartWrite/Finish
// (this reactor is not "inlineable"), so those are called with mu_ held. After Finish() only
// OnDone() touches the object; it takes mu_ once so that the thread that called Finish() has let
// go of it first.
class InferenceService::StreamCall final
    : public grpc::ServerBidiReactor<v1::ClassifyStreamRequest, v1::ClassifyStreamResponse> {
 public:
  StreamCall(InferenceService* service, grpc::CallbackServerContext* context)
      : service_(service),
        deadline_(Deadline(context)),
        max_inflight_(service->rt_.config().limits.max_stream_inflight) {
    std::lock_guard<std::mutex> lock(mu_);
    reading_ = true;
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    reading_ = false;
    if (!ok) {
      read_done_ = true;
      MaybeFinishLocked();
      return;
    }
    auto item = std::make_shared<Item>();
    item->request = std::move(request_);
    item->response.set_request_id(item->request.request_id());
    item->serial = next_serial_++;
    tokens_.emplace(item->serial, item->token);
    ++inflight_;
    if (inflight_ < max_inflight_ && !draining_) {
      reading_ = true;
      StartRead(&request_);
    }
    lock.unlock();  // The Runtime may complete the item on this thread.

    if (item->request.request_id().size() > kMaxRequestIdBytes) {
      // Echo what fits, cut at a UTF-8 character boundary, so the client can tell which request
      // failed (an empty id would match none of them).
      const std::string& id = item->request.request_id();
      size_t cut = kMaxRequestIdBytes;
      while (cut > 0 && (static_cast<unsigned char>(id[cut]) & 0xC0) == 0x80) --cut;
      item->response.set_request_id(id.substr(0, cut));
      Complete(item, absl::InvalidArgumentError(absl::StrCat(
                         "request_id: ", item->request.request_id().size(),
                         " bytes is over the limit of ", kMaxRequestIdBytes)));
      return;
    }
    service_->rt_.StartClassify(item->request.request(), item->response.mutable_response(),
                                Method::kClassifyStream, deadline_, item->token,
                                [this, item](absl::Status status) { Complete(item, status); });
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
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
    std::lock_guard<std::mutex> lock(mu_);
    if (DeadlineReached(deadline_)) return;  // Expired work is the scheduler's to fail.
    for (auto& [serial, token] : tokens_) token.Cancel();
    cancelled_ = true;
  }

  void OnDone() override {
    service_->Unregister(this);
    { std::lock_guard<std::mutex> lock(mu_); }
    delete this;
  }

  void BeginDrain() {
    std::lock_guard<std::mutex> lock(mu_);
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
    std::lock_guard<std::mutex> lock(mu_);
    --inflight_;
    tokens_.erase(item->serial);
    if (!broken_ && !cancelled_ && !finished_) {
      outbox_.push_back(std::move(item->response));
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

  void MaybeFinishLocked() {
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

  std::mutex mu_;
  v1::ClassifyStreamRequest request_;  // Target of the outstanding read.
  std::deque<v1::ClassifyStreamResponse> outbox_;  // front() is being written when writing_.
  std::map<uint64_t, batching::CancellationToken> tokens_;  // Requests in progress.
  uint64_t next_serial_ = 0;
  int64_t inflight_ = 0;
  bool reading_ = false;
  bool writing_ = false;
  bool read_done_ = false;
  bool broken_ = false;
  bool cancelled_ = false;
  bool draining_ = false;
  bool finished_ = false;
};

grpc::ServerBidiReactor<v1::ClassifyStreamRequest, v1::ClassifyStreamResponse>*
InferenceService::ClassifyStream(grpc::CallbackServerContext* context) {
  // The stream's messages may name different models; a refused stream counts under "_unknown".
  if (absl::Status s = Authenticate(context, Method::kClassifyStream,
                                    std::string(Metrics::kUnknownModel));
      !s.ok()) {
    return new RefusedStream(s);
  }
  auto* call = new StreamCall(this, context);
  Register(call);
  if (rt_.draining()) call->BeginDrain();
  return call;
}

void InferenceService::Register(StreamCall* call) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.insert(call);
}

void InferenceService::Unregister(StreamCall* call) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  streams_.erase(call);
}

void InferenceService::DrainStreams() {
  std::lock_guard<std::mutex> lock(streams_mu_);
  for (StreamCall* call : streams_) call->BeginDrain();
}

}  // namespace topserve::server
