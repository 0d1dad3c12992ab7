// Fine-tuning parity against the official training code
// (../shared/fixtures/training, see its README): four optimizer steps of the
// tiny models on the fixture dataset, for Hermes-2 (Qwen2), internlm2-chat
// (InternLM2) and internvl2_5 (Qwen2) — per-step loss, pre-clip gradient norm
// and learning rate, the HF weight-decay grouping, and the parameters after
// every step (checkpoint-1..3 and the final model).
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "core/files.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "core/testing/test_device.h"
#include "core/train/trainer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace internvl::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Case {
  std::string config;  // fixture folder under training/
  std::string model;   // tiny model folder under fixtures/
  std::string meta;    // under training/dataset/
  std::string conv_style;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.config; }

std::vector<float> Floats(const SafetensorsFile& f, const std::string& name) {
  const TensorView* v = f.Find(name);
  EXPECT_NE(v, nullptr) << name << " missing in " << f.path();
  if (v == nullptr) return {};
  auto out = ToFloatVector(*v);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : std::vector<float>{};
}

// Rows `rows` of a [N, H] tensor.
std::vector<float> Rows(const SafetensorsFile& f, const std::string& name, const std::vector<int>& rows) {
  const TensorView* v = f.Find(name);
  EXPECT_NE(v, nullptr) << name;
  if (v == nullptr) return {};
  std::vector<float> all = Floats(f, name);
  const int64_t h = v->shape[1];
  std::vector<float> out;
  for (int r : rows) out.insert(out.end(), all.begin() + r * h, all.begin() + (r + 1) * h);
  return out;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
  return d;
}

// The reference's l2norms are torch's fp32 vector_norm: computed the same
// way here, so that both sides round alike (a double sum differs from them
// by up to ~1e-5 relative on the 193k-element embedding).
double Fp32Norm(std::vector<float> a) {
  return at::linalg_vector_norm(at::from_blob(a.data(), {static_cast<int64_t>(a.size())}, at::kFloat), 2)
      .item<double>();
}

class TrainParity : public ::testing::TestWithParam<Case> {};

TEST_P(TrainParity, FourStepsMatchTheOfficialTrainer) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const Case c = GetParam();
  const std::string dir = fixtures + "/training/" + c.config;
  auto train_text = ReadFile(dir + "/train.json");
  ASSERT_TRUE(train_text.ok()) << train_text.status();
  const json ref = json::parse(*train_text);
  auto ref_tensors = SafetensorsFile::Open(dir + "/train.safetensors");
  ASSERT_TRUE(ref_tensors.ok()) << ref_tensors.status();
  const json& hp = ref["hyperparameters"];

  TrainOptions o;
  o.model = fixtures + "/" + c.model;
  o.meta = fixtures + "/training/dataset/" + c.meta;
  o.output_dir = ::internvl::testing::TempDir() + "/" + c.config;
  o.device = ::internvl::testing::TestDevice();
  o.conv_style = c.conv_style;
  o.lr = hp["lr"];
  o.warmup_ratio = hp["warmup_ratio"];
  o.max_steps = hp["max_steps"];
  o.batch_size = hp["batch_size"];
  o.weight_decay = hp["weight_decay"];
  o.max_grad_norm = hp["max_grad_norm"];
  o.seed = hp["seed"];
  o.max_dynamic_patch = hp["max_dynamic_patch"];
  o.max_seq_length = hp["max_seq_length"];
  o.save_steps = 1;
  o.threads = 2;

  std::vector<TrainEvent> steps;
  std::vector<std::string> warnings;
  absl::Status st = RunTraining(o, [&](const TrainEvent& e) {
    if (e.kind == TrainEvent::Kind::kStep) steps.push_back(e);
    if (e.kind == TrainEvent::Kind::kWarning) warnings.push_back(e.message);
  });
  ASSERT_TRUE(st.ok()) << st;
  for (const auto& w : warnings) std::cout << "  warning: " << w << "\n";

  // Per step: loss before the update, grad norm before clipping, lr used.
  const json& ref_steps = ref["steps"];
  ASSERT_EQ(steps.size(), ref_steps.size());
  for (size_t k = 0; k < steps.size(); ++k) {
    const double loss = ref_steps[k]["loss"], norm = ref_steps[k]["grad_norm_preclip"], lr = ref_steps[k]["lr_used"];
    std::cout << "  step " << k + 1 << ": loss " << steps[k].loss << " (ref " << loss << "), grad_norm "
              << steps[k].grad_norm << " (ref " << norm << "), lr " << steps[k].lr << "\n";
    EXPECT_NEAR(steps[k].loss, loss, 1e-4 * std::fabs(loss)) << "step " << k + 1;
    EXPECT_NEAR(steps[k].grad_norm, norm, 1e-4 * std::fabs(norm)) << "step " << k + 1;
    EXPECT_NEAR(steps[k].lr, lr, 1e-12) << "step " << k + 1;
  }

  // The HF Trainer grouping and the trainable set.
  auto state_text = ReadFile(o.output_dir + "/trainer_state.json");
  ASSERT_TRUE(state_text.ok()) << state_text.status();
  const json state = json::parse(*state_text);
  EXPECT_EQ(state["trainable_parameters"], ref["trainable_parameters"]);
  EXPECT_EQ(state["weight_decay_parameters"], ref["weight_decay_parameters"]);
  EXPECT_EQ(state["no_weight_decay_parameters"], ref["no_weight_decay_parameters"]);

  // Parameters after each step.
  const std::vector<int> rows = ref["selected_row_ids"].get<std::vector<int>>();
  std::vector<std::string> order = ref["l2norms_tensor_order"].get<std::vector<std::string>>();
  for (size_t k = 1; k <= steps.size(); ++k) {
    const std::string model_dir = k == steps.size() ? o.output_dir : o.output_dir + "/checkpoint-" + std::to_string(k);
    auto ours = SafetensorsFile::Open(model_dir + "/model.safetensors");
    ASSERT_TRUE(ours.ok()) << ours.status();
    const std::string pre = "step" + std::to_string(k) + "/";
    double worst = 0;
    std::string worst_name;
    for (const std::string& key : (*ref_tensors)->Names()) {
      if (key.rfind(pre, 0) != 0) continue;
      std::string name = key.substr(pre.size());
      if (name.find('/') != std::string::npos || name == "l2norms" || name == "loss" || name == "grad_norm" ||
          name.rfind("batch_", 0) == 0 || name == "per_token_loss")
        continue;
      std::vector<float> expected = Floats(**ref_tensors, key), actual;
      const std::string suffix = "[rows]";
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
        actual = Rows(**ours, name.substr(0, name.size() - suffix.size()), rows);
      } else {
        actual = Floats(**ours, name);
      }
      const double d = MaxAbsDiff(actual, expected);
      if (d > worst) worst = d, worst_name = name;
      EXPECT_LT(d, 1e-6) << name << " after step " << k;
    }
    std::vector<float> ref_norms = Floats(**ref_tensors, pre + "l2norms");
    ASSERT_EQ(ref_norms.size(), order.size());
    double worst_norm = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      const double ours_norm = Fp32Norm(Floats(**ours, order[i]));
      const double rel = std::fabs(ours_norm - ref_norms[i]) / std::max(1e-12, double(ref_norms[i]));
      worst_norm = std::max(worst_norm, rel);
      EXPECT_LT(rel, 1e-6) << order[i] << " l2 norm after step " << k;
    }
    std::cout << "  after step " << k << ": max abs param diff " << worst << " (" << worst_name
              << "), max rel l2-norm diff " << worst_norm << "\n";
  }
}

// loss_reduction "square" (InternVL2.5: each sample's tokens weigh
// 1/sqrt(n_sample)) on the reference's own per-token losses of step 1.
TEST(TrainLossReduction, SquareWeighsEachSampleByInverseSqrtOfItsTokens) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = fixtures + "/training/qwen2_Hermes-2";
  auto ref = SafetensorsFile::Open(dir + "/train.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status();
  const TensorView* labels_view = (*ref)->Find("step1/batch_labels");
  ASSERT_NE(labels_view, nullptr);
  const int64_t B = labels_view->shape[0], L = labels_view->shape[1];
  std::vector<int64_t> labels(B * L);  // copied: safetensors data need not be 8-byte aligned
  std::memcpy(labels.data(), labels_view->data, labels.size() * sizeof(int64_t));
  std::vector<float> ce = Floats(**ref, "step1/per_token_loss");  // [B, L-1]
  double num = 0, den = 0;
  for (int64_t b = 0; b < B; ++b) {
    double sum = 0;
    int64_t n = 0;
    for (int64_t i = 0; i + 1 < L; ++i) {
      if (labels[b * L + i + 1] == -100) continue;
      sum += ce[b * (L - 1) + i];
      ++n;
    }
    if (n == 0) continue;
    num += sum / std::sqrt(double(n));
    den += double(n) / std::sqrt(double(n));
  }
  const double expected = num / den;

  TrainOptions o;
  o.model = fixtures + "/tiny-qwen2";
  o.meta = fixtures + "/training/dataset/meta_common.json";
  o.output_dir = ::internvl::testing::TempDir() + "/square";
  o.device = ::internvl::testing::TestDevice();
  o.conv_style = "Hermes-2";
  o.max_steps = 1;
  o.batch_size = 2;
  o.max_dynamic_patch = 4;
  o.loss_reduction = "square";
  o.threads = 2;
  double loss = -1;
  absl::Status st = RunTraining(o, [&](const TrainEvent& e) {
    if (e.kind == TrainEvent::Kind::kStep) loss = e.loss;
  });
  ASSERT_TRUE(st.ok()) << st;
  std::cout << "square loss " << loss << ", from the reference per-token losses " << expected << "\n";
  EXPECT_NEAR(loss, expected, 1e-4 * expected);
  // It differs from the token mean, so the weighting is really applied.
  EXPECT_GT(std::fabs(loss - 12.814384), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, TrainParity,
    ::testing::Values(Case{"qwen2_Hermes-2", "tiny-qwen2", "meta_common.json", "Hermes-2"},
                      Case{"internlm2_internlm2-chat", "tiny-internlm2", "meta_common.json", "internlm2-chat"},
                      Case{"qwen2_internvl2_5", "tiny-qwen2", "meta_internvl2_5.json", "internvl2_5"}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string n = info.param.config;
      for (char& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

}  // namespace
}  // namespace internvl::train
