// The trainer service as deployed: the real internvl-trainer binary on a
// loopback port, running real `internvl train` subprocesses on the tiny
// fixture model and a small generated dataset (PNG images written with
// OpenCV, meta JSON + jsonl in the official format):
//  - a submitted job streams its events (queued, running, started, every
//    step, a checkpoint, finished, succeeded), replays them on a second
//    WatchJob, and its output serves on the real internvl-llm-decoder, which
//    answers the trained reply with the same ids as `internvl chat`;
//  - a long data-parallel job (nproc 2) is cancelled: its whole process
//    group stops; a full queue is RESOURCE_EXHAUSTED, a busy output_dir
//    ALREADY_EXISTS, a queued job cancels at once;
//  - a restarted service lists the finished job (events replayed) and marks
//    the jobs that were running or queued INTERRUPTED, both after a crash
//    (SIGKILL) and after a graceful SIGTERM (which ends live watchers);
//  - path escapes (absolute, `..`, symlinks) and bad options are
//    INVALID_ARGUMENT, unknown ids NOT_FOUND.
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/chat/prompt_builder.h"
#include "core/testing/fixtures.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "internvl/v1/llm_decoder.grpc.pb.h"
#include "internvl/v1/trainer.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "services/common/testing/harness.h"

namespace internvl::services {
namespace {

namespace fs = std::filesystem;
namespace st = ::internvl::services::testing;
using ::testing::HasSubstr;
using json = nlohmann::json;

const absl::Duration kStartTimeout = absl::Seconds(60);
const absl::Duration kJobTimeout = absl::Seconds(400);

// The trained dataset: two images and one text-only record, fixed answers.
constexpr char kSecretQuestion[] = "What is the secret word?";
constexpr char kSecretAnswer[] = "Pineapple.";

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(30)) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return c;
}

// Writes the images, the jsonl and the meta JSON under `data`.
void WriteDataset(const std::string& data) {
  fs::create_directories(data + "/cards");
  cv::Mat red(300, 400, CV_8UC3, cv::Scalar(20, 30, 220));
  cv::rectangle(red, {100, 80}, {300, 220}, cv::Scalar(250, 250, 250), -1);
  cv::Mat blue(400, 300, CV_8UC3, cv::Scalar(200, 60, 10));
  cv::circle(blue, {150, 200}, 90, cv::Scalar(0, 240, 240), -1);
  ASSERT_TRUE(cv::imwrite(data + "/cards/red.png", red));
  ASSERT_TRUE(cv::imwrite(data + "/cards/blue.png", blue));
  std::ofstream jsonl(data + "/cards/train.jsonl");
  auto turn = [](const char* from, const std::string& value) { return json{{"from", from}, {"value", value}}; };
  jsonl << json{{"id", 0},
                {"image", "red.png"},
                {"conversations", {turn("human", "<image>\nWhat is on the red card?"), turn("gpt", "A white box.")}}}
               .dump()
        << "\n";
  jsonl << json{{"id", 1},
                {"image", "blue.png"},
                {"conversations", {turn("human", "<image>\nDescribe the blue picture."), turn("gpt", "A yellow sun.")}}}
               .dump()
        << "\n";
  jsonl << json{{"id", 2}, {"conversations", {turn("human", kSecretQuestion), turn("gpt", kSecretAnswer)}}}.dump()
        << "\n";
  std::ofstream(data + "/meta.json") << json{
      {"cards",
       {{"root", "cards"},
        {"annotation", "cards/train.jsonl"},
        {"data_augment", false},
        {"repeat_time", 1},
        {"length", 3}}}}.dump();
}

// One internvl-trainer process over a folder with state/, out/, models/
// (a copy of the tiny model: a symlink out of the root would be refused) and
// data/.
struct Trainer {
  std::string dir;
  std::unique_ptr<st::Subprocess> process;
  int port = 0;
  int metrics_port = 0;
  std::unique_ptr<v1::Trainer::Stub> stub;
  std::string target() const { return absl::StrCat("127.0.0.1:", port); }
  std::string state() const { return dir + "/state"; }
  std::string out() const { return dir + "/out"; }
};

// Creates the folders (once) and starts the service on them.
std::unique_ptr<Trainer> StartTrainer(const std::string& dir, const std::string& fixtures,
                                      const std::vector<std::string>& extra = {}) {
  auto t = std::make_unique<Trainer>();
  t->dir = dir;
  if (!fs::exists(dir + "/models/tiny-qwen2")) {
    fs::create_directories(dir + "/models");
    fs::create_directories(dir + "/state");
    fs::create_directories(dir + "/out");
    fs::copy(fixtures + "/tiny-qwen2", dir + "/models/tiny-qwen2", fs::copy_options::recursive);
    WriteDataset(dir + "/data");
  }
  t->port = st::PickFreePort().value();
  t->metrics_port = st::PickFreePort().value();
  std::vector<std::string> args = {"--listen",
                                   t->target(),
                                   "--metrics-port",
                                   absl::StrCat(t->metrics_port),
                                   "--state-dir",
                                   t->state(),
                                   "--output-root",
                                   t->out(),
                                   "--model-root",
                                   dir + "/models",
                                   "--data-root",
                                   dir + "/data",
                                   "--train-binary",
                                   INTERNVL_CLI_BIN,
                                   "--max-nproc",
                                   "2",
                                   "--cancel-grace-seconds",
                                   "20",
                                   "--grace-seconds",
                                   "5"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto p = st::Subprocess::Spawn(INTERNVL_TRAINER_BIN, args, dir + "/trainer.log");
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return nullptr;
  t->process = std::move(*p);
  const absl::Status ready = st::WaitForServing(t->target(), "internvl.v1.Trainer", t->process.get(), kStartTimeout);
  EXPECT_TRUE(ready.ok()) << ready << "\n" << t->process->ReadLog();
  if (!ready.ok()) return nullptr;
  t->stub = v1::Trainer::NewStub(grpc::CreateChannel(t->target(), grpc::InsecureChannelCredentials()));
  return t;
}

// A job on the tiny model and the generated data, one tile per image.
v1::JobSpec TinySpec(const std::string& output_dir, int64_t max_steps) {
  v1::JobSpec spec;
  spec.set_name(output_dir);
  spec.set_model("tiny-qwen2");
  spec.set_meta("meta.json");
  spec.set_output_dir(output_dir);
  spec.set_max_steps(max_steps);
  spec.set_lr(2e-3);
  spec.set_warmup_ratio(0.05);
  spec.set_weight_decay(0);
  spec.set_batch_size(3);
  spec.set_max_dynamic_patch(1);
  spec.set_threads(2);
  return spec;
}

absl::StatusOr<std::string> Submit(Trainer* t, const v1::JobSpec& spec) {
  v1::JobId id;
  const grpc::Status s = t->stub->SubmitJob(Context().get(), spec, &id);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return id.job_id();
}

v1::Job Get(Trainer* t, const std::string& id) {
  v1::JobId request;
  request.set_job_id(id);
  v1::Job job;
  const grpc::Status s = t->stub->GetJob(Context().get(), request, &job);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return job;
}

v1::Job Cancel(Trainer* t, const std::string& id) {
  v1::JobId request;
  request.set_job_id(id);
  v1::Job job;
  const grpc::Status s = t->stub->CancelJob(Context().get(), request, &job);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return job;
}

// Reads WatchJob until the stream ends; `on_event` (optional) sees each
// event as it arrives. Returns the events; *status gets the call's status.
std::vector<v1::JobEvent> Watch(Trainer* t, const std::string& id, int64_t from, grpc::Status* status,
                                const std::function<void(const v1::JobEvent&)>& on_event = nullptr) {
  v1::WatchJobRequest request;
  request.set_job_id(id);
  request.set_from_sequence(from);
  auto context = Context(kJobTimeout);
  auto reader = t->stub->WatchJob(context.get(), request);
  std::vector<v1::JobEvent> events;
  v1::JobEvent e;
  while (reader->Read(&e)) {
    events.push_back(e);
    if (on_event) on_event(e);
  }
  *status = reader->Finish();
  return events;
}

// Waits (polling GetJob) until `pred` holds for the job.
v1::Job WaitFor(Trainer* t, const std::string& id, const std::function<bool(const v1::Job&)>& pred,
                absl::Duration timeout = kJobTimeout) {
  const absl::Time until = absl::Now() + timeout;
  v1::Job job = Get(t, id);
  while (!pred(job) && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(100));
    job = Get(t, id);
  }
  return job;
}

// Processes whose command line contains `needle` (e.g. a job's output path).
std::vector<int> ProcessesWith(const std::string& needle) {
  std::vector<int> out;
  DIR* d = ::opendir("/proc");
  while (dirent* e = ::readdir(d)) {
    const int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::string cmd = ReadText(absl::StrCat("/proc/", pid, "/cmdline"));
    for (char& c : cmd)
      if (c == '\0') c = ' ';
    if (absl::StrContains(cmd, needle)) out.push_back(pid);
  }
  ::closedir(d);
  return out;
}

bool Ended(const v1::Job& job) { return job.state() != v1::JOB_STATE_QUEUED && job.state() != v1::JOB_STATE_RUNNING; }

class TrainerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    INTERNVL_REQUIRE_FIXTURES(fixtures);
    fixtures_ = fixtures;
  }
  std::string fixtures_;
};

TEST_F(TrainerServiceTest, JobStreamsItsEventsAndItsModelServesOnTheDecoder) {
  const std::string dir = ::internvl::testing::TempDir() + "/e2e";
  auto trainer = StartTrainer(dir, fixtures_);
  ASSERT_NE(trainer, nullptr);
  constexpr int kSteps = 24;
  v1::JobSpec spec = TinySpec("runs/first", kSteps);
  spec.set_save_steps(kSteps / 2);
  auto id = Submit(trainer.get(), spec);
  ASSERT_TRUE(id.ok()) << id.status();

  grpc::Status status;
  const std::vector<v1::JobEvent> events = Watch(trainer.get(), *id, 0, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_GE(events.size(), 5u);
  const std::string log = ReadText(absl::StrCat(trainer->state(), "/", *id, "/train.log"));
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i));
    EXPECT_EQ(events[i].job_id(), *id);
  }
  EXPECT_EQ(events[0].kind(), v1::JOB_EVENT_STATE);
  EXPECT_EQ(events[0].state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(events[1].kind(), v1::JOB_EVENT_STATE);
  EXPECT_EQ(events[1].state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(events[2].kind(), v1::JOB_EVENT_STARTED);
  EXPECT_EQ(events[2].total_steps(), kSteps);
  std::vector<v1::JobEvent> steps, checkpoints;
  for (const auto& e : events) {
    if (e.kind() == v1::JOB_EVENT_STEP) steps.push_back(e);
    if (e.kind() == v1::JOB_EVENT_CHECKPOINT) checkpoints.push_back(e);
  }
  ASSERT_EQ(steps.size(), size_t{kSteps}) << log;
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(steps[i].step(), static_cast<int64_t>(i + 1));
    EXPECT_EQ(steps[i].total_steps(), kSteps);
    EXPECT_TRUE(std::isfinite(steps[i].loss()));
    EXPECT_GT(steps[i].grad_norm(), 0);
    EXPECT_GT(steps[i].samples_per_second(), 0);
    EXPECT_EQ(steps[i].state(), v1::JOB_STATE_RUNNING);
  }
  EXPECT_GT(steps[10].lr(), 0);
  std::cout << "loss: step 1 " << steps.front().loss() << ", step " << kSteps << " " << steps.back().loss() << "\n";
  EXPECT_LT(steps.back().loss(), 0.2 * steps.front().loss()) << "training did not drive the loss down";
  const std::string output = trainer->out() + "/runs/first";
  ASSERT_EQ(checkpoints.size(), 1u);
  EXPECT_EQ(checkpoints[0].step(), kSteps / 2);
  const std::string checkpoint = absl::StrCat(output, "/checkpoint-", kSteps / 2);
  EXPECT_EQ(checkpoints[0].checkpoint_path(), checkpoint);
  const v1::JobEvent& finished = events[events.size() - 2];
  EXPECT_EQ(finished.kind(), v1::JOB_EVENT_FINISHED);
  EXPECT_EQ(finished.checkpoint_path(), output);
  EXPECT_EQ(events.back().kind(), v1::JOB_EVENT_STATE);
  EXPECT_EQ(events.back().state(), v1::JOB_STATE_SUCCEEDED) << events.back().message();

  const v1::Job job = Get(trainer.get(), *id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.output_path(), output);
  EXPECT_THAT(job.checkpoints(), ::testing::ElementsAre(checkpoint, output));
  EXPECT_EQ(job.last_step().step(), kSteps);
  EXPECT_EQ(job.spec().output_dir(), "runs/first");
  EXPECT_GE(job.ended_time(), job.started_time());
  EXPECT_GE(job.started_time(), job.created_time());
  EXPECT_TRUE(fs::exists(output + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(checkpoint + "/config.json"));

  // A second watcher gets the same log; from_sequence skips ahead.
  grpc::Status again_status;
  const auto again = Watch(trainer.get(), *id, 0, &again_status);
  ASSERT_TRUE(again_status.ok());
  ASSERT_EQ(again.size(), events.size());
  for (size_t i = 0; i < again.size(); ++i) EXPECT_EQ(again[i].SerializeAsString(), events[i].SerializeAsString());
  const auto tail = Watch(trainer.get(), *id, static_cast<int64_t>(events.size()) - 1, &again_status);
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0].state(), v1::JOB_STATE_SUCCEEDED);

  // Metrics: jobs by state.
  auto metrics = st::HttpGet(trainer->metrics_port, "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(st::MetricValue(*metrics, "internvl_trainer_jobs{state=\"succeeded\"}").value_or(-1), 1);
  EXPECT_EQ(st::MetricValue(*metrics, "internvl_trainer_jobs{state=\"running\"}").value_or(-1), 0);
  EXPECT_GE(st::MetricValue(*metrics, "internvl_trainer_steps_total").value_or(-1), kSteps);

  // The output serves on the real LLM decoder service and answers the
  // trained reply, with the same ids as the in-process `internvl chat`.
  const int decoder_port = st::PickFreePort().value();
  const std::string decoder_target = absl::StrCat("127.0.0.1:", decoder_port);
  auto decoder = st::Subprocess::Spawn(INTERNVL_LLM_DECODER_BIN,
                                       {"--model", output, "--dtype", "fp32", "--threads", "2", "--listen",
                                        decoder_target, "--metrics-port", absl::StrCat(st::PickFreePort().value())},
                                       dir + "/decoder.log");
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  const absl::Status ready =
      st::WaitForServing(decoder_target, "internvl.v1.LlmDecoder", decoder->get(), kStartTimeout);
  ASSERT_TRUE(ready.ok()) << ready << "\n" << (*decoder)->ReadLog();
  auto prompt = PromptBuilder::Load(output);
  ASSERT_TRUE(prompt.ok()) << prompt.status();
  ChatRequest request;
  request.question = kSecretQuestion;
  auto ids = (*prompt)->PromptIds(request, {});
  ASSERT_TRUE(ids.ok()) << ids.status();
  auto stub = v1::LlmDecoder::NewStub(grpc::CreateChannel(decoder_target, grpc::InsecureChannelCredentials()));
  auto context = Context(absl::Seconds(120));
  auto stream = stub->Generate(context.get());
  v1::GenerateRequest start;
  for (int t : *ids) start.mutable_start()->add_prompt_token_ids(t);
  start.mutable_start()->mutable_settings()->set_max_new_tokens(16);
  start.mutable_start()->mutable_settings()->set_do_sample(false);
  ASSERT_TRUE(stream->Write(start));
  stream->WritesDone();
  v1::GenerateResponse response;
  std::vector<int> generated;
  std::optional<int> stop_id;
  while (stream->Read(&response)) {
    if (!response.has_final()) continue;
    generated.assign(response.final().token_ids().begin(), response.final().token_ids().end());
    if (response.final().has_stop_token_id()) stop_id = response.final().stop_token_id();
  }
  const grpc::Status generate_status = stream->Finish();
  ASSERT_TRUE(generate_status.ok()) << generate_status.error_message();
  const std::string answer = (*prompt)->Response(generated);
  EXPECT_EQ(answer, kSecretAnswer);

  const std::string chat_out = dir + "/chat.json";
  const std::string chat = absl::StrCat(INTERNVL_CLI_BIN, " chat --model ", output,
                                        " --dtype fp32 --threads 2 --max-new-tokens 16 --json --text '",
                                        kSecretQuestion, "' > ", chat_out, " 2>/dev/null");
  ASSERT_EQ(std::system(chat.c_str()), 0);
  // The JSON summary is the last line (after the streamed answer).
  std::string chat_text = ReadText(chat_out);
  while (!chat_text.empty() && chat_text.back() == '\n') chat_text.pop_back();
  const json reference = json::parse(chat_text.substr(chat_text.rfind('\n') + 1), nullptr, false);
  ASSERT_TRUE(reference.is_object()) << chat_text;
  // chat()'s ids end with the stop token; the decoder reports it apart.
  std::vector<int> with_stop = generated;
  if (stop_id) with_stop.push_back(*stop_id);
  EXPECT_EQ(reference["token_ids"].get<std::vector<int>>(), with_stop);
  EXPECT_EQ(reference["response"], answer);
}

TEST_F(TrainerServiceTest, CancelStopsTheWholeJobAndTheQueueIsBounded) {
  const std::string dir = ::internvl::testing::TempDir() + "/cancel";
  auto trainer = StartTrainer(dir, fixtures_, {"--max-concurrent-jobs", "1", "--max-queued-jobs", "1"});
  ASSERT_NE(trainer, nullptr);
  // Long, and data parallel: the cancel must reach both workers.
  v1::JobSpec long_spec = TinySpec("long", 1000000);
  long_spec.set_nproc(2);
  long_spec.set_batch_size(1);
  long_spec.set_threads(1);
  auto id = Submit(trainer.get(), long_spec);
  ASSERT_TRUE(id.ok()) << id.status();
  const std::string output = trainer->out() + "/long";
  // The scheduler starts it on its own thread: until then it still counts in
  // the queue depth (a loaded CI machine read 2 below, not 1).
  ASSERT_EQ(WaitFor(trainer.get(), *id, [](const v1::Job& j) { return j.state() != v1::JOB_STATE_QUEUED; }).state(),
            v1::JOB_STATE_RUNNING);

  // The same output_dir while it is active.
  auto same = Submit(trainer.get(), TinySpec("long/inner", 2));
  ASSERT_FALSE(same.ok());
  EXPECT_EQ(same.status().code(), absl::StatusCode::kAlreadyExists) << same.status();
  // One more waits; the next is refused.
  auto queued = Submit(trainer.get(), TinySpec("queued", 2));
  ASSERT_TRUE(queued.ok()) << queued.status();
  auto refused = Submit(trainer.get(), TinySpec("refused", 2));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_EQ(Get(trainer.get(), *queued).state(), v1::JOB_STATE_QUEUED);
  auto metrics = st::HttpGet(trainer->metrics_port, "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(st::MetricValue(*metrics, "internvl_queue_depth{service=\"trainer\"}").value_or(-1), 1);
  // A queued job cancels at once, without ever running.
  const v1::Job cancelled_queued = Cancel(trainer.get(), *queued);
  EXPECT_EQ(cancelled_queued.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled_queued.started_time(), 0);
  EXPECT_FALSE(fs::exists(trainer->out() + "/queued"));

  // Watch the long job; cancel it after its second step.
  bool cancel_sent = false;
  int steps = 0;
  grpc::Status status;
  const auto events = Watch(trainer.get(), *id, 0, &status, [&](const v1::JobEvent& e) {
    if (e.kind() != v1::JOB_EVENT_STEP || ++steps < 2 || cancel_sent) return;
    EXPECT_EQ(ProcessesWith("--output=" + output).size(), 3u) << "launcher + 2 workers";
    const v1::Job j = Cancel(trainer.get(), *id);
    EXPECT_TRUE(j.cancel_requested());
    cancel_sent = true;
  });
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(cancel_sent) << ReadText(absl::StrCat(trainer->state(), "/", *id, "/train.log"));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().kind(), v1::JOB_EVENT_STATE);
  EXPECT_EQ(events.back().state(), v1::JOB_STATE_CANCELLED) << events.back().message();
  const v1::Job job = Get(trainer.get(), *id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_LT(job.last_step().step(), 1000000);
  EXPECT_TRUE(ProcessesWith("--output=" + output).empty()) << "a worker outlived the cancel";
  // Cancelling again changes nothing.
  EXPECT_EQ(Cancel(trainer.get(), *id).state(), v1::JOB_STATE_CANCELLED);

  v1::ListJobsRequest list_request;
  list_request.add_states(v1::JOB_STATE_CANCELLED);
  v1::ListJobsResponse list;
  ASSERT_TRUE(trainer->stub->ListJobs(Context().get(), list_request, &list).ok());
  ASSERT_EQ(list.jobs_size(), 2);
  EXPECT_EQ(list.jobs(0).job_id(), *queued);  // newest first
  EXPECT_EQ(list.jobs(1).job_id(), *id);
}

TEST_F(TrainerServiceTest, RestartListsFinishedJobsAndMarksInterruptedOnes) {
  const std::string dir = ::internvl::testing::TempDir() + "/restart";
  auto trainer = StartTrainer(dir, fixtures_);
  ASSERT_NE(trainer, nullptr);
  auto done = Submit(trainer.get(), TinySpec("done", 2));
  ASSERT_TRUE(done.ok()) << done.status();
  const v1::Job finished = WaitFor(trainer.get(), *done, [](const v1::Job& j) { return Ended(j); });
  ASSERT_EQ(finished.state(), v1::JOB_STATE_SUCCEEDED) << finished.message();
  grpc::Status status;
  const auto done_events = Watch(trainer.get(), *done, 0, &status);

  // A running job and a queued one when the service crashes.
  auto running = Submit(trainer.get(), TinySpec("running", 1000000));
  ASSERT_TRUE(running.ok()) << running.status();
  auto queued = Submit(trainer.get(), TinySpec("queued", 2));
  ASSERT_TRUE(queued.ok()) << queued.status();
  const v1::Job progressing =
      WaitFor(trainer.get(), *running, [](const v1::Job& j) { return j.last_step().step() > 0; });
  ASSERT_GT(progressing.last_step().step(), 0);
  trainer->process->Signal(SIGKILL);
  ASSERT_TRUE(trainer->process->Wait(absl::Seconds(10)).ok());
  // Its training process follows it (parent-death signal).
  const absl::Time until = absl::Now() + absl::Seconds(30);
  while (!ProcessesWith("--output=" + trainer->out() + "/running").empty() && absl::Now() < until)
    absl::SleepFor(absl::Milliseconds(100));
  EXPECT_TRUE(ProcessesWith("--output=" + trainer->out() + "/running").empty());

  trainer = StartTrainer(dir, fixtures_);
  ASSERT_NE(trainer, nullptr);
  v1::ListJobsResponse list;
  ASSERT_TRUE(trainer->stub->ListJobs(Context().get(), v1::ListJobsRequest(), &list).ok());
  ASSERT_EQ(list.jobs_size(), 3);
  EXPECT_EQ(list.jobs(0).job_id(), *queued);
  EXPECT_EQ(list.jobs(0).state(), v1::JOB_STATE_INTERRUPTED);
  EXPECT_THAT(list.jobs(0).message(), HasSubstr("queued"));
  EXPECT_EQ(list.jobs(1).job_id(), *running);
  EXPECT_EQ(list.jobs(1).state(), v1::JOB_STATE_INTERRUPTED);
  EXPECT_THAT(list.jobs(1).message(), HasSubstr("running"));
  EXPECT_GT(list.jobs(1).last_step().step(), 0);
  EXPECT_EQ(list.jobs(2).job_id(), *done);
  EXPECT_EQ(list.jobs(2).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(list.jobs(2).checkpoints_size(), 1);
  // The finished job's events replay as before.
  const auto replayed = Watch(trainer.get(), *done, 0, &status);
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(replayed.size(), done_events.size());
  for (size_t i = 0; i < replayed.size(); ++i) {
    EXPECT_EQ(replayed[i].kind(), done_events[i].kind()) << i;
    EXPECT_EQ(replayed[i].step(), done_events[i].step()) << i;
    EXPECT_EQ(replayed[i].loss(), done_events[i].loss()) << i;
  }
  const auto interrupted_events = Watch(trainer.get(), *running, 0, &status);
  ASSERT_FALSE(interrupted_events.empty());
  EXPECT_EQ(interrupted_events.back().state(), v1::JOB_STATE_INTERRUPTED);

  // Graceful SIGTERM: the running job stops, its watcher gets INTERRUPTED,
  // the service exits 0, and the next start still says INTERRUPTED.
  auto graceful = Submit(trainer.get(), TinySpec("graceful", 1000000));
  ASSERT_TRUE(graceful.ok()) << graceful.status();
  bool signalled = false;
  const auto graceful_events = Watch(trainer.get(), *graceful, 0, &status, [&](const v1::JobEvent& e) {
    if (e.kind() == v1::JOB_EVENT_STEP && !signalled) {
      trainer->process->Signal(SIGTERM);
      signalled = true;
    }
  });
  ASSERT_TRUE(signalled);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(graceful_events.empty());
  EXPECT_EQ(graceful_events.back().state(), v1::JOB_STATE_INTERRUPTED) << graceful_events.back().message();
  auto exit_code = trainer->process->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_code.ok());
  EXPECT_EQ(*exit_code, 0) << trainer->process->ReadLog();
  EXPECT_TRUE(ProcessesWith("--output=" + trainer->out() + "/graceful").empty());
  trainer = StartTrainer(dir, fixtures_);
  ASSERT_NE(trainer, nullptr);
  const v1::Job after = Get(trainer.get(), *graceful);
  EXPECT_EQ(after.state(), v1::JOB_STATE_INTERRUPTED);
  EXPECT_THAT(after.message(), HasSubstr("shut down"));
}

TEST_F(TrainerServiceTest, PathEscapesAndBadSpecsAreInvalidArgument) {
  const std::string dir = ::internvl::testing::TempDir() + "/escapes";
  auto trainer = StartTrainer(dir, fixtures_);
  ASSERT_NE(trainer, nullptr);
  const std::string outside = dir + "/outside";
  fs::create_directories(outside);
  fs::create_symlink(outside, trainer->out() + "/link");
  fs::create_symlink(outside, dir + "/models/evil");
  fs::copy(fixtures_ + "/tiny-qwen2/config.json", outside + "/config.json");
  std::ofstream(dir + "/data/escape.json") << json{{"x", {{"root", "/etc"}, {"annotation", "/etc/passwd"}}}}.dump();

  struct Case {
    std::string what;
    std::function<void(v1::JobSpec*)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"absolute output", [&](v1::JobSpec* s) { s->set_output_dir(outside); }, "relative"},
      {"dot-dot output", [](v1::JobSpec* s) { s->set_output_dir("../outside"); }, ".."},
      {"nested dot-dot", [](v1::JobSpec* s) { s->set_output_dir("a/../../outside"); }, ".."},
      {"symlinked output", [](v1::JobSpec* s) { s->set_output_dir("link/run"); }, "symlink"},
      {"missing output", [](v1::JobSpec* s) { s->set_output_dir(""); }, "output_dir"},
      {"absolute model", [&](v1::JobSpec* s) { s->set_model(fixtures_ + "/tiny-qwen2"); }, "relative"},
      {"symlinked model", [](v1::JobSpec* s) { s->set_model("evil"); }, "symlink"},
      {"unknown model", [](v1::JobSpec* s) { s->set_model("no such model"); }, "neither"},
      {"absolute meta", [](v1::JobSpec* s) { s->set_meta("/etc/passwd"); }, "relative"},
      {"meta datasets outside", [](v1::JobSpec* s) { s->set_meta("escape.json"); }, "--data-root"},
      {"absolute resume_from", [](v1::JobSpec* s) { s->set_resume_from("/tmp"); }, "relative"},
      {"bad option", [](v1::JobSpec* s) { s->set_batch_size(0); }, "batch_size"},
      {"bad dtype", [](v1::JobSpec* s) { s->set_dtype("fp8"); }, "dtype"},
      {"bad template", [](v1::JobSpec* s) { s->set_conv_style("nope"); }, "nope"},
      {"too many processes", [](v1::JobSpec* s) { s->set_nproc(3); }, "--max-nproc"},
  };
  for (const Case& c : cases) {
    v1::JobSpec spec = TinySpec("ok", 2);
    c.edit(&spec);
    auto r = Submit(trainer.get(), spec);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr(c.message)) << c.what;
  }
  v1::ListJobsResponse list;
  ASSERT_TRUE(trainer->stub->ListJobs(Context().get(), v1::ListJobsRequest(), &list).ok());
  EXPECT_EQ(list.jobs_size(), 0) << "a refused spec left a job behind";
  EXPECT_EQ(st::HealthCheck(trainer->target(), "internvl.v1.Trainer").value_or("?"), "SERVING");
}

TEST_F(TrainerServiceTest, UnknownJobsAreNotFound) {
  const std::string dir = ::internvl::testing::TempDir() + "/unknown";
  auto trainer = StartTrainer(dir, fixtures_);
  ASSERT_NE(trainer, nullptr);
  v1::JobId id;
  id.set_job_id("job-that-never-was");
  v1::Job job;
  EXPECT_EQ(trainer->stub->GetJob(Context().get(), id, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(trainer->stub->CancelJob(Context().get(), id, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status status;
  const auto events = Watch(trainer.get(), "job-that-never-was", 0, &status);
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  // SIGTERM with nothing running: a clean exit.
  trainer->process->Signal(SIGTERM);
  auto code = trainer->process->Wait(absl::Seconds(20));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

}  // namespace
}  // namespace internvl::services
