// topserve.v1.Inference on the gRPC callback API. The handlers are thin: they hand requests to the
// Runtime and convert its absl::Status to a grpc::Status (the only place that conversion happens).
#pragma once

#include <mutex>
#include <set>
#include <string>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "server/auth.h"
#include "server/runtime.h"
#include "topserve/v1/inference.grpc.pb.h"

namespace topserve::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

class InferenceService final : public v1::Inference::CallbackService {
 public:
  // Every call is checked against `auth` first (UNAUTHENTICATED before any work is done).
  InferenceService(Runtime& runtime, Authenticator auth)
      : rt_(runtime), auth_(std::move(auth)) {}

  grpc::ServerUnaryReactor* Classify(grpc::CallbackServerContext* context,
                                     const v1::ClassifyRequest* request,
                                     v1::ClassifyResponse* response) override;
  grpc::ServerBidiReactor<v1::ClassifyStreamRequest, v1::ClassifyStreamResponse>* ClassifyStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                   const v1::AnswerRequest* request,
                                   v1::AnswerResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const v1::GetModelRequest* request,
                                     v1::ModelInfo* response) override;

  // After Runtime::BeginDrain(): every open ClassifyStream finishes with UNAVAILABLE once the
  // requests it already accepted are answered.
  void DrainStreams();

 private:
  class UnaryCall;
  class StreamCall;
  class RefusedStream;
  // OK, or UNAUTHENTICATED (counted in the metrics under `model_label` and `method`).
  absl::Status Authenticate(const grpc::CallbackServerContext* context, Method method,
                            const std::string& model_label);
  void Register(StreamCall* call);
  void Unregister(StreamCall* call);

  Runtime& rt_;
  const Authenticator auth_;
  std::mutex streams_mu_;  // Ordered before StreamCall::mu_.
  std::set<StreamCall*> streams_;
};

}  // namespace topserve::server
