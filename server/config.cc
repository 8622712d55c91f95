#include "server/config.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include <yaml-cpp/yaml.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/dnnl_ops.h"

namespace topserve::server {
namespace {

// Reads one YAML mapping, remembering which keys were consumed so that the rest can be reported.
class MapReader {
 public:
  MapReader(YAML::Node node, std::string path, absl::Status* status)
      : node_(node), path_(std::move(path)), status_(status) {
    if (!node_.IsMap() && !node_.IsNull()) Fail("", "must be a mapping");
  }

  template <typename T>
  void Read(const std::string& key, T& out) {
    Visit(key, [&](const YAML::Node& v) { out = Scalar<T>(v, key); });
  }
  template <typename T>
  void Read(const std::string& key, std::optional<T>& out) {
    Visit(key, [&](const YAML::Node& v) { out = Scalar<T>(v, key); });
  }
  // Calls fn(node) when the key is present (and not null).
  template <typename Fn>
  void Visit(const std::string& key, Fn&& fn) {
    seen_.insert(key);
    if (!status_->ok() || !node_.IsMap()) return;
    const YAML::Node& map = node_;  // const: operator[] must not insert the key
    const YAML::Node v = map[key];
    if (!v.IsDefined() || v.IsNull()) return;
    fn(v);
  }
  // Reports the first key that was never asked for.
  void Finish() {
    if (!status_->ok() || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      const std::string key = kv.first.as<std::string>("");
      if (!seen_.count(key)) {
        std::vector<std::string> known(seen_.begin(), seen_.end());
        Fail(key, absl::StrCat("unknown key (known keys here: ", absl::StrJoin(known, ", "), ")"));
        return;
      }
    }
  }
  std::string Path(const std::string& key) const {
    if (path_.empty()) return key.empty() ? std::string("top level") : key;
    return key.empty() ? path_ : absl::StrCat(path_, ".", key);
  }
  void Fail(const std::string& key, const std::string& why) {
    if (status_->ok()) *status_ = absl::InvalidArgumentError(absl::StrCat(Path(key), ": ", why));
  }

 private:
  template <typename T>
  T Scalar(const YAML::Node& v, const std::string& key) {
    if (!v.IsScalar()) {
      Fail(key, "must be a single value");
      return T{};
    }
    const std::string text = v.Scalar();
    if constexpr (std::is_same_v<T, std::string>) {
      return text;
    } else if constexpr (std::is_same_v<T, bool>) {
      if (text == "true" || text == "True" || text == "yes") return true;
      if (text == "false" || text == "False" || text == "no") return false;
      Fail(key, absl::StrCat("'", text, "' is not a boolean (true/false)"));
      return false;
    } else if constexpr (std::is_same_v<T, double>) {
      double d = 0;
      if (!absl::SimpleAtod(text, &d) || !std::isfinite(d)) {
        Fail(key, absl::StrCat("'", text, "' is not a number"));
      }
      return d;
    } else {
      static_assert(std::is_same_v<T, int64_t>);
      int64_t i = 0;
      if (!absl::SimpleAtoi(text, &i)) Fail(key, absl::StrCat("'", text, "' is not an integer"));
      return i;
    }
  }

  const YAML::Node node_;
  std::string path_;
  absl::Status* status_;
  std::set<std::string> seen_;
};

void ReadQueue(MapReader& r, QueueConfig& q) {
  r.Read("max_batch_tokens", q.max_batch_tokens);
  r.Read("max_batch_size", q.max_batch_size);
  r.Read("max_queue_delay_us", q.max_queue_delay_us);
  r.Read("max_queue_size", q.max_queue_size);
  r.Read("max_queue_tokens", q.max_queue_tokens);
}

absl::Status Range(const std::string& field, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " is outside [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

bool ValidModelName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<ServerConfig> ParseConfig(const std::string& yaml_text, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": line ", e.mark.line + 1, ", column ",
                                                   e.mark.column + 1, ": ", e.msg));
  }
  ServerConfig config;
  absl::Status status;
  try {
    MapReader top(root, "", &status);
    top.Visit("server", [&](const YAML::Node& n) {
      MapReader r(n, "server", &status);
      r.Read("listen", config.listen);
      r.Read("metrics_address", config.metrics_address);
      r.Read("metrics_port", config.metrics_port);
      r.Read("drain_grace_seconds", config.drain_grace_seconds);
      r.Read("max_connection_age_seconds", config.max_connection_age_seconds);
      r.Read("auth_token_file", config.auth_token_file);
      r.Visit("tls", [&](const YAML::Node& t) {
        MapReader tr(t, "server.tls", &status);
        tr.Read("cert_file", config.tls.cert_file);
        tr.Read("key_file", config.tls.key_file);
        tr.Read("client_ca_file", config.tls.client_ca_file);
        tr.Finish();
      });
      r.Finish();
    });
    top.Visit("batching", [&](const YAML::Node& n) {
      MapReader r(n, "batching", &status);
      BatchingConfig& b = config.batching;
      r.Read("max_batch_tokens", b.max_batch_tokens);
      r.Read("max_batch_size", b.max_batch_size);
      r.Read("max_queue_delay_us", b.max_queue_delay_us);
      r.Read("max_queue_size", b.max_queue_size);
      r.Read("max_queue_tokens", b.max_queue_tokens);
      r.Read("max_queue_wait_ms", b.max_queue_wait_ms);
      r.Read("workers", b.workers);
      r.Read("threads_per_worker", b.threads_per_worker);
      r.Finish();
    });
    top.Visit("limits", [&](const YAML::Node& n) {
      MapReader r(n, "limits", &status);
      LimitsConfig& l = config.limits;
      r.Read("max_inputs_per_call", l.max_inputs_per_call);
      r.Read("max_text_bytes", l.max_text_bytes);
      r.Read("max_tokens_per_call", l.max_tokens_per_call);
      r.Read("max_priority", l.max_priority);
      r.Read("max_stream_inflight", l.max_stream_inflight);
      r.Finish();
    });
    top.Visit("models", [&](const YAML::Node& n) {
      if (!n.IsSequence()) {
        top.Fail("models", "must be a list of models");
        return;
      }
      for (size_t i = 0; i < n.size() && status.ok(); ++i) {
        const std::string path = absl::StrCat("models[", i, "]");
        MapReader r(n[i], path, &status);
        ModelConfig m;
        r.Read("name", m.name);
        r.Read("path", m.path);
        r.Read("default_budget", m.default_budget);
        r.Read("max_budget", m.max_budget);
        r.Read("schedule", m.schedule);
        r.Read("precision", m.precision);
        r.Read("warmup", m.warmup);
        r.Visit("batching", [&](const YAML::Node& b) {
          MapReader q(b, path + ".batching", &status);
          ReadQueue(q, m.batching);
          q.Finish();
        });
        r.Finish();
        config.models.push_back(std::move(m));
      }
    });
    top.Finish();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", e.what()));
  }
  if (!status.ok()) return absl::InvalidArgumentError(absl::StrCat(origin, ": ", status.message()));
  return config;
}

absl::StatusOr<ServerConfig> LoadConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open the config file"));
  std::stringstream text;
  text << in.rdbuf();
  return ParseConfig(text.str(), path);
}

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address,
                                                          const std::string& field) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", address, "' is not host:port (port in [0, 65535])"));
  }
  return std::make_pair(address.substr(0, colon), port);
}

absl::Status NormalizeAndValidate(ServerConfig& c, int available_cpus) {
  RETURN_IF_ERROR(SplitHostPort(c.listen, "server.listen").status());
  if (c.metrics_address.empty()) {
    return absl::InvalidArgumentError("server.metrics_address: must not be empty");
  }
  RETURN_IF_ERROR(Range("server.metrics_port", c.metrics_port, -1, 65535));
  if (!(c.drain_grace_seconds >= 0 && c.drain_grace_seconds <= 3600)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "server.drain_grace_seconds: ", c.drain_grace_seconds, " is outside [0, 3600]"));
  }
  if (!(c.max_connection_age_seconds == 0 ||
        (c.max_connection_age_seconds >= 0.1 && c.max_connection_age_seconds <= 86400))) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.max_connection_age_seconds: ", c.max_connection_age_seconds,
                     " is neither 0 (off) nor in [0.1, 86400]"));
  }
  const TlsConfig& tls = c.tls;
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.tls.", tls.cert_file.empty() ? "cert_file" : "key_file",
                     ": must be set too (TLS needs both the certificate and its key)"));
  }
  if (!tls.enabled() && !tls.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "server.tls.client_ca_file: client certificates need TLS (set cert_file and key_file)");
  }

  BatchingConfig& b = c.batching;
  constexpr int64_t kBig = int64_t{1} << 40;
  RETURN_IF_ERROR(Range("batching.workers", b.workers, 1, 256));
  RETURN_IF_ERROR(Range("batching.threads_per_worker", b.threads_per_worker, 0, 1024));
  if (b.threads_per_worker == 0) {
    b.threads_per_worker = std::max<int64_t>(1, available_cpus / b.workers);
  }
  auto check_queue = [&](const std::string& prefix, int64_t tokens, int64_t size, int64_t delay,
                         int64_t queue, int64_t queue_tokens) -> absl::Status {
    RETURN_IF_ERROR(Range(prefix + "max_batch_tokens", tokens, 1, kBig));
    RETURN_IF_ERROR(Range(prefix + "max_batch_size", size, 1, 1 << 20));
    RETURN_IF_ERROR(Range(prefix + "max_queue_delay_us", delay, 0, 3'600'000'000));
    RETURN_IF_ERROR(Range(prefix + "max_queue_size", queue, 1, kBig));
    RETURN_IF_ERROR(Range(prefix + "max_queue_tokens", queue_tokens, 1, kBig));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check_queue("batching.", b.max_batch_tokens, b.max_batch_size,
                              b.max_queue_delay_us, b.max_queue_size, b.max_queue_tokens));
  RETURN_IF_ERROR(Range("batching.max_queue_wait_ms", b.max_queue_wait_ms, 0, 3'600'000));

  LimitsConfig& l = c.limits;
  RETURN_IF_ERROR(Range("limits.max_inputs_per_call", l.max_inputs_per_call, 1, 1 << 20));
  RETURN_IF_ERROR(Range("limits.max_text_bytes", l.max_text_bytes, 1, 1 << 30));
  RETURN_IF_ERROR(Range("limits.max_tokens_per_call", l.max_tokens_per_call, 1, kBig));
  RETURN_IF_ERROR(Range("limits.max_priority", l.max_priority, 0, 1 << 20));
  RETURN_IF_ERROR(Range("limits.max_stream_inflight", l.max_stream_inflight, 1, 1 << 20));

  if (c.models.empty()) {
    return absl::InvalidArgumentError(
        "models: no models configured (add one under models:, or pass --model DIR)");
  }
  std::set<std::string> names;
  for (size_t i = 0; i < c.models.size(); ++i) {
    ModelConfig& m = c.models[i];
    const std::string p = absl::StrCat("models[", i, "].");
    if (!ValidModelName(m.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "name: '", m.name, "' must be 1-64 characters of [A-Za-z0-9._-]"));
    }
    if (!names.insert(m.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(p, "name: '", m.name, "' is used twice"));
    }
    if (m.path.empty()) return absl::InvalidArgumentError(p + "path: must be set");
    if (!(m.max_budget > 0 && m.max_budget <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "max_budget: ", m.max_budget, " is outside (0, 1]"));
    }
    if (!(m.default_budget > 0 && m.default_budget <= m.max_budget)) {
      return absl::InvalidArgumentError(absl::StrCat(p, "default_budget: ", m.default_budget,
                                                     " is outside (0, max_budget = ", m.max_budget,
                                                     "]"));
    }
    if (!engine::PrecisionFromName(m.precision).has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "precision: '", m.precision, "' is not one of fp32, int8, bf16"));
    }
    QueueConfig& q = m.batching;
    if (!q.max_batch_tokens) q.max_batch_tokens = b.max_batch_tokens;
    if (!q.max_batch_size) q.max_batch_size = b.max_batch_size;
    if (!q.max_queue_delay_us) q.max_queue_delay_us = b.max_queue_delay_us;
    if (!q.max_queue_size) q.max_queue_size = b.max_queue_size;
    if (!q.max_queue_tokens) q.max_queue_tokens = b.max_queue_tokens;
    RETURN_IF_ERROR(check_queue(p + "batching.", *q.max_batch_tokens, *q.max_batch_size,
                                *q.max_queue_delay_us, *q.max_queue_size, *q.max_queue_tokens));
  }
  return absl::OkStatus();
}

namespace {

// A string as YAML that parses back to exactly it. yaml-cpp writes a string plain unless it looks
// like another type or holds YAML syntax, but writes control characters (a path ending in "\r",
// found by fuzz_server_config) and edge spaces raw, and the parser then drops them: the printed
// config would not be the one that runs.
struct Text {
  const std::string& s;
};
YAML::Emitter& operator<<(YAML::Emitter& out, Text t) {
  bool quote = !t.s.empty() && (t.s.front() == ' ' || t.s.back() == ' ');
  for (unsigned char ch : t.s) quote = quote || ch < 0x20 || ch == 0x7f;
  if (quote) out << YAML::DoubleQuoted;
  return out << t.s;
}

}  // namespace

std::string ConfigToYaml(const ServerConfig& c) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "server" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "listen" << YAML::Value << Text{c.listen};
  out << YAML::Key << "metrics_address" << YAML::Value << Text{c.metrics_address};
  out << YAML::Key << "metrics_port" << YAML::Value << c.metrics_port;
  out << YAML::Key << "drain_grace_seconds" << YAML::Value << c.drain_grace_seconds;
  out << YAML::Key << "max_connection_age_seconds" << YAML::Value << c.max_connection_age_seconds;
  out << YAML::Key << "auth_token_file" << YAML::Value << Text{c.auth_token_file};
  out << YAML::Key << "tls" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "cert_file" << YAML::Value << Text{c.tls.cert_file};
  out << YAML::Key << "key_file" << YAML::Value << Text{c.tls.key_file};
  out << YAML::Key << "client_ca_file" << YAML::Value << Text{c.tls.client_ca_file};
  out << YAML::EndMap;
  out << YAML::EndMap;
  auto queue = [&](int64_t tokens, int64_t size, int64_t delay, int64_t qsize, int64_t qtokens) {
    out << YAML::Key << "max_batch_tokens" << YAML::Value << tokens;
    out << YAML::Key << "max_batch_size" << YAML::Value << size;
    out << YAML::Key << "max_queue_delay_us" << YAML::Value << delay;
    out << YAML::Key << "max_queue_size" << YAML::Value << qsize;
    out << YAML::Key << "max_queue_tokens" << YAML::Value << qtokens;
  };
  out << YAML::Key << "models" << YAML::Value << YAML::BeginSeq;
  for (const ModelConfig& m : c.models) {
    out << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << Text{m.name};
    out << YAML::Key << "path" << YAML::Value << Text{m.path};
    out << YAML::Key << "default_budget" << YAML::Value << m.default_budget;
    out << YAML::Key << "max_budget" << YAML::Value << m.max_budget;
    out << YAML::Key << "schedule" << YAML::Value << Text{m.schedule};
    out << YAML::Key << "precision" << YAML::Value << Text{m.precision};
    out << YAML::Key << "warmup" << YAML::Value << m.warmup;
    out << YAML::Key << "batching" << YAML::Value << YAML::BeginMap;
    const QueueConfig& q = m.batching;
    queue(q.max_batch_tokens.value_or(0), q.max_batch_size.value_or(0),
          q.max_queue_delay_us.value_or(0), q.max_queue_size.value_or(0),
          q.max_queue_tokens.value_or(0));
    out << YAML::EndMap;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "batching" << YAML::Value << YAML::BeginMap;
  const BatchingConfig& b = c.batching;
  queue(b.max_batch_tokens, b.max_batch_size, b.max_queue_delay_us, b.max_queue_size,
        b.max_queue_tokens);
  out << YAML::Key << "max_queue_wait_ms" << YAML::Value << b.max_queue_wait_ms;
  out << YAML::Key << "workers" << YAML::Value << b.workers;
  out << YAML::Key << "threads_per_worker" << YAML::Value << b.threads_per_worker;
  out << YAML::EndMap;
  out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "max_inputs_per_call" << YAML::Value << c.limits.max_inputs_per_call;
  out << YAML::Key << "max_text_bytes" << YAML::Value << c.limits.max_text_bytes;
  out << YAML::Key << "max_tokens_per_call" << YAML::Value << c.limits.max_tokens_per_call;
  out << YAML::Key << "max_priority" << YAML::Value << c.limits.max_priority;
  out << YAML::Key << "max_stream_inflight" << YAML::Value << c.limits.max_stream_inflight;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace topserve::server
