#include "engine/model_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/json_describe.h"
#include "nlohmann/json.hpp"

namespace topserve::engine {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxJsonFileBytes = 16 << 20;
constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();  // any size field is below 2^31
constexpr int64_t kDefaultLabelCount = 2;  // Hugging Face's default num_labels

absl::Status FieldError(absl::string_view origin, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(origin, ": ", field, " ", what));
}

// Reads a whole small file. ENOENT -> NOT_FOUND; the message names the path.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxJsonFileBytes) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", st.st_size,
                                                   " bytes is too large for a JSON config (limit ",
                                                   kMaxJsonFileBytes, ")"));
  }
  std::string text;
  char buffer[65536];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot read"));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (text.size() > kMaxJsonFileBytes) {
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat(path, ": too large for a JSON config"));
    }
  }
  ::close(fd);
  return text;
}

absl::StatusOr<Json> ParseObject(const std::string& text, absl::string_view origin) {
  Json json;
  try {
    json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  } catch (const std::exception&) {
    json = Json(Json::value_t::discarded);
  }
  if (json.is_discarded())
    return absl::InvalidArgumentError(absl::StrCat(origin, ": not valid JSON"));
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": not a JSON object (it is a JSON ", json.type_name(), ")"));
  }
  return json;
}

// An integer field in [min_value, max_value]; `fallback` when absent (nullopt = required).
absl::StatusOr<int64_t> IntField(const Json& obj, absl::string_view origin, const char* key,
                                 std::optional<int64_t> fallback, int64_t min_value,
                                 int64_t max_value) {
  const auto it = obj.find(key);
  if (it == obj.end()) {
    if (fallback) return *fallback;
    return FieldError(origin, key, "is missing");
  }
  std::optional<int64_t> value;
  if (it->is_number_unsigned()) {
    const auto v = it->get<uint64_t>();
    if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      value = static_cast<int64_t>(v);
  } else if (it->is_number_integer()) {
    value = it->get<int64_t>();
  }
  if (!value || *value < min_value || *value > max_value) {
    const std::string range =
        min_value == 1 ? std::string("a positive integer")
                       : absl::StrCat("an integer in [", min_value, ", ", max_value, "]");
    const std::string limit =
        min_value == 1 ? absl::StrCat(" (at most ", max_value, ")") : std::string();
    return FieldError(origin, key, absl::StrCat("must be ", range, limit, ", got ", Describe(*it)));
  }
  return *value;
}

absl::StatusOr<bool> BoolField(const Json& obj, absl::string_view origin, const char* key,
                               bool fallback) {
  const auto it = obj.find(key);
  if (it == obj.end()) return fallback;
  if (!it->is_boolean())
    return FieldError(origin, key, absl::StrCat("must be true or false, got ", Describe(*it)));
  return it->get<bool>();
}

absl::Status ParseLabels(const Json& obj, absl::string_view origin, BertConfig& config) {
  std::optional<int64_t> num_labels;
  if (obj.contains("num_labels")) {
    ASSIGN_OR_RETURN(num_labels, IntField(obj, origin, "num_labels", std::nullopt, 1, 1 << 20));
  }
  const auto it = obj.find("id2label");
  if (it == obj.end() || it->is_null()) {
    const int64_t n = num_labels.value_or(kDefaultLabelCount);
    config.labels.clear();
    for (int64_t i = 0; i < n; ++i) config.labels.push_back(absl::StrCat("LABEL_", i));
    return absl::OkStatus();
  }
  if (!it->is_object() || it->empty()) {
    return FieldError(
        origin, "id2label",
        absl::StrCat("must be a non-empty object {\"0\": label, ...}, got ", Describe(*it)));
  }
  const size_t n = it->size();
  std::vector<std::optional<std::string>> labels(n);
  for (const auto& [key, value] : it->items()) {
    // A class id: decimal digits, no sign, no leading zero (so "0" and "00" cannot both name class
    // 0).
    size_t id = 0;
    bool ok = !key.empty() && key.size() <= 9 && (key == "0" || key[0] != '0');
    for (char c : key) {
      if (c < '0' || c > '9') {
        ok = false;
        break;
      }
      id = id * 10 + static_cast<size_t>(c - '0');
    }
    if (!ok || id >= n) {
      return FieldError(origin, "id2label",
                        absl::StrCat("key ", Describe(Json(key)), " is not a class id in 0..",
                                     n - 1, " (the keys must be 0..n-1, each once)"));
    }
    if (!value.is_string()) {
      return FieldError(
          origin, "id2label",
          absl::StrCat("label of class ", key, " must be a string, got ", Describe(value)));
    }
    labels[id] = value.get<std::string>();
  }
  config.labels.clear();
  for (size_t i = 0; i < n; ++i) {
    // n distinct keys in 0..n-1 cover every id; kept as a check.
    if (!labels[i]) return FieldError(origin, "id2label", absl::StrCat("has no class ", i));
    config.labels.push_back(*labels[i]);
  }
  if (num_labels && *num_labels != static_cast<int64_t>(n)) {
    return FieldError(origin, "num_labels",
                      absl::StrCat("is ", *num_labels, " but id2label has ", n, " labels"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Task> ParseTask(const Json& obj, absl::string_view origin) {
  const auto it = obj.find("architectures");
  if (it == obj.end() || it->is_null()) {
    return FieldError(origin, "architectures",
                      "is missing (expected [\"BertForSequenceClassification\"], "
                      "[\"BertForQuestionAnswering\"] or [\"BertModel\"])");
  }
  if (!it->is_array() || it->empty()) {
    return FieldError(origin, "architectures",
                      absl::StrCat("must be a non-empty array of names, got ", Describe(*it)));
  }
  std::optional<Task> task;
  bool bare = false;
  for (const Json& name : *it) {
    if (!name.is_string()) {
      return FieldError(origin, "architectures",
                        absl::StrCat("must hold strings, got ", Describe(name)));
    }
    std::optional<Task> this_task;
    if (name == "BertForSequenceClassification") this_task = Task::kSequenceClassification;
    if (name == "BertForQuestionAnswering") this_task = Task::kQuestionAnswering;
    // The bare encoder is what every task model contains: a head named next to it decides.
    if (name == "BertModel") bare = true;
    if (this_task && task && *task != *this_task) {
      return FieldError(origin, "architectures",
                        absl::StrCat("names two different tasks: ", Describe(*it)));
    }
    if (this_task) task = this_task;
  }
  if (!task && bare) task = Task::kFeatureExtraction;
  if (!task) {
    return FieldError(origin, "architectures",
                      absl::StrCat(Describe(*it),
                                   " names no supported architecture (supported: "
                                   "BertForSequenceClassification, BertForQuestionAnswering, "
                                   "BertModel)"));
  }
  return *task;
}

}  // namespace

absl::StatusOr<BertConfig> ParseBertConfig(const std::string& json_text,
                                           const std::string& origin) {
  ASSIGN_OR_RETURN(const Json obj, ParseObject(json_text, origin));
  BertConfig config;

  if (const auto it = obj.find("model_type"); it != obj.end() && *it != "bert") {
    return FieldError(origin, "model_type", absl::StrCat("must be \"bert\", got ", Describe(*it)));
  }
  if (const auto it = obj.find("position_embedding_type"); it != obj.end() && *it != "absolute") {
    return FieldError(
        origin, "position_embedding_type",
        absl::StrCat("must be \"absolute\" (the only kind supported), got ", Describe(*it)));
  }
  ASSIGN_OR_RETURN(config.task, ParseTask(obj, origin));

  ASSIGN_OR_RETURN(config.vocab_size,
                   IntField(obj, origin, "vocab_size", std::nullopt, 1, kMaxSize));
  ASSIGN_OR_RETURN(config.hidden_size,
                   IntField(obj, origin, "hidden_size", std::nullopt, 1, kMaxSize));
  ASSIGN_OR_RETURN(config.num_layers,
                   IntField(obj, origin, "num_hidden_layers", std::nullopt, 1, kMaxSize));
  ASSIGN_OR_RETURN(config.num_heads,
                   IntField(obj, origin, "num_attention_heads", std::nullopt, 1, kMaxSize));
  ASSIGN_OR_RETURN(config.intermediate_size,
                   IntField(obj, origin, "intermediate_size", std::nullopt, 1, kMaxSize));
  ASSIGN_OR_RETURN(config.max_position_embeddings,
                   IntField(obj, origin, "max_position_embeddings", 512, 1, kMaxSize));
  ASSIGN_OR_RETURN(config.type_vocab_size,
                   IntField(obj, origin, "type_vocab_size", 2, 1, kMaxSize));
  if (config.hidden_size % config.num_heads != 0) {
    return FieldError(origin, "hidden_size",
                      absl::StrCat(config.hidden_size, " is not divisible by num_attention_heads ",
                                   config.num_heads));
  }

  if (const auto it = obj.find("hidden_act"); it != obj.end()) {
    if (!it->is_string()) {
      return FieldError(origin, "hidden_act",
                        absl::StrCat("must be a string, got ", Describe(*it)));
    }
    const std::string& act = it->get_ref<const std::string&>();
    if (act == "gelu" || act == "gelu_python") {
      config.activation = Activation::kGelu;
    } else if (act == "gelu_new" || act == "gelu_pytorch_tanh") {
      config.activation = Activation::kGeluTanh;
    } else if (act == "relu") {
      config.activation = Activation::kRelu;
    } else {
      return FieldError(origin, "hidden_act",
                        absl::StrCat(Describe(*it),
                                     " is not supported (supported: gelu, gelu_python, "
                                     "gelu_new, gelu_pytorch_tanh, relu)"));
    }
  }

  if (const auto it = obj.find("layer_norm_eps"); it != obj.end()) {
    const double eps = it->is_number() ? it->get<double>() : std::nan("");
    if (!(eps > 0) || !std::isfinite(eps)) {
      return FieldError(origin, "layer_norm_eps",
                        absl::StrCat("must be a positive number, got ", Describe(*it)));
    }
    config.layer_norm_eps = eps;
  }

  if (const auto it = obj.find("pad_token_id"); it != obj.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(config.pad_token_id,
                     IntField(obj, origin, "pad_token_id", 0, 0, config.vocab_size - 1));
  }

  RETURN_IF_ERROR(ParseLabels(obj, origin, config));
  if (config.task == Task::kQuestionAnswering && config.num_labels() != 2) {
    return FieldError(origin, "num_labels",
                      absl::StrCat("is ", config.num_labels(),
                                   " but BertForQuestionAnswering needs 2 (start and end logits)"));
  }
  return config;
}

absl::StatusOr<BertConfig> LoadBertConfig(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadSmallFile(path));
  return ParseBertConfig(text, path);
}

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(const std::string& json_text,
                                                     const std::string& origin) {
  ASSIGN_OR_RETURN(const Json obj, ParseObject(json_text, origin));
  TokenizerConfig config;
  ASSIGN_OR_RETURN(config.do_lower_case,
                   BoolField(obj, origin, "do_lower_case", config.do_lower_case));
  ASSIGN_OR_RETURN(config.tokenize_chinese_chars,
                   BoolField(obj, origin, "tokenize_chinese_chars", config.tokenize_chinese_chars));
  if (const auto it = obj.find("strip_accents"); it != obj.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return FieldError(origin, "strip_accents",
                        absl::StrCat("must be true, false or null, got ", Describe(*it)));
    }
    config.strip_accents = it->get<bool>();
  }
  if (const auto it = obj.find("model_max_length"); it != obj.end() && !it->is_null()) {
    // Hugging Face writes int(1e30) when a tokenizer has no known limit: keep the default then.
    constexpr double kNoLimit = 1e18;
    const bool huge = it->is_number() && it->get<double>() >= kNoLimit;
    if (!huge) {
      ASSIGN_OR_RETURN(config.model_max_length,
                       IntField(obj, origin, "model_max_length", std::nullopt, 1,
                                std::numeric_limits<int64_t>::max()));
    }
  }
  return config;
}

absl::StatusOr<TokenizerConfig> LoadTokenizerConfig(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSmallFile(path);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) return TokenizerConfig{};
    return text.status();
  }
  return ParseTokenizerConfig(*text, path);
}

std::vector<TensorSpec> ExpectedBertTensors(const BertConfig& config) {
  const int64_t h = config.hidden_size;
  const int64_t f = config.intermediate_size;
  std::vector<TensorSpec> specs;
  auto add = [&specs](std::string name, std::vector<int64_t> shape) {
    specs.push_back({std::move(name), std::move(shape)});
  };
  // Hugging Face saves a headless BertModel without the "bert." its task models nest it under.
  const std::string bert = config.task == Task::kFeatureExtraction ? "" : "bert.";
  add(bert + "embeddings.word_embeddings.weight", {config.vocab_size, h});
  add(bert + "embeddings.position_embeddings.weight", {config.max_position_embeddings, h});
  add(bert + "embeddings.token_type_embeddings.weight", {config.type_vocab_size, h});
  add(bert + "embeddings.LayerNorm.weight", {h});
  add(bert + "embeddings.LayerNorm.bias", {h});
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const std::string p = absl::StrCat(bert, "encoder.layer.", l, ".");
    for (const char* proj : {"query", "key", "value"}) {
      add(absl::StrCat(p, "attention.self.", proj, ".weight"), {h, h});
      add(absl::StrCat(p, "attention.self.", proj, ".bias"), {h});
    }
    add(p + "attention.output.dense.weight", {h, h});
    add(p + "attention.output.dense.bias", {h});
    add(p + "attention.output.LayerNorm.weight", {h});
    add(p + "attention.output.LayerNorm.bias", {h});
    add(p + "intermediate.dense.weight", {f, h});
    add(p + "intermediate.dense.bias", {f});
    add(p + "output.dense.weight", {h, f});
    add(p + "output.dense.bias", {h});
    add(p + "output.LayerNorm.weight", {h});
    add(p + "output.LayerNorm.bias", {h});
  }
  if (config.task == Task::kSequenceClassification) {
    add(bert + "pooler.dense.weight", {h, h});
    add(bert + "pooler.dense.bias", {h});
    add("classifier.weight", {config.num_labels(), h});
    add("classifier.bias", {config.num_labels()});
  } else if (config.task == Task::kQuestionAnswering) {
    add("qa_outputs.weight", {2, h});
    add("qa_outputs.bias", {2});
  }
  return specs;
}

absl::Status CheckTensorCount(const SafetensorsFile& weights, const BertConfig& config) {
  // The config's sizes are not trusted before the file backs them: a num_hidden_layers of 1e9
  // would otherwise build a billion specs (and, later, per-layer state) before any check.
  const int64_t head = config.task == Task::kSequenceClassification ? 4
                       : config.task == Task::kQuestionAnswering    ? 2
                                                                    : 0;
  // (Near misses, a layer or two off, get the per-tensor list below, which says more.)
  const int64_t needed = 5 + 16 * config.num_layers + head;
  const int64_t held = static_cast<int64_t>(weights.tensors().size());
  if (needed > 2 * held + 64) {
    return absl::InvalidArgumentError(
        absl::StrCat(weights.path(), ": holds ", held, " tensors, far fewer than the ", needed,
                     " that config.json's num_hidden_layers ", config.num_layers, " needs"));
  }
  return absl::OkStatus();
}

absl::Status ValidateBertTensors(const SafetensorsFile& weights, const BertConfig& config) {
  RETURN_IF_ERROR(CheckTensorCount(weights, config));
  constexpr size_t kMaxListed = 5;
  std::vector<std::string> problems;
  size_t count = 0;
  for (const TensorSpec& spec : ExpectedBertTensors(config)) {
    const TensorView* view = weights.Find(spec.name);
    std::string problem;
    if (view == nullptr) {
      problem = absl::StrCat("tensor '", spec.name, "' is missing");
    } else if (view->shape != spec.shape) {
      problem = absl::StrCat("tensor '", spec.name, "' has shape ", ShapeToString(view->shape),
                             ", expected ", ShapeToString(spec.shape));
    } else if (!IsFloatDType(view->dtype)) {
      problem = absl::StrCat("tensor '", spec.name, "' has dtype ",
                             std::string(DTypeName(view->dtype)), ", expected F32, F16 or BF16");
    }
    if (problem.empty()) continue;
    ++count;
    if (problems.size() < kMaxListed) problems.push_back(std::move(problem));
  }
  if (count == 0) return absl::OkStatus();
  std::string message = absl::StrCat(weights.path(), ": ", absl::StrJoin(problems, "; "));
  if (count > problems.size()) {
    absl::StrAppend(&message, "; and ", count - problems.size(), " more (", count,
                    " tensors do not match config.json)");
  }
  return absl::InvalidArgumentError(message);
}

absl::StatusOr<ModelDir> LoadModelDir(const std::string& dir) {
  ModelDir model;
  model.dir = dir;
  const std::string prefix = (!dir.empty() && dir.back() == '/') ? dir : dir + "/";
  model.config_path = prefix + "config.json";
  model.weights_path = prefix + "model.safetensors";
  model.vocab_path = prefix + "vocab.txt";
  model.tokenizer_config_path = prefix + "tokenizer_config.json";

  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(dir, ": model directory"));
  }
  if (!S_ISDIR(st.st_mode))
    return absl::InvalidArgumentError(absl::StrCat(dir, ": not a directory"));

  ASSIGN_OR_RETURN(model.config, LoadBertConfig(model.config_path));
  ASSIGN_OR_RETURN(model.tokenizer, LoadTokenizerConfig(model.tokenizer_config_path));
  // The tokenizer: vocab.txt when present (as always), otherwise tokenizer.json
  // (Tokenizer::LoadFromModelDir).
  model.tokenizer_path = model.vocab_path;
  if (::stat(model.vocab_path.c_str(), &st) != 0) {
    const int vocab_errno = errno;
    const std::string json_path = prefix + "tokenizer.json";
    if (::stat(json_path.c_str(), &st) != 0) {
      return absl::ErrnoToStatus(
          vocab_errno,
          absl::StrCat(model.vocab_path, ": cannot open (and there is no ", json_path, " either)"));
    }
    model.tokenizer_path = json_path;
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(model.tokenizer_path, ": not a regular file"));
  }
  ASSIGN_OR_RETURN(model.weights, SafetensorsFile::Open(model.weights_path));
  RETURN_IF_ERROR(ValidateBertTensors(*model.weights, model.config));
  return model;
}

}  // namespace topserve::engine
