#include "tests/train_test_data.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "nlohmann/json.hpp"

namespace internvl::testing {

std::vector<TinyRecord> DefaultTinyRecords() {
  return {{"red.png", "What is on the red card?", "A white box."},
          {"blue.png", "Describe the blue picture.", "A yellow sun."}};
}

namespace {

// A distinct picture per name: a colour from the name's hash and a shape.
cv::Mat Card(const std::string& name, size_t index) {
  const size_t h = std::hash<std::string>()(name);
  cv::Mat img(300 + 50 * static_cast<int>(index % 3), 400, CV_8UC3,
              cv::Scalar(static_cast<double>(h % 256), static_cast<double>((h >> 8) % 256),
                         static_cast<double>((h >> 16) % 256)));
  if (index % 2 == 0) {
    cv::rectangle(img, {100, 80}, {300, 220}, cv::Scalar(250, 250, 250), -1);
  } else {
    cv::circle(img, {200, 150}, 90, cv::Scalar(0, 240, 240), -1);
  }
  return img;
}

}  // namespace

std::string WriteTinyDataset(const std::string& dir, const std::vector<TinyRecord>& records,
                             const std::vector<std::string>& extra_lines) {
  using json = nlohmann::json;
  std::filesystem::create_directories(dir + "/data");
  std::ofstream jsonl(dir + "/data/train.jsonl");
  for (size_t i = 0; i < records.size(); ++i) {
    const TinyRecord& r = records[i];
    json rec{{"id", i}};
    std::string question = r.question;
    if (!r.image.empty()) {
      if (!cv::imwrite(dir + "/data/" + r.image, Card(r.image, i)))
        throw std::runtime_error("cannot write " + r.image);
      rec["image"] = r.image;
      question = "<image>\n" + question;
    }
    rec["conversations"] = json::array({json{{"from", "human"}, {"value", question}},
                                        json{{"from", "gpt"}, {"value", r.answer}}});
    jsonl << rec.dump() << "\n";
  }
  for (const std::string& line : extra_lines) jsonl << line << "\n";
  jsonl.close();
  std::ofstream meta(dir + "/meta.json");
  meta << json{{"tiny_cards",
                {{"root", "data"},
                 {"annotation", "data/train.jsonl"},
                 {"data_augment", false},
                 {"repeat_time", 1},
                 {"length", records.size() + extra_lines.size()}}}}
              .dump();
  return dir + "/meta.json";
}

}  // namespace internvl::testing
