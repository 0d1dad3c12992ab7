// `internvl train` as a user runs it (the real binary):
//  - a tiny model fine-tuned on a tiny generated dataset (images with fixed
//    answers) drives the loss down, and `internvl chat --model <output>` then
//    answers with the trained replies;
//  - two Gloo processes with batch b end with the same parameters as one
//    process with batch 2b;
//  - --resume from checkpoint-N continues exactly (same final parameters as
//    an uninterrupted run).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "core/testing/fixtures.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/train_test_data.h"

namespace internvl {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

using Result = ::internvl::testing::ShellResult;
Result Shell(const std::string& command) { return ::internvl::testing::RunShell(command); }

std::string Cli() { return std::getenv("INTERNVL_CLI_BIN"); }

// Max |a - b| over every tensor of two model.safetensors files (same names).
double MaxParamDiff(const std::string& a_dir, const std::string& b_dir) {
  auto a = SafetensorsFile::Open(a_dir + "/model.safetensors");
  auto b = SafetensorsFile::Open(b_dir + "/model.safetensors");
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok()) return 1e9;
  EXPECT_EQ((*a)->Names(), (*b)->Names());
  double worst = 0;
  for (const std::string& name : (*a)->Names()) {
    const TensorView* bv = (*b)->Find(name);
    if (bv == nullptr) continue;
    auto x = ToFloatVector(*(*a)->Find(name));
    auto y = ToFloatVector(*bv);
    EXPECT_EQ(x->size(), y->size()) << name;
    for (size_t i = 0; i < std::min(x->size(), y->size()); ++i)
      worst = std::max(worst, std::fabs(double((*x)[i]) - double((*y)[i])));
  }
  return worst;
}

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("INTERNVL_CLI_BIN") == nullptr) GTEST_SKIP() << "INTERNVL_CLI_BIN not set (run under ctest)";
  }
};

TEST_F(TrainCli, FineTunedTinyModelAnswersWithTheTrainedReplies) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = testing::TempDir() + "/finetune";
  const auto records = testing::DefaultTinyRecords();
  const std::string meta = testing::WriteTinyDataset(dir, records);
  const std::string out = dir + "/out";
  Result r = Shell(absl::StrCat(Cli(), " train --model ", fixtures, "/tiny-qwen2 --meta ", meta, " --output ",
                                out, " --max-steps 40 --lr 2e-3 --warmup-ratio 0.05 --batch-size 2",
                                " --max-dynamic-patch 1 --weight-decay 0 --threads 2"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto state_text = ReadFile(out + "/trainer_state.json");
  ASSERT_TRUE(state_text.ok()) << state_text.status();
  const json history = json::parse(*state_text)["log_history"];
  ASSERT_EQ(history.size(), 40u);
  const double first = history[0]["loss"], last = history[39]["loss"];
  std::cout << "loss: step 1 " << first << ", step 40 " << last << "\n";
  EXPECT_LT(last, 0.1 * first);

  for (const auto& rec : records) {
    Result chat = Shell(absl::StrCat(Cli(), " chat --model ", out, " --image ", dir, "/data/", rec.image,
                                     " --max-num 1 --dtype fp32 --max-new-tokens 16 --json --text '", rec.question,
                                     "'"));
    ASSERT_EQ(chat.exit_code, 0) << chat.err;
    // --json prints the JSON object as the last line.
    std::string text = chat.out;
    while (!text.empty() && text.back() == '\n') text.pop_back();
    const std::string last_line = text.substr(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
    const json answer = json::parse(last_line, nullptr, false);
    ASSERT_TRUE(answer.is_object()) << chat.out;
    EXPECT_EQ(answer["response"], rec.answer) << "question: " << rec.question;
  }
}

// Trains `steps` steps of the fixture dataset on tiny-qwen2 into `out`.
Result TrainFixture(const std::string& fixtures, const std::string& out, const std::string& extra) {
  return Shell(absl::StrCat(Cli(), " train --model ", fixtures, "/tiny-qwen2 --meta ", fixtures,
                            "/training/dataset/meta_common.json --output ", out,
                            " --lr 1e-3 --warmup-ratio 0 --max-dynamic-patch 2 --threads 1 ", extra));
}

TEST_F(TrainCli, TwoGlooProcessesEqualOneProcessWithTheDoubleBatch) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = testing::TempDir() + "/ddp";
  Result one = TrainFixture(fixtures, dir + "/one", "--max-steps 3 --batch-size 2 --nproc 1");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  Result two = TrainFixture(fixtures, dir + "/two", "--max-steps 3 --batch-size 1 --nproc 2");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  const double diff = MaxParamDiff(dir + "/one", dir + "/two");
  std::cout << "max |one process, batch 2 - two processes, batch 1| = " << diff << "\n";
  // fp32 summation order alone moves these weights by up to 1.6e-5 (the
  // same one-process run at --threads 1 and 2, measured; 1e-5 passed before
  // only while OpenBLAS ran 2 threads whatever --threads said). The bound sits
  // above that noise and far below one Adam step (lr 1e-3): processes that
  // stepped on their own half batch, without the all-reduce, would differ by
  // about a step.
  EXPECT_LT(diff, 5e-5);
  // And it is not trivially equal: training moved the weights.
  EXPECT_GT(MaxParamDiff(dir + "/one", fixtures + "/tiny-qwen2"), 1e-4);
}

TEST_F(TrainCli, ResumeContinuesExactly) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = testing::TempDir() + "/resume";
  Result full = TrainFixture(fixtures, dir + "/full", "--max-steps 4 --batch-size 1 --save-steps 2");
  ASSERT_EQ(full.exit_code, 0) << full.err;
  ASSERT_TRUE(fs::exists(dir + "/full/checkpoint-2/optimizer.safetensors"));
  // A second run that starts from the first one's checkpoint-2.
  fs::create_directories(dir + "/resumed");
  fs::copy(dir + "/full/checkpoint-2", dir + "/resumed/checkpoint-2", fs::copy_options::recursive);
  Result resumed = TrainFixture(fixtures, dir + "/resumed", "--max-steps 4 --batch-size 1 --save-steps 2 --resume auto");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const double diff = MaxParamDiff(dir + "/full", dir + "/resumed");
  std::cout << "max |uninterrupted - resumed at step 2| = " << diff << "\n";
  EXPECT_LT(diff, 1e-6);
  // A different global batch cannot resume (the sample order would change).
  Result bad = TrainFixture(fixtures, dir + "/resumed", "--max-steps 4 --batch-size 2 --resume auto");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("global batch"), std::string::npos) << bad.err;
}

// SIGKILL at arbitrary moments while checkpoints are being written: every
// checkpoint-N left behind is complete and loadable (written under a
// temporary name, fsynced, renamed), and --resume auto finishes the run to
// the same weights as an uninterrupted one.
TEST_F(TrainCli, KilledAnywhereLeavesOnlyCompleteCheckpointsAndResumes) {
  INTERNVL_REQUIRE_FIXTURES(fixtures);
  const std::string dir = testing::TempDir() + "/kill";
  const std::string args = "--max-steps 6 --batch-size 1 --save-steps 1";
  Result full = TrainFixture(fixtures, dir + "/full", args);
  ASSERT_EQ(full.exit_code, 0) << full.err;
  const std::string out = dir + "/killed";
  int kills = 0;
  for (const char* after : {"1.5", "2.5", "3.2", "4.1"}) {
    Shell(absl::StrCat("timeout -s KILL ", after, " ", Cli(), " train --model ", fixtures, "/tiny-qwen2 --meta ",
                       fixtures, "/training/dataset/meta_common.json --output ", out,
                       " --lr 1e-3 --warmup-ratio 0 --max-dynamic-patch 2 --threads 1 --resume auto ", args));
    ++kills;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(out, ec)) {
      const std::string name = e.path().filename().string();
      if (!e.is_directory() || name.rfind("checkpoint-", 0) != 0 || name.find('.') != std::string::npos) continue;
      SCOPED_TRACE(absl::StrCat("after a kill at ", after, " s: ", name));
      EXPECT_TRUE(SafetensorsFile::Open(e.path().string() + "/model.safetensors").ok());
      EXPECT_TRUE(SafetensorsFile::Open(e.path().string() + "/optimizer.safetensors").ok());
      auto state = ReadFile(e.path().string() + "/trainer_state.json");
      ASSERT_TRUE(state.ok()) << state.status();
      EXPECT_FALSE(nlohmann::json::parse(*state, nullptr, false).is_discarded());
    }
  }
  Result resumed = TrainFixture(fixtures, out, args + " --resume auto");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const double diff = MaxParamDiff(dir + "/full", out);
  std::cout << kills << " kills survived; max |uninterrupted - killed and resumed| = " << diff << "\n";
  EXPECT_LT(diff, 1e-6);
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << e.path();
}

}  // namespace
}  // namespace internvl
