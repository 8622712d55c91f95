// Internal to engine/: how loaders quote a JSON value in an error message.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace topserve::engine {

// A short rendering of `value` (at most 80 characters). Nesting is cut at depth 3, so a hostile,
// deeply nested value cannot exhaust the stack (nlohmann's dump() recurses).
std::string Describe(const nlohmann::json& value);

}  // namespace topserve::engine
