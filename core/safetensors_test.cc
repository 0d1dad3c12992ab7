#include "core/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/files.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {

std::string WriteBytes(const std::string& dir, const std::string& name, const std::string& bytes) {
  std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string MakeHeaderFile(const std::string& header_json, size_t data_bytes) {
  std::string out;
  uint64_t n = header_json.size();
  out.append(reinterpret_cast<const char*>(&n), 8);
  out += header_json;
  out.append(data_bytes, '\0');
  return out;
}

TEST(Safetensors, RoundTripsEveryDtype) {
  const std::string dir = testing::TempDir();
  std::vector<float> f32 = {1.0f, -2.5f, 3.25f, 0.0f, 7.0f, 8.0f};
  std::vector<uint16_t> bf16 = {FloatToBf16(1.5f), FloatToBf16(-0.25f)};
  std::vector<int64_t> i64 = {1, -2, 3};
  std::vector<uint8_t> u8 = {0, 255, 7};
  auto bytes = [](const auto& v) {
    return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(v[0]));
  };
  std::vector<TensorRef> tensors = {
      {"a.f32", DType::kF32, {2, 3}, bytes(f32)},
      {"b.bf16", DType::kBF16, {2}, bytes(bf16)},
      {"c.i64", DType::kI64, {3}, bytes(i64)},
      {"d.u8", DType::kU8, {1, 3}, bytes(u8)},
  };
  const std::string path = dir + "/t.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const TensorView* a = (*file)->Find("a.f32");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  auto af = ToFloatVector(*a);
  ASSERT_TRUE(af.ok());
  EXPECT_EQ(*af, f32);
  auto bf = ToFloatVector(*(*file)->Find("b.bf16"));
  ASSERT_TRUE(bf.ok());
  EXPECT_EQ((*bf)[0], 1.5f);
  EXPECT_EQ((*bf)[1], -0.25f);
  const TensorView* c = (*file)->Find("c.i64");
  EXPECT_EQ(std::memcmp(c->data, i64.data(), 24), 0);
  EXPECT_EQ((*file)->Names().size(), 4u);
}

TEST(Safetensors, TruncatedFileNamesFileAndTensor) {
  const std::string dir = testing::TempDir();
  std::string good = MakeHeaderFile(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  auto path = WriteBytes(dir, "trunc.safetensors", good.substr(0, good.size() - 5));
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(file.status().message().find("trunc.safetensors"), std::string::npos) << file.status();
  EXPECT_NE(file.status().message().find("'w'"), std::string::npos) << file.status();
}

TEST(Safetensors, RejectsMalformedHeaders) {
  const std::string dir = testing::TempDir();
  struct Case {
    std::string name, bytes, expect;
  };
  std::vector<Case> cases = {
      {"short", std::string("\x01\x02", 2), "shorter than"},
      {"huge_len", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8), "exceeds the limit"},
      {"past_end", std::string("\x40\x00\x00\x00\x00\x00\x00\x00{}", 10), "past the end"},
      {"not_json", MakeHeaderFile("{not json", 0), "not valid JSON"},
      {"bad_dtype", MakeHeaderFile(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1), "unsupported dtype"},
      {"size_mismatch", MakeHeaderFile(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       "does not match"},
      {"neg_shape", MakeHeaderFile(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "negative"},
      {"overlap", MakeHeaderFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 6),
       "overlap"},
      {"no_offsets", MakeHeaderFile(R"({"w":{"dtype":"F32","shape":[1]}})", 4), "data_offsets"},
  };
  for (const auto& c : cases) {
    auto path = WriteBytes(dir, c.name + ".safetensors", c.bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << c.name;
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(file.status().message().find(c.expect), std::string::npos) << c.name << ": " << file.status();
  }
}

TEST(Safetensors, MissingFileIsNotFound) {
  auto file = SafetensorsFile::Open("/nonexistent/x.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
}

TEST(TensorStore, ReadsShardedCheckpointThroughIndex) {
  const std::string dir = testing::TempDir();
  std::vector<float> a = {1, 2}, b = {3, 4, 5};
  auto span = [](const std::vector<float>& v) {
    return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4);
  };
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors", {{"x.a", DType::kF32, {2}, span(a)}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors", {{"x.b", DType::kF32, {3}, span(b)}}).ok());
  WriteBytes(dir, "model.safetensors.index.json",
             R"({"metadata":{},"weight_map":{"x.a":"model-00001-of-00002.safetensors","x.b":"model-00002-of-00002.safetensors"}})");
  auto store = TensorStore::OpenDir(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Names(), (std::vector<std::string>{"x.a", "x.b"}));
  auto bv = (*store)->Get("x.b");
  ASSERT_TRUE(bv.ok());
  EXPECT_EQ((*bv)->shape, (std::vector<int64_t>{3}));
  auto missing = (*store)->Get("x.c");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(TensorStore, IndexNamingAbsentTensorIsAnError) {
  const std::string dir = testing::TempDir();
  std::vector<float> a = {1, 2};
  ASSERT_TRUE(WriteSafetensors(dir + "/s1.safetensors",
                               {{"x.a", DType::kF32, {2},
                                 absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(a.data()), 8)}})
                  .ok());
  WriteBytes(dir, "model.safetensors.index.json", R"({"weight_map":{"x.a":"s1.safetensors","x.z":"s1.safetensors"}})");
  auto store = TensorStore::OpenDir(dir);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("x.z"), std::string::npos);
}

TEST(TensorStore, EmptyDirectoryIsNotFound) {
  auto store = TensorStore::OpenDir(testing::TempDir());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
}

TEST(TensorStore, OpensReferenceCheckpoint) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  auto store = TensorStore::OpenDir(fixtures + "/tiny-qwen2");
  ASSERT_TRUE(store.ok()) << store.status();
  auto v = (*store)->Get("vision_model.embeddings.position_embedding");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ((*v)->dtype, DType::kBF16);
  EXPECT_EQ((*v)->shape, (std::vector<int64_t>{1, 1025, 64}));
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (1.0).
  EXPECT_EQ(FloatToBf16(1.0f + 1.0f / 256), 0x3f80);
  EXPECT_EQ(FloatToBf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xc000), -2.0f);
}

}  // namespace
}  // namespace internvl
