// From a client's JobSpec (trainer.proto) to the `internvl train` command of
// the job: paths confined to the server's roots (paths.h) and made absolute,
// unset fields filled with TrainOptions' defaults, the result checked with
// the trainer's own validator.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/train/trainer.h"
#include "internvl/v1/trainer.pb.h"

namespace internvl::services::trainer {

// The server's directories, canonical (CanonicalDir). model_root may be
// empty: then only Hugging Face ids are accepted as models.
struct Roots {
  std::string output_root;
  std::string model_root;
  std::string data_root;
  std::string state_dir;  // never inside a job's output (nor the reverse)
};

// core/train's ValidateTrainOptions, passed in by main.cc.
using OptionsValidator = std::function<absl::Status(const train::TrainOptions&)>;

struct ResolvedSpec {
  train::TrainOptions options;  // absolute paths; world_size = nproc
  int nproc = 1;
  // The meta JSON as checked at submit (dataset paths absolute): the job
  // manager stores it in the job's folder and trains from it.
  std::string meta_snapshot;
  bool model_is_hub_id = false;
};

inline constexpr size_t kMaxJobNameBytes = 200;

// INVALID_ARGUMENT naming the field for anything wrong: a missing model /
// meta / output_dir, a path outside its root, a model that is neither a folder
// under the model root nor a Hugging Face id, a meta file whose datasets lie
// outside the data root, nproc above `max_nproc`, or an option the validator
// refuses.
absl::StatusOr<ResolvedSpec> ResolveJobSpec(const v1::JobSpec& spec, const Roots& roots, int max_nproc,
                                            const OptionsValidator& validate);

// The arguments of `internvl train` (after the subcommand) for a resolved
// spec, appending events to `events_jsonl`. Every option is spelled out, so
// the command line alone reproduces the job.
std::vector<std::string> TrainCommandArgs(const ResolvedSpec& spec, const std::string& events_jsonl);

}  // namespace internvl::services::trainer
