#include "core/modelgen/byte_bpe.h"

#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace internvl::modelgen {
namespace {

// Training text for the merges: plain English about images (what the demo
// asks about), written for this project.
constexpr char kTrainingText[] =
    "The image shows a small house with a red roof standing in a green field under a blue sky. "
    "There is a tree on the left side of the house and a white fence in front of it. "
    "In the background there are mountains covered with snow, and the sun is shining brightly. "
    "A person is walking along the path that leads to the door of the house. "
    "The picture is bright and colorful, with soft light and long shadows in the late afternoon. "
    "Please describe the image in detail and answer the question about the objects you can see. "
    "The cat is sitting on the table next to a cup of coffee and a book with a yellow cover. "
    "Two children are playing with a ball in the park while their parents are talking on a bench. "
    "The road is wet after the rain and the cars are reflected in the water on the street. "
    "This is a photo of a city at night with tall buildings, bright lights and many people. "
    "The text in the image says that the store is open from nine in the morning until eight in the evening. "
    "On the right there is a chart that shows the number of visitors for each month of the year. "
    "The dog is running on the beach near the sea, and the waves are breaking on the sand. "
    "A woman in a black coat is holding an umbrella and waiting for the train at the station. "
    "The table has three plates of food: rice with vegetables, a piece of fish and some fresh fruit. "
    "It is a beautiful landscape with a lake, a forest and a small boat floating on the water. "
    "The answer is that there are four birds sitting on the wire above the street. "
    "What is in the image? The image contains a man riding a bicycle down a quiet road in the country. "
    "These are the main details of the scene, and the overall impression is calm and peaceful.";

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to
// U+0100 upward; `order` lists bytes in the order Qwen's ids 0..255 use.
void BytesToUnicode(std::array<int, 256>& code, std::vector<int>& order) {
  std::set<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.insert(b);
  for (int b = 0xA1; b <= 0xAC; ++b) printable.insert(b);
  for (int b = 0xAE; b <= 0xFF; ++b) printable.insert(b);
  order.assign(printable.begin(), printable.end());
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    if (printable.count(b)) {
      code[b] = b;
    } else {
      code[b] = next++;
      order.push_back(b);
    }
  }
}

std::string Utf8(int cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {  // every bytes_to_unicode code point is below U+0800
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Pre-tokenises like the Qwen2 regex does for plain English (" ?letters",
// anything else one byte at a time) into words of byte-level symbols.
std::vector<std::vector<std::string>> Words(const std::array<int, 256>& code) {
  std::vector<std::vector<std::string>> words;
  const std::string text = kTrainingText;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    if (text[j] == ' ' && j + 1 < text.size() && IsAlpha(text[j + 1])) ++j;
    if (IsAlpha(text[j])) {
      while (j < text.size() && IsAlpha(text[j])) ++j;
    } else {
      j = i + 1;
    }
    std::vector<std::string> word;
    for (size_t k = i; k < j; ++k) word.push_back(Utf8(code[static_cast<unsigned char>(text[k])]));
    words.push_back(std::move(word));
    i = j;
  }
  return words;
}

constexpr const char* kEndOfText = "<|endoftext|>";
constexpr const char* kImStart = "<|im_start|>";
constexpr const char* kImEnd = "<|im_end|>";
// InternVL's added tokens in the order the fine-tuning script adds them
// (internvl_chat_finetune.py: tokenizer.add_tokens(token_list, special_tokens=True)).
constexpr const char* kInternVLTokens[] = {"<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>",
                                           "<ref>", "</ref>", "<box>", "</box>"};

}  // namespace

std::vector<std::pair<std::string, std::string>> LearnByteBpeMerges(int max_merges) {
  std::array<int, 256> code{};
  std::vector<int> order;
  BytesToUnicode(code, order);
  std::vector<std::vector<std::string>> words = Words(code);
  std::vector<std::pair<std::string, std::string>> merges;
  while (static_cast<int>(merges.size()) < max_merges) {
    // Most frequent adjacent pair; ties go to the lexicographically smallest
    // pair (std::map order), so the result is deterministic.
    std::map<std::pair<std::string, std::string>, int> counts;
    for (const auto& w : words)
      for (size_t k = 0; k + 1 < w.size(); ++k) ++counts[{w[k], w[k + 1]}];
    const std::pair<std::string, std::string>* best = nullptr;
    int best_count = 1;
    for (const auto& [pair, n] : counts) {
      if (n > best_count) {
        best = &pair;
        best_count = n;
      }
    }
    if (best == nullptr) break;  // no pair occurs twice
    const auto pair = *best;
    merges.push_back(pair);
    for (auto& w : words) {
      std::vector<std::string> merged;
      for (size_t k = 0; k < w.size(); ++k) {
        if (k + 1 < w.size() && w[k] == pair.first && w[k + 1] == pair.second) {
          merged.push_back(pair.first + pair.second);
          ++k;
        } else {
          merged.push_back(w[k]);
        }
      }
      w = std::move(merged);
    }
  }
  return merges;
}

absl::StatusOr<ByteBpeInfo> WriteByteBpeTokenizer(const std::string& dir, int max_merges) {
  using nlohmann::ordered_json;
  std::array<int, 256> code{};
  std::vector<int> order;
  BytesToUnicode(code, order);
  ordered_json vocab = ordered_json::object();
  int next_id = 0;
  for (int b : order) vocab[Utf8(code[b])] = next_id++;
  std::string merges_text = "#version: 0.2\n";
  for (const auto& [a, b] : LearnByteBpeMerges(max_merges)) {
    absl::StrAppend(&merges_text, a, " ", b, "\n");
    if (!vocab.contains(a + b)) vocab[a + b] = next_id++;
  }
  ByteBpeInfo info;
  info.base_vocab = next_id;

  std::vector<std::string> added = {kEndOfText, kImStart, kImEnd};
  for (const char* t : kInternVLTokens) added.push_back(t);
  ordered_json decoder = ordered_json::object();
  ordered_json added_json = ordered_json::object();
  for (const std::string& t : added) {
    decoder[std::to_string(next_id)] = {{"content", t},        {"lstrip", false},  {"normalized", false},
                                        {"rstrip", false},     {"single_word", false}, {"special", true}};
    added_json[t] = next_id;
    if (t == kEndOfText) info.endoftext_id = next_id;
    if (t == kImEnd) info.im_end_id = next_id;
    ++next_id;
  }
  info.total_tokens = next_id;
  const std::vector<std::string> additional(added.begin() + 1, added.end());
  // As the InternVL2-1B folder's tokenizer_config.json (shared/tokenizers).
  const ordered_json config = {
      {"added_tokens_decoder", decoder},
      {"additional_special_tokens", additional},
      {"bos_token", nullptr},
      {"clean_up_tokenization_spaces", false},
      {"eos_token", kImEnd},
      {"errors", "replace"},
      {"model_max_length", 8192},
      {"pad_token", kEndOfText},
      {"split_special_tokens", false},
      {"tokenizer_class", "Qwen2Tokenizer"},
      {"unk_token", nullptr},
  };
  const ordered_json special_map = {
      {"additional_special_tokens", additional}, {"eos_token", kImEnd}, {"pad_token", kEndOfText}};
  const std::pair<const char*, std::string> files[] = {
      {"vocab.json", vocab.dump(2) + "\n"},
      {"merges.txt", merges_text},
      {"tokenizer_config.json", config.dump(2) + "\n"},
      {"special_tokens_map.json", special_map.dump(2) + "\n"},
      {"added_tokens.json", added_json.dump(2) + "\n"},
  };
  for (const auto& [name, text] : files) {
    INTERNVL_RETURN_IF_ERROR(WriteFileAtomic((std::filesystem::path(dir) / name).string(), text));
    info.files.push_back(name);
  }
  return info;
}

}  // namespace internvl::modelgen
