// The project's one idiom for passing an absl::Status up the stack.
//
//   RETURN_IF_ERROR(expr);          // expr is an absl::Status; returns it from the calling
//   function
//                                   // unless it is OK
//   ASSIGN_OR_RETURN(lhs, expr);    // expr is an absl::StatusOr<T>; returns its status unless it
//   is OK,
//                                   // else moves the value into lhs, which may be a declaration
//                                   // (`auto x`, `std::unique_ptr<T> p`) or an existing variable
//   WithPrefix(status, "prefix")    // the same code with "prefix: message"; OK stays OK
//
// Both macros work in functions returning absl::Status or any absl::StatusOr<U>. ASSIGN_OR_RETURN
// expands to more than one statement (so that `lhs` can declare a variable in the enclosing scope):
// give it braces when it is the body of an if or a loop. It can be used any number of times in one
// scope. `expr` may contain commas; a `lhs` with a top-level comma (`std::pair<int, int> p`) must
// name its type through an alias.
//
// absl, gRPC and protobuf (the versions this project builds against) define neither name; the
// #error below says so loudly if that ever changes.
#pragma once

#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#if defined(RETURN_IF_ERROR) || defined(ASSIGN_OR_RETURN)
#error \
    "RETURN_IF_ERROR / ASSIGN_OR_RETURN already defined by another header; rename ours (base/status_macros.h)"
#endif

namespace topserve {

// `status` with "prefix: " in front of its message and the same code; an OK status is returned as
// is.
inline absl::Status WithPrefix(const absl::Status& status, std::string_view prefix) {
  if (status.ok()) return status;
  // (absl::string_view is not std::string_view in every absl build, Debian's included.)
  return absl::Status(status.code(), absl::StrCat(absl::string_view(prefix.data(), prefix.size()),
                                                  ": ", status.message()));
}

}  // namespace topserve

#define TS_STATUS_MACROS_CONCAT_INNER_(a, b) a##b
#define TS_STATUS_MACROS_CONCAT_(a, b) TS_STATUS_MACROS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(...)                                           \
  do {                                                                 \
    if (::absl::Status ts_status_ = (__VA_ARGS__); !ts_status_.ok()) { \
      return ts_status_;                                               \
    }                                                                  \
  } while (false)

#define TS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, ...) \
  auto tmp = (__VA_ARGS__);                      \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = *std::move(tmp)

#define ASSIGN_OR_RETURN(lhs, ...) \
  TS_ASSIGN_OR_RETURN_IMPL_(TS_STATUS_MACROS_CONCAT_(ts_status_or_, __COUNTER__), lhs, __VA_ARGS__)
