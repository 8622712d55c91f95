#include "engine/json_describe.h"

#include "absl/strings/str_cat.h"

namespace topserve::engine {
namespace {

using Json = nlohmann::json;
constexpr size_t kMaxChars = 80;

void DescribeInto(const Json& value, int depth, std::string& out) {
  if (out.size() > kMaxChars) return;
  if (value.is_array() || value.is_object()) {
    const bool is_array = value.is_array();
    if (depth >= 3 && !value.empty()) {
      out += is_array ? "[...]" : "{...}";
      return;
    }
    out += is_array ? '[' : '{';
    bool first = true;
    for (auto it = value.begin(); it != value.end() && out.size() <= kMaxChars; ++it) {
      if (!first) out += ',';
      first = false;
      if (!is_array) {
        out += Json(it.key()).dump(-1, ' ', false, Json::error_handler_t::replace);
        out += ':';
      }
      DescribeInto(*it, depth + 1, out);
    }
    out += is_array ? ']' : '}';
    return;
  }
  out += value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace

std::string Describe(const Json& value) {
  std::string text;
  DescribeInto(value, 0, text);
  if (text.size() > kMaxChars) text = absl::StrCat(text.substr(0, kMaxChars - 3), "...");
  return text;
}

}  // namespace topserve::engine
