#include "core/tokenizer/utf8.h"

#include "gtest/gtest.h"

namespace internvl::tokenizer {
namespace {

constexpr char kFffd[] = "\xEF\xBF\xBD";

TEST(DecodeUtf8Replace, ValidTextIsUnchanged) {
  EXPECT_EQ(DecodeUtf8Replace("a\xE4\xBD\xA0\xF0\x9F\x98\x80"), "a\xE4\xBD\xA0\xF0\x9F\x98\x80");
}

TEST(DecodeUtf8Replace, TruncatedSequenceIsOneReplacementLikePython) {
  // b"\xf0\x9f\x98".decode("utf-8", "replace") == "\ufffd"
  EXPECT_EQ(DecodeUtf8Replace("\xF0\x9F\x98"), kFffd);
  // b"\xf0\x9f\x98A" -> "\ufffdA"
  EXPECT_EQ(DecodeUtf8Replace("\xF0\x9F\x98" "A"), std::string(kFffd) + "A");
}

TEST(DecodeUtf8Replace, BadSecondByteReplacesLeadAloneLikePython) {
  // b"\xe0\x80".decode(errors="replace") == "\ufffd\ufffd" (E0 needs A0..BF).
  EXPECT_EQ(DecodeUtf8Replace("\xE0\x80"), std::string(kFffd) + kFffd);
  // Surrogates are ill-formed: b"\xed\xa0\x80" -> three U+FFFD.
  EXPECT_EQ(DecodeUtf8Replace("\xED\xA0\x80"), std::string(kFffd) + kFffd + kFffd);
  EXPECT_EQ(DecodeUtf8Replace("\xFF"), kFffd);
}

TEST(FindInvalidUtf8, ReportsOffsetOfFirstBadByte) {
  EXPECT_EQ(FindInvalidUtf8("hello"), kUtf8Valid);
  EXPECT_EQ(FindInvalidUtf8("ab\x80"), 2u);
  EXPECT_EQ(FindInvalidUtf8("ab\xE4\xBD"), 2u);  // truncated at the end
  EXPECT_EQ(FindInvalidUtf8("\xC0\xAF"), 0u);     // overlong
}

TEST(IncompleteUtf8Suffix, CountsOnlyWellFormedUnfinishedTail) {
  EXPECT_EQ(IncompleteUtf8Suffix("abc"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xE4"), 1u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xE4\xBD"), 2u);
  EXPECT_EQ(IncompleteUtf8Suffix("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Suffix("\xE4\xBD\xA0"), 0u);  // complete
  EXPECT_EQ(IncompleteUtf8Suffix("\xE0\x80"), 0u);      // can never complete
  EXPECT_EQ(IncompleteUtf8Suffix("\x80"), 0u);          // stray continuation
}

TEST(NormalizeNfc, ComposesDecomposedCharacters) {
  EXPECT_EQ(NormalizeNfc("e\xCC\x81"), "\xC3\xA9");  // e + U+0301 -> é
  EXPECT_EQ(NormalizeNfc("A\xCC\x8A"), "\xC3\x85");  // A + ring -> Å
  EXPECT_EQ(NormalizeNfc("plain ascii"), "plain ascii");
  EXPECT_EQ(NormalizeNfc("\xEF\xAC\x81"), "\xEF\xAC\x81");  // ﬁ is NFC already (only NFKC splits it)
}

}  // namespace
}  // namespace internvl::tokenizer
