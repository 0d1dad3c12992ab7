#include "services/common/tensor_chunks.h"

#include <numeric>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace internvl::services {
namespace {

using ::testing::HasSubstr;

HostTensor Iota(DType dtype, std::vector<int64_t> shape) {
  HostTensor t(dtype, std::move(shape));
  std::iota(t.bytes.begin(), t.bytes.end(), uint8_t{0});
  return t;
}

HostTensor RoundTrip(const HostTensor& t, size_t chunk_bytes, size_t* num_chunks) {
  auto chunks = ChunkTensor(t, chunk_bytes);
  EXPECT_TRUE(chunks.ok()) << chunks.status();
  *num_chunks = chunks->size();
  TensorAssembler assembler(1 << 20);
  for (const auto& c : *chunks) {
    EXPECT_LE(c.data().size(), chunk_bytes);
    EXPECT_FALSE(assembler.complete());
    EXPECT_TRUE(assembler.Add(c).ok());
  }
  EXPECT_TRUE(assembler.complete());
  return assembler.Take();
}

TEST(TensorChunks, RoundTripKeepsDtypeShapeAndBytesUnderTheCap) {
  const HostTensor t = Iota(DType::kBF16, {3, 5, 7});  // 210 bytes
  size_t n = 0;
  const HostTensor back = RoundTrip(t, 64, &n);
  EXPECT_EQ(n, 4u);  // 64 + 64 + 64 + 18
  EXPECT_EQ(back.dtype, DType::kBF16);
  EXPECT_EQ(back.shape, t.shape);
  EXPECT_EQ(back.bytes, t.bytes);
}

TEST(TensorChunks, EmptyTensorIsOneChunk) {
  const HostTensor t(DType::kF32, {0, 256, 64});
  size_t n = 0;
  const HostTensor back = RoundTrip(t, 64, &n);
  EXPECT_EQ(n, 1u);
  EXPECT_EQ(back.shape, t.shape);
  EXPECT_TRUE(back.bytes.empty());
}

TEST(TensorChunks, AssemblerReceivesConsecutiveTensors) {
  auto a = ChunkTensor(Iota(DType::kU8, {10}), 4);
  auto b = ChunkTensor(Iota(DType::kI32, {2}), 4);
  TensorAssembler assembler(100);
  for (const auto& c : *a) ASSERT_TRUE(assembler.Add(c).ok());
  EXPECT_EQ(assembler.Take().shape, std::vector<int64_t>{10});
  for (const auto& c : *b) ASSERT_TRUE(assembler.Add(c).ok());
  EXPECT_EQ(assembler.Take().dtype, DType::kI32);
}

TEST(TensorChunks, RefusesDeclaredSizeOverLimitBeforeAllocating) {
  v1::TensorChunk c;
  c.mutable_header()->set_dtype(v1::DATA_TYPE_F32);
  c.mutable_header()->add_shape(int64_t{1} << 40);
  c.mutable_header()->set_total_bytes(uint64_t{4} << 40);
  TensorAssembler assembler(1 << 20);
  const absl::Status s = assembler.Add(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("exceeds the limit"));
}

// A header within the limit but no data commits nothing: memory follows the
// bytes the peer actually sent (a stalled stream that declared a large
// tensor used to hold all of it).
TEST(TensorChunks, AllocatesOnlyAsDataArrives) {
  const HostTensor t = Iota(DType::kU8, {1 << 16});
  auto chunks = *ChunkTensor(t, 4096);
  v1::TensorChunk header_only = chunks[0];
  header_only.clear_data();
  TensorAssembler assembler(uint64_t{1} << 30);
  ASSERT_TRUE(assembler.Add(header_only).ok());
  EXPECT_TRUE(assembler.started());
  EXPECT_EQ(assembler.bytes_held(), 0u);
  TensorAssembler real(uint64_t{1} << 30);
  for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(real.Add(chunks[i]).ok());
  EXPECT_EQ(real.bytes_held(), 3u * 4096);
  for (size_t i = 3; i < chunks.size(); ++i) ASSERT_TRUE(real.Add(chunks[i]).ok());
  ASSERT_TRUE(real.complete());
  EXPECT_EQ(real.Take().bytes, t.bytes);
}

TEST(TensorChunks, RefusesMalformedStreams) {
  auto chunks = *ChunkTensor(Iota(DType::kU8, {2, 8}), 4);
  {  // no header first
    TensorAssembler a(100);
    EXPECT_THAT(a.Add(chunks[1]).message(), HasSubstr("no header"));
  }
  {  // gap
    TensorAssembler a(100);
    ASSERT_TRUE(a.Add(chunks[0]).ok());
    EXPECT_THAT(a.Add(chunks[2]).message(), HasSubstr("expected offset 4"));
  }
  {  // total_bytes disagrees with the shape
    v1::TensorChunk bad = chunks[0];
    bad.mutable_header()->set_total_bytes(17);
    TensorAssembler a(100);
    EXPECT_THAT(a.Add(bad).message(), HasSubstr("needs 16"));
  }
  {  // data past the end
    v1::TensorChunk last = chunks[3];
    last.set_data("12345");
    TensorAssembler a(100);
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(a.Add(chunks[i]).ok());
    EXPECT_THAT(a.Add(last).message(), HasSubstr("runs past"));
  }
  {  // unknown dtype, negative dimension
    v1::TensorChunk bad = chunks[0];
    bad.mutable_header()->set_dtype(v1::DATA_TYPE_UNSPECIFIED);
    EXPECT_EQ(TensorAssembler(100).Add(bad).code(), absl::StatusCode::kInvalidArgument);
    bad = chunks[0];
    bad.mutable_header()->set_shape(0, -2);
    EXPECT_THAT(TensorAssembler(100).Add(bad).message(), HasSubstr("negative"));
  }
}

}  // namespace
}  // namespace internvl::services
