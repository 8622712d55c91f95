// The server as a whole: metrics, batcher, gRPC (Inference + health + reflection), model loading
// and the drain on shutdown. topserve-server's main() is a thin wrapper around this class; tests
// may embed it too.
//
// Life cycle:
//   Start()       config.json of every model checked, scheduler and metrics built, gRPC and the
//                 metrics endpoint listening. Health: "" SERVING, each model NOT_SERVING.
//   LoadModels()  weights loaded and warmed up one model at a time; each model's health name goes
//                 SERVING when it is ready, "topserve.v1.Inference" when all are.
//   Shutdown()    drain: readiness NOT_SERVING, new calls UNAVAILABLE, queued and running calls
//                 finish within drain_grace_seconds, then gRPC and metrics stop.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <prometheus/exposer.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "batching/scheduler.h"
#include "server/config.h"
#include "server/memory_trimmer.h"
#include "server/metrics.h"
#include "server/runtime.h"
#include "server/service.h"

namespace topserve::server {

// The health service name that is SERVING when every model is ready.
inline constexpr char kServiceHealthName[] = "topserve.v1.Inference";

struct ServerOptions {
  ServerConfig config;  // Normalised and validated.
  std::string version;
  // Testing only: LoadModels() waits this long (interruptible by Shutdown()) before loading.
  absl::Duration ready_delay = absl::ZeroDuration();
  // Testing only: these models' batches all fail with INTERNAL.
  std::vector<std::string> fail_models;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);
  ~Server();

  // Blocks until every model is loaded and ready, or the first failure (naming the model).
  // Returns early (OK) when Shutdown() has begun.
  absl::Status LoadModels();

  // The drain without stopping gRPC: readiness NOT_SERVING and new calls UNAVAILABLE (from the
  // service, which keeps answering), queued and running calls finish within drain_grace_seconds,
  // and it returns once every call the service started has finished (or the grace is over). Must
  // not run concurrently with LoadModels() (join the loader first).
  //
  // topserve-server exits after Drain() and Linger() without Shutdown(): gRPC C++ (1.51, and still
  // upstream: grpc/grpc#41785) ends every call that arrives after grpc::Server::Shutdown() began
  // but before the client has seen the GOAWAY CANCELLED, which clients do not retry.
  void Drain();

  // After Drain(): waits until every client connection has had its GOAWAY, at most
  // 1.1 x max_connection_age after BeginDrain() (less once no connection is left). BeginDrain()
  // stopped accepting connections; each open one gets gRPC's graceful max-age GOAWAY, and calls
  // racing it are still answered (UNAVAILABLE). A proxy such as nginx stops using a connection
  // at its GOAWAY; exiting under it instead turns the call it has in flight into an HTTP 502,
  // which clients cannot retry.
  void Linger();

  // Drain(), then stops gRPC (1 s for it) and the metrics endpoint. For embedders and --check; may
  // be called once.
  void Shutdown();

  // Begins the drain (readiness NOT_SERVING, new calls UNAVAILABLE) without waiting; Shutdown()
  // finishes it. Safe from any thread, e.g. while LoadModels() runs.
  void BeginDrain();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }  // -1 when off
  const ServerConfig& config() const { return options_.config; }

 private:
  explicit Server(ServerOptions options) : options_(std::move(options)) {}

  ServerOptions options_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<MemoryTrimmer> trimmer_;  // Before scheduler_: outlives its on_idle calls.
  std::unique_ptr<batching::Scheduler> scheduler_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<InferenceService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  // Orders the health updates of LoadModels() and BeginDrain() (the health service is not ours to
  // annotate: what it guards is the order of calls, not a field).
  absl::Mutex health_mu_;
  int grpc_port_ = 0;
  int metrics_port_ = -1;
  bool drained_ = false;
  std::atomic<bool> stopped_listening_{false};
  absl::Time stopped_listening_at_;  // Written once by BeginDrain(), read by Linger() after it.
  bool shut_down_ = false;
};

}  // namespace topserve::server
