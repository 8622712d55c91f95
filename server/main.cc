// topserve-server: serves the models of one YAML config over gRPC (see docs/api.md).
//
//   topserve-server --config deploy/config.example.yaml
//   topserve-server --model /models/sst2 --port 8500            # no config file needed
//   topserve-server --config c.yaml --model squad=/models/squad --threads 4
//   topserve-server --config c.yaml --check                       # validate, print, exit
//   topserve-server --config c.yaml --tls-cert s.crt --tls-key s.key [--tls-client-ca ca.crt]
//
// Exit codes: 0 after a clean drain (SIGTERM/SIGINT); 2 for a bad command line or config; 1 when a
// model fails to load or the ports cannot be bound. Failures print one line on stderr.
//
// OpenMP: libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when it is loaded. Its default
// lets idle threads spin for a long time (300,000 iterations), which starves the gRPC and batching
// threads; fully passive threads (spin count 0) sleep between the dozens of parallel regions of one
// small batch, and waking them made a 12-token request on 2 threads 3.8 ms instead of 0.6 ms
// (engine_bench, sst2-small). So the server wants a short spin: if either variable is unset it
// re-executes itself with OMP_WAIT_POLICY=passive and GOMP_SPINCOUNT=10000 (a few microseconds of
// spinning, then sleep) filled in; set them yourself to opt out.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/cpu_info.h"
#include "server/config.h"
#include "server/server.h"

#ifndef TOPSERVE_VERSION
#define TOPSERVE_VERSION "dev"
#endif

namespace {

using topserve::server::ModelConfig;
using topserve::server::ServerConfig;

constexpr char kName[] = "topserve-server";

int Fail(int code, absl::string_view message) {
  std::cerr << kName << ": error: " << message << std::endl;
  return code;
}

void ReexecWithPassiveOmp(char** argv) {
  bool changed = false;
  for (const auto& [name, value] :
       {std::pair{"OMP_WAIT_POLICY", "passive"}, std::pair{"GOMP_SPINCOUNT", "10000"}}) {
    if (std::getenv(name) != nullptr) continue;
    setenv(name, value, 1);
    changed = true;
  }
  if (!changed) return;
  // The binary's real path rather than /proc/self/exe, so the process keeps its name.
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    execv(self, argv);
  }
  // Still here: exec failed. Carry on with libgomp's default (spinning) wait policy.
  std::cerr << kName << ": warning: could not re-execute with OMP_WAIT_POLICY=passive "
            << "GOMP_SPINCOUNT=10000; OpenMP keeps libgomp's defaults" << std::endl;
}

// A model name from a directory: its last component, reduced to [A-Za-z0-9._-].
std::string NameFromDir(const std::string& dir) {
  std::string base = std::filesystem::path(dir).lexically_normal().filename().string();
  if (base.empty()) base = std::filesystem::path(dir).lexically_normal().parent_path().filename();
  std::string name;
  for (char c : base) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    name += ok ? c : '_';
  }
  return name.empty() ? "model" : name.substr(0, 64);
}

// --model [NAME=]DIR: overrides the path of model NAME (or of the only configured model), or adds
// a model.
absl::Status ApplyModelFlag(const std::string& flag, ServerConfig& config) {
  std::string name, dir = flag;
  if (const size_t eq = flag.find('='); eq != std::string::npos) {
    name = flag.substr(0, eq);
    dir = flag.substr(eq + 1);
  }
  if (dir.empty()) return absl::InvalidArgumentError("--model: the directory is empty");
  if (name.empty()) {
    if (config.models.size() == 1) {
      config.models[0].path = dir;
      return absl::OkStatus();
    }
    if (config.models.size() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--model ", flag, ": the config has ", config.models.size(),
                       " models; say which one with --model NAME=DIR"));
    }
    name = NameFromDir(dir);
  }
  for (ModelConfig& m : config.models) {
    if (m.name == name) {
      m.path = dir;
      return absl::OkStatus();
    }
  }
  ModelConfig m;
  m.name = name;
  m.path = dir;
  config.models.push_back(std::move(m));
  return absl::OkStatus();
}

// The loader thread and the signal thread report here; main() waits on it.
struct Events {
  std::mutex mu;
  std::condition_variable cv;
  bool loaded = false;
  absl::Status load_status;
  int signal = 0;
};
Events& GetEvents() {
  static auto* events = new Events;  // Never destroyed: the signal thread outlives main().
  return *events;
}

}  // namespace

int main(int argc, char** argv) {
  ReexecWithPassiveOmp(argv);

  CLI::App app{
      "topserve-server: BERT classification and question answering over gRPC, with "
      "per-request compute budgets"};
  std::string config_path, listen, auth_token_file, metrics_address;
  std::string tls_cert, tls_key, tls_client_ca;
  int port = -1, metrics_port = -2, threads = -1, workers = -1, ready_delay_ms = 0;
  std::vector<std::string> model_flags, fail_models;
  bool check = false;
  app.add_option("-c,--config", config_path, "YAML config file (see deploy/config.example.yaml)")
      ->check(CLI::ExistingFile);
  app.add_option("--listen", listen, "gRPC address host:port (overrides server.listen)");
  app.add_option("--port", port, "gRPC port (overrides the port of server.listen; 0 = any free)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--metrics-address", metrics_address,
                 "Prometheus bind address (overrides server.metrics_address, e.g. 127.0.0.1)");
  app.add_option("--metrics-port", metrics_port,
                 "Prometheus port (overrides server.metrics_port; 0 = any free, -1 = off)")
      ->check(CLI::Range(-1, 65535));
  app.add_option("--model", model_flags,
                 "[NAME=]DIR: serve DIR as NAME (overrides that model's path, or adds a model; "
                 "without NAME: the config's only model, or a new one named after DIR)");
  app.add_option("--threads", threads,
                 "OpenMP threads per batch (overrides batching.threads_per_worker; 0 = CPUs "
                 "available / workers)")
      ->check(CLI::Range(0, 1024));
  app.add_option("--auth-token-file", auth_token_file,
                 "bearer tokens required by Inference calls, one per line (overrides "
                 "server.auth_token_file)");
  app.add_option("--tls-cert", tls_cert,
                 "PEM certificate chain: the gRPC port speaks TLS only (overrides "
                 "server.tls.cert_file; needs --tls-key)");
  app.add_option("--tls-key", tls_key,
                 "PEM private key of --tls-cert (overrides server.tls.key_file)");
  app.add_option("--tls-client-ca", tls_client_ca,
                 "PEM CA bundle: clients must present a certificate it signed, mutual TLS "
                 "(overrides server.tls.client_ca_file)");
  app.add_option("--workers", workers, "concurrent batches (overrides batching.workers)")
      ->check(CLI::Range(1, 256));
  app.add_flag("--check", check,
               "validate the config and load every model, print the effective config, exit");
  // Testing only (hidden): delay readiness; make a model's batches fail with INTERNAL.
  app.add_option("--test-ready-delay-ms", ready_delay_ms)->group("")->check(CLI::Range(0, 600000));
  app.add_option("--test-fail-model", fail_models)->group("");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    return Fail(2, e.what());
  }

  // Block the shutdown signals in every thread (threads inherit the mask); one thread waits for
  // them with sigwait().
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  ServerConfig config;
  if (!config_path.empty()) {
    auto loaded = topserve::server::LoadConfig(config_path);
    if (!loaded.ok()) return Fail(2, loaded.status().message());
    config = std::move(*loaded);
  }
  for (const std::string& flag : model_flags) {
    if (absl::Status s = ApplyModelFlag(flag, config); !s.ok()) return Fail(2, s.message());
  }
  if (!listen.empty()) config.listen = listen;
  if (port >= 0) {
    auto hp = topserve::server::SplitHostPort(config.listen, "server.listen");
    if (!hp.ok()) return Fail(2, hp.status().message());
    config.listen = absl::StrCat(hp->first, ":", port);
  }
  if (metrics_port >= -1) config.metrics_port = metrics_port;
  if (!metrics_address.empty()) config.metrics_address = metrics_address;
  if (threads >= 0) config.batching.threads_per_worker = threads;
  if (workers >= 1) config.batching.workers = workers;
  if (!auth_token_file.empty()) config.auth_token_file = auth_token_file;
  if (!tls_cert.empty()) config.tls.cert_file = tls_cert;
  if (!tls_key.empty()) config.tls.key_file = tls_key;
  if (!tls_client_ca.empty()) config.tls.client_ca_file = tls_client_ca;
  const int cpus = topserve::engine::AvailableCpus();
  if (absl::Status s = topserve::server::NormalizeAndValidate(config, cpus); !s.ok()) {
    return Fail(2, config_path.empty() ? std::string(s.message())
                                       : absl::StrCat(config_path, ": ", s.message()));
  }
  std::cerr << kName << " " << TOPSERVE_VERSION << ": " << cpus
            << " CPUs available; effective config:\n"
            << topserve::server::ConfigToYaml(config) << std::flush;

  topserve::server::ServerOptions options;
  options.config = config;
  options.version = TOPSERVE_VERSION;
  options.ready_delay = absl::Milliseconds(ready_delay_ms);
  options.fail_models = fail_models;
  if (check) {
    options.config.listen = "127.0.0.1:0";
    options.config.metrics_port = -1;
  }
  auto started = topserve::server::Server::Start(std::move(options));
  if (!started.ok())
    return Fail(started.status().code() == absl::StatusCode::kUnavailable ? 1 : 2,
                started.status().message());
  std::unique_ptr<topserve::server::Server> server = std::move(*started);
  if (check) {
    if (absl::Status s = server->LoadModels(); !s.ok()) return Fail(1, s.message());
    server->Shutdown();
    std::cerr << kName << ": config and models OK" << std::endl;
    return 0;
  }
  std::cerr << kName << ": listening: grpc=" << config.listen << " port=" << server->grpc_port()
            << " metrics_port=" << server->metrics_port() << std::endl;

  Events& events = GetEvents();
  std::thread([signals] {
    Events& ev = GetEvents();
    for (int n = 0;; ++n) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (n > 0) {
        std::cerr << kName << ": second signal; exiting without draining" << std::endl;
        _exit(1);
      }
      std::lock_guard<std::mutex> lock(ev.mu);
      ev.signal = sig;
      ev.cv.notify_all();
    }
  }).detach();
  std::thread loader([&server] {
    absl::Status s = server->LoadModels();
    Events& ev = GetEvents();
    std::lock_guard<std::mutex> lock(ev.mu);
    ev.loaded = true;
    ev.load_status = std::move(s);
    ev.cv.notify_all();
  });

  bool announced = false;
  std::unique_lock<std::mutex> lock(events.mu);
  while (events.signal == 0) {
    if (events.loaded && !events.load_status.ok()) break;
    if (events.loaded && !announced) {
      std::vector<std::string> names;
      for (const auto& m : config.models) names.push_back(m.name);
      std::cerr << kName << ": ready: " << absl::StrJoin(names, ", ") << std::endl;
      announced = true;
    }
    events.cv.wait(lock);
  }
  const int sig = events.signal;
  const absl::Status load_status = events.load_status;
  lock.unlock();

  if (sig == 0) {  // A model failed to load.
    server->BeginDrain();
    loader.join();
    server->Shutdown();
    return Fail(1, load_status.message());
  }
  server->BeginDrain();
  std::cerr << kName << ": " << (sig == SIGTERM ? "SIGTERM" : "SIGINT") << ": draining (grace "
            << config.drain_grace_seconds << "s)" << std::endl;
  loader.join();
  server->Drain();
  server->Linger();
  // No grpc::Server::Shutdown(): it would answer calls arriving during it CANCELLED (server.h,
  // Drain()). Every call the server accepted has finished and every connection has had its
  // GOAWAY (Linger()); a moment for the last responses to leave, then exit.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::cerr << kName << ": drained; exiting" << std::endl;
  std::fflush(nullptr);
  _exit(0);
}
