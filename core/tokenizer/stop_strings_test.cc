#include "core/tokenizer/stop_strings.h"

#include "gtest/gtest.h"

namespace internvl::tokenizer {
namespace {

// Feeds `pieces` (one per token); returns the index of the piece that
// stopped, or -1.
int Feed(StopStrings& s, const std::vector<std::string>& pieces) {
  for (size_t i = 0; i < pieces.size(); ++i)
    if (s.Append(pieces[i])) return static_cast<int>(i);
  return -1;
}

TEST(StopStrings, MatchesAcrossTokensAndOverhangsAsHf) {
  // HF's examples for "stop": each of these token sequences ends on a match.
  for (const std::vector<std::string>& tokens : std::vector<std::vector<std::string>>{
           {"st", "op"}, {"stop"}, {"st", "opera"}, {"sto", "pper"}, {"las", "topper"}, {"s", "to", "pped"}}) {
    StopStrings s({"stop"});
    EXPECT_EQ(Feed(s, tokens), static_cast<int>(tokens.size()) - 1) << tokens[0];
    EXPECT_TRUE(s.matched());
    EXPECT_EQ(s.text(), tokens[0] == "las" ? "la" : "");
    EXPECT_EQ(s.Safe(), s.text().size());
  }
  // The earliest match wins; the text before it stays.
  StopStrings two({"cd", "bcd"});
  EXPECT_EQ(Feed(two, {"a", "bcdx", "more"}), 1);
  EXPECT_EQ(two.text(), "a");
  StopStrings none({"stop"});
  EXPECT_EQ(Feed(none, {"sto", "at", "p"}), -1);
  EXPECT_EQ(none.text(), "stoatp");
  EXPECT_FALSE(none.matched());
}

TEST(StopStrings, HoldsBackOnlyWhatCouldStillBecomeAStopString) {
  StopStrings s({"\nUser:", "###"});
  EXPECT_FALSE(s.Append("Hello"));
  EXPECT_EQ(s.Safe(), 5u);
  EXPECT_FALSE(s.Append(" world\nUs"));
  EXPECT_EQ(s.text().substr(0, s.Safe()), "Hello world");  // "\nUs" may become "\nUser:"
  EXPECT_FALSE(s.Append("e!"));
  EXPECT_EQ(s.Safe(), s.text().size());  // "\nUse!" cannot
  EXPECT_FALSE(s.Append("##"));
  EXPECT_EQ(s.text().substr(s.Safe()), "##");
  EXPECT_TRUE(s.Append("#\nUser:"));
  EXPECT_EQ(s.text(), "Hello world\nUse!");
  EXPECT_TRUE(s.Append("more"));  // ignored once matched
  EXPECT_EQ(s.text(), "Hello world\nUse!");
  StopStrings empty({});
  EXPECT_TRUE(empty.empty());
  EXPECT_FALSE(empty.Append("anything"));
  EXPECT_EQ(empty.Safe(), 8u);
}

TEST(StopStrings, RequestLimits) {
  EXPECT_TRUE(ValidateStopStrings({}).ok());
  EXPECT_TRUE(ValidateStopStrings({"a", std::string(kMaxStopBytes, 'x')}).ok());
  EXPECT_EQ(ValidateStopStrings({""}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateStopStrings({std::string(kMaxStopBytes + 1, 'x')}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateStopStrings(std::vector<std::string>(kMaxStopStrings + 1, "a")).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace internvl::tokenizer
