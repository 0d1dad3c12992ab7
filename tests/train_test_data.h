// A tiny generated fine-tuning dataset for trainer tests: small PNG cards
// with fixed questions and answers, in the official meta JSON + jsonl format.
#pragma once

#include <array>
#include <string>
#include <vector>

namespace internvl::testing {

struct TinyRecord {
  std::string image;  // file name under the data folder ("" = text only)
  std::string question;
  std::string answer;
};

// The default records: two picture cards with distinct questions/answers.
std::vector<TinyRecord> DefaultTinyRecords();

// Writes `dir`/data/{*.png,train.jsonl} and `dir`/meta.json (root "data",
// relative to the meta file) and returns the meta path. `extra_lines` are
// appended verbatim to the jsonl (e.g. malformed records).
std::string WriteTinyDataset(const std::string& dir, const std::vector<TinyRecord>& records,
                             const std::vector<std::string>& extra_lines = {});

}  // namespace internvl::testing
