// The server's configuration: one YAML file (see deploy/config.example.yaml), normalised (defaults
// filled in), then validated, then used. Every key has a default; an unknown key is an error naming
// it. Command-line flags override the common fields before validation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace topserve::server {

// Per-model batching knobs (batching::ModelOptions). Unset fields take the `batching:` section's
// value.
struct QueueConfig {
  std::optional<int64_t> max_batch_tokens;
  std::optional<int64_t> max_batch_size;
  std::optional<int64_t> max_queue_delay_us;
  std::optional<int64_t> max_queue_size;
  std::optional<int64_t> max_queue_tokens;
};

struct ModelConfig {
  std::string name;             // Used in requests, metrics labels and health service names.
  std::string path;             // Hugging Face model directory.
  double default_budget = 1.0;  // Budget of requests that set none.
  double max_budget = 1.0;      // Larger requested budgets are RESOURCE_EXHAUSTED.
  std::string schedule;         // Pruning schedule file overriding dir/pruning.yaml ("" = none).
  // Arithmetic of the encoder's dense layers: "fp32" (exact) or "int8" (dynamic quantization).
  std::string precision = "fp32";
  bool warmup = true;    // Run a few batches before reporting ready.
  QueueConfig batching;  // Overrides of the global batching knobs.
};

struct BatchingConfig {
  int64_t max_batch_tokens = 8192;
  int64_t max_batch_size = 32;
  int64_t max_queue_delay_us = 0;
  int64_t max_queue_size = 1024;
  int64_t max_queue_tokens = 262144;
  // Queue limit in time: calls whose predicted wait in the queue is longer get UNAVAILABLE
  // (batching::ModelOptions::max_queue_wait); bounds how long overload takes to drain. 0 = none.
  int64_t max_queue_wait_ms = 500;
  int64_t workers = 1;             // Concurrent batches.
  int64_t threads_per_worker = 0;  // 0 = AvailableCpus() / workers (at least 1).
};

struct LimitsConfig {
  int64_t max_inputs_per_call = 64;     // Classify inputs per call (INVALID_ARGUMENT beyond).
  int64_t max_text_bytes = 65536;       // Any one text, question or context (INVALID_ARGUMENT).
  int64_t max_tokens_per_call = 65536;  // Tokens of a whole call (RESOURCE_EXHAUSTED beyond).
  int64_t max_priority = 10;            // |priority| limit (INVALID_ARGUMENT beyond).
  int64_t max_stream_inflight = 64;     // Requests in progress per ClassifyStream.
};

// TLS on the gRPC port. Off while cert_file is empty; when on, the port speaks TLS only (a
// plaintext client cannot connect). The metrics port stays plain HTTP (server.cc says why).
struct TlsConfig {
  std::string cert_file;       // PEM certificate chain of the server (needs key_file).
  std::string key_file;        // PEM private key of cert_file (unencrypted).
  std::string client_ca_file;  // PEM CA bundle: set = clients must present a certificate it signed.
  bool enabled() const { return !cert_file.empty(); }
};

struct ServerConfig {
  std::string listen = "0.0.0.0:8500";  // gRPC address (host:port; port 0 = any free port).
  std::string metrics_address = "0.0.0.0";
  int64_t metrics_port = 9100;      // Prometheus /metrics; 0 = any free port, -1 = off.
  double drain_grace_seconds = 30;  // SIGTERM: how long queued and running calls may take.
  // Each client connection gets a graceful GOAWAY at this age (+-10% jitter, gRPC's
  // max_connection_age; calls in progress finish): clients behind a plain TCP balancer spread
  // over new replicas, and a drain ends once every connection has moved on (at most this long
  // after the queued work is done). 0 = never (the drain then closes live connections).
  double max_connection_age_seconds = 10;
  std::string auth_token_file;  // Bearer tokens required by Inference calls ("" = open).
  TlsConfig tls;
  std::vector<ModelConfig> models;
  BatchingConfig batching;
  LimitsConfig limits;
};

// Parses YAML text. `origin` names the source in errors ("config.yaml: models[1].name: ...").
absl::StatusOr<ServerConfig> ParseConfig(const std::string& yaml_text, const std::string& origin);
absl::StatusOr<ServerConfig> LoadConfig(const std::string& path);

// Fills derived defaults (threads_per_worker = 0 -> CPUs / workers) and checks every value (ranges,
// unique model names, default_budget <= max_budget, ...). `available_cpus` is injected for tests.
absl::Status NormalizeAndValidate(ServerConfig& config, int available_cpus);

// The effective configuration as YAML (what the server prints at start-up).
std::string ConfigToYaml(const ServerConfig& config);

// host:port -> (host, port); INVALID_ARGUMENT naming `field` when malformed.
absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address,
                                                          const std::string& field);

}  // namespace topserve::server
