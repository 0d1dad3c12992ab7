// Trainer options beyond the reference run, on the tiny Qwen2 model and a
// tiny generated dataset: gradient checkpointing (same numbers), LoRA
// (adapters only, merged on save, exact resume), bf16 autocast, bad records
// skipped with a warning, cancellation, option validation.
#include <atomic>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/train/trainer.h"
#include "gtest/gtest.h"
#include "tests/train_test_data.h"

namespace internvl::train {
namespace {

namespace fs = std::filesystem;

struct TrainRun {
  absl::Status status;
  std::vector<TrainEvent> steps, warnings;
  std::vector<std::string> checkpoints;
};

TrainRun Train(const TrainOptions& o, const std::atomic<bool>* cancel = nullptr) {
  TrainRun r;
  r.status = RunTraining(
      o,
      [&](const TrainEvent& e) {
        if (e.kind == TrainEvent::Kind::kStep) r.steps.push_back(e);
        if (e.kind == TrainEvent::Kind::kWarning) r.warnings.push_back(e);
        if (e.kind == TrainEvent::Kind::kCheckpoint) r.checkpoints.push_back(e.checkpoint_path);
      },
      cancel);
  return r;
}

// name -> values of a model folder's model.safetensors.
std::map<std::string, std::vector<float>> Weights(const std::string& dir) {
  std::map<std::string, std::vector<float>> out;
  auto store = TensorStore::OpenDir(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return out;
  for (const std::string& name : (*store)->Names()) out[name] = *ToFloatVector(*(*store)->Find(name));
  return out;
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 1e9;
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
  return d;
}

class TrainOptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = ::internvl::testing::FixturesDir();
    if (!f) {
      if (::internvl::testing::InCI()) FAIL() << "reference fixtures missing under CI";
      GTEST_SKIP() << "the tiny models of ../shared/fixtures are needed";
    }
    fixtures_ = *f;
    dir_ = ::internvl::testing::TempDir() + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    meta_ = ::internvl::testing::WriteTinyDataset(dir_, ::internvl::testing::DefaultTinyRecords());
  }

  TrainOptions Options(const std::string& out) const {
    TrainOptions o;
    o.model = fixtures_ + "/tiny-qwen2";
    o.meta = meta_;
    o.output_dir = dir_ + "/" + out;
    o.max_steps = 3;
    o.batch_size = 2;
    o.lr = 5e-3;
    o.warmup_ratio = 0;
    o.max_dynamic_patch = 1;
    o.threads = 2;
    return o;
  }

  std::string fixtures_, dir_, meta_;
};

TEST_F(TrainOptionsTest, GradientCheckpointingGivesTheSameTraining) {
  TrainRun plain = Train(Options("plain"));
  ASSERT_TRUE(plain.status.ok()) << plain.status;
  TrainOptions o = Options("checkpointed");
  o.gradient_checkpointing = true;
  TrainRun ckpt = Train(o);
  ASSERT_TRUE(ckpt.status.ok()) << ckpt.status;
  ASSERT_EQ(plain.steps.size(), ckpt.steps.size());
  for (size_t k = 0; k < plain.steps.size(); ++k) {
    EXPECT_NEAR(ckpt.steps[k].loss, plain.steps[k].loss, 1e-5 * plain.steps[k].loss);
    EXPECT_NEAR(ckpt.steps[k].grad_norm, plain.steps[k].grad_norm, 1e-4 * plain.steps[k].grad_norm);
  }
  auto a = Weights(o.output_dir), b = Weights(Options("plain").output_dir);
  double worst = 0;
  for (const auto& [name, v] : a) worst = std::max(worst, MaxDiff(v, b[name]));
  std::cout << "max |checkpointed - plain| = " << worst << "\n";
  EXPECT_EQ(worst, 0.0) << "the checkpointed layers compute exactly what the plain ones do";
}

// The recomputing forward must see the merged LoRA weights, not the base.
TEST_F(TrainOptionsTest, GradientCheckpointingWithLoraGivesTheSameTraining) {
  TrainOptions a = Options("lora_plain");
  a.lora_rank = 4;
  a.freeze_mlp = true;
  TrainRun plain = Train(a);
  ASSERT_TRUE(plain.status.ok()) << plain.status;
  TrainOptions b = Options("lora_checkpointed");
  b.lora_rank = 4;
  b.freeze_mlp = true;
  b.gradient_checkpointing = true;
  TrainRun ckpt = Train(b);
  ASSERT_TRUE(ckpt.status.ok()) << ckpt.status;
  ASSERT_EQ(plain.steps.size(), ckpt.steps.size());
  for (size_t k = 0; k < plain.steps.size(); ++k) {
    EXPECT_NEAR(ckpt.steps[k].loss, plain.steps[k].loss, 1e-5 * plain.steps[k].loss) << "step " << k + 1;
    EXPECT_NEAR(ckpt.steps[k].grad_norm, plain.steps[k].grad_norm, 1e-4 * plain.steps[k].grad_norm);
  }
}

TEST_F(TrainOptionsTest, LoraTrainsAdaptersAndSavesMergedWeights) {
  TrainOptions o = Options("lora");
  o.lora_rank = 4;
  o.freeze_mlp = true;
  o.max_steps = 4;
  o.save_steps = 1;
  TrainRun run = Train(o);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ASSERT_EQ(run.steps.size(), 4u);
  std::cout << "LoRA loss: " << run.steps.front().loss << " -> " << run.steps.back().loss << "\n";
  EXPECT_LT(run.steps.back().loss, run.steps.front().loss);

  auto source = Weights(fixtures_ + "/tiny-qwen2");
  auto trained = Weights(o.output_dir);
  ASSERT_EQ(source.size(), trained.size()) << "the saved model holds exactly the model's tensors";
  for (const auto& [name, v] : source) {
    const double d = MaxDiff(trained[name], v);
    const bool target = name.find("_proj.weight") != std::string::npos && name.find("language_model.") == 0;
    if (target) {
      EXPECT_GT(d, 1e-4) << name << " should hold the merged adapter";
    } else {
      // Frozen: bf16 source values, exactly representable in fp32.
      EXPECT_EQ(d, 0.0) << name << " should be untouched";
    }
  }
  EXPECT_TRUE(fs::exists(o.output_dir + "/checkpoint-2/lora.safetensors"));

  // The merged model is the adapted model: an lr-0 step on checkpoint-3's
  // merged weights sees the loss the LoRA run saw before its 4th update.
  TrainOptions eval = Options("eval");
  eval.model = o.output_dir + "/checkpoint-3";
  eval.max_steps = 1;
  eval.lr = 0;
  TrainRun ev = Train(eval);
  ASSERT_TRUE(ev.status.ok()) << ev.status;
  std::cout << "merged checkpoint-3 loss " << ev.steps[0].loss << ", LoRA run step 4 loss " << run.steps[3].loss
            << "\n";
  EXPECT_NEAR(ev.steps[0].loss, run.steps[3].loss, 1e-4 * run.steps[3].loss);

  // Resume from checkpoint-2 with the adapters: the same final weights.
  TrainOptions resumed = o;
  resumed.output_dir = dir_ + "/lora_resumed";
  fs::create_directories(resumed.output_dir);
  fs::copy(o.output_dir + "/checkpoint-2", resumed.output_dir + "/checkpoint-2", fs::copy_options::recursive);
  resumed.resume_from = "auto";
  TrainRun rr = Train(resumed);
  ASSERT_TRUE(rr.status.ok()) << rr.status;
  ASSERT_EQ(rr.steps.size(), 2u);
  EXPECT_NEAR(rr.steps[0].loss, run.steps[2].loss, 1e-6 * run.steps[2].loss);
  auto again = Weights(resumed.output_dir);
  double worst = 0;
  for (const auto& [name, v] : trained) worst = std::max(worst, MaxDiff(again[name], v));
  EXPECT_EQ(worst, 0.0) << "the checkpointed layers compute exactly what the plain ones do";
}

TEST_F(TrainOptionsTest, Bf16AutocastTrains) {
  TrainRun fp32 = Train(Options("fp32"));
  ASSERT_TRUE(fp32.status.ok()) << fp32.status;
  TrainOptions o = Options("bf16");
  o.dtype = "bf16";
  TrainRun bf16 = Train(o);
  ASSERT_TRUE(bf16.status.ok()) << bf16.status;
  std::cout << "step-1 loss fp32 " << fp32.steps[0].loss << ", bf16 autocast " << bf16.steps[0].loss << "\n";
  EXPECT_NEAR(bf16.steps[0].loss, fp32.steps[0].loss, 0.02 * fp32.steps[0].loss);
  EXPECT_NE(bf16.steps[0].loss, fp32.steps[0].loss) << "autocast should change the arithmetic";
  EXPECT_LT(bf16.steps.back().loss, bf16.steps.front().loss);
}

TEST_F(TrainOptionsTest, BadRecordsAreSkippedWithAWarning) {
  auto records = ::internvl::testing::DefaultTinyRecords();
  const std::string meta = ::internvl::testing::WriteTinyDataset(
      dir_ + "/bad", records,
      {"{not json", R"({"id": 9, "image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nQ"},)"
                    R"( {"from": "gpt", "value": "A"}]})"});
  TrainOptions o = Options("bad_out");
  o.meta = meta;
  o.max_steps = 2;
  o.batch_size = 4;  // every record, the bad ones included, is asked for
  TrainRun run = Train(o);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ASSERT_EQ(run.warnings.size(), 2u);
  EXPECT_NE(run.warnings[0].message.find("tiny_cards:3"), std::string::npos) << run.warnings[0].message;
  EXPECT_NE(run.warnings[1].message.find("missing.png"), std::string::npos) << run.warnings[1].message;
  EXPECT_EQ(run.steps.back().skipped_records, 2);
}

TEST_F(TrainOptionsTest, CancelStopsWithoutAFinalModel) {
  std::atomic<bool> cancel{false};
  TrainOptions o = Options("cancelled");
  o.max_steps = 50;
  TrainRun r;
  r.status = RunTraining(
      o,
      [&](const TrainEvent& e) {
        if (e.kind == TrainEvent::Kind::kStep && e.step == 2) cancel = true;
      },
      &cancel);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kCancelled) << r.status;
  EXPECT_FALSE(fs::exists(o.output_dir + "/model.safetensors"));
}

TEST_F(TrainOptionsTest, InputsAreCheckedWithoutTraining) {
  EXPECT_TRUE(ValidateTrainInputs(Options("ok")).ok()) << ValidateTrainInputs(Options("ok"));
  TrainOptions o = Options("x");
  o.meta = dir_ + "/no-such-meta.json";
  EXPECT_FALSE(ValidateTrainInputs(o).ok());
  o = Options("x");
  o.model = dir_;  // a folder without config.json
  EXPECT_EQ(ValidateTrainInputs(o).code(), absl::StatusCode::kInvalidArgument) << ValidateTrainInputs(o);
  o = Options("x");
  o.model = "not a model";
  EXPECT_EQ(ValidateTrainInputs(o).code(), absl::StatusCode::kInvalidArgument) << ValidateTrainInputs(o);
  o = Options("x");
  o.model = "OpenGVLab/InternVL2-1B";  // not cached: downloaded when training starts
  EXPECT_TRUE(ValidateTrainInputs(o).ok()) << ValidateTrainInputs(o);
  o = Options("x");
  o.conv_style = "vicuna";
  EXPECT_EQ(ValidateTrainInputs(o).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainOptionsValidation, BadOptionsAreInvalidArgument) {
  TrainOptions o;
  o.model = "m";
  o.meta = "meta.json";
  o.output_dir = "out";
  EXPECT_TRUE(ValidateTrainOptions(o).ok());
  auto code = [&](auto mutate) {
    TrainOptions x = o;
    mutate(x);
    return ValidateTrainOptions(x).code();
  };
  EXPECT_EQ(code([](TrainOptions& x) { x.batch_size = 0; }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](TrainOptions& x) { x.loss_reduction = "mean"; }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](TrainOptions& x) { x.conv_style = "vicuna"; }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](TrainOptions& x) { x.warmup_ratio = 2; }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](TrainOptions& x) { x.rank = 2; }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](TrainOptions& x) { x.dtype = "fp16"; }), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](TrainOptions& x) { x.freeze_llm = x.freeze_mlp = true; }), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateTrainOptions([&] {
                TrainOptions x = o;
                x.freeze_llm = x.freeze_mlp = true;
                x.lora_rank = 8;
                return x;
              }())
                  .ok());
}

}  // namespace
}  // namespace internvl::train
