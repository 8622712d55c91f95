#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/json_describe.h"
#include "nlohmann/json.hpp"

namespace topserve::engine {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader assumes a little-endian host");

using Json = nlohmann::json;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::kF32, "F32", 4},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8},
    {DType::kI64, "I64", 8},
    {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},
    {DType::kI8, "I8", 1},
    {DType::kU64, "U64", 8},
    {DType::kU32, "U32", 4},
    {DType::kU16, "U16", 2},
    {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
    {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kF8E5M2, "F8_E5M2", 1},
}};

const DTypeInfo& Info(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // unreachable for valid enum values
}

// A name as errors print it: quoted, control bytes escaped, very long names cut.
std::string Quote(std::string_view name) {
  constexpr size_t kMaxShown = 160;
  std::string out = "'";
  size_t shown = 0;
  for (char c : name) {
    if (shown++ == kMaxShown) {
      absl::StrAppend(&out, "...(", name.size(), " bytes)");
      break;
    }
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  out += "'";
  return out;
}

// A JSON value that must be a non-negative integer.
std::optional<uint64_t> NonNegativeInt(const Json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    const auto v = value.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

uint64_t ReadLittleEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses with duplicate-key detection (the DOM parser would silently keep the last value).
struct ParsedHeader {
  Json json;
  std::string duplicate_key;  // first duplicate found, empty if none
};

ParsedHeader ParseHeaderJson(std::string_view text) {
  ParsedHeader out;
  std::vector<std::set<std::string>> open_objects;
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string()) {
          const auto& key = parsed.get_ref<const std::string&>();
          if (!open_objects.back().insert(key).second && out.duplicate_key.empty()) {
            out.duplicate_key = key;
          }
        }
        break;
      default: break;
    }
    return true;
  };
  try {
    out.json = Json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  } catch (const std::exception&) {
    out.json = Json(Json::value_t::discarded);
  }
  return out;
}

absl::Status Invalid(absl::string_view path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status TensorError(absl::string_view path, std::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", Quote(name), ": ", what));
}

}  // namespace

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }
size_t DTypeSize(DType dtype) { return Info(dtype).size; }

std::optional<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

bool IsFloatDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {  // infinity or NaN (payload kept)
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal half: mantissa * 2^-24, normal as a float
    int32_t e = 127 - 15 + 1;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --e;
    }
    mantissa &= 0x3ffu;
    bits = sign | (static_cast<uint32_t>(e) << 23) | (mantissa << 13);
  }
  return std::bit_cast<float>(bits);
}

float BFloat16ToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Invalid(path, "not a regular file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return Invalid(path, absl::StrCat("file is ", file_size,
                                      " bytes, shorter than the 8-byte header length "
                                      "(empty, truncated or not a safetensors file)"));
  }
  if (file_size > std::numeric_limits<size_t>::max()) {
    ::close(fd);
    return Invalid(path, "file too large to map");
  }
  void* map = mmap(nullptr, static_cast<size_t>(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) return absl::ErrnoToStatus(map_errno, absl::StrCat(path, ": cannot mmap"));
  file->map_ = map;
  file->map_size_ = static_cast<size_t>(file_size);
  const auto* bytes = static_cast<const uint8_t*>(map);

  const uint64_t header_len = ReadLittleEndian64(bytes);
  if (header_len > file_size - 8) {
    return Invalid(path,
                   absl::StrCat("header length ", header_len, " runs past the end of the file (",
                                file_size, " bytes; at most ", file_size - 8,
                                " header bytes available): truncated or not a safetensors file"));
  }
  if (header_len > kMaxHeaderBytes) {
    return Invalid(path, absl::StrCat("header length ", header_len, " exceeds the limit of ",
                                      kMaxHeaderBytes, " bytes"));
  }
  const std::string_view header_text(reinterpret_cast<const char*>(bytes + 8),
                                     static_cast<size_t>(header_len));
  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  ParsedHeader parsed = ParseHeaderJson(header_text);
  if (parsed.json.is_discarded()) {
    return Invalid(path, absl::StrCat("header (", header_len, " bytes) is not valid JSON"));
  }
  if (!parsed.json.is_object()) {
    return Invalid(path, absl::StrCat("header is not a JSON object (it is a JSON ",
                                      parsed.json.type_name(), ")"));
  }
  if (!parsed.duplicate_key.empty()) {
    return Invalid(path,
                   absl::StrCat("header has the key ", Quote(parsed.duplicate_key), " twice"));
  }

  struct Extent {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Extent> extents;
  for (const auto& [name, entry] : parsed.json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return Invalid(
            path, absl::StrCat("__metadata__ must be an object of strings, got ", Describe(entry)));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Invalid(path, absl::StrCat("__metadata__ entry ", Quote(key),
                                            " must be a string, got ", Describe(value)));
        }
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) {
      return TensorError(path, name,
                         absl::StrCat("entry must be an object, got ", Describe(entry)));
    }
    TensorView view;
    view.name = name;

    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end()) return TensorError(path, name, "\"dtype\" is missing");
    if (!dtype_it->is_string()) {
      return TensorError(path, name,
                         absl::StrCat("\"dtype\" must be a string, got ", Describe(*dtype_it)));
    }
    const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
    const std::optional<DType> dtype = ParseDType(dtype_name);
    if (!dtype) {
      return TensorError(
          path, name,
          absl::StrCat("unknown dtype ", Quote(dtype_name), " (not a safetensors dtype)"));
    }
    view.dtype = *dtype;

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end()) return TensorError(path, name, "\"shape\" is missing");
    if (!shape_it->is_array()) {
      return TensorError(path, name,
                         absl::StrCat("\"shape\" must be an array, got ", Describe(*shape_it)));
    }
    uint64_t numel = 1;
    bool has_zero = false;
    bool overflow = false;
    for (const Json& dim : *shape_it) {
      const std::optional<uint64_t> d = NonNegativeInt(dim);
      if (!d || *d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return TensorError(
            path, name,
            absl::StrCat("\"shape\" must hold non-negative integers, got ", Describe(*shape_it)));
      }
      view.shape.push_back(static_cast<int64_t>(*d));
      if (*d == 0) has_zero = true;
      if (__builtin_mul_overflow(numel, *d, &numel)) overflow = true;
    }
    if (has_zero) {
      numel = 0;
    } else if (overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(
          path, name, absl::StrCat("shape ", ShapeToString(view.shape), " has too many elements"));
    }

    const auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end()) return TensorError(path, name, "\"data_offsets\" is missing");
    std::optional<uint64_t> begin, end;
    if (offsets_it->is_array() && offsets_it->size() == 2) {
      begin = NonNegativeInt((*offsets_it)[0]);
      end = NonNegativeInt((*offsets_it)[1]);
    }
    if (!begin || !end) {
      return TensorError(path, name,
                         absl::StrCat("\"data_offsets\" must be [begin, end] with "
                                      "non-negative integers, got ",
                                      Describe(*offsets_it)));
    }
    if (*begin > *end) {
      return TensorError(
          path, name, absl::StrCat("data_offsets [", *begin, ", ", *end, "]: begin is after end"));
    }
    if (*end > data_size) {
      return TensorError(path, name,
                         absl::StrCat("data_offsets [", *begin, ", ", *end,
                                      "] run past the end of the data section (", data_size,
                                      " bytes): the file may be truncated"));
    }
    uint64_t expected_bytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(view.dtype)),
                               &expected_bytes) ||
        expected_bytes != *end - *begin) {
      return TensorError(
          path, name,
          absl::StrCat("data_offsets [", *begin, ", ", *end, "] hold ", *end - *begin,
                       " bytes but shape ", ShapeToString(view.shape), " of ", dtype_name,
                       " needs ", numel, " x ", DTypeSize(view.dtype), " bytes"));
    }
    view.data = data + *begin;
    view.nbytes = static_cast<size_t>(*end - *begin);
    extents.push_back({*begin, *end, file->tensors_.size()});
    file->tensors_.push_back(std::move(view));
  }

  // No byte may belong to two tensors (empty tensors occupy no bytes).
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  const Extent* previous = nullptr;
  for (const Extent& extent : extents) {
    if (extent.begin == extent.end) continue;
    if (previous != nullptr && extent.begin < previous->end) {
      const TensorView& a = file->tensors_[previous->index];
      const TensorView& b = file->tensors_[extent.index];
      return Invalid(
          path, absl::StrCat("tensors ", Quote(a.name), " (data_offsets [", previous->begin, ", ",
                             previous->end, "]) and ", Quote(b.name), " (data_offsets [",
                             extent.begin, ", ", extent.end, "]) overlap"));
    }
    if (previous == nullptr || extent.end > previous->end) previous = &extent;
  }

  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const TensorView& a, const TensorView& b) { return a.name < b.name; });
  return file;
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  const auto it =
      std::lower_bound(tensors_.begin(), tensors_.end(), name,
                       [](const TensorView& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadF32(
    std::string_view name, const std::vector<int64_t>& expected_shape) const {
  const TensorView* view = Find(name);
  if (view == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": tensor ", Quote(name), " is missing"));
  }
  if (view->shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor ", Quote(name), " has shape ",
                                                   ShapeToString(view->shape), ", expected ",
                                                   ShapeToString(expected_shape)));
  }
  if (!IsFloatDType(view->dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor ", Quote(name), " has dtype ", std::string(DTypeName(view->dtype)),
        "; only F32, F16 and BF16 can be read as float32"));
  }
  const size_t count = view->nbytes / DTypeSize(view->dtype);
  std::vector<float> out(count);
  if (count == 0) return out;
  switch (view->dtype) {
    case DType::kF32: std::memcpy(out.data(), view->data, count * sizeof(float)); break;
    case DType::kF16:
    case DType::kBF16: {
      const bool is_half = view->dtype == DType::kF16;
      for (size_t i = 0; i < count; ++i) {
        uint16_t bits;
        std::memcpy(&bits, view->data + 2 * i, sizeof(bits));
        out[i] = is_half ? HalfToFloat(bits) : BFloat16ToFloat(bits);
      }
      break;
    }
    default: break;  // excluded above
  }
  return out;
}

}  // namespace topserve::engine
