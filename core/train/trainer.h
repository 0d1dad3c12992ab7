// Supervised fine-tuning of InternVL (the official internvl_chat_finetune.py
// with HF Trainer 4.37): the vision encoder frozen, the projector (mlp1) and
// the LLM trained; AdamW with HF's weight-decay grouping, cosine schedule with
// warmup, gradient accumulation and clipping; checkpoints inference loads
// directly; data parallel across processes over c10d Gloo.
//
//   TrainOptions o; o.model = "path/or/ORG/NAME"; o.meta = "meta.json"; o.output_dir = "out";
//   INTERNVL_RETURN_IF_ERROR(RunTraining(o, [](const TrainEvent& e) { ... }, &cancel));
//
// The final model is written to output_dir itself (as HF's Trainer does),
// intermediate ones to output_dir/checkpoint-N. Torch-free header.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/config.h"

namespace internvl::train {

struct TrainOptions {
  // Data / model.
  std::string model;       // folder or HF id (resolved like inference)
  std::string meta;        // meta JSON (data.h)
  std::string data_root;   // DataOptions::data_root (confines every data file); empty = none
  std::string output_dir;  // final model here, checkpoint-N below it
  std::string conv_style;  // empty: the model config's template
  int max_seq_length = 4096;
  int max_dynamic_patch = 6;  // the official scripts' value
  int min_dynamic_patch = 1;
  bool use_thumbnail = true;
  bool dynamic_image_size = true;

  // Optimisation (the official scripts' defaults where they set one).
  double lr = 4e-5;
  double weight_decay = 0.01;  // the 1B/2B scripts (8B+: 0.05)
  double warmup_ratio = 0.03;
  double max_grad_norm = 1.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  int64_t max_steps = -1;  // > 0 overrides epochs
  double epochs = 1.0;
  int batch_size = 1;  // per process
  int grad_accum = 1;
  std::string loss_reduction = "token";  // "token" (mean over tokens) or "square" (InternVL2.5)
  std::string dtype = "fp32";            // "fp32" or "bf16" (autocast-like: bf16 weights, fp32 master copy)
  // "cpu", "cuda" or "cuda:N" (core/nn/device.h): where the model, the
  // optimizer state and the batches live. Ranks all-reduce over Gloo (host
  // buckets).
  std::string device = "cpu";
  bool gradient_checkpointing = false;
  bool shuffle = false;  // sequential batches (the fixtures' order) unless set
  uint64_t seed = 42;

  // What trains.
  bool freeze_backbone = true;  // the ViT
  bool freeze_llm = false;
  bool freeze_mlp = false;
  bool unfreeze_lm_head = false;  // with freeze_llm: keep the vocabulary head trainable
  // use_llm_lora: 0 = off. Rank-r adapters (alpha 2r, PEFT's init: A
  // kaiming-uniform, B zero) on every attention and MLP projection of the
  // LLM; as with PEFT the base LLM is then frozen whatever freeze_llm says.
  // Saved models hold the merged weights W + (alpha/r) B A (loadable as is);
  // checkpoints also keep the adapters (lora.safetensors) for --resume.
  // No lora_dropout (the official 0.05): the adapters train deterministically.
  int lora_rank = 0;

  // Checkpoints.
  int64_t save_steps = 0;    // 0: only the final model
  int save_total_limit = 0;  // 0: keep every checkpoint-N
  std::string resume_from;   // a checkpoint-N folder, "auto" (latest in output_dir) or empty

  // Runtime.
  int threads = 0;  // 0: all cores
  int logging_steps = 1;

  // Data parallel (c10d Gloo). world_size 1 = no process group.
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

// Checks ranges and names (INVALID_ARGUMENT naming the option).
absl::Status ValidateTrainOptions(const TrainOptions& options);

struct TrainEvent {
  enum class Kind { kStarted, kStep, kCheckpoint, kWarning, kFinished };
  Kind kind = Kind::kStep;
  int64_t step = 0;  // optimizer steps done
  int64_t total_steps = 0;
  double epoch = 0;      // fractional
  double loss = 0;       // this step's loss (mean over its micro-batches, all ranks)
  double lr = 0;         // the lr this step used
  double grad_norm = 0;  // total L2 norm before clipping
  double samples_per_second = 0;
  int64_t skipped_records = 0;  // bad records skipped so far
  std::string checkpoint_path;  // kCheckpoint, kFinished
  std::string message;          // kWarning, kStarted
};
using TrainEventCallback = std::function<void(const TrainEvent&)>;

// ValidateTrainOptions plus the inputs a job needs, without loading weights
// or downloading: the model's config.json and template when the model is a
// local folder or already in the HF cache (an HF id not cached yet passes:
// it is downloaded when training starts), and the meta file with every
// annotation it names (data.h LoadMeta). For submit-time checks.
absl::Status ValidateTrainInputs(const TrainOptions& options);

// HF Trainer 4.37's weight-decay grouping for a parameter of the whole model
// (checkpoint name): no decay for names containing "bias" and for the
// parameters of ALL_LAYERNORM_LAYERS = [nn.LayerNorm, LlamaRMSNorm] modules
// (mlp1.0, InternViT-300M's norm1/norm2, the LLaMA/Yi RMSNorms); everything
// else, including Qwen2 / InternLM2 RMSNorm weights, is decayed.
bool UsesWeightDecay(const InternVLConfig& config, absl::string_view name);

// Runs one training job (this process's rank). Events are delivered on the
// calling thread, on rank 0 only. `cancel` (optional) is polled between
// micro-batches (with several ranks: at step boundaries, all ranks agreeing):
// CANCELLED is returned only when it was set, without writing a final model
// (checkpoints already written stay).
absl::Status RunTraining(const TrainOptions& options, const TrainEventCallback& on_event,
                         const std::atomic<bool>* cancel = nullptr);

}  // namespace internvl::train
