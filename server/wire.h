// Request bodies in, response bodies out, for the Inference service's raw (ByteBuffer) handlers.
//
// Why raw: with typed handlers gRPC C++ parses the body itself, and any parse failure (invalid
// UTF-8 in a proto3 `string` field, a truncated or malformed body) ends the call UNIMPLEMENTED with
// an empty message before the service sees it (grpcpp's CallbackUnaryHandler::RunHandler), and a
// bidi stream read just ends as if the client had half-closed. Parsing here instead gives the
// client INVALID_ARGUMENT naming the field, and the call is counted like any other refused call.
// The wire format and the .proto are unchanged: clients see the same service.
#pragma once

#include <string>
#include <string_view>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"

namespace topserve::server {

// Parses `bytes` into `message` (cleared first). OK, or INVALID_ARGUMENT whose message names the
// first offending field as a path ("inputs[1].text: invalid UTF-8 at byte 3 of 5") or says how the
// body is malformed. Never logs per call (libprotobuf's own log line for invalid UTF-8 goes through
// InstallProtobufLogLimiter()'s handler).
absl::Status ParseRequest(std::string_view bytes, google::protobuf::Message* message);
absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message* message);

// The bytes of `buffer`, contiguous (a copy).
std::string BufferBytes(const grpc::ByteBuffer& buffer);

// Why `bytes` does not parse as `type`: the first string field that is not valid UTF-8, or where
// the wire data is malformed; "" when it finds neither (the caller then gives a generic message).
std::string DiagnoseMalformed(std::string_view bytes, const google::protobuf::Descriptor* type);

// The last top-level occurrence of length-delimited field `number` in `bytes` (proto "last one
// wins"), if the body gets that far and the value is valid UTF-8; "" otherwise. Used to echo a
// ClassifyStream request_id from a message that does not parse as a whole.
std::string ScanStringField(std::string_view bytes, int number);

// `message` serialized into `buffer` (replacing its contents).
absl::Status SerializeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* buffer);

// Whether `text` is structurally valid UTF-8 (what proto3 requires of `string` fields).
bool IsValidUtf8(std::string_view text, size_t* error_offset = nullptr);

// Replaces libprotobuf's log handler (once per process) with one that prints each distinct log site
// the first time and then at most once a minute with the number of repeats it held back: a client
// sending invalid UTF-8 in a loop cannot flood the log, and a real error still shows. FATAL
// messages always print.
void InstallProtobufLogLimiter();

}  // namespace topserve::server
