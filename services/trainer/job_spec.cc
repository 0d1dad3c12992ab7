#include "services/trainer/job_spec.h"

#include <sys/stat.h>

#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/files.h"
#include "core/model_path.h"
#include "core/status.h"
#include "nlohmann/json.hpp"
#include "services/trainer/paths.h"

namespace internvl::services::trainer {
namespace {

namespace fs = std::filesystem;

bool IsFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::Status ResolveModel(const v1::JobSpec& spec, const Roots& roots, ResolvedSpec* out) {
  const std::string& model = spec.model();
  if (model.empty()) return absl::InvalidArgumentError("model is required");
  if (model[0] == '/' || model == ".." || absl::StartsWith(model, "../") || absl::EndsWith(model, "/..") ||
      absl::StrContains(model, "/../"))
    return absl::InvalidArgumentError(absl::StrCat(
        "model '", model, "' must be a folder relative to the server's --model-root or a Hugging Face id"));
  // A folder under --model-root wins; otherwise a Hugging Face id.
  struct stat st {};
  if (!roots.model_root.empty() && ::lstat(absl::StrCat(roots.model_root, "/", model).c_str(), &st) == 0) {
    INTERNVL_ASSIGN_OR_RETURN(std::string local,
                              ConfinePath(roots.model_root, model, "model", "--model-root", Existence::kMustExist));
    if (!IsFile(local + "/config.json"))
      return absl::InvalidArgumentError(absl::StrCat("model '", model, "' under --model-root has no config.json"));
    out->options.model = local;
    return absl::OkStatus();
  }
  if (ParseHfModelId(model).ok()) {
    out->options.model = model;
    out->model_is_hub_id = true;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("model '", model, "' is neither ",
                   roots.model_root.empty() ? "" : "a folder under the server's --model-root nor ",
                   "a Hugging Face id ORG/NAME[@REVISION]"));
}

// The meta file's datasets (`root`, `annotation`; relative ones against the
// meta file's folder, as core/train does) must lie under the data root too.
// Returns the meta as checked, its paths made absolute: the job trains from
// this snapshot, so swapping the file after the check changes nothing.
absl::StatusOr<std::string> CheckMeta(const std::string& meta_path, const Roots& roots) {
  INTERNVL_ASSIGN_OR_RETURN(std::string text, ReadFile(meta_path, size_t{16} << 20));
  nlohmann::json meta = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (meta.is_discarded() || !meta.is_object())
    return absl::InvalidArgumentError("meta: not a JSON object {name: {root, annotation, ...}}");
  const fs::path dir = fs::path(meta_path).parent_path();
  for (const auto& [name, entry] : meta.items()) {
    if (!entry.is_object())
      return absl::InvalidArgumentError(absl::StrCat("meta: entry '", name, "' is not an object"));
    for (const char* key : {"root", "annotation"}) {
      if (!entry.contains(key)) continue;  // the trainer reports missing fields
      if (!entry[key].is_string())
        return absl::InvalidArgumentError(absl::StrCat("meta: ", name, ".", key, " is not a string"));
      const fs::path p(entry[key].get<std::string>());
      std::error_code ec;
      const fs::path resolved = fs::weakly_canonical(p.is_absolute() ? p : dir / p, ec);
      if (ec || !IsWithin(resolved.string(), roots.data_root))
        return absl::InvalidArgumentError(
            absl::StrCat("meta: ", name, ".", key, " '", p.string(), "' lies outside the server's --data-root"));
      meta[name][key] = resolved.string();
    }
  }
  return meta.dump(1);
}

// The shortest of %.15g / %.17g that reads back as the same double.
std::string Num(double v) {
  std::string s = absl::StrFormat("%.15g", v);
  double back = 0;
  if (absl::SimpleAtod(s, &back) && back == v) return s;
  return absl::StrFormat("%.17g", v);
}
std::string Bool(bool v) { return v ? "true" : "false"; }

}  // namespace

absl::StatusOr<ResolvedSpec> ResolveJobSpec(const v1::JobSpec& spec, const Roots& roots, int max_nproc,
                                            const OptionsValidator& validate) {
  ResolvedSpec r;
  train::TrainOptions& o = r.options;
  if (spec.name().size() > kMaxJobNameBytes)
    return absl::InvalidArgumentError(absl::StrCat("name is longer than ", kMaxJobNameBytes, " bytes"));
  INTERNVL_RETURN_IF_ERROR(ResolveModel(spec, roots, &r));
  INTERNVL_ASSIGN_OR_RETURN(o.meta,
                            ConfinePath(roots.data_root, spec.meta(), "meta", "--data-root", Existence::kMustExist));
  if (!IsFile(o.meta)) return absl::InvalidArgumentError(absl::StrCat("meta '", spec.meta(), "' is not a file"));
  INTERNVL_ASSIGN_OR_RETURN(r.meta_snapshot, CheckMeta(o.meta, roots));
  o.data_root = roots.data_root;
  INTERNVL_ASSIGN_OR_RETURN(o.output_dir, ConfinePath(roots.output_root, spec.output_dir(), "output_dir",
                                                      "--output-root", Existence::kMayBeMissing));
  if (IsWithin(o.output_dir, roots.state_dir) || IsWithin(roots.state_dir, o.output_dir))
    return absl::InvalidArgumentError(
        absl::StrCat("output_dir '", spec.output_dir(), "' overlaps the server's --state-dir"));
  if (spec.resume_from() == "auto") {
    o.resume_from = "auto";
  } else if (!spec.resume_from().empty()) {
    INTERNVL_ASSIGN_OR_RETURN(o.resume_from, ConfinePath(o.output_dir, spec.resume_from(), "resume_from",
                                                         "the job's output_dir", Existence::kMustExist));
  }

  o.conv_style = spec.conv_style();
  if (spec.has_max_seq_length()) o.max_seq_length = spec.max_seq_length();
  if (spec.has_max_dynamic_patch()) o.max_dynamic_patch = spec.max_dynamic_patch();
  if (spec.has_min_dynamic_patch()) o.min_dynamic_patch = spec.min_dynamic_patch();
  if (spec.has_use_thumbnail()) o.use_thumbnail = spec.use_thumbnail();
  if (spec.has_dynamic_image_size()) o.dynamic_image_size = spec.dynamic_image_size();
  if (spec.has_lr()) o.lr = spec.lr();
  if (spec.has_weight_decay()) o.weight_decay = spec.weight_decay();
  if (spec.has_warmup_ratio()) o.warmup_ratio = spec.warmup_ratio();
  if (spec.has_max_grad_norm()) o.max_grad_norm = spec.max_grad_norm();
  if (spec.has_max_steps()) o.max_steps = spec.max_steps();
  if (spec.has_epochs()) o.epochs = spec.epochs();
  if (spec.has_batch_size()) o.batch_size = spec.batch_size();
  if (spec.has_grad_accum()) o.grad_accum = spec.grad_accum();
  if (spec.has_loss_reduction()) o.loss_reduction = spec.loss_reduction();
  if (spec.has_dtype()) o.dtype = spec.dtype();
  if (spec.has_gradient_checkpointing()) o.gradient_checkpointing = spec.gradient_checkpointing();
  if (spec.has_shuffle()) o.shuffle = spec.shuffle();
  if (spec.has_seed()) o.seed = spec.seed();
  if (spec.has_freeze_backbone()) o.freeze_backbone = spec.freeze_backbone();
  if (spec.has_freeze_llm()) o.freeze_llm = spec.freeze_llm();
  if (spec.has_freeze_mlp()) o.freeze_mlp = spec.freeze_mlp();
  if (spec.has_unfreeze_lm_head()) o.unfreeze_lm_head = spec.unfreeze_lm_head();
  if (spec.has_lora_rank()) o.lora_rank = spec.lora_rank();
  if (spec.has_save_steps()) o.save_steps = spec.save_steps();
  if (spec.has_save_total_limit()) o.save_total_limit = spec.save_total_limit();
  if (spec.has_threads()) o.threads = spec.threads();
  if (spec.has_logging_steps()) o.logging_steps = spec.logging_steps();

  if (spec.nproc() < 0 || spec.nproc() > max_nproc)
    return absl::InvalidArgumentError(
        absl::StrCat("nproc must be between 0 and the server's --max-nproc ", max_nproc, ", got ", spec.nproc()));
  r.nproc = std::max(1, spec.nproc());
  o.world_size = r.nproc;
  if (validate) INTERNVL_RETURN_IF_ERROR(validate(o));
  return r;
}

std::vector<std::string> TrainCommandArgs(const ResolvedSpec& spec, const std::string& events_jsonl) {
  const train::TrainOptions& o = spec.options;
  std::vector<std::string> a = {
      "--model=" + o.model,
      "--meta=" + o.meta,
      "--data-root=" + o.data_root,
      "--output=" + o.output_dir,
      "--max-seq-length=" + absl::StrCat(o.max_seq_length),
      "--max-dynamic-patch=" + absl::StrCat(o.max_dynamic_patch),
      "--min-dynamic-patch=" + absl::StrCat(o.min_dynamic_patch),
      "--use-thumbnail=" + Bool(o.use_thumbnail),
      "--dynamic-image-size=" + Bool(o.dynamic_image_size),
      "--lr=" + Num(o.lr),
      "--weight-decay=" + Num(o.weight_decay),
      "--warmup-ratio=" + Num(o.warmup_ratio),
      "--max-grad-norm=" + Num(o.max_grad_norm),
      "--max-steps=" + absl::StrCat(o.max_steps),
      "--epochs=" + Num(o.epochs),
      "--batch-size=" + absl::StrCat(o.batch_size),
      "--grad-accum=" + absl::StrCat(o.grad_accum),
      "--loss-reduction=" + o.loss_reduction,
      "--dtype=" + o.dtype,
      "--gradient-checkpointing=" + Bool(o.gradient_checkpointing),
      "--shuffle=" + Bool(o.shuffle),
      "--seed=" + absl::StrCat(o.seed),
      "--freeze-backbone=" + Bool(o.freeze_backbone),
      "--freeze-llm=" + Bool(o.freeze_llm),
      "--freeze-mlp=" + Bool(o.freeze_mlp),
      "--unfreeze-lm-head=" + Bool(o.unfreeze_lm_head),
      "--lora-rank=" + absl::StrCat(o.lora_rank),
      "--save-steps=" + absl::StrCat(o.save_steps),
      "--save-total-limit=" + absl::StrCat(o.save_total_limit),
      "--logging-steps=" + absl::StrCat(o.logging_steps),
      "--events-jsonl=" + events_jsonl,
  };
  if (!o.conv_style.empty()) a.push_back("--conv-style=" + o.conv_style);
  if (!o.resume_from.empty()) a.push_back("--resume=" + o.resume_from);
  // --threads 0 means "all cores" to a single process; with --nproc the
  // launcher divides the cores when --threads is not given.
  if (o.threads > 0 || spec.nproc == 1) a.push_back("--threads=" + absl::StrCat(o.threads));
  if (spec.nproc > 1) a.push_back("--nproc=" + absl::StrCat(spec.nproc));
  return a;
}

}  // namespace internvl::services::trainer
