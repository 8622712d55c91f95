// topserve-client: calls a running topserve-server and prints the response as JSON (proto3 JSON
// mapping). Exit code: 0 on OK, otherwise 10 + the gRPC status code, with "CODE: message" on
// stderr.
//
//   topserve-client classify "a great movie" "a dull movie" --budget 0.5
//   topserve-client classify "premise" --pair "hypothesis" --model mnli
//   topserve-client answer --question "Who?" --context "Ada wrote it." --n-best 3
//   topserve-client stream "text one" "text two"          # one ClassifyStream request per text
//   topserve-client models                                 # ListModels
//   topserve-client model sst2                             # GetModel
//
// --token (default: $TOPSERVE_TOKEN) sends "authorization: Bearer <token>" to a server with
// server.auth_token_file set. --tls-ca connects over TLS, verifying the server against that CA
// bundle (PEM); --tls-cert/--tls-key present a client certificate (mutual TLS).
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <CLI/CLI.hpp>

#include "absl/status/status.h"
#include "topserve/v1/inference.grpc.pb.h"

namespace {

namespace v1 = topserve::v1;

std::string CodeName(grpc::StatusCode code) {
  // gRPC's codes are absl's numbers, and absl names them; outside 0..16 it has none.
  const int c = static_cast<int>(code);
  if (c < 0 || c > 16) return "UNKNOWN";
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(c));
}

int Report(const grpc::Status& status, const google::protobuf::Message& response) {
  if (!status.ok()) {
    std::cerr << CodeName(status.error_code()) << ": " << status.error_message() << "\n";
    return 10 + static_cast<int>(status.error_code());
  }
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(response, &json, options).ok()) {
    std::cerr << "cannot print the response as JSON\n";
    return 1;
  }
  std::cout << json;
  if (json.empty() || json.back() != '\n') std::cout << "\n";
  return 0;
}

void SetDeadline(grpc::ClientContext& context, int timeout_ms) {
  if (timeout_ms > 0) {
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"topserve-client: call a topserve-server"};
  app.require_subcommand(1);
  std::string server = "localhost:8500";
  int timeout_ms = 0;
  app.add_option("-s,--server", server, "server address host:port")->capture_default_str();
  app.add_option("--timeout-ms", timeout_ms, "deadline for the call (0 = none)");
  std::string token;
  if (const char* env = std::getenv("TOPSERVE_TOKEN"); env != nullptr) token = env;
  app.add_option("--token", token, "bearer token (default: $TOPSERVE_TOKEN)");
  std::string tls_ca, tls_cert, tls_key;
  app.add_option("--tls-ca", tls_ca,
                 "connect over TLS; PEM CA bundle that signed the server's "
                 "certificate")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", tls_cert, "PEM client certificate (mutual TLS; needs --tls-ca)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", tls_key, "PEM private key of --tls-cert")->check(CLI::ExistingFile);

  std::string model;
  std::optional<double> budget, min_budget;
  int priority = 0;

  auto* classify = app.add_subcommand("classify", "Classify texts (one call, many inputs)");
  auto* stream =
      app.add_subcommand("stream", "Classify texts over ClassifyStream, one per message");
  std::vector<std::string> texts, pairs;
  bool logits = false;
  std::string truncation = "longest_first";
  for (auto* sub : {classify, stream}) {
    sub->add_option("texts", texts, "texts to classify")->required();
    sub->add_option("--pair", pairs, "second text of each pair (one per text)");
    sub->add_flag("--logits", logits, "also return the raw logits");
    sub->add_option("--truncation", truncation, "none | longest_first | only_first | only_second");
  }
  auto* answer = app.add_subcommand("answer", "Answer a question from a context");
  std::string question, context, context_file;
  int n_best = 0, max_answer_tokens = 0, max_length = 0, doc_stride = -1;
  answer->add_option("-q,--question", question)->required();
  auto* ctx_opt = answer->add_option("-c,--context", context);
  answer->add_option("--context-file", context_file, "read the context from a file")
      ->excludes(ctx_opt);
  answer->add_option("--n-best", n_best);
  answer->add_option("--max-answer-tokens", max_answer_tokens);
  answer->add_option("--max-length", max_length, "tokens per window");
  answer->add_option("--doc-stride", doc_stride, "tokens shared by consecutive windows");
  for (auto* sub : {classify, stream, answer}) {
    sub->add_option("-m,--model", model, "model name (default: the server's first of the task)");
    sub->add_option("-b,--budget", budget, "FLOPs budget in (0, 1]");
    sub->add_option("--min-budget", min_budget, "lowest budget the server may use under load");
    sub->add_option("--priority", priority, "higher runs first");
  }
  auto* models = app.add_subcommand("models", "List the models (ListModels)");
  auto* get_model = app.add_subcommand("model", "Describe one model (GetModel)");
  std::string model_name;
  get_model->add_option("name", model_name)->required();
  CLI11_PARSE(app, argc, argv);

  if (tls_cert.empty() != tls_key.empty() || (!tls_cert.empty() && tls_ca.empty())) {
    std::cerr << "--tls-cert and --tls-key go together, and with --tls-ca\n";
    return 2;
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!tls_ca.empty()) {
    auto read = [](const std::string& path) {
      std::ifstream in(path, std::ios::binary);
      std::ostringstream text;
      text << in.rdbuf();
      return text.str();
    };
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = read(tls_ca);
    if (!tls_cert.empty()) {
      ssl.pem_cert_chain = read(tls_cert);
      ssl.pem_private_key = read(tls_key);
    }
    credentials = grpc::SslCredentials(ssl);
  }
  auto channel = grpc::CreateChannel(server, credentials);
  auto stub = v1::Inference::NewStub(channel);
  grpc::ClientContext call;
  SetDeadline(call, timeout_ms);
  if (!token.empty()) call.AddMetadata("authorization", "Bearer " + token);

  if (classify->parsed() || stream->parsed()) {
    if (!pairs.empty() && pairs.size() != texts.size()) {
      std::cerr << "give one --pair per text\n";
      return 2;
    }
    v1::Truncation trunc = v1::TRUNCATION_UNSPECIFIED;
    if (truncation == "none")
      trunc = v1::TRUNCATION_NONE;
    else if (truncation == "longest_first")
      trunc = v1::TRUNCATION_LONGEST_FIRST;
    else if (truncation == "only_first")
      trunc = v1::TRUNCATION_ONLY_FIRST;
    else if (truncation == "only_second")
      trunc = v1::TRUNCATION_ONLY_SECOND;
    else {
      std::cerr << "unknown --truncation " << truncation << "\n";
      return 2;
    }
    auto make = [&](size_t first, size_t count) {
      v1::ClassifyRequest req;
      req.set_model(model);
      for (size_t i = first; i < first + count; ++i) {
        v1::TextInput* in = req.add_inputs();
        in->set_text(texts[i]);
        if (!pairs.empty()) in->set_text_pair(pairs[i]);
      }
      if (budget) req.set_budget(*budget);
      if (min_budget) req.set_min_budget(*min_budget);
      req.set_priority(priority);
      req.set_truncation(trunc);
      req.set_return_logits(logits);
      return req;
    };
    if (classify->parsed()) {
      v1::ClassifyResponse resp;
      return Report(stub->Classify(&call, make(0, texts.size()), &resp), resp);
    }
    auto rw = stub->ClassifyStream(&call);
    for (size_t i = 0; i < texts.size(); ++i) {
      v1::ClassifyStreamRequest req;
      req.set_request_id(std::to_string(i));
      *req.mutable_request() = make(i, 1);
      if (!rw->Write(req)) break;
    }
    rw->WritesDone();
    v1::ClassifyStreamResponse resp;
    int rc = 0;
    while (rw->Read(&resp)) {
      if (int r = Report(grpc::Status::OK, resp); r != 0) rc = r;
    }
    const grpc::Status status = rw->Finish();
    if (!status.ok()) return Report(status, resp);
    return rc;
  }
  if (answer->parsed()) {
    if (!context_file.empty()) {
      std::ifstream in(context_file, std::ios::binary);
      if (!in) {
        std::cerr << "cannot read " << context_file << "\n";
        return 2;
      }
      std::stringstream ss;
      ss << in.rdbuf();
      context = ss.str();
    }
    v1::AnswerRequest req;
    req.set_model(model);
    req.set_question(question);
    req.set_context(context);
    req.set_n_best(n_best);
    req.set_max_answer_tokens(max_answer_tokens);
    req.set_max_length(max_length);
    if (doc_stride >= 0) req.set_doc_stride(doc_stride);
    if (budget) req.set_budget(*budget);
    if (min_budget) req.set_min_budget(*min_budget);
    req.set_priority(priority);
    v1::AnswerResponse resp;
    return Report(stub->Answer(&call, req, &resp), resp);
  }
  if (models->parsed()) {
    v1::ListModelsResponse resp;
    return Report(stub->ListModels(&call, v1::ListModelsRequest(), &resp), resp);
  }
  v1::GetModelRequest req;
  req.set_name(model_name);
  v1::ModelInfo resp;
  return Report(stub->GetModel(&call, req, &resp), resp);
}
