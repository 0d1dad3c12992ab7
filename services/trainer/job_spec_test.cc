#include "services/trainer/job_spec.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "core/testing/fixtures.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/trainer/paths.h"

namespace internvl::services::trainer {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

class JobSpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string tmp = *CanonicalDir(::internvl::testing::TempDir(), "tmp");
    for (const char* d : {"/out", "/models", "/models/tiny", "/data", "/data/set", "/state", "/elsewhere"})
      ASSERT_EQ(::mkdir((tmp + d).c_str(), 0755), 0) << d;
    roots_ = {.output_root = tmp + "/out",
              .model_root = tmp + "/models",
              .data_root = tmp + "/data",
              .state_dir = tmp + "/state"};
    tmp_ = tmp;
    std::ofstream(tmp + "/models/tiny/config.json") << "{}";
    std::ofstream(tmp + "/data/set/data.jsonl") << "";
    Meta("meta.json", R"({"ds": {"root": "set", "annotation": "set/data.jsonl", "repeat_time": 1}})");
    spec_.set_model("tiny");
    spec_.set_meta("meta.json");
    spec_.set_output_dir("run1");
  }
  void Meta(const std::string& name, const std::string& text) { std::ofstream(roots_.data_root + "/" + name) << text; }
  absl::StatusOr<ResolvedSpec> Resolve(int max_nproc = 4) { return ResolveJobSpec(spec_, roots_, max_nproc, nullptr); }
  void ExpectInvalid(const std::string& needle) {
    auto r = Resolve();
    ASSERT_FALSE(r.ok()) << "expected an error mentioning " << needle;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(needle));
  }

  std::string tmp_;
  Roots roots_;
  v1::JobSpec spec_;
};

TEST_F(JobSpecTest, UnsetFieldsTakeTrainOptionsDefaultsAndPathsBecomeAbsolute) {
  auto r = Resolve();
  ASSERT_TRUE(r.ok()) << r.status();
  const train::TrainOptions d;
  EXPECT_EQ(r->options.model, roots_.model_root + "/tiny");
  EXPECT_FALSE(r->model_is_hub_id);
  EXPECT_EQ(r->options.meta, roots_.data_root + "/meta.json");
  EXPECT_EQ(r->options.output_dir, roots_.output_root + "/run1");
  EXPECT_EQ(r->options.lr, d.lr);
  EXPECT_EQ(r->options.max_dynamic_patch, d.max_dynamic_patch);
  EXPECT_EQ(r->options.freeze_backbone, true);
  EXPECT_EQ(r->options.max_steps, d.max_steps);
  EXPECT_EQ(r->nproc, 1);
  EXPECT_EQ(r->options.world_size, 1);
}

TEST_F(JobSpecTest, SetFieldsOverrideAndReachTheCommandLine) {
  spec_.set_lr(1.5e-3);
  spec_.set_max_steps(7);
  spec_.set_weight_decay(0.05);
  spec_.set_freeze_backbone(false);
  spec_.set_freeze_llm(true);
  spec_.set_unfreeze_lm_head(true);
  spec_.set_dtype("bf16");
  spec_.set_conv_style("Hermes-2");
  spec_.set_nproc(2);
  spec_.set_resume_from("auto");
  auto r = Resolve();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->options.lr, 1.5e-3);
  EXPECT_EQ(r->nproc, 2);
  EXPECT_EQ(r->options.world_size, 2);
  const std::vector<std::string> args = TrainCommandArgs(*r, "/s/events.jsonl");
  EXPECT_THAT(args, Contains("--lr=0.0015"));
  EXPECT_THAT(args, Contains("--max-steps=7"));
  EXPECT_THAT(args, Contains("--weight-decay=0.05"));
  EXPECT_THAT(args, Contains("--freeze-backbone=false"));
  EXPECT_THAT(args, Contains("--freeze-llm=true"));
  EXPECT_THAT(args, Contains("--unfreeze-lm-head=true"));
  EXPECT_THAT(args, Contains("--dtype=bf16"));
  EXPECT_THAT(args, Contains("--conv-style=Hermes-2"));
  EXPECT_THAT(args, Contains("--nproc=2"));
  EXPECT_THAT(args, Contains("--resume=auto"));
  EXPECT_THAT(args, Contains("--events-jsonl=/s/events.jsonl"));
  EXPECT_THAT(args, Contains("--output=" + roots_.output_root + "/run1"));
  // --threads is left to the launcher (cores / nproc) when unset.
  EXPECT_EQ(std::count_if(args.begin(), args.end(), [](const std::string& a) { return a.rfind("--threads", 0) == 0; }),
            0);
}

TEST_F(JobSpecTest, ModelIsAFolderUnderTheModelRootOrAHubId) {
  spec_.set_model("OpenGVLab/InternVL2-1B@main");
  auto hub = Resolve();
  ASSERT_TRUE(hub.ok()) << hub.status();
  EXPECT_TRUE(hub->model_is_hub_id);
  EXPECT_EQ(hub->options.model, "OpenGVLab/InternVL2-1B@main");
  spec_.set_model("not an id");
  ExpectInvalid("neither");
  spec_.set_model("/etc");
  ExpectInvalid("relative");
  spec_.set_model("../out");
  ExpectInvalid("relative");
  ASSERT_EQ(::symlink((tmp_ + "/elsewhere").c_str(), (roots_.model_root + "/org").c_str()), 0);
  spec_.set_model("org");
  ExpectInvalid("symlink");
  ASSERT_EQ(::mkdir((roots_.model_root + "/empty").c_str(), 0755), 0);
  spec_.set_model("empty");
  ExpectInvalid("config.json");
}

TEST_F(JobSpecTest, WithoutAModelRootOnlyHubIdsAreAccepted) {
  roots_.model_root.clear();
  ExpectInvalid("Hugging Face id");
  spec_.set_model("OpenGVLab/InternVL2-1B");
  EXPECT_TRUE(Resolve().ok());
}

TEST_F(JobSpecTest, OutputEscapesAreRefused) {
  for (const std::string bad : {"/tmp/x", "../x", "a/../../x", ""}) {
    spec_.set_output_dir(bad);
    auto r = Resolve();
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  ASSERT_EQ(::symlink((tmp_ + "/elsewhere").c_str(), (roots_.output_root + "/link").c_str()), 0);
  spec_.set_output_dir("link/run");
  ExpectInvalid("symlink");
}

TEST_F(JobSpecTest, OutputMustNotOverlapTheStateDir) {
  roots_.state_dir = roots_.output_root + "/state";
  ASSERT_EQ(::mkdir(roots_.state_dir.c_str(), 0755), 0);
  spec_.set_output_dir("state/x");
  ExpectInvalid("--state-dir");
}

TEST_F(JobSpecTest, MetaAndItsDatasetsStayUnderTheDataRoot) {
  spec_.set_meta("missing.json");
  ExpectInvalid("does not exist");
  spec_.set_meta("../out/x.json");
  ExpectInvalid("..");
  Meta("abs.json", R"({"ds": {"root": "/etc", "annotation": "set/data.jsonl"}})");
  spec_.set_meta("abs.json");
  ExpectInvalid("ds.root");
  Meta("up.json", R"({"ds": {"root": "set", "annotation": "../elsewhere/data.jsonl"}})");
  spec_.set_meta("up.json");
  ExpectInvalid("ds.annotation");
  Meta("bad.json", R"([1, 2])");
  spec_.set_meta("bad.json");
  ExpectInvalid("meta");
  // `..` inside the data root is fine (meta files in a subfolder).
  ASSERT_EQ(::mkdir((roots_.data_root + "/metas").c_str(), 0755), 0);
  Meta("metas/m.json", R"({"ds": {"root": "../set", "annotation": "../set/data.jsonl"}})");
  spec_.set_meta("metas/m.json");
  EXPECT_TRUE(Resolve().ok()) << Resolve().status();
}

// The job trains from the meta as checked at submit: swapping the file
// afterwards (to datasets outside the data root) changes nothing, and the
// trainer is told the data root, so annotations and media it opens later
// (a symlink swapped in, a record's absolute image path) are checked again.
TEST_F(JobSpecTest, TheCheckedMetaIsSnapshottedAndTheDataRootPassedOn) {
  auto r = Resolve();
  ASSERT_TRUE(r.ok()) << r.status();
  Meta("meta.json", R"({"ds": {"root": "/etc", "annotation": "/etc/passwd.jsonl"}})");  // the swap
  const nlohmann::json snapshot = nlohmann::json::parse(r->meta_snapshot);
  EXPECT_EQ(snapshot["ds"]["root"], roots_.data_root + "/set");
  EXPECT_EQ(snapshot["ds"]["annotation"], roots_.data_root + "/set/data.jsonl");
  EXPECT_EQ(snapshot["ds"]["repeat_time"], 1);
  EXPECT_EQ(r->options.data_root, roots_.data_root);
  const std::vector<std::string> argv = TrainCommandArgs(*r, "/tmp/events.jsonl");
  EXPECT_NE(std::find(argv.begin(), argv.end(), "--data-root=" + roots_.data_root), argv.end());
}

TEST_F(JobSpecTest, ResumeFromIsAutoOrAFolderInsideTheOutput) {
  spec_.set_resume_from("checkpoint-5");
  ExpectInvalid("does not exist");
  ASSERT_EQ(::mkdir((roots_.output_root + "/run1").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((roots_.output_root + "/run1/checkpoint-5").c_str(), 0755), 0);
  auto r = Resolve();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->options.resume_from, roots_.output_root + "/run1/checkpoint-5");
  spec_.set_resume_from("../run2");
  ExpectInvalid("..");
}

TEST_F(JobSpecTest, NprocAndNameLimitsAndTheValidatorApply) {
  spec_.set_nproc(5);
  ExpectInvalid("--max-nproc");
  spec_.set_nproc(0);
  spec_.set_name(std::string(kMaxJobNameBytes + 1, 'x'));
  ExpectInvalid("name");
  spec_.set_name("ok");
  auto r = ResolveJobSpec(spec_, roots_, 4, [](const train::TrainOptions& o) {
    return o.batch_size > 0 ? absl::OkStatus() : absl::InvalidArgumentError("batch_size must be >= 1");
  });
  EXPECT_TRUE(r.ok());
  spec_.set_batch_size(0);
  r = ResolveJobSpec(spec_, roots_, 4, [](const train::TrainOptions& o) {
    return o.batch_size > 0 ? absl::OkStatus() : absl::InvalidArgumentError("batch_size must be >= 1");
  });
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("batch_size"));
}

}  // namespace
}  // namespace internvl::services::trainer
