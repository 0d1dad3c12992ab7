#include "core/hub/digest.h"

#include "gtest/gtest.h"

namespace internvl::hub {
namespace {

TEST(Digest, Sha256OfKnownStrings) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Digest, GitBlobSha1MatchesGitHashObject) {
  // `printf 'hello\n' | git hash-object --stdin`; the empty blob's well-known id.
  EXPECT_EQ(GitBlobSha1Hex("hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
  EXPECT_EQ(GitBlobSha1Hex(""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
}

TEST(Digest, StreamingEqualsOneShotAndResets) {
  StreamingDigest d(StreamingDigest::Algorithm::kSha256);
  d.Update("a", 1);
  d.Update("bc", 2);
  EXPECT_EQ(d.HexDigest(), Sha256Hex("abc"));
  d.Update("abc", 3);  // HexDigest() reset it
  EXPECT_EQ(d.HexDigest(), Sha256Hex("abc"));
}

}  // namespace
}  // namespace internvl::hub
