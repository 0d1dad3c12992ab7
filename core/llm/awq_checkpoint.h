// Writes a checkpoint folder in the layout of the published 4-bit AWQ
// InternVL checkpoints (OpenGVLab/InternVL2-*-AWQ, made by LMDeploy): every
// linear layer of the LLM's decoder layers stored as AutoAWQ "gemm" tensors
// (`<layer>.qweight` int32 [in, out/8], `<layer>.qzeros` int32
// [in/group, out/8], `<layer>.scales` fp16 [in/group, out]; biases kept), the
// vocabulary head, embeddings, norms and the vision half as they were, and
// config.json's quantization_config {"quant_method": "awq", "bits": 4,
// "group_size": G, "zero_point": true, "version": "gemm"}. For tests and
// `make-model --awq`: the 4-bit values are round-to-nearest of the given
// weights (AWQ's activation-aware scaling needs calibration data, and random
// weights gain nothing from it).
#pragma once

#include <string>

#include "absl/status/status.h"

namespace internvl::llm {

// Rewrites the checkpoint in `dir` (config.json + safetensors, either
// layout) in place into the AWQ layout with `group` inputs per group.
absl::Status ConvertCheckpointToAwq(const std::string& dir, int group = 128);

}  // namespace internvl::llm
