#include "core/tokenizer/chat_template.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace internvl::tokenizer {
namespace {

using ::testing::HasSubstr;

const ChatTemplate& Get(const char* name) {
  auto t = GetTemplate(name);
  EXPECT_TRUE(t.ok()) << t.status();
  return **t;
}

TEST(GetTemplate, UnknownNameListsKnownOnes) {
  auto t = GetTemplate("vicuna");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("Hermes-2"));
  EXPECT_THAT(t.status().message(), HasSubstr("internvl2_5"));
}

TEST(RenderPrompt, Hermes2HasNoNewlineAfterImEnd) {
  EXPECT_EQ(RenderPrompt(Get("Hermes-2"), "SYS", {}, "Q"),
            "<|im_start|>system\nSYS<|im_end|><|im_start|>user\nQ<|im_end|><|im_start|>assistant\n");
}

TEST(RenderPrompt, Internvl25SeparatesTurnsWithNewline) {
  EXPECT_EQ(RenderPrompt(Get("internvl2_5"), "S", {{"q1", "a1"}}, "q2"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n"
            "a1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n");
}

TEST(RenderPrompt, EmptyHistoryAnswerRendersBareRoleAsConversationPy) {
  EXPECT_EQ(RenderPrompt(Get("phi3-chat"), "S", {{"q1", ""}}, "q2"),
            "<|system|>\nS<|end|><|user|>\nq1<|end|><|assistant|>\n<|user|>\nq2<|end|><|assistant|>\n");
}

TEST(SystemMessageFor, ConfigOverridesTemplateDefault) {
  EXPECT_EQ(SystemMessageFor(Get("Hermes-2"), std::string("mine")), "mine");
  EXPECT_THAT(SystemMessageFor(Get("internvl2_5"), std::nullopt), HasSubstr("书生·万象"));
}

TEST(BuildChatQuestion, PrependsImageOnlyWithImagesNoHistoryNoPlaceholder) {
  EXPECT_EQ(BuildChatQuestion("Q", true, false), "<image>\nQ");
  EXPECT_EQ(BuildChatQuestion("Q", false, false), "Q");
  EXPECT_EQ(BuildChatQuestion("Q", true, true), "Q");
  EXPECT_EQ(BuildChatQuestion("see <image> here", true, false), "see <image> here");
}

TEST(BuildVideoQuestion, NumbersFramesFromOne) {
  EXPECT_EQ(BuildVideoQuestion(2, "Q"), "Frame1: <image>\nFrame2: <image>\nQ");
}

TEST(ExpandImageTokens, ReplacesFirstPlaceholderPerImageInOrder) {
  auto out = ExpandImageTokens("a<image>b<image>c<image>", {1, 2}, 2);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out,
            "a<img><IMG_CONTEXT><IMG_CONTEXT></img>b<img><IMG_CONTEXT><IMG_CONTEXT><IMG_CONTEXT>"
            "<IMG_CONTEXT></img>c<image>");
}

TEST(ExpandImageTokens, MorImagesThanPlaceholdersIsAnError) {
  auto out = ExpandImageTokens("a<image>b", {1, 1}, 256);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExtractResponse, CutsAtStrippedSeparatorAndStrips) {
  EXPECT_EQ(ExtractResponse(Get("internvl2_5"), "  A cat.<|im_end|>junk"), "A cat.");
  EXPECT_EQ(ExtractResponse(Get("Hermes-2"), "no stop \n"), "no stop");
}

}  // namespace
}  // namespace internvl::tokenizer
