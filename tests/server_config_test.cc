// The server's YAML config: defaults, unknown keys, type errors, validation, per-model overrides.
#include "server/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace topserve::server {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<ServerConfig> Parse(const std::string& text) {
  auto c = ParseConfig(text, "test.yaml");
  if (!c.ok()) return c.status();
  if (absl::Status s = NormalizeAndValidate(*c, 8); !s.ok()) return s;
  return c;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST(ServerConfig, DefaultsForEverything) {
  auto c = Parse("models:\n  - {name: m, path: /models/m}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "0.0.0.0:8500");
  EXPECT_EQ(c->metrics_port, 9100);
  EXPECT_EQ(c->batching.workers, 1);
  EXPECT_EQ(c->batching.threads_per_worker, 8);  // all CPUs for one worker
  EXPECT_EQ(c->limits.max_inputs_per_call, 64);
  ASSERT_EQ(c->models.size(), 1u);
  EXPECT_EQ(c->models[0].default_budget, 1.0);
  EXPECT_EQ(c->models[0].precision, "fp32");
  EXPECT_EQ(*c->models[0].batching.max_batch_tokens, 8192);
  EXPECT_EQ(*c->models[0].batching.max_queue_delay_us, 0);
}

TEST(ServerConfig, ThreadsSplitAcrossWorkers) {
  auto c = Parse("batching: {workers: 3}\nmodels: [{name: m, path: /p}]\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->batching.threads_per_worker, 2);
}

TEST(ServerConfig, EveryKeyIsRead) {
  auto c = Parse(R"(
server:
  listen: 127.0.0.1:7000
  metrics_address: 127.0.0.1
  metrics_port: -1
  drain_grace_seconds: 2.5
  max_connection_age_seconds: 30
  auth_token_file: /run/secrets/topserve-tokens
batching:
  max_batch_tokens: 4096
  max_batch_size: 8
  max_queue_delay_us: 500
  max_queue_size: 10
  max_queue_tokens: 10000
  workers: 2
  threads_per_worker: 1
limits:
  max_inputs_per_call: 4
  max_text_bytes: 100
  max_tokens_per_call: 1000
  max_priority: 3
  max_stream_inflight: 5
models:
  - name: a
    path: /a
    default_budget: 0.5
    max_budget: 0.8
    schedule: /a/other.yaml
    precision: int8
    warmup: false
    batching: {max_queue_delay_us: 0, max_batch_size: 2}
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:7000");
  EXPECT_EQ(c->metrics_port, -1);
  EXPECT_DOUBLE_EQ(c->drain_grace_seconds, 2.5);
  EXPECT_DOUBLE_EQ(c->max_connection_age_seconds, 30);
  EXPECT_EQ(c->auth_token_file, "/run/secrets/topserve-tokens");
  EXPECT_EQ(c->batching.threads_per_worker, 1);
  EXPECT_EQ(c->limits.max_stream_inflight, 5);
  const ModelConfig& m = c->models[0];
  EXPECT_DOUBLE_EQ(m.default_budget, 0.5);
  EXPECT_DOUBLE_EQ(m.max_budget, 0.8);
  EXPECT_EQ(m.schedule, "/a/other.yaml");
  EXPECT_EQ(m.precision, "int8");
  EXPECT_FALSE(m.warmup);
  EXPECT_EQ(*m.batching.max_queue_delay_us, 0);   // overridden
  EXPECT_EQ(*m.batching.max_batch_size, 2);       // overridden
  EXPECT_EQ(*m.batching.max_batch_tokens, 4096);  // inherited
  // The effective config round-trips.
  auto again = Parse(ConfigToYaml(*c));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ConfigToYaml(*again), ConfigToYaml(*c));
}

TEST(ServerConfig, PrintedStringsParseBackToThemselves) {
  // fuzz_server_config: a path ending in carriage returns was printed raw and read back without
  // them, so the printed effective config was not the one that ran.
  auto c = Parse(
      "models:\n  - name: a\n    path: \"/m/a\\r\\r\"\n    schedule: \" s.yaml \"\n"
      "server:\n  auth_token_file: \"t\\x01\"\n");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->models[0].path, "/m/a\r\r");
  auto again = Parse(ConfigToYaml(*c));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->models[0].path, "/m/a\r\r");
  EXPECT_EQ(again->models[0].schedule, " s.yaml ");
  EXPECT_EQ(again->auth_token_file, "t\x01");
  EXPECT_EQ(ConfigToYaml(*again), ConfigToYaml(*c));
}

TEST(ServerConfig, UnknownKeysAreNamed) {
  auto top = Parse("modles: []\n");
  EXPECT_THAT(Message(top.status()), HasSubstr("modles: unknown key"));
  auto nested = Parse("batching: {max_batch_tokenz: 3}\nmodels: [{name: m, path: /p}]\n");
  EXPECT_THAT(Message(nested.status()), HasSubstr("batching.max_batch_tokenz: unknown key"));
  auto model = Parse("models: [{name: m, path: /p, budget: 0.5}]\n");
  EXPECT_THAT(Message(model.status()), HasSubstr("models[0].budget: unknown key"));
  auto per_model = Parse("models: [{name: m, path: /p, batching: {workers: 2}}]\n");
  EXPECT_THAT(Message(per_model.status()), HasSubstr("models[0].batching.workers: unknown key"));
}

TEST(ServerConfig, TypeAndSyntaxErrors) {
  EXPECT_THAT(Message(Parse("batching: {workers: two}\nmodels: []\n").status()),
              HasSubstr("batching.workers: 'two' is not an integer"));
  EXPECT_THAT(Message(Parse("models: [{name: m, path: /p, warmup: maybe}]\n").status()),
              HasSubstr("models[0].warmup: 'maybe' is not a boolean"));
  EXPECT_THAT(Message(Parse("server: [1, 2]\n").status()), HasSubstr("server: must be a mapping"));
  EXPECT_THAT(Message(Parse("models: {name: m}\n").status()), HasSubstr("models: must be a list"));
  EXPECT_THAT(Message(Parse("server: {listen: [\n").status()), HasSubstr("test.yaml: line"));
}

TEST(ServerConfig, Validation) {
  EXPECT_THAT(Message(Parse("{}\n").status()), HasSubstr("models: no models configured"));
  EXPECT_THAT(Message(Parse("models: [{name: m, path: /p}, {name: m, path: /q}]\n").status()),
              HasSubstr("models[1].name: 'm' is used twice"));
  EXPECT_THAT(Message(Parse("models: [{name: 'a b', path: /p}]\n").status()),
              HasSubstr("models[0].name"));
  EXPECT_THAT(Message(Parse("models: [{name: m}]\n").status()),
              HasSubstr("models[0].path: must be set"));
  EXPECT_THAT(
      Message(
          Parse("models: [{name: m, path: /p, default_budget: 0.9, max_budget: 0.5}]\n").status()),
      HasSubstr("models[0].default_budget"));
  EXPECT_THAT(Message(Parse("models: [{name: m, path: /p, max_budget: 1.5}]\n").status()),
              HasSubstr("models[0].max_budget"));
  EXPECT_THAT(Message(Parse("server: {listen: nowhere}\nmodels: [{name: m, path: /p}]\n").status()),
              HasSubstr("server.listen"));
  EXPECT_THAT(
      Message(Parse("limits: {max_inputs_per_call: 0}\nmodels: [{name: m, path: /p}]\n").status()),
      HasSubstr("limits.max_inputs_per_call: 0 is outside"));
  EXPECT_THAT(
      Message(Parse("models: [{name: m, path: /p, batching: {max_batch_size: 0}}]\n").status()),
      HasSubstr("models[0].batching.max_batch_size"));
  EXPECT_THAT(Message(Parse("models: [{name: m, path: /p, precision: fp16}]\n").status()),
              HasSubstr("models[0].precision: 'fp16' is not one of fp32, int8"));
  EXPECT_THAT(
      Message(Parse("server: {max_connection_age_seconds: 0.01}\nmodels: [{name: m, path: /p}]\n")
                  .status()),
      HasSubstr("server.max_connection_age_seconds: 0.01 is neither 0 (off) nor in [0.1, 86400]"));
  EXPECT_TRUE(
      Parse("server: {max_connection_age_seconds: 0}\nmodels: [{name: m, path: /p}]\n").ok());
}

TEST(ServerConfig, Tls) {
  auto c = Parse(
      "server:\n  tls: {cert_file: s.crt, key_file: s.key, client_ca_file: ca.crt}\n"
      "models: [{name: m, path: /p}]\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->tls.enabled());
  EXPECT_EQ(c->tls.cert_file, "s.crt");
  EXPECT_EQ(c->tls.key_file, "s.key");
  EXPECT_EQ(c->tls.client_ca_file, "ca.crt");
  // The printed config reads back the same.
  auto again = Parse(ConfigToYaml(*c));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->tls.client_ca_file, "ca.crt");
  EXPECT_FALSE(Parse("models: [{name: m, path: /p}]\n")->tls.enabled());

  auto s = Parse("server: {tls: {cert_file: s.crt}}\nmodels: [{name: m, path: /p}]\n");
  EXPECT_THAT(Message(s.status()), HasSubstr("server.tls.key_file: must be set too"));
  s = Parse("server: {tls: {key_file: s.key}}\nmodels: [{name: m, path: /p}]\n");
  EXPECT_THAT(Message(s.status()), HasSubstr("server.tls.cert_file: must be set too"));
  s = Parse("server: {tls: {client_ca_file: ca.crt}}\nmodels: [{name: m, path: /p}]\n");
  EXPECT_THAT(Message(s.status()),
              HasSubstr("server.tls.client_ca_file: client certificates need TLS"));
  s = Parse("server: {tls: {cert: s.crt}}\nmodels: [{name: m, path: /p}]\n");
  EXPECT_THAT(Message(s.status()), HasSubstr("server.tls.cert: unknown key"));
}

TEST(ServerConfig, SplitHostPort) {
  auto hp = SplitHostPort("[::1]:80", "f");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->first, "[::1]");
  EXPECT_EQ(hp->second, 80);
  EXPECT_FALSE(SplitHostPort(":80", "f").ok());
  EXPECT_FALSE(SplitHostPort("h:70000", "f").ok());
}

}  // namespace
}  // namespace topserve::server
