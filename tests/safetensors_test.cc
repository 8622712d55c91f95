// Tests of the safetensors reader: the golden models, exact F16/BF16 conversion, and every kind of
// malformed file (each must give an error naming the file and the tensor/field, never a crash).
// Files are written by the tests themselves into a fresh temporary directory.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace topserve::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kGoldenCls =
    std::string(TOPSERVE_SHARED_DIR) + "/data/golden/tiny-cls/model.safetensors";
const std::string kGoldenQa =
    std::string(TOPSERVE_SHARED_DIR) + "/data/golden/tiny-qa/model.safetensors";

std::string Le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// One tensor of a file the tests build.
struct Tensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::string HeaderEntry(const std::string& name, const std::string& dtype,
                        const std::vector<int64_t>& shape, uint64_t begin, uint64_t end) {
  return absl::StrCat("\"", name, "\":{\"dtype\":\"", dtype, "\",\"shape\":[",
                      absl::StrJoin(shape, ","), "],\"data_offsets\":[", begin, ",", end, "]}");
}

// A well-formed header + data for `tensors`, laid out back to back in order.
std::pair<std::string, std::string> Layout(const std::vector<Tensor>& tensors,
                                           const std::string& metadata_json = "") {
  std::vector<std::string> entries;
  if (!metadata_json.empty()) entries.push_back(absl::StrCat("\"__metadata__\":", metadata_json));
  std::string data;
  for (const Tensor& t : tensors) {
    entries.push_back(
        HeaderEntry(t.name, t.dtype, t.shape, data.size(), data.size() + t.bytes.size()));
    data += t.bytes;
  }
  return {absl::StrCat("{", absl::StrJoin(entries, ","), "}"), data};
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "topserve_safetensors_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << "mkdtemp " << tmpl;
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string PathOf(const std::string& name) const { return dir_ + "/" + name; }

  std::string WriteBytes(const std::string& name, const std::string& content) const {
    const std::string path = PathOf(name);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }

  // 8-byte length (the header's own unless `declared_length` is given) + header + data.
  std::string WriteFile(const std::string& name, const std::string& header, const std::string& data,
                        std::optional<uint64_t> declared_length = std::nullopt) const {
    return WriteBytes(name, Le64(declared_length.value_or(header.size())) + header + data);
  }

  std::string WriteTensors(const std::string& name, const std::vector<Tensor>& tensors) const {
    const auto [header, data] = Layout(tensors);
    return WriteFile(name, header, data);
  }

  // Opens `path` expecting an INVALID_ARGUMENT error whose message starts with the path.
  std::string OpenError(const std::string& path) const {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    EXPECT_FALSE(file.ok()) << path << " opened but should not";
    if (file.ok()) return "";
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    EXPECT_THAT(std::string(file.status().message()), StartsWith(path + ": "));
    return std::string(file.status().message());
  }

  // A header made of `entries` with a data section of `data_size` zero bytes.
  std::string OpenHeaderError(const std::string& header, size_t data_size) const {
    return OpenError(WriteFile("bad.safetensors", header, std::string(data_size, '\0')));
  }

  std::string dir_;
};

// ----------------------------------------------------------------------------------------------
// Golden files

TEST_F(SafetensorsTest, OpensGoldenTinyCls) {
  auto file = SafetensorsFile::Open(kGoldenCls);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.path(), kGoldenCls);
  EXPECT_EQ(f.tensors().size(), 5u + 2u * 16u + 2u + 2u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (size_t i = 1; i < f.tensors().size(); ++i) {
    EXPECT_LT(f.tensors()[i - 1].name, f.tensors()[i].name) << "tensors() is sorted by name";
  }

  const TensorView* word = f.Find("bert.embeddings.word_embeddings.weight");
  ASSERT_NE(word, nullptr);
  EXPECT_EQ(word->dtype, DType::kF32);
  EXPECT_EQ(word->shape, (std::vector<int64_t>{30522, 64}));
  EXPECT_EQ(word->nbytes, 30522u * 64u * 4u);
  EXPECT_EQ(word->NumElements(), 30522 * 64);
  EXPECT_EQ(f.Find("bert.embeddings.word_embeddings"), nullptr);
  EXPECT_EQ(f.Find("qa_outputs.weight"), nullptr);

  // Values checked against the file read independently (Python, float.hex()).
  auto words = f.ReadF32("bert.embeddings.word_embeddings.weight", {30522, 64});
  ASSERT_TRUE(words.ok()) << words.status();
  ASSERT_EQ(words->size(), 30522u * 64u);
  EXPECT_EQ((*words)[101 * 64 + 0], -0x1.14676p-3f);
  EXPECT_EQ((*words)[101 * 64 + 1], -0x1.0baf52p-3f);
  EXPECT_EQ((*words)[101 * 64 + 2], -0x1.1fbbd4p-2f);
  EXPECT_EQ((*words)[101 * 64 + 3], -0x1.53ffap-5f);
  EXPECT_EQ((*words)[30521 * 64 + 63], -0x1.4b87bcp-2f);  // the very last word embedding value
  auto ln = f.ReadF32("bert.encoder.layer.1.output.LayerNorm.weight", {64});
  ASSERT_TRUE(ln.ok()) << ln.status();
  EXPECT_EQ((*ln)[63], 0x1.ffaa6ep-1f);
  auto bias = f.ReadF32("classifier.bias", {2});
  ASSERT_TRUE(bias.ok()) << bias.status();
  EXPECT_EQ(*bias, (std::vector<float>{0x1.277246p-4f, 0x1.2b1ed2p-3f}));
}

TEST_F(SafetensorsTest, OpensGoldenTinyQaWithoutPooler) {
  auto file = SafetensorsFile::Open(kGoldenQa);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 5u + 2u * 16u + 2u);
  EXPECT_EQ((*file)->Find("bert.pooler.dense.weight"), nullptr);
  auto qa = (*file)->ReadF32("qa_outputs.weight", {2, 64});
  ASSERT_TRUE(qa.ok()) << qa.status();
  EXPECT_EQ(qa->size(), 128u);
}

TEST_F(SafetensorsTest, GoldenMissingTensorNamesFileAndTensor) {
  auto file = SafetensorsFile::Open(kGoldenQa);
  ASSERT_TRUE(file.ok()) << file.status();
  auto read = (*file)->ReadF32("bert.pooler.dense.weight", {64, 64});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(read.status().message(), kGoldenQa + ": tensor 'bert.pooler.dense.weight' is missing");
}

TEST_F(SafetensorsTest, GoldenWrongShapeNamesExpectedAndActual) {
  auto file = SafetensorsFile::Open(kGoldenCls);
  ASSERT_TRUE(file.ok()) << file.status();
  auto read = (*file)->ReadF32("bert.encoder.layer.0.intermediate.dense.weight", {64, 256});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(read.status().message(),
            kGoldenCls +
                ": tensor 'bert.encoder.layer.0.intermediate.dense.weight' has shape [256, 64], "
                "expected [64, 256]");
  // Same element count, different rank: still a mismatch.
  EXPECT_FALSE((*file)->ReadF32("classifier.bias", {1, 2}).ok());
  EXPECT_FALSE((*file)->ReadF32("classifier.bias", {}).ok());
}

// ----------------------------------------------------------------------------------------------
// Conversions

// Independent definition of IEEE binary16: sign, 5-bit exponent (bias 15), 10-bit mantissa.
double HalfReference(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  if (exponent == 31)
    return mantissa ? std::numeric_limits<double>::quiet_NaN()
                    : sign * std::numeric_limits<double>::infinity();
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

TEST(SafetensorsConversionTest, AllHalfValuesExact) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    const double want = HalfReference(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << std::hex << h;
      // The payload survives (quiet bit and the rest of the mantissa).
      EXPECT_EQ(std::bit_cast<uint32_t>(got) >> 13 & 0x3ff, h & 0x3ff) << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
      ASSERT_EQ(std::signbit(got), (h & 0x8000) != 0) << std::hex << h;
    }
  }
}

TEST(SafetensorsConversionTest, NamedHalfValues) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0001), 0x1p-24f);      // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x03ff), 0x1.ff8p-15f);  // largest subnormal
  EXPECT_EQ(HalfToFloat(0x0400), 0x1p-14f);      // smallest normal
  EXPECT_EQ(HalfToFloat(0x3555), 0x1.554p-2f);
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
}

TEST(SafetensorsConversionTest, AllBFloat16ValuesExact) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float got = BFloat16ToFloat(static_cast<uint16_t>(b));
    ASSERT_EQ(std::bit_cast<uint32_t>(got), b << 16) << std::hex << b;
  }
  EXPECT_EQ(BFloat16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(BFloat16ToFloat(0xc2f7), -123.5f);
  EXPECT_EQ(BFloat16ToFloat(0x0001), 0x1p-133f);
  EXPECT_EQ(BFloat16ToFloat(0x7f80), std::numeric_limits<float>::infinity());
}

TEST(SafetensorsConversionTest, DTypeNamesSizesAndParsing) {
  EXPECT_EQ(DTypeName(DType::kF32), "F32");
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_EQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(DTypeSize(DType::kBool), 1u);
  for (const char* name : {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U64", "U32",
                           "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}) {
    const std::optional<DType> dtype = ParseDType(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(DTypeName(*dtype), name);
  }
  EXPECT_FALSE(ParseDType("f32").has_value());
  EXPECT_FALSE(ParseDType("F33").has_value());
  EXPECT_FALSE(ParseDType("").has_value());
  EXPECT_TRUE(IsFloatDType(DType::kBF16));
  EXPECT_FALSE(IsFloatDType(DType::kF64));
  EXPECT_FALSE(IsFloatDType(DType::kI64));
}

// ----------------------------------------------------------------------------------------------
// Well-formed files written here

TEST_F(SafetensorsTest, ReadsF32F16Bf16AtUnalignedOffsets) {
  const std::vector<float> f32 = {1.5f, -0.0f, 3.25e-5f, -7e30f, 0x1p-140f, 123456.789f};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000, 0x3555};
  const std::vector<uint16_t> bf16 = {0x3f80, 0xc2f7, 0x0001, 0x7f7f, 0x8000, 0x4049};
  // A 3-byte U8 tensor first, so every float tensor starts at an odd, unaligned address.
  const std::string path =
      WriteTensors("mixed.safetensors", {{"pad", "U8", {3}, "abc"},
                                         {"a.f32", "F32", {2, 3}, Bytes(f32)},
                                         {"b.f16", "F16", {3, 2}, Bytes(f16)},
                                         {"c.bf16", "BF16", {6}, Bytes(bf16)}});
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("pad")->dtype, DType::kU8);

  auto a = (*file)->ReadF32("a.f32", {2, 3});
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), f32.size());
  for (size_t i = 0; i < f32.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>((*a)[i]), std::bit_cast<uint32_t>(f32[i])) << i;
  }
  auto b = (*file)->ReadF32("b.f16", {3, 2});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*b, (std::vector<float>{1.0f, -2.0f, 0x1p-24f, 65504.0f, -0.0f, 0x1.554p-2f}));
  EXPECT_TRUE(std::signbit((*b)[4]));
  auto c = (*file)->ReadF32("c.bf16", {6});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c, (std::vector<float>{1.0f, -123.5f, 0x1p-133f, 0x1.fep127f, -0.0f, 3.140625f}));
}

TEST_F(SafetensorsTest, ListsIntegerTensorsButReadF32RejectsThem) {
  // Hugging Face BERT checkpoints may carry the I64 buffer bert.embeddings.position_ids.
  const std::string path = WriteTensors(
      "ids.safetensors",
      {{"bert.embeddings.position_ids", "I64", {1, 4}, Bytes(std::vector<int64_t>{0, 1, 2, 3})},
       {"w", "F32", {1}, Bytes(std::vector<float>{2.0f})}});
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* ids = (*file)->Find("bert.embeddings.position_ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_EQ(ids->dtype, DType::kI64);
  EXPECT_EQ(ids->nbytes, 32u);
  int64_t third = 0;
  std::memcpy(&third, ids->data + 16, sizeof(third));
  EXPECT_EQ(third, 2);
  auto read = (*file)->ReadF32("bert.embeddings.position_ids", {1, 4});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(read.status().message()),
              AllOf(StartsWith(path + ": tensor 'bert.embeddings.position_ids'"),
                    HasSubstr("dtype I64"), HasSubstr("F32, F16 and BF16")));
}

TEST_F(SafetensorsTest, EmptyScalarAndZeroSizedTensors) {
  auto empty = SafetensorsFile::Open(WriteFile("empty.safetensors", "{}", ""));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE((*empty)->tensors().empty());
  EXPECT_TRUE((*empty)->metadata().empty());

  // A scalar (shape []) has one element; a [0, 4] tensor has none and may sit at any offset,
  // even inside another tensor's bytes (it occupies none).
  const std::string header = absl::StrCat("{", HeaderEntry("scalar", "F32", {}, 0, 4), ",",
                                          HeaderEntry("none", "F16", {0, 4}, 2, 2), ",",
                                          HeaderEntry("none_at_end", "BF16", {4, 0}, 4, 4), "}");
  const std::string path =
      WriteFile("scalar.safetensors", header, Bytes(std::vector<float>{42.0f}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto scalar = (*file)->ReadF32("scalar", {});
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_EQ(*scalar, std::vector<float>{42.0f});
  auto none = (*file)->ReadF32("none", {0, 4});
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  EXPECT_EQ((*file)->Find("none")->NumElements(), 0);
}

TEST_F(SafetensorsTest, MetadataPaddingAndGapsAreAccepted) {
  // The header may be padded with trailing spaces (writers align the data section to 8 bytes),
  // and unused bytes between tensors are harmless.
  const std::string header = absl::StrCat(
      "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"h\\u00e9\"},",
      HeaderEntry("a", "F32", {1}, 0, 4), ",", HeaderEntry("b", "F32", {1}, 8, 12), "}     ");
  const std::string data = Bytes(std::vector<float>{1.0f, -1.0f, 2.0f});
  auto file = SafetensorsFile::Open(WriteFile("meta.safetensors", header, data));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().size(), 2u);
  EXPECT_EQ((*file)->metadata().at("note"), "h\xc3\xa9");
  EXPECT_EQ(*(*file)->ReadF32("b", {1}), std::vector<float>{2.0f});
}

TEST_F(SafetensorsTest, ExtraEntryKeysAreIgnored) {
  const std::string header =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"comment\":[1,{\"x\":null}]}"
      "}";
  auto file = SafetensorsFile::Open(WriteFile("extra.safetensors", header, std::string(4, '\0')));
  ASSERT_TRUE(file.ok()) << file.status();
}

// ----------------------------------------------------------------------------------------------
// Malformed files: the file as a whole

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const std::string path = PathOf("does-not-exist.safetensors");
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), StartsWith(path + ": cannot open"));
}

TEST_F(SafetensorsTest, DirectoryIsRejected) {
  EXPECT_THAT(OpenError(dir_), HasSubstr("not a regular file"));
}

TEST_F(SafetensorsTest, EmptyFile) {
  EXPECT_THAT(OpenError(WriteBytes("empty", "")),
              HasSubstr("file is 0 bytes, shorter than the 8-byte header length"));
}

TEST_F(SafetensorsTest, FileShorterThan8Bytes) {
  for (size_t n = 1; n < 8; ++n) {
    EXPECT_THAT(
        OpenError(WriteBytes("short", std::string(n, '\x02'))),
        HasSubstr(absl::StrCat("file is ", n, " bytes, shorter than the 8-byte header length")));
  }
}

TEST_F(SafetensorsTest, HeaderLengthPastEnd) {
  const std::string message =
      OpenError(WriteFile("past.safetensors", "{}", "", /*declared_length=*/1000));
  EXPECT_THAT(message,
              AllOf(HasSubstr("header length 1000 runs past the end of the file (10 bytes"),
                    HasSubstr("truncated")));
  // Lengths near 2^64 must not wrap around.
  for (uint64_t huge : {uint64_t{1} << 63, ~uint64_t{0}, ~uint64_t{0} - 7}) {
    EXPECT_THAT(OpenError(WriteFile("huge.safetensors", "{}", "", huge)),
                HasSubstr(absl::StrCat("header length ", huge, " runs past the end")));
  }
}

TEST_F(SafetensorsTest, HeaderLengthOverLimit) {
  // A sparse file just big enough to hold the declared header: the limit applies first.
  const std::string path =
      WriteFile("big.safetensors", "", "", SafetensorsFile::kMaxHeaderBytes + 1);
  std::filesystem::resize_file(path, 8 + SafetensorsFile::kMaxHeaderBytes + 16);
  EXPECT_THAT(OpenError(path),
              HasSubstr("header length 100000001 exceeds the limit of 100000000 bytes"));
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  for (const std::string& header :
       {std::string(""), std::string("{"), std::string("{not json}"), std::string("{\"a\":1,}"),
        std::string("{} trailing"), std::string("{\"a\":\"\xff\"}"), std::string("\0\0\0\0", 4),
        std::string("{\"a\x01\":1}")}) {
    EXPECT_THAT(OpenHeaderError(header, 0), HasSubstr("is not valid JSON")) << header;
  }
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  EXPECT_THAT(OpenHeaderError("[1,2,3]", 0),
              HasSubstr("header is not a JSON object (it is a JSON array)"));
  EXPECT_THAT(OpenHeaderError("\"F32\"", 0), HasSubstr("not a JSON object (it is a JSON string)"));
  EXPECT_THAT(OpenHeaderError("null", 0), HasSubstr("not a JSON object (it is a JSON null)"));
  EXPECT_THAT(OpenHeaderError("12", 0), HasSubstr("not a JSON object (it is a JSON number)"));
}

TEST_F(SafetensorsTest, DeeplyNestedJsonDoesNotOverflowTheStack) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  EXPECT_THAT(OpenHeaderError(absl::StrCat("{\"__metadata__\":", deep, "}"), 0),
              HasSubstr("__metadata__ must be an object of strings"));
  EXPECT_THAT(
      OpenHeaderError(
          absl::StrCat("{\"t\":{\"dtype\":\"F32\",\"shape\":", deep, ",\"data_offsets\":[0,0]}}"),
          0),
      AllOf(HasSubstr("tensor 't'"), HasSubstr("\"shape\" must hold non-negative integers")));
}

TEST_F(SafetensorsTest, DuplicateKeys) {
  const std::string entry = HeaderEntry("w", "F32", {1}, 0, 4);
  EXPECT_THAT(OpenHeaderError(absl::StrCat("{", entry, ",", entry, "}"), 4),
              HasSubstr("the key 'w' twice"));
  EXPECT_THAT(
      OpenHeaderError(
          "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
      HasSubstr("the key 'dtype' twice"));
}

TEST_F(SafetensorsTest, TruncatedFile) {
  const std::vector<float> values(64, 0.5f);
  const auto [header, data] = Layout({{"first", "F32", {8, 4}, Bytes(std::vector<float>(32, 1.0f))},
                                      {"bert.pooler.dense.weight", "F32", {8, 8}, Bytes(values)}});
  const std::string full = Le64(header.size()) + header + data;
  // Cut inside the data section: the tensor whose bytes are gone is named.
  const std::string path = WriteBytes("truncated.safetensors", full.substr(0, full.size() - 1));
  EXPECT_THAT(
      OpenError(path),
      AllOf(HasSubstr("tensor 'bert.pooler.dense.weight'"),
            HasSubstr(absl::StrCat(
                "data_offsets [128, 384] run past the end of the data section (383 bytes)")),
            HasSubstr("truncated")));
  // Cut inside the header.
  EXPECT_THAT(
      OpenError(WriteBytes("cut-header.safetensors", full.substr(0, 8 + header.size() / 2))),
      HasSubstr(absl::StrCat("header length ", header.size(), " runs past the end of the file")));
}

TEST_F(SafetensorsTest, EveryTruncationFailsCleanly) {
  const auto [header, data] = Layout({{"a", "F16", {3}, std::string(6, '\x11')},
                                      {"b", "BF16", {2, 2}, std::string(8, '\x22')},
                                      {"c", "F32", {1}, std::string(4, '\x33')}},
                                     "{\"format\":\"pt\"}");
  const std::string full = Le64(header.size()) + header + data;
  const std::string path = WriteBytes("cut.safetensors", full);
  EXPECT_TRUE(SafetensorsFile::Open(path).ok());
  for (size_t n = full.size(); n-- > 0;) {  // shorter and shorter
    std::filesystem::resize_file(path, n);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << "length " << n;
    EXPECT_THAT(std::string(file.status().message()), StartsWith(path + ": ")) << "length " << n;
  }
}

TEST_F(SafetensorsTest, CorruptedHeaderBytesNeverCrash) {
  // Every header byte replaced by characters that change the JSON's meaning; each variant must give
  // either a valid file or a clean error (run under ASan/UBSan to catch out-of-bounds reads).
  const auto [header, data] = Layout({{"a", "F16", {3}, std::string(6, '\x11')},
                                      {"b", "I64", {1}, std::string(8, '\x22')},
                                      {"c", "F32", {2}, std::string(8, '\x33')}},
                                     "{\"k\":\"v\"}");
  const std::string path = WriteFile("mutated.safetensors", header, data);
  const int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  auto put = [&](size_t i, char c) { ASSERT_EQ(pwrite(fd, &c, 1, static_cast<off_t>(8 + i)), 1); };
  size_t opened = 0, failed = 0;
  for (size_t i = 0; i < header.size(); ++i) {
    for (char replacement :
         {'0', '9', '-', '[', ']', '{', '}', '"', ',', ':', ' ', 'e', '\0', '\xff'}) {
      put(i, replacement);
      auto file = SafetensorsFile::Open(path);
      if (file.ok()) {
        ++opened;
        for (const TensorView& t : (*file)->tensors()) {
          // Whatever was accepted must lie inside the file.
          EXPECT_LE(t.nbytes, data.size());
          if (IsFloatDType(t.dtype)) {
            EXPECT_TRUE((*file)->ReadF32(t.name, t.shape).ok());
          }
        }
      } else {
        ++failed;
        EXPECT_THAT(std::string(file.status().message()), StartsWith(path + ": "));
      }
    }
    put(i, header[i]);
  }
  ::close(fd);
  EXPECT_GT(failed, 0u);
  EXPECT_GT(opened, 0u);  // e.g. digits changed inside a metadata string
}

// ----------------------------------------------------------------------------------------------
// Malformed files: one tensor entry

TEST_F(SafetensorsTest, OverlappingOffsets) {
  const std::string header =
      absl::StrCat("{", HeaderEntry("layer.0.weight", "F32", {4}, 0, 16), ",",
                   HeaderEntry("layer.1.weight", "F32", {4}, 12, 28), "}");
  EXPECT_THAT(
      OpenHeaderError(header, 28),
      AllOf(HasSubstr("tensors 'layer.0.weight' (data_offsets [0, 16]) and 'layer.1.weight' "
                      "(data_offsets [12, 28]) overlap")));
  // Identical ranges, and a small tensor inside a big one that is not its neighbour.
  const std::string same = absl::StrCat("{", HeaderEntry("x", "F32", {2}, 0, 8), ",",
                                        HeaderEntry("y", "F16", {4}, 0, 8), "}");
  EXPECT_THAT(OpenHeaderError(same, 8), HasSubstr("overlap"));
  const std::string nested = absl::StrCat("{", HeaderEntry("big", "F32", {8}, 0, 32), ",",
                                          HeaderEntry("mid", "F32", {1}, 4, 8), ",",
                                          HeaderEntry("small", "F32", {1}, 20, 24), "}");
  EXPECT_THAT(OpenHeaderError(nested, 32), AllOf(HasSubstr("'big'"), HasSubstr("overlap")));
  const std::string after_nested = absl::StrCat("{", HeaderEntry("big", "F32", {8}, 0, 32), ",",
                                                HeaderEntry("inner", "F32", {1}, 4, 8), ",",
                                                HeaderEntry("tail", "F32", {4}, 28, 44), "}");
  EXPECT_THAT(OpenHeaderError(after_nested, 44), AllOf(HasSubstr("'big'"), HasSubstr("overlap")));
}

TEST_F(SafetensorsTest, OffsetsOutOfBounds) {
  const std::string header = absl::StrCat("{", HeaderEntry("ok", "F32", {2}, 0, 8), ",",
                                          HeaderEntry("classifier.weight", "F32", {4}, 8, 24), "}");
  EXPECT_THAT(
      OpenHeaderError(header, 20),
      AllOf(HasSubstr("tensor 'classifier.weight'"),
            HasSubstr("data_offsets [8, 24] run past the end of the data section (20 bytes)")));
  const std::string huge = absl::StrCat(
      "{", HeaderEntry("w", "F32", {1}, 18446744073709551612u, 18446744073709551615u), "}");
  EXPECT_THAT(OpenHeaderError(huge, 8),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("run past the end")));
}

TEST_F(SafetensorsTest, BeginAfterEnd) {
  EXPECT_THAT(OpenHeaderError(absl::StrCat("{", HeaderEntry("w", "F32", {1}, 8, 4), "}"), 8),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("data_offsets [8, 4]: begin is after end")));
}

TEST_F(SafetensorsTest, SizeNotMatchingShape) {
  EXPECT_THAT(
      OpenHeaderError(
          absl::StrCat("{", HeaderEntry("bert.embeddings.LayerNorm.weight", "F32", {64}, 0, 128),
                       "}"),
          256),
      AllOf(HasSubstr("tensor 'bert.embeddings.LayerNorm.weight'"),
            HasSubstr("hold 128 bytes but shape [64] of F32 needs 64 x 4 bytes")));
  EXPECT_THAT(OpenHeaderError(absl::StrCat("{", HeaderEntry("h", "F16", {2, 3}, 0, 24), "}"), 24),
              HasSubstr("hold 24 bytes but shape [2, 3] of F16 needs 6 x 2 bytes"));
  EXPECT_THAT(OpenHeaderError(absl::StrCat("{", HeaderEntry("z", "F32", {0}, 0, 4), "}"), 4),
              HasSubstr("shape [0] of F32 needs 0 x 4 bytes"));
}

TEST_F(SafetensorsTest, ShapeElementCountOverflow) {
  // 2^32 * 2^32 elements overflow 64 bits; 2^62 F32 elements overflow the byte count.
  EXPECT_THAT(
      OpenHeaderError(
          absl::StrCat("{", HeaderEntry("w", "F32", {4294967296, 4294967296}, 0, 0), "}"), 0),
      AllOf(HasSubstr("tensor 'w'"), HasSubstr("has too many elements")));
  EXPECT_THAT(OpenHeaderError(
                  absl::StrCat("{", HeaderEntry("w", "F32", {4611686018427387904}, 0, 0), "}"), 0),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("needs 4611686018427387904 x 4 bytes")));
  // A dimension beyond int64.
  EXPECT_THAT(
      OpenHeaderError(
          "{\"w\":{\"dtype\":\"F32\",\"shape\":[18446744073709551615],\"data_offsets\":[0,0]}}", 0),
      HasSubstr("\"shape\" must hold non-negative integers"));
}

TEST_F(SafetensorsTest, UnknownDtype) {
  for (const char* dtype : {"F33", "f32", "Q4_0", "", "FLOAT"}) {
    EXPECT_THAT(
        OpenHeaderError(absl::StrCat("{", HeaderEntry("encoder.w", dtype, {1}, 0, 4), "}"), 4),
        AllOf(HasSubstr("tensor 'encoder.w'"),
              HasSubstr(absl::StrCat("unknown dtype '", dtype, "'"))));
  }
}

TEST_F(SafetensorsTest, MalformedEntryFields) {
  struct Case {
    std::string entry;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"[1,2]", "tensor 'w': entry must be an object, got [1,2]"},
      {"{\"shape\":[1],\"data_offsets\":[0,4]}", "tensor 'w': \"dtype\" is missing"},
      {"{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}",
       "tensor 'w': \"dtype\" must be a string, got 32"},
      {"{\"dtype\":\"F32\",\"data_offsets\":[0,4]}", "tensor 'w': \"shape\" is missing"},
      {"{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}",
       "tensor 'w': \"shape\" must be an array, got 4"},
      {"{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}",
       "\"shape\" must hold non-negative integers, got [-1]"},
      {"{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}",
       "\"shape\" must hold non-negative integers, got [1.0]"},
      {"{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}",
       "\"shape\" must hold non-negative integers"},
      {"{\"dtype\":\"F32\",\"shape\":[true],\"data_offsets\":[0,4]}",
       "\"shape\" must hold non-negative integers"},
      {"{\"dtype\":\"F32\",\"shape\":[1]}", "tensor 'w': \"data_offsets\" is missing"},
      {"{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}",
       "\"data_offsets\" must be [begin, end]"},
      {"{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}",
       "\"data_offsets\" must be [begin, end]"},
      {"{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}",
       "\"data_offsets\" must be [begin, end]"},
      {"{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}",
       "\"data_offsets\" must be [begin, end]"},
      {"{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"begin\":0}}",
       "\"data_offsets\" must be [begin, end]"},
      {"{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.0,4.0]}",
       "\"data_offsets\" must be [begin, end]"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(OpenHeaderError(absl::StrCat("{\"w\":", c.entry, "}"), 8), HasSubstr(c.message))
        << c.entry;
  }
}

TEST_F(SafetensorsTest, MalformedMetadata) {
  EXPECT_THAT(OpenHeaderError("{\"__metadata__\":[\"pt\"]}", 0),
              HasSubstr("__metadata__ must be an object of strings, got [\"pt\"]"));
  EXPECT_THAT(OpenHeaderError("{\"__metadata__\":{\"format\":1}}", 0),
              HasSubstr("__metadata__ entry 'format' must be a string, got 1"));
}

TEST_F(SafetensorsTest, NamesWithControlCharactersAreEscapedInErrors) {
  EXPECT_THAT(
      OpenHeaderError(absl::StrCat("{", HeaderEntry("bad\\u0001name", "X", {1}, 0, 4), "}"), 4),
      HasSubstr("tensor 'bad\\x01name'"));
}

TEST_F(SafetensorsTest, ReadF32MissingAndWrongShapeOnWrittenFile) {
  const std::string path =
      WriteTensors("w.safetensors", {{"w", "F32", {2, 3}, std::string(24, '\0')}});
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  auto missing = (*file)->ReadF32("bert.pooler.dense.weight", {2, 3});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), path + ": tensor 'bert.pooler.dense.weight' is missing");
  auto wrong = (*file)->ReadF32("w", {3, 2});
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(wrong.status().message(), path + ": tensor 'w' has shape [2, 3], expected [3, 2]");
  EXPECT_TRUE((*file)->ReadF32("w", {2, 3}).ok());
}

}  // namespace
}  // namespace topserve::engine
