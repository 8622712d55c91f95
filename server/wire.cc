#include "server/wire.h"

#include <utf8proc.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/strings/str_cat.h"

namespace topserve::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::io::CodedInputStream;
using WireFormatLite = google::protobuf::internal::WireFormatLite;

// libprotobuf's default recursion limit: deeper bodies fail to parse.
constexpr int kMaxDepth = 100;

// Walks the wire data of one message of `type` (the stream's limit is the message's end) and
// stops at the first string field that is not UTF-8 or the first malformed datum, describing it in
// `error`. Unknown fields and known fields with an unexpected wire type are skipped, as the parser
// keeps them as unknown fields.
class Walker {
 public:
  explicit Walker(CodedInputStream* in) : in_(in) {}

  bool Walk(const Descriptor* type, const std::string& prefix, int depth) {
    std::map<int, int> repeats;  // field number -> occurrences so far (the next index)
    while (in_->BytesUntilLimit() > 0) {
      const int at = in_->CurrentPosition();
      const uint32_t tag = in_->ReadTag();
      const int number = static_cast<int>(WireFormatLite::GetTagFieldNumber(tag));
      if (tag == 0 || number == 0) {
        return Fail(
            absl::StrCat(prefix.empty() ? "" : prefix + ": ", "invalid field tag at byte ", at));
      }
      const FieldDescriptor* field = type != nullptr ? type->FindFieldByNumber(number) : nullptr;
      std::string name =
          absl::StrCat(prefix, prefix.empty() ? "" : ".",
                       field != nullptr ? field->name() : absl::StrCat("field ", number));
      if (field != nullptr && field->is_repeated()) {
        absl::StrAppend(&name, "[", repeats[number]++, "]");
      }
      const auto wire_type = WireFormatLite::GetTagWireType(tag);
      switch (wire_type) {
        case WireFormatLite::WIRETYPE_VARINT: {
          uint64_t v;
          if (!in_->ReadVarint64(&v)) return Fail(name + ": truncated or overlong varint");
          break;
        }
        case WireFormatLite::WIRETYPE_FIXED64: {
          uint64_t v;
          if (!in_->ReadLittleEndian64(&v)) return Fail(name + ": truncated 8-byte value");
          break;
        }
        case WireFormatLite::WIRETYPE_FIXED32: {
          uint32_t v;
          if (!in_->ReadLittleEndian32(&v)) return Fail(name + ": truncated 4-byte value");
          break;
        }
        case WireFormatLite::WIRETYPE_LENGTH_DELIMITED: {
          uint32_t length;
          if (!in_->ReadVarint32(&length)) return Fail(name + ": truncated or overlong length");
          const int left = in_->BytesUntilLimit();
          if (static_cast<int64_t>(length) > left) {
            return Fail(absl::StrCat(name, ": declares ", length, " bytes but only ", left,
                                     " remain (truncated body)"));
          }
          const int size = static_cast<int>(length);
          if (field != nullptr && field->type() == FieldDescriptor::TYPE_STRING) {
            std::string value;
            if (!in_->ReadString(&value, size)) return Fail(name + ": truncated string");
            size_t bad = 0;
            if (!IsValidUtf8(value, &bad)) {
              return Fail(absl::StrCat(name, ": invalid UTF-8 at byte ", bad, " of ", value.size(),
                                       " (string fields must be UTF-8; send text as UTF-8)"));
            }
          } else if (field != nullptr && field->type() == FieldDescriptor::TYPE_MESSAGE) {
            if (depth + 1 >= kMaxDepth) return Fail(name + ": nested too deeply");
            const CodedInputStream::Limit limit = in_->PushLimit(size);
            if (!Walk(field->message_type(), name, depth + 1)) return false;
            in_->PopLimit(limit);
          } else if (!in_->Skip(size)) {
            return Fail(name + ": truncated value");
          }
          break;
        }
        case WireFormatLite::WIRETYPE_START_GROUP:
          // Groups do not exist in proto3 messages, but the parser skips them as unknown fields.
          if (!WireFormatLite::SkipField(in_, tag)) return Fail(name + ": malformed group");
          break;
        case WireFormatLite::WIRETYPE_END_GROUP:
          return Fail(absl::StrCat(name, ": unexpected end-group tag at byte ", at));
        default:
          return Fail(absl::StrCat(name, ": invalid wire type ", static_cast<int>(wire_type),
                                   " at byte ", at));
      }
    }
    return true;
  }

  const std::string& error() const { return error_; }

 private:
  bool Fail(std::string why) {
    error_ = std::move(why);
    return false;
  }

  CodedInputStream* in_;
  std::string error_;
};

CodedInputStream Stream(std::string_view bytes) {
  return CodedInputStream(reinterpret_cast<const uint8_t*>(bytes.data()),
                          static_cast<int>(bytes.size()));
}

absl::Status Malformed(std::string_view bytes, const Descriptor* type) {
  std::string why = DiagnoseMalformed(bytes, type);
  if (why.empty()) {
    why = absl::StrCat("the body is not a valid ", type->full_name(), " message");
  } else if (why.find("UTF-8") == std::string::npos) {
    why = absl::StrCat("malformed ", type->full_name(), ": ", why);
  }
  return absl::InvalidArgumentError(why);
}

}  // namespace

bool IsValidUtf8(std::string_view text, size_t* error_offset) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    utf8proc_int32_t cp;
    // Rejects bad sequences, overlong forms, surrogates and code points past U+10FFFF, as
    // protobuf's check does.
    const utf8proc_ssize_t len = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(n - i), &cp);
    if (len <= 0) {
      if (error_offset != nullptr) *error_offset = i;
      return false;
    }
    i += static_cast<size_t>(len);
  }
  return true;
}

std::string DiagnoseMalformed(std::string_view bytes, const Descriptor* type) {
  if (bytes.size() > static_cast<size_t>(INT32_MAX)) return "the body is over 2 GiB";
  CodedInputStream in = Stream(bytes);
  in.PushLimit(static_cast<int>(bytes.size()));
  Walker walker(&in);
  if (walker.Walk(type, "", 0)) return "";
  return walker.error();
}

std::string ScanStringField(std::string_view bytes, int number) {
  if (bytes.size() > static_cast<size_t>(INT32_MAX)) return "";
  CodedInputStream in = Stream(bytes);
  in.PushLimit(static_cast<int>(bytes.size()));
  std::string found;
  while (in.BytesUntilLimit() > 0) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    if (static_cast<int>(WireFormatLite::GetTagFieldNumber(tag)) == number &&
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length;
      std::string value;
      if (!in.ReadVarint32(&length) || static_cast<int64_t>(length) > in.BytesUntilLimit() ||
          !in.ReadString(&value, static_cast<int>(length))) {
        break;
      }
      if (IsValidUtf8(value)) found = std::move(value);
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      break;
    }
  }
  return found;
}

absl::Status ParseRequest(std::string_view bytes, google::protobuf::Message* message) {
  message->Clear();
  if (bytes.size() <= static_cast<size_t>(INT32_MAX) &&
      message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::OkStatus();
  }
  message->Clear();
  return Malformed(bytes, message->GetDescriptor());
}

absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message* message) {
  message->Clear();
  grpc::ByteBuffer copy(buffer);  // Shares the slices; the reader needs a mutable buffer.
  {
    grpc::ProtoBufferReader reader(&copy);
    if (reader.status().ok() && message->ParseFromZeroCopyStream(&reader)) {
      return absl::OkStatus();
    }
  }
  // The slow path: one contiguous copy for the diagnosis.
  message->Clear();
  return Malformed(BufferBytes(buffer), message->GetDescriptor());
}

std::string BufferBytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (buffer.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  return bytes;
}

absl::Status SerializeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* buffer) {
  bool own = false;
  const grpc::Status s =
      grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, buffer, &own);
  if (!s.ok()) {
    return absl::InternalError(absl::StrCat("cannot serialize the response: ", s.error_message()));
  }
  return absl::OkStatus();
}

namespace {

struct LogSite {
  std::chrono::steady_clock::time_point last_printed;
  int64_t held_back = 0;
};

constexpr std::chrono::seconds kLogRepeatInterval(60);

void LimitedLogHandler(google::protobuf::LogLevel level, const char* filename, int line,
                       const std::string& message) {
  static const char* const kLevels[] = {"INFO", "WARNING", "ERROR", "FATAL"};
  const char* name = level >= 0 && level <= 3 ? kLevels[level] : "?";
  if (level != google::protobuf::LOGLEVEL_FATAL) {
    static std::mutex mu;
    static auto* sites = new std::map<std::pair<std::string, int>, LogSite>;
    const auto now = std::chrono::steady_clock::now();
    int64_t held_back = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto [it, first] = sites->try_emplace({filename != nullptr ? filename : "", line});
      LogSite& site = it->second;
      if (!first && now - site.last_printed < kLogRepeatInterval) {
        ++site.held_back;
        return;
      }
      held_back = site.held_back;
      site.held_back = 0;
      site.last_printed = now;
    }
    if (held_back > 0) {
      std::fprintf(stderr, "[libprotobuf %s %s:%d] %s (and %lld more like it in the last minute)\n",
                   name, filename, line, message.c_str(), static_cast<long long>(held_back));
    } else {
      std::fprintf(stderr, "[libprotobuf %s %s:%d] %s (repeats are shown at most once a minute)\n",
                   name, filename, line, message.c_str());
    }
    return;
  }
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s\n", name, filename, line, message.c_str());
}

}  // namespace

void InstallProtobufLogLimiter() {
  static std::once_flag once;
  std::call_once(once, [] { google::protobuf::SetLogHandler(&LimitedLogHandler); });
}

}  // namespace topserve::server
