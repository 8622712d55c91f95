#include "server/server.h"

#include <algorithm>
#include <climits>
#include <exception>
#include <thread>

#include <fstream>
#include <optional>
#include <sstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "server/memory_trimmer.h"
#include "server/sockets.h"
#include "server/wire.h"

namespace topserve::server {
namespace {

// The PEM files of server.tls, read and checked with OpenSSL before gRPC sees them: gRPC only says
// that the port cannot be bound when a certificate or key is unusable.
struct TlsMaterial {
  std::string cert, key, client_ca;
};

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& field) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": cannot read ", path));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().size() > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", path, " is over 1 MiB"));
  }
  return text.str();
}

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no PEM block found";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

// Number of PEM certificates in `pem` (0 with `why` set when there is none or one is corrupt).
int CountCertificates(const std::string& pem, std::string* why) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  int n = 0;
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    X509_free(cert);
    ++n;
  }
  // The loop ends at the end of the data (PEM_R_NO_START_LINE) or at a corrupt block.
  const unsigned long e = ERR_peek_last_error();
  if (n > 0 && ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
    ERR_clear_error();
  } else if (e != 0) {
    *why = OpenSslError();
    n = 0;
  } else if (n == 0) {
    *why = "no PEM certificate found";
  }
  BIO_free(bio);
  return n;
}

absl::StatusOr<TlsMaterial> LoadTls(const TlsConfig& tls) {
  TlsMaterial m;
  ASSIGN_OR_RETURN(m.cert, ReadPemFile(tls.cert_file, "server.tls.cert_file"));
  ASSIGN_OR_RETURN(m.key, ReadPemFile(tls.key_file, "server.tls.key_file"));
  std::string why;
  if (CountCertificates(m.cert, &why) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.tls.cert_file: ", tls.cert_file, ": ", why));
  }
  {
    BIO* cbio = BIO_new_mem_buf(m.cert.data(), static_cast<int>(m.cert.size()));
    X509* leaf = PEM_read_bio_X509(cbio, nullptr, nullptr, nullptr);
    BIO_free(cbio);
    BIO* kbio = BIO_new_mem_buf(m.key.data(), static_cast<int>(m.key.size()));
    // No passphrase callback: an encrypted key fails here with a clear message.
    EVP_PKEY* pkey = PEM_read_bio_PrivateKey(
        kbio, nullptr, [](char*, int, int, void*) { return 0; }, nullptr);
    BIO_free(kbio);
    absl::Status status;
    if (pkey == nullptr) {
      status = absl::InvalidArgumentError(absl::StrCat("server.tls.key_file: ", tls.key_file,
                                                       ": no unencrypted PEM private key (",
                                                       OpenSslError(), ")"));
    } else if (X509_check_private_key(leaf, pkey) != 1) {
      ERR_clear_error();
      status = absl::InvalidArgumentError(absl::StrCat("server.tls.key_file: ", tls.key_file,
                                                       " is not the key of the certificate in ",
                                                       tls.cert_file));
    }
    EVP_PKEY_free(pkey);
    X509_free(leaf);
    RETURN_IF_ERROR(status);
  }
  if (!tls.client_ca_file.empty()) {
    ASSIGN_OR_RETURN(m.client_ca, ReadPemFile(tls.client_ca_file, "server.tls.client_ca_file"));
    if (CountCertificates(m.client_ca, &why) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("server.tls.client_ca_file: ", tls.client_ca_file, ": ", why));
    }
  }
  return m;
}

std::shared_ptr<grpc::ServerCredentials> GrpcCredentials(const TlsMaterial* tls) {
  if (tls == nullptr) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      tls->client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                             : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls->client_ca;
  options.pem_key_cert_pairs.push_back({tls->key, tls->cert});
  return grpc::SslServerCredentials(options);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  std::unique_ptr<Server> s(new Server(std::move(options)));
  const ServerConfig& config = s->options_.config;

  Authenticator auth;
  if (!config.auth_token_file.empty()) {
    ASSIGN_OR_RETURN(auth, Authenticator::FromFile(config.auth_token_file));
  }
  // A client sending invalid UTF-8 in a loop must not flood the log (libprotobuf logs each one).
  InstallProtobufLogLimiter();
  std::optional<TlsMaterial> tls;
  if (config.tls.enabled()) {
    ASSIGN_OR_RETURN(tls, LoadTls(config.tls));
  }
  ASSIGN_OR_RETURN(auto models, PrepareModels(config));

  std::vector<ModelMetricsSpec> specs;
  for (const auto& m : models) specs.push_back({m->config.name, m->layers, m->qa});
  s->metrics_ = std::make_unique<Metrics>(specs, s->options_.version);

  batching::SchedulerOptions so;
  so.num_workers = static_cast<int>(config.batching.workers);
  so.threads_per_worker = static_cast<int>(config.batching.threads_per_worker);
  so.observer = s->metrics_.get();
  s->trimmer_ = std::make_unique<MemoryTrimmer>();
  so.on_idle = [trimmer = s->trimmer_.get()] { trimmer->Notify(); };
  ASSIGN_OR_RETURN(s->scheduler_, batching::Scheduler::Create(std::move(so)));

  s->runtime_ =
      std::make_unique<Runtime>(config, std::move(models), s->metrics_.get(), s->scheduler_.get());
  s->runtime_->FailModelsForTesting(s->options_.fail_models);
  s->service_ = std::make_unique<InferenceService>(*s->runtime_, std::move(auth));

  if (config.metrics_port >= 0) {
    const std::string address = absl::StrCat(config.metrics_address, ":", config.metrics_port);
    try {
      // civetweb's defaults (2 threads here, a 30 s read timeout) let two clients that stop
      // mid-headers hold every thread for 30 s, and Prometheus marks the target down. More threads
      // than stalled clients are likely, and a short read timeout bounds the rest: a scrape waits
      // at most about kMetricsReadTimeoutMs behind a slow client.
      constexpr const char* kMetricsThreads = "8";
      constexpr const char* kMetricsReadTimeoutMs = "1000";
      // No TLS here: Debian 12's civetweb (1.15) loads libssl at run time and looks up
      // SSL_get_peer_certificate, which OpenSSL 3 no longer exports (it is a macro now), then calls
      // the null pointer on the first HTTPS connection (a segfault, seen with "ssl_certificate").
      // docs/api.md (TLS) says how to protect the metrics port instead.
      std::vector<std::string> civetweb{"listening_ports",    address,
                                        "num_threads",        kMetricsThreads,
                                        "request_timeout_ms", kMetricsReadTimeoutMs};
      s->exposer_ = std::make_unique<prometheus::Exposer>(std::move(civetweb));
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("server.metrics_port: cannot listen on ", address, " (", e.what(), ")"));
    }
    s->exposer_->RegisterCollectable(s->metrics_->registry());
    const std::vector<int> ports = s->exposer_->GetListeningPorts();
    s->metrics_port_ = ports.empty() ? static_cast<int>(config.metrics_port) : ports.front();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, GrpcCredentials(tls ? &*tls : nullptr), &s->grpc_port_);
  builder.RegisterService(s->service_.get());
  // Room for the largest request the limits allow (every input at max_text_bytes, twice for
  // pairs), at least gRPC's default 4 MiB.
  const int64_t limit = std::clamp<int64_t>(
      2 * config.limits.max_inputs_per_call * config.limits.max_text_bytes + (1 << 20), 4 << 20,
      INT_MAX);
  builder.SetMaxReceiveMessageSize(static_cast<int>(limit));
  if (config.max_connection_age_seconds > 0) {
    // gRPC's max_connection_age: a graceful GOAWAY (the server keeps serving, so calls racing it
    // are answered) and no grace limit, so calls and streams in progress are never cut off.
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               static_cast<int>(config.max_connection_age_seconds * 1000));
  }
  s->grpc_server_ = builder.BuildAndStart();
  if (s->grpc_server_ == nullptr || s->grpc_port_ == 0) {
    s->grpc_server_.reset();
    return absl::UnavailableError(absl::StrCat("server.listen: cannot listen on ", config.listen));
  }
  grpc::HealthCheckServiceInterface* health = s->grpc_server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceHealthName, false);
  for (const auto& m : s->runtime_->models()) health->SetServingStatus(m->config.name, false);
  return s;
}

Server::~Server() {
  // A server that failed to start has no gRPC server; its scheduler stops in its own destructor.
  if (!shut_down_ && grpc_server_ != nullptr) Shutdown();
}

absl::Status Server::LoadModels() {
  const absl::Time until = absl::Now() + options_.ready_delay;
  while (absl::Now() < until && !runtime_->draining()) absl::SleepFor(absl::Milliseconds(10));
  for (const auto& m : runtime_->models()) {
    if (runtime_->draining()) return absl::OkStatus();
    RETURN_IF_ERROR(runtime_->LoadModel(*m));
    absl::MutexLock lock(&health_mu_);
    if (!runtime_->draining()) {
      grpc_server_->GetHealthCheckService()->SetServingStatus(m->config.name, true);
    }
  }
  absl::MutexLock lock(&health_mu_);
  if (!runtime_->draining()) {
    grpc_server_->GetHealthCheckService()->SetServingStatus(kServiceHealthName, true);
  }
  return absl::OkStatus();
}

void Server::BeginDrain() {
  {
    absl::MutexLock lock(&health_mu_);
    runtime_->BeginDrain();
    grpc::HealthCheckServiceInterface* health = grpc_server_->GetHealthCheckService();
    health->SetServingStatus(kServiceHealthName, false);
    for (const auto& m : runtime_->models()) health->SetServingStatus(m->config.name, false);
  }
  service_->DrainStreams();
  // New connections are refused from now on (a proxy retries those elsewhere, having sent
  // nothing); the connections clients have keep getting answers (UNAVAILABLE for new calls)
  // until their max_connection_age GOAWAY moves them on. See Linger().
  const absl::Time now = absl::Now();
  if (!stopped_listening_.exchange(true)) {
    stopped_listening_at_ = now;
    StopListeningOnPort(grpc_port_);
  }
}

void Server::Linger() {
  const double age = options_.config.max_connection_age_seconds;
  if (age <= 0 || !stopped_listening_) return;
  // No connection is newer than the moment the listener stopped, and each gets its GOAWAY
  // within 1.1 x the age of it (gRPC's jitter is +-10%); then a moment for calls racing the
  // GOAWAY to be answered. Clients that have the GOAWAY close their connections (an idle one may
  // not read it until it next sends, so the connection count need not reach 0).
  const absl::Time until = stopped_listening_at_ + absl::Seconds(1.1 * age + 0.25);
  while (ConnectionsOnPort(grpc_port_) > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(20));
  }
}

void Server::Drain() {
  if (drained_) return;
  drained_ = true;
  const absl::Time start = absl::Now();
  const absl::Duration grace = absl::Seconds(options_.config.drain_grace_seconds);
  BeginDrain();
  // Queued work runs (bounded by the grace period); what is left fails UNAVAILABLE.
  scheduler_->Shutdown({.mode = batching::ShutdownOptions::Mode::kDrain, .grace = grace});
  // Every task has completed, so every unary call is finishing; give responses in transit (and
  // streams finishing) the rest of the grace period, at least a second.
  service_->WaitForCalls(start + std::max(grace, absl::Seconds(1)));
}

void Server::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  Drain();
  // Calls that arrive while gRPC shuts down end CANCELLED (see Drain() in server.h); what is still
  // running a second from now is cancelled.
  grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  grpc_server_->Wait();
  exposer_.reset();
}

}  // namespace topserve::server
