// libFuzzer target: arbitrary bytes as a tokenizer.json (Hugging Face tokenizers' format), loaded
// with Tokenizer::LoadJson, then a fixed set of texts tokenized and encoded with what loaded.
//
// Checked (besides no crash / ASan / UBSan): a file that does not load is INVALID_ARGUMENT with a
// message; a tokenizer that loads tokenizes every valid UTF-8 text (pieces with ids
// in [0, vocab), byte spans inside the text, in order) and refuses invalid UTF-8 with
// INVALID_ARGUMENT; Encode within max_length either succeeds (at most max_length tokens, ids in
// range, offsets inside the text they came from) or is INVALID_ARGUMENT.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "engine/tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {

using topserve::engine::Encoding;
using topserve::engine::Piece;
using topserve::engine::Tokenizer;
using topserve::engine::Truncation;

constexpr std::string_view kTexts[] = {
    "",
    "Hello, World! It's 3.14",
    "a[CLS]b [SEP] [MASK]x",
    "caf\xc3\xa9 CAF\xc3\x89 cafe\xcc\x81",
    "\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 x\xe2\x80\x8by",
    "unaffable unaffable unaffable unaffable unaffable unaffable unaffable unaffable",
};
constexpr std::string_view kInvalid = "ok \xff\xfe";

void CheckTokenizer(const Tokenizer& tok) {
  const auto vocab = static_cast<int64_t>(tok.vocab_size());
  for (std::string_view text : kTexts) {
    auto pieces = tok.Tokenize(text);
    FUZZ_CHECK(pieces.ok(), "Tokenize of valid UTF-8 failed: %s",
               pieces.status().ToString().c_str());
    int32_t last_begin = 0;
    for (const Piece& p : *pieces) {
      FUZZ_CHECK(p.id >= 0 && p.id < vocab, "piece id %d outside [0, %lld)", p.id,
                 static_cast<long long>(vocab));
      FUZZ_CHECK(0 <= p.begin && p.begin <= p.end && p.end <= static_cast<int32_t>(text.size()),
                 "piece span [%d, %d) outside the text (%zu bytes)", p.begin, p.end, text.size());
      FUZZ_CHECK(p.begin >= last_begin, "piece spans out of order: %d after %d", p.begin,
                 last_begin);
      last_begin = p.begin;
    }
    for (size_t max_length : {size_t{0}, size_t{3}, size_t{16}, size_t{512}}) {
      for (bool pair : {false, true}) {
        const std::optional<std::string_view> b =
            pair ? std::optional<std::string_view>(kTexts[1]) : std::nullopt;
        auto enc = tok.Encode(text, b, max_length, Truncation::kLongestFirst);
        if (!enc.ok()) {
          topserve::fuzz::CheckInvalidArgument(enc.status(), "Encode");
          continue;
        }
        const Encoding& e = *enc;
        FUZZ_CHECK(e.size() <= max_length, "%zu tokens for max_length %zu", e.size(), max_length);
        FUZZ_CHECK(e.type_ids.size() == e.size() && e.begin.size() == e.size() &&
                       e.end.size() == e.size() && e.segment.size() == e.size(),
                   "encoding fields of different lengths");
        for (size_t i = 0; i < e.size(); ++i) {
          FUZZ_CHECK(e.ids[i] >= 0 && e.ids[i] < vocab, "id %d outside [0, %lld)", e.ids[i],
                     static_cast<long long>(vocab));
          const std::string_view from =
              e.segment[i] == 1 ? *b : (e.segment[i] == 0 ? text : std::string_view());
          FUZZ_CHECK(e.segment[i] >= -1 && e.segment[i] <= (pair ? 1 : 0), "segment %d",
                     e.segment[i]);
          FUZZ_CHECK(0 <= e.begin[i] && e.begin[i] <= e.end[i] &&
                         e.end[i] <= static_cast<int32_t>(from.size()),
                     "offsets [%d, %d) outside their text (%zu bytes)", e.begin[i], e.end[i],
                     from.size());
        }
      }
    }
  }
  auto bad = tok.Tokenize(kInvalid);
  FUZZ_CHECK(!bad.ok(), "invalid UTF-8 was tokenized");
  topserve::fuzz::CheckInvalidArgument(bad.status(), "Tokenize(invalid UTF-8)");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return -1;
  const std::string& path = topserve::fuzz::Scratch(".json").Write(data, size);
  auto tok = Tokenizer::LoadJson(path);
  if (!tok.ok()) {
    topserve::fuzz::CheckInvalidArgument(tok.status(), "LoadJson");
    return 0;
  }
  CheckTokenizer(**tok);
  return 0;
}
