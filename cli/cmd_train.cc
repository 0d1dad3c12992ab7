// `internvl train --model M --meta meta.json --output DIR [...]`: supervised
// fine-tuning (core/train/trainer.h) with the official InternVL fine-tuning
// script's options, dashed (`--max-steps`; the script's `--max_steps 100`
// and `--freeze_llm True` spellings are accepted too). The final model is
// written to DIR itself, intermediate checkpoints to DIR/checkpoint-N; both
// load as `--model` everywhere.
//
// Progress goes to stderr: a live bar on a terminal, plain lines otherwise.
// `--events-jsonl FILE` appends every training event as one JSON line
// (flushed at once; read by the trainer service), ending with a `failed` or
// `cancelled` line when the run does not finish.
//
// `--nproc N` (N > 1) runs N data-parallel workers on this machine: the
// command re-executes itself N times with `--rank i --world-size N
// --master-addr 127.0.0.1 --master-port P` (P a free port), forwards SIGINT /
// SIGTERM to them, and stops them all when one fails. Only rank 0 reports.
//
// SIGINT / SIGTERM cancel the run between micro-batches (checkpoints already
// written stay); a second SIGINT/SIGTERM kills at once.
// Exit codes: 0 trained, 2 bad flags or options, 1 failure or cancelled.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/args.h"
#include "cli/command.h"
#include "core/net.h"
#include "core/status.h"
#include "core/train/trainer.h"
#include "nlohmann/json.hpp"

namespace internvl::cli {
namespace {

using train::TrainEvent;
using train::TrainOptions;

constexpr char kName[] = "train";
constexpr char kSummary[] =
    "fine-tune a model (SFT, vision encoder frozen) on InternVL-format data; --nproc N for data parallel";

// Boolean options whose default is true also get a --no-NAME flag.
const std::set<std::string>& BoolFlags() {
  static const auto* flags = new std::set<std::string>{
      "gradient-checkpointing", "shuffle",       "freeze-llm",         "freeze-mlp",         "freeze-backbone",
      "unfreeze-lm-head",       "use-thumbnail", "dynamic-image-size", "no-freeze-backbone", "no-use-thumbnail",
      "no-dynamic-image-size",  "help"};
  return *flags;
}

const std::vector<FlagSpec>& Specs() {
  static const auto* specs = [] {
    const TrainOptions d;
    auto num = [](double v) { return absl::StrFormat("%g", v); };
    return new std::vector<FlagSpec>{
        {"model", "model folder or Hugging Face id ORG/NAME[@REVISION] (resolved like inference)", true, false, ""},
        {"meta", "meta JSON {name: {root, annotation, data_augment, max_dynamic_patch, repeat_time, length}}", true,
         false, ""},
        {"output", "output folder: the final model is written here, checkpoints to OUTPUT/checkpoint-N", true, false,
         ""},
        {"data-root", "refuse annotations, images and videos that resolve outside this folder", true, false, ""},
        {"conv-style", "conversation template (Hermes-2, internlm2-chat, internvl2_5, phi3-chat)", true, false,
         "the model config's template"},
        {"max-seq-length", "truncate samples to this many tokens", true, false, absl::StrCat(d.max_seq_length)},
        {"max-dynamic-patch", "most tiles per image (a meta entry's max_dynamic_patch overrides it)", true, false,
         absl::StrCat(d.max_dynamic_patch)},
        {"min-dynamic-patch", "fewest tiles per image", true, false, absl::StrCat(d.min_dynamic_patch)},
        {"use-thumbnail", "append a thumbnail tile to multi-tile images (--no-use-thumbnail: off)", false, false, "on"},
        {"no-use-thumbnail", "no thumbnail tile", false, false, ""},
        {"dynamic-image-size", "dynamic tiling (--no-dynamic-image-size: one tile per image)", false, false, "on"},
        {"no-dynamic-image-size", "one tile per image", false, false, ""},
        {"lr", "peak learning rate", true, false, num(d.lr)},
        {"weight-decay", "AdamW weight decay (HF Trainer's grouping)", true, false, num(d.weight_decay)},
        {"warmup-ratio", "share of the steps with linear warmup (then cosine decay)", true, false, num(d.warmup_ratio)},
        {"max-grad-norm", "gradient clipping norm", true, false, num(d.max_grad_norm)},
        {"max-steps", "optimizer steps (> 0 overrides --epochs)", true, false, absl::StrCat(d.max_steps)},
        {"epochs", "passes over the data (fractional allowed)", true, false, num(d.epochs)},
        {"batch-size", "samples per micro-batch per process", true, false, absl::StrCat(d.batch_size)},
        {"grad-accum", "micro-batches per optimizer step", true, false, absl::StrCat(d.grad_accum)},
        {"loss-reduction", "token (mean over tokens), sample or square (InternVL2.5)", true, false, d.loss_reduction},
        {"dtype", "fp32 or bf16 (bf16 weights with an fp32 master copy)", true, false, d.dtype},
        {"device", "where training runs: cpu, cuda or cuda:N (ranks all-reduce over Gloo)", true, false, d.device},
        {"gradient-checkpointing", "recompute activations in the backward pass (less memory)", false, false, ""},
        {"shuffle", "shuffle the samples each epoch (default: sequential order)", false, false, ""},
        {"freeze-backbone", "freeze the vision encoder (--no-freeze-backbone or --freeze-backbone=false: train it)",
         false, false, "on"},
        {"no-freeze-backbone", "train the vision encoder too", false, false, ""},
        {"freeze-llm", "freeze the language model", false, false, ""},
        {"freeze-mlp", "freeze the projector (mlp1)", false, false, ""},
        {"unfreeze-lm-head", "with --freeze-llm: keep the output head trainable", false, false, ""},
        {"lora-rank", "LoRA on the language model with this rank (alpha 2r, merged on save); 0 = off", true, false,
         absl::StrCat(d.lora_rank)},
        {"save-steps", "write OUTPUT/checkpoint-N every N steps (0: only the final model)", true, false,
         absl::StrCat(d.save_steps)},
        {"save-total-limit", "keep at most this many checkpoint-N folders (0: all)", true, false,
         absl::StrCat(d.save_total_limit)},
        {"resume", "continue from a checkpoint folder, or `auto` (the latest in OUTPUT); bare --resume = auto", true,
         false, ""},
        {"seed", "random seed (data order, LoRA init)", true, false, absl::StrCat(d.seed)},
        {"logging-steps", "report every N optimizer steps", true, false, absl::StrCat(d.logging_steps)},
        {"threads", "torch threads per process (0: all cores, divided among --nproc workers)", true, false,
         absl::StrCat(d.threads)},
        {"nproc", "data-parallel worker processes on this machine (c10d Gloo)", true, false, "1"},
        {"rank", "this process's rank (multi-machine runs; --nproc sets it for its workers)", true, false, "0"},
        {"world-size", "number of processes in the run", true, false, "1"},
        {"master-addr", "rank 0's address for the process group", true, false, d.master_addr},
        {"master-port", "rank 0's port for the process group (--nproc: a free port)", true, false,
         absl::StrCat(d.master_port)},
        {"events-jsonl", "append each training event to this file as one JSON line", true, false, ""},
        {"help", "show this help", false, false, ""},
    };
  }();
  return *specs;
}

// Accepts the official scripts' spellings: `--max_steps 100` (underscores),
// `--freeze_llm True` (a boolean with a separate value), and a bare
// `--resume` (= auto).
std::vector<std::string> NormalizeArgv(const std::vector<std::string>& argv) {
  std::vector<std::string> out;
  for (size_t i = 0; i < argv.size(); ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0) {
      const size_t eq = a.find('=');
      for (size_t k = 2; k < a.size() && k < eq; ++k)
        if (a[k] == '_') a[k] = '-';
    }
    const std::string name = a.rfind("--", 0) == 0 ? a.substr(2) : "";
    if (BoolFlags().count(name) && i + 1 < argv.size()) {
      const std::string next = absl::AsciiStrToLower(argv[i + 1]);
      if (next == "true" || next == "false" || next == "1" || next == "0" || next == "yes" || next == "no") {
        out.push_back(absl::StrCat(a, "=", argv[++i]));
        continue;
      }
    }
    if (name == "resume" && (i + 1 >= argv.size() || argv[i + 1].rfind("--", 0) == 0)) {
      out.push_back("--resume=auto");
      continue;
    }
    out.push_back(a);
  }
  return out;
}

absl::StatusOr<bool> ParseBool(const std::string& flag, const std::string& value) {
  const std::string v = absl::AsciiStrToLower(value);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " takes true or false, not '", value, "'"));
}

// `--NAME[=bool]` and `--no-NAME` into *out (unchanged when neither is given).
absl::Status GetBool(const Args& args, const std::string& name, bool* out) {
  const bool has_no = args.Has("no-" + name) && BoolFlags().count("no-" + name);
  if (args.Has(name) && has_no)
    return absl::InvalidArgumentError(absl::StrCat("--", name, " and --no-", name, " contradict each other"));
  if (auto v = args.Get(name)) {
    INTERNVL_ASSIGN_OR_RETURN(*out, ParseBool(name, *v));
  } else if (has_no) {
    INTERNVL_ASSIGN_OR_RETURN(bool no, ParseBool("no-" + name, *args.Get("no-" + name)));
    *out = !no;
  }
  return absl::OkStatus();
}

absl::Status GetInt64(const Args& args, const std::string& name, int64_t* out) {
  if (auto v = args.Get(name)) {
    if (!absl::SimpleAtoi(*v, out))
      return absl::InvalidArgumentError(absl::StrCat("--", name, " must be an integer, got '", *v, "'"));
  }
  return absl::OkStatus();
}

struct TrainCommand {
  TrainOptions options;
  int nproc = 1;
  std::string events_jsonl;
};

absl::StatusOr<TrainCommand> ParseTrainCommand(const Args& args) {
  TrainCommand c;
  TrainOptions& o = c.options;
  INTERNVL_ASSIGN_OR_RETURN(o.model, args.Require("model"));
  INTERNVL_ASSIGN_OR_RETURN(o.meta, args.Require("meta"));
  INTERNVL_ASSIGN_OR_RETURN(o.output_dir, args.Require("output"));
  o.data_root = args.GetOr("data-root", "");
  o.conv_style = args.GetOr("conv-style", o.conv_style);
  INTERNVL_ASSIGN_OR_RETURN(o.max_seq_length, args.GetInt("max-seq-length", o.max_seq_length));
  INTERNVL_ASSIGN_OR_RETURN(o.max_dynamic_patch, args.GetInt("max-dynamic-patch", o.max_dynamic_patch));
  INTERNVL_ASSIGN_OR_RETURN(o.min_dynamic_patch, args.GetInt("min-dynamic-patch", o.min_dynamic_patch));
  INTERNVL_RETURN_IF_ERROR(GetBool(args, "use-thumbnail", &o.use_thumbnail));
  INTERNVL_RETURN_IF_ERROR(GetBool(args, "dynamic-image-size", &o.dynamic_image_size));
  INTERNVL_ASSIGN_OR_RETURN(o.lr, args.GetDouble("lr", o.lr));
  INTERNVL_ASSIGN_OR_RETURN(o.weight_decay, args.GetDouble("weight-decay", o.weight_decay));
  INTERNVL_ASSIGN_OR_RETURN(o.warmup_ratio, args.GetDouble("warmup-ratio", o.warmup_ratio));
  INTERNVL_ASSIGN_OR_RETURN(o.max_grad_norm, args.GetDouble("max-grad-norm", o.max_grad_norm));
  INTERNVL_RETURN_IF_ERROR(GetInt64(args, "max-steps", &o.max_steps));
  INTERNVL_ASSIGN_OR_RETURN(o.epochs, args.GetDouble("epochs", o.epochs));
  INTERNVL_ASSIGN_OR_RETURN(o.batch_size, args.GetInt("batch-size", o.batch_size));
  INTERNVL_ASSIGN_OR_RETURN(o.grad_accum, args.GetInt("grad-accum", o.grad_accum));
  o.loss_reduction = args.GetOr("loss-reduction", o.loss_reduction);
  o.dtype = args.GetOr("dtype", o.dtype);
  o.device = args.GetOr("device", o.device);
  INTERNVL_RETURN_IF_ERROR(GetBool(args, "gradient-checkpointing", &o.gradient_checkpointing));
  INTERNVL_RETURN_IF_ERROR(GetBool(args, "shuffle", &o.shuffle));
  INTERNVL_RETURN_IF_ERROR(GetBool(args, "freeze-backbone", &o.freeze_backbone));
  INTERNVL_RETURN_IF_ERROR(GetBool(args, "freeze-llm", &o.freeze_llm));
  INTERNVL_RETURN_IF_ERROR(GetBool(args, "freeze-mlp", &o.freeze_mlp));
  INTERNVL_RETURN_IF_ERROR(GetBool(args, "unfreeze-lm-head", &o.unfreeze_lm_head));
  INTERNVL_ASSIGN_OR_RETURN(o.lora_rank, args.GetInt("lora-rank", o.lora_rank));
  INTERNVL_RETURN_IF_ERROR(GetInt64(args, "save-steps", &o.save_steps));
  INTERNVL_ASSIGN_OR_RETURN(o.save_total_limit, args.GetInt("save-total-limit", o.save_total_limit));
  o.resume_from = args.GetOr("resume", o.resume_from);
  if (auto seed = args.Get("seed")) {
    if (!absl::SimpleAtoi(*seed, &o.seed))
      return absl::InvalidArgumentError(absl::StrCat("--seed must be a non-negative integer, got '", *seed, "'"));
  }
  INTERNVL_ASSIGN_OR_RETURN(o.logging_steps, args.GetInt("logging-steps", o.logging_steps));
  INTERNVL_ASSIGN_OR_RETURN(o.threads, args.GetInt("threads", o.threads));
  INTERNVL_ASSIGN_OR_RETURN(c.nproc, args.GetInt("nproc", 1));
  INTERNVL_ASSIGN_OR_RETURN(o.rank, args.GetInt("rank", o.rank));
  INTERNVL_ASSIGN_OR_RETURN(o.world_size, args.GetInt("world-size", o.world_size));
  o.master_addr = args.GetOr("master-addr", o.master_addr);
  INTERNVL_ASSIGN_OR_RETURN(o.master_port, args.GetInt("master-port", o.master_port));
  c.events_jsonl = args.GetOr("events-jsonl", "");
  if (c.nproc < 1) return absl::InvalidArgumentError(absl::StrCat("--nproc must be >= 1, got ", c.nproc));
  if (c.nproc > 1 && (args.Has("rank") || args.Has("world-size")))
    return absl::InvalidArgumentError("--nproc sets --rank and --world-size for its workers; give one or the other");
  if (c.nproc > 1) o.world_size = c.nproc;  // validated as the workers will see it
  INTERNVL_RETURN_IF_ERROR(train::ValidateTrainOptions(o));
  return c;
}

// ------------------------------------------------------------ signals

std::atomic<bool> g_cancel{false};
volatile sig_atomic_t g_signal = 0;

void OnSignal(int sig) {
  g_signal = sig;
  g_cancel.store(true);
}

// First SIGINT/SIGTERM: cancel (handled); the handler then resets, so a
// second one kills the process.
void InstallCancelHandlers(bool reset_after_first) {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = reset_after_first ? SA_RESETHAND : 0;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

double UnixNow() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// ------------------------------------------------------------ events

const char* KindName(TrainEvent::Kind kind) {
  switch (kind) {
    case TrainEvent::Kind::kStarted:
      return "started";
    case TrainEvent::Kind::kStep:
      return "step";
    case TrainEvent::Kind::kCheckpoint:
      return "checkpoint";
    case TrainEvent::Kind::kWarning:
      return "warning";
    case TrainEvent::Kind::kFinished:
      return "finished";
  }
  return "unknown";
}

// One JSON object per line, flushed at once (a reader tails the file).
class EventsFile {
 public:
  static absl::StatusOr<std::unique_ptr<EventsFile>> Open(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "ae");
    if (f == nullptr)
      return absl::FailedPreconditionError(
          absl::StrCat("cannot open --events-jsonl ", path, ": ", std::strerror(errno)));
    return std::unique_ptr<EventsFile>(new EventsFile(f));
  }
  ~EventsFile() { std::fclose(file_); }

  void Write(const TrainEvent& e) {
    nlohmann::ordered_json j = {{"time", UnixNow()},
                                {"kind", KindName(e.kind)},
                                {"step", e.step},
                                {"total_steps", e.total_steps},
                                {"epoch", e.epoch},
                                {"loss", e.loss},
                                {"lr", e.lr},
                                {"grad_norm", e.grad_norm},
                                {"samples_per_second", e.samples_per_second},
                                {"skipped_records", e.skipped_records}};
    if (!e.checkpoint_path.empty()) j["checkpoint_path"] = e.checkpoint_path;
    if (!e.message.empty()) j["message"] = e.message;
    WriteLine(j);
  }
  // The run's end when it did not finish: kind "failed" or "cancelled".
  void WriteEnd(const std::string& kind, const absl::Status& status) {
    WriteLine(nlohmann::ordered_json{{"time", UnixNow()},
                                     {"kind", kind},
                                     {"code", absl::StatusCodeToString(status.code())},
                                     {"message", std::string(status.message())}});
  }

 private:
  explicit EventsFile(std::FILE* f) : file_(f) {}
  void WriteLine(const nlohmann::ordered_json& j) {
    // NaN/inf losses become null (JSON has no NaN).
    const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    std::fputs(line.c_str(), file_);
    std::fflush(file_);
  }
  std::FILE* file_;
};

// ------------------------------------------------------------ progress

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  if (s >= 3600) return absl::StrFormat("%ldh%02ldm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%ldm%02lds", s / 60, s % 60);
  return absl::StrFormat("%lds", s);
}

// Step / total, loss, lr, ETA on stderr: one live line on a terminal, plain
// lines (at most one per second, plus the last step) otherwise.
class Progress {
 public:
  explicit Progress(bool tty) : tty_(tty), start_(Clock::now()) {}

  void OnEvent(const TrainEvent& e) {
    switch (e.kind) {
      case TrainEvent::Kind::kStarted:
        total_ = e.total_steps;
        Line(e.message.empty() ? absl::StrCat("training: ", e.total_steps, " steps")
                               : absl::StrCat("training: ", e.message));
        break;
      case TrainEvent::Kind::kStep:
        Step(e);
        break;
      case TrainEvent::Kind::kCheckpoint:
        Line(absl::StrCat("checkpoint at step ", e.step, ": ", e.checkpoint_path));
        break;
      case TrainEvent::Kind::kWarning:
        Line(absl::StrCat("warning: ", e.message));
        break;
      case TrainEvent::Kind::kFinished:
        Line(absl::StrCat("finished: ", e.step, " steps in ", FormatDuration(Seconds(start_)), ", final loss ",
                          absl::StrFormat("%.4f", last_loss_), "; model in ", e.checkpoint_path),
             /*keep_bar=*/false);
        break;
    }
  }
  // Ends the live line before an error message.
  void Break() {
    if (tty_ && bar_shown_) std::fputs("\n", stderr);
    bar_shown_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

  void Step(const TrainEvent& e) {
    if (e.total_steps > 0) total_ = e.total_steps;
    last_loss_ = e.loss;
    if (!first_step_) {
      first_step_ = e.step;
      first_step_time_ = Clock::now();
    }
    // The rate from the first reported step on (the first step includes
    // start-up costs); before a second step, from the start.
    double eta = -1;
    if (total_ > 0) {
      const double per_step = e.step > *first_step_
                                  ? Seconds(first_step_time_) / static_cast<double>(e.step - *first_step_)
                                  : Seconds(start_) / std::max<int64_t>(1, e.step);
      eta = per_step * static_cast<double>(total_ - e.step);
    }
    const std::string text =
        absl::StrFormat("step %d/%d  loss %.4f  lr %.3g  grad %.3g  %.2f samples/s  ETA %s", e.step, total_, e.loss,
                        e.lr, e.grad_norm, e.samples_per_second, FormatDuration(eta));
    if (tty_) {
      constexpr int kWidth = 24;
      const int filled =
          total_ > 0 ? std::clamp(static_cast<int>(kWidth * (double(e.step) / double(total_))), 0, kWidth) : 0;
      // Built in place: GCC 12 at -O3 reports a false -Wrestrict in the
      // operator+ chain of temporaries that this replaced.
      std::string bar;
      bar.reserve(kWidth + 3);
      bar.push_back('[');
      bar.append(filled, '#');
      bar.append(kWidth - filled, '.');
      bar.append("] ");
      std::fprintf(stderr, "\r\033[K%s%s", bar.c_str(), text.c_str());
      std::fflush(stderr);
      bar_shown_ = true;
      last_bar_ = bar + text;
      return;
    }
    const bool last = total_ > 0 && e.step >= total_;
    if (!last && last_line_ && Seconds(*last_line_) < 1.0) return;
    last_line_ = Clock::now();
    std::fprintf(stderr, "%s\n", text.c_str());
  }

  // A message line; on a terminal it goes above the live bar (or replaces
  // it for good: !keep_bar).
  void Line(const std::string& text, bool keep_bar = true) {
    if (tty_ && bar_shown_) {
      std::fprintf(stderr, "\r\033[K%s\n%s", text.c_str(), keep_bar ? last_bar_.c_str() : "");
      bar_shown_ = keep_bar;
    } else {
      std::fprintf(stderr, "%s\n", text.c_str());
    }
    std::fflush(stderr);
  }

  const bool tty_;
  const Clock::time_point start_;
  int64_t total_ = 0;
  double last_loss_ = 0;
  std::optional<int64_t> first_step_;
  Clock::time_point first_step_time_;
  std::optional<Clock::time_point> last_line_;
  bool bar_shown_ = false;
  std::string last_bar_;
};

// ------------------------------------------------------------ one process

int RunOne(const TrainCommand& command) {
  InstallCancelHandlers(/*reset_after_first=*/true);
  std::unique_ptr<EventsFile> events;
  if (!command.events_jsonl.empty()) {
    auto f = EventsFile::Open(command.events_jsonl);
    if (!f.ok()) return ReportError(kName, f.status());
    events = std::move(*f);
  }
  Progress progress(::isatty(STDERR_FILENO) != 0);
  const absl::Status status = train::RunTraining(
      command.options,
      [&](const TrainEvent& e) {
        if (events) events->Write(e);
        progress.OnEvent(e);
      },
      &g_cancel);
  progress.Break();
  if (status.ok()) return 0;
  const bool cancelled = g_cancel.load() && status.code() == absl::StatusCode::kCancelled;
  if (events) events->WriteEnd(cancelled ? "cancelled" : "failed", status);
  if (cancelled) {
    if (command.options.rank == 0)
      std::cerr << "internvl train: cancelled (" << strsignal(g_signal)
                << "); checkpoints already written are kept, --resume continues from them\n";
    return 1;
  }
  return ReportError(kName, status);
}

// ------------------------------------------------------------ --nproc N

// Forks and execs `argv`, in its own process group (so a terminal's SIGINT
// reaches only the launcher, which forwards it exactly once), killed when the
// launcher dies.
absl::StatusOr<pid_t> SpawnWorker(const std::vector<std::string>& argv) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv("/proc/self/exe", cargv.data());
    ::_exit(127);
  }
  return pid;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", strsignal(WTERMSIG(status)));
  return "unknown status";
}

// The launcher: N workers with the same flags (minus --nproc), each with its
// rank; rank 0 alone keeps --events-jsonl and reports progress.
int RunLauncher(const TrainCommand& command, const std::vector<std::string>& argv, bool threads_given) {
  InstallCancelHandlers(/*reset_after_first=*/false);
  int port = command.options.master_port;
  std::vector<std::string> base = {"internvl", "train"};
  bool port_given = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    auto is = [&](const char* flag) { return a == flag || a.rfind(std::string(flag) + "=", 0) == 0; };
    if (is("--nproc") || is("--events-jsonl") || is("--master-addr") || is("--master-port") || is("--threads")) {
      if (is("--master-port")) port_given = true;
      if (a.find('=') == std::string::npos) ++i;  // skip its value
      continue;
    }
    base.push_back(a);
  }
  if (!port_given) {
    auto p = PickFreeLoopbackPort();
    if (!p.ok()) return ReportError(kName, p.status());
    port = *p;
  }
  const int n = command.nproc;
  int threads = command.options.threads;
  if (!threads_given) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / n);
  std::unique_ptr<EventsFile> events;
  if (!command.events_jsonl.empty()) {
    auto f = EventsFile::Open(command.events_jsonl);
    if (!f.ok()) return ReportError(kName, f.status());
    events = std::move(*f);
  }

  std::vector<pid_t> pids(n, -1);
  for (int r = 0; r < n; ++r) {
    std::vector<std::string> a = base;
    a.insert(a.end(),
             {"--rank", absl::StrCat(r), "--world-size", absl::StrCat(n), "--master-addr", command.options.master_addr,
              "--master-port", absl::StrCat(port), "--threads", absl::StrCat(threads)});
    if (r == 0 && !command.events_jsonl.empty()) a.insert(a.end(), {"--events-jsonl", command.events_jsonl});
    auto pid = SpawnWorker(a);
    if (!pid.ok()) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
      for (pid_t p : pids)
        if (p > 0) ::waitpid(p, nullptr, 0);
      return ReportError(kName, pid.status());
    }
    pids[r] = *pid;
  }
  std::cerr << "internvl train: " << n << " workers on 127.0.0.1:" << port << ", " << threads << " threads each\n";

  using Clock = std::chrono::steady_clock;
  constexpr auto kKillGrace = std::chrono::seconds(15);
  int running = n;
  int forwarded = 0;  // signals forwarded so far
  std::optional<std::string> failure;
  int failed_rank = -1;
  std::optional<Clock::time_point> kill_at;
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int rank = -1;
      for (int r = 0; r < n; ++r)
        if (pids[r] == pid) rank = r;
      if (rank < 0) continue;
      pids[rank] = -1;
      --running;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && !failure && !g_cancel.load()) {
        failure = absl::StrCat("worker rank ", rank, " failed (", DescribeExit(status), ")");
        failed_rank = rank;
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGTERM);
        kill_at = Clock::now() + kKillGrace;
      }
      continue;
    }
    // Forward each SIGINT/SIGTERM once; a second one kills the workers.
    if (g_cancel.load() && forwarded == 0) {
      forwarded = 1;
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGTERM);
      kill_at = Clock::now() + kKillGrace;
    }
    if (kill_at && Clock::now() > *kill_at) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
      kill_at.reset();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (failure) {
    // Rank 0 reports its own failure in the events file; another rank's is
    // reported here.
    if (events && failed_rank != 0) events->WriteEnd("failed", absl::InternalError(*failure));
    std::cerr << "internvl train: error: " << *failure << "\n";
    return 1;
  }
  if (g_cancel.load()) {
    std::cerr << "internvl train: cancelled (" << strsignal(g_signal) << ")\n";
    return 1;
  }
  return 0;
}

int Run(const std::vector<std::string>& raw_argv) {
  const std::vector<std::string> argv = NormalizeArgv(raw_argv);
  int exit_code = 0;
  std::optional<Args> args = ParseCommandLine(kName, kSummary, Specs(), argv, &exit_code);
  if (!args) return exit_code;
  auto command = ParseTrainCommand(*args);
  if (!command.ok()) {
    ReportError(kName, command.status());
    std::cerr << "(internvl train --help lists the flags)\n";
    return command.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  if (command->nproc > 1) return RunLauncher(*command, argv, args->Has("threads"));
  return RunOne(*command);
}

static const bool kRegistered = RegisterCommand({kName, kSummary, &Run});

}  // namespace
}  // namespace internvl::cli
