// topserve.v1.Inference on the gRPC callback API. The handlers are thin: they hand requests to the
// Runtime and convert its absl::Status to a grpc::Status (the only place that conversion happens).
//
// Every method is registered "raw" (ByteBuffer in and out; server/wire.h says why): the handlers
// parse the request body themselves, so a body that does not parse (invalid UTF-8 in a string
// field, truncated or malformed protobuf) is INVALID_ARGUMENT naming the field and counted in
// topserve_requests_total, instead of gRPC's uncounted UNIMPLEMENTED with an empty message. Clients
// see the same service and messages.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth.h"
#include "server/runtime.h"
#include "topserve/v1/inference.grpc.pb.h"

namespace topserve::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

using RawInferenceService = v1::Inference::WithRawCallbackMethod_Classify<
    v1::Inference::WithRawCallbackMethod_ClassifyStream<
        v1::Inference::WithRawCallbackMethod_Answer<v1::Inference::WithRawCallbackMethod_ListModels<
            v1::Inference::WithRawCallbackMethod_GetModel<v1::Inference::Service>>>>>;

class InferenceService final : public RawInferenceService {
 public:
  // Every call is checked against `auth` first (UNAUTHENTICATED before any work is done).
  InferenceService(Runtime& runtime, Authenticator auth) : rt_(runtime), auth_(std::move(auth)) {}

  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ClassifyStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

  // After Runtime::BeginDrain(): every open ClassifyStream finishes with UNAVAILABLE once the
  // requests it already accepted are answered.
  void DrainStreams();

  // Waits until every call this service has started has finished (its reactor's OnDone ran: the
  // final status was handed to the transport), or until `deadline`. Whether none is left.
  bool WaitForCalls(absl::Time deadline);

 private:
  template <typename Request, typename Response>
  class UnaryCall;
  class StreamCall;
  class RefusedStream;
  // OK, or UNAUTHENTICATED (counted in the metrics under `model_label` and `method`).
  absl::Status Authenticate(const grpc::CallbackServerContext* context, Method method,
                            const std::string& model_label);
  // Parses a unary request and authenticates the call: true when the handler should go on; false
  // when `call` has been finished (UNAUTHENTICATED, or INVALID_ARGUMENT for a body that does not
  // parse, counted under `method` and the model the request names).
  template <typename Call, typename LabelFn>
  bool Admit(grpc::CallbackServerContext* context, const grpc::ByteBuffer& body, Method method,
             LabelFn label, Call* call);
  void Register(StreamCall* call);
  void Unregister(StreamCall* call);
  void CallStarted();
  void CallDone();

  Runtime& rt_;
  const Authenticator auth_;
  absl::Mutex streams_mu_;  // Ordered before StreamCall::mu_.
  std::set<StreamCall*> streams_ ABSL_GUARDED_BY(streams_mu_);
  absl::Mutex calls_mu_;
  int64_t live_calls_ ABSL_GUARDED_BY(calls_mu_) = 0;  // Reactors created and not yet done.
};

}  // namespace topserve::server
