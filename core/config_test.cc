#include "core/config.h"

#include "absl/strings/str_cat.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"

namespace internvl {
namespace {

TEST(Config, ParsesReferenceQwen2Checkpoint) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  auto c = LoadInternVLConfig(fixtures + "/tiny-qwen2");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->llm.arch, LlmArch::kQwen2);
  EXPECT_TRUE(c->llm.attention_bias);
  EXPECT_EQ(c->llm.num_key_value_heads, 2);
  EXPECT_EQ(c->vision.norm_type, VisionConfig::Norm::kLayerNorm);
  EXPECT_TRUE(c->vision.qkv_bias);
  EXPECT_FALSE(c->vision.qk_normalization);
  EXPECT_EQ(c->template_name, "Hermes-2");
  EXPECT_EQ(c->ps_version, "v2");
  EXPECT_EQ(c->image_size(), 448);
  EXPECT_EQ(c->num_image_token(), 256);
  EXPECT_TRUE(c->use_thumbnail);
  EXPECT_EQ(c->max_dynamic_patch, 12);
}

TEST(Config, ParsesInternLM2AndLlamaCheckpoints) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  auto i = LoadInternVLConfig(fixtures + "/tiny-internlm2");
  ASSERT_TRUE(i.ok()) << i.status();
  EXPECT_EQ(i->llm.arch, LlmArch::kInternLM2);
  ASSERT_TRUE(i->llm.rope_scaling.has_value());
  EXPECT_EQ(i->llm.rope_scaling->type, "dynamic");
  auto l = LoadInternVLConfig(fixtures + "/tiny-llama");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->llm.arch, LlmArch::kLlama);
  EXPECT_EQ(l->vision.norm_type, VisionConfig::Norm::kRmsNorm);
  EXPECT_TRUE(l->vision.qk_normalization);
  EXPECT_FALSE(l->vision.qkv_bias);
}

TEST(Config, AppliesReferenceDefaults) {
  auto c = ParseInternVLConfig(R"({"vision_config": {}, "llm_config": {"architectures": ["LlamaForCausalLM"]}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ps_version, "v1");
  EXPECT_EQ(c->downsample_ratio, 0.5);
  EXPECT_EQ(c->max_dynamic_patch, 6);
  EXPECT_EQ(c->vision.hidden_size, 3200);
  EXPECT_EQ(c->vision.norm_type, VisionConfig::Norm::kRmsNorm);
  EXPECT_EQ(c->llm.num_key_value_heads, 32);  // defaults to the head count
  EXPECT_FALSE(c->llm.tie_word_embeddings);
}

// MiniMonkey's checkpoint is InternVL2-2B's under its own model class: named
// in `architectures` or in `auto_map`, in any case.
TEST(Config, RecognisesMiniMonkeyByItsModelClass) {
  const std::string llm = R"("vision_config": {}, "llm_config": {"architectures": ["InternLM2ForCausalLM"]})";
  for (const std::string& json :
       {R"({"architectures": ["MiniMonkeyChatModel"], )" + llm + "}",
        R"({"auto_map": {"AutoModel": "modeling_minimonkey_chat.MiniMonkeyChatModel"}, )" + llm + "}"}) {
    auto c = ParseInternVLConfig(json);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(c->minimonkey) << json;
    // And it survives the round trip make-model writes.
    auto again = ParseInternVLConfig(InternVLConfigToJson(*c));
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(again->minimonkey);
  }
  auto plain = ParseInternVLConfig(R"({"architectures": ["InternVLChatModel"], "auto_map": {"AutoModel": )"
                                   R"("modeling_internvl_chat.InternVLChatModel"}, )" +
                                   llm + "}");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->minimonkey);
}

TEST(Config, RejectsUnknownValues) {
  auto bad_arch = ParseInternVLConfig(R"({"vision_config": {}, "llm_config": {"architectures": ["GPT2"]}})");
  EXPECT_EQ(bad_arch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_arch.status().message().find("GPT2"), std::string::npos);
  auto bad_norm =
      ParseInternVLConfig(R"({"vision_config": {"norm_type": "batch"}, "llm_config": {"model_type": "qwen2"}})");
  EXPECT_NE(bad_norm.status().message().find("norm_type"), std::string::npos);
  auto bad_ps =
      ParseInternVLConfig(R"({"ps_version": "v3", "vision_config": {}, "llm_config": {"model_type": "qwen2"}})");
  EXPECT_NE(bad_ps.status().message().find("ps_version"), std::string::npos);
  auto bad_type =
      ParseInternVLConfig(R"({"vision_config": {"hidden_size": "big"}, "llm_config": {"model_type": "qwen2"}})");
  EXPECT_NE(bad_type.status().message().find("hidden_size"), std::string::npos);
  auto no_llm = ParseInternVLConfig(R"({"vision_config": {}})");
  EXPECT_NE(no_llm.status().message().find("llm_config"), std::string::npos);
  EXPECT_FALSE(ParseInternVLConfig("[1,2").ok());
}

TEST(Config, ReadsAwqQuantizationAndRefusesOtherMethods) {
  const std::string base = R"("vision_config": {}, "llm_config": {"model_type": "qwen2"})";
  auto awq = ParseInternVLConfig(
      absl::StrCat("{", base,
                   R"(, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64, "version": "GEMM",
                                   "zero_point": true}})"));
  ASSERT_TRUE(awq.ok()) << awq.status();
  ASSERT_TRUE(awq->llm.awq.has_value());
  EXPECT_EQ(awq->llm.awq->group_size, 64);
  auto again = ParseInternVLConfig(InternVLConfigToJson(*awq));
  ASSERT_TRUE(again.ok() && again->llm.awq.has_value());
  EXPECT_EQ(again->llm.awq->group_size, 64);
  auto gptq = ParseInternVLConfig(absl::StrCat("{", base, R"(, "quantization_config": {"quant_method": "gptq"}})"));
  EXPECT_EQ(gptq.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(gptq.status().message().find("gptq"), std::string::npos);
  auto three_bits =
      ParseInternVLConfig(absl::StrCat("{", base, R"(, "quantization_config": {"quant_method": "awq", "bits": 3}})"));
  EXPECT_EQ(three_bits.status().code(), absl::StatusCode::kUnimplemented);
  auto gemv = ParseInternVLConfig(
      absl::StrCat("{", base, R"(, "quantization_config": {"quant_method": "awq", "version": "gemv"}})"));
  EXPECT_EQ(gemv.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(ParseInternVLConfig(absl::StrCat("{", base, R"(, "quantization_config": 4})")).ok());
}

TEST(Config, MissingDirectoryIsClearError) {
  auto c = LoadInternVLConfig("/nonexistent/model");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("config.json"), std::string::npos);
}

TEST(Config, RoundTripsThroughJson) {
  auto c = ParseInternVLConfig(
      R"({"template": "internvl2_5", "ps_version": "v2", "force_image_size": 448, "use_thumbnail": true,
          "vision_config": {"hidden_size": 64, "num_attention_heads": 4, "norm_type": "layer_norm", "image_size": 448},
          "llm_config": {"architectures": ["InternLM2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "bias": false, "rope_scaling": {"type": "dynamic", "factor": 2.0}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  auto again = ParseInternVLConfig(InternVLConfigToJson(*c));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->llm.arch, LlmArch::kInternLM2);
  EXPECT_FALSE(again->llm.attention_bias);
  EXPECT_EQ(again->llm.num_key_value_heads, 2);
  EXPECT_EQ(again->llm.rope_scaling->factor, 2.0);
  EXPECT_EQ(again->template_name, "internvl2_5");
  EXPECT_EQ(again->vision.norm_type, VisionConfig::Norm::kLayerNorm);
}

}  // namespace
}  // namespace internvl
