// Tokenizer throughput on a mixed English / Chinese / code corpus, single
// thread, for every tokenizer folder, printed beside same-run references over
// the same bytes (memcpy, and a byte-scan loop counting UTF-8 characters) as
// ratios. Target: >= 5 MB/s per core for the Qwen2 BPE.
//
//   bench_tokenizer [--tokenizers DIR] [--mb N]
// DIR defaults to $INTERNVL_TOKENIZERS or ../shared/tokenizers.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/tokenizer/streaming_detokenizer.h"
#include "core/tokenizer/tokenizer.h"

namespace {

using internvl::tokenizer::Tokenizer;
using Clock = std::chrono::steady_clock;

constexpr const char* kEnglish[] = {
    "The quick brown fox jumps over the lazy dog while the committee debates the budget for "
    "next year's festival. ",
    "InternVL is a multimodal large language model that understands images, documents and "
    "videos; it answers questions, reads charts, and describes scenes in detail. ",
    "On Tuesday, 14 March 2024, at 09:30 the server logged 1,234,567 requests (99.9% success). ",
    "She said: \"I'm not sure we'll make it,\" but they didn't give up and reached the summit. ",
};
constexpr const char* kChinese[] = {
    "书生·万象是由上海人工智能实验室开发的多模态大模型，能够理解图像、视频和文档。",
    "今天天气很好，我们一起去公园散步，看到湖面上有几只白色的天鹅在游泳。",
    "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。",
    "《红楼梦》是中国古典四大名著之一，描写了贾、史、王、薛四大家族的兴衰。",
};
constexpr const char* kCode[] = {
    "for (int i = 0; i < n; ++i) {\n    sum += a[i] * b[i];\n}\n",
    "def dynamic_preprocess(image, min_num=1, max_num=12, image_size=448):\n"
    "    orig_width, orig_height = image.size\n    return [image.crop(box) for box in boxes]\n",
    "#include <vector>\nstd::vector<int> ids = tokenizer->Encode(text).value();\n",
    "{\"model\": \"InternVL2-1B\", \"max_new_tokens\": 1024, \"do_sample\": false}\n",
};

// Documents of a few KB mixing the three kinds, with a counter so that the
// text is not one repeated string.
std::vector<std::string> BuildCorpus(size_t target_bytes, size_t* total) {
  std::vector<std::string> docs;
  *total = 0;
  unsigned seed = 12345;
  auto next = [&seed] { return seed = seed * 1103515245u + 12345u, (seed >> 16) & 0x7fff; };
  int doc_no = 0;
  while (*total < target_bytes) {
    std::string doc = absl::StrCat("Document ", doc_no++, ":\n");
    while (doc.size() < 4096) {
      switch (next() % 3) {
        case 0: doc += kEnglish[next() % 4]; break;
        case 1: doc += kChinese[next() % 4]; break;
        default: doc += kCode[next() % 4]; break;
      }
      if (next() % 5 == 0) absl::StrAppend(&doc, " #", next(), "\n");
    }
    *total += doc.size();
    docs.push_back(std::move(doc));
  }
  return docs;
}

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  if (const char* env = std::getenv("INTERNVL_TOKENIZERS")) dir = env;
  if (dir.empty()) dir = "../shared/tokenizers";
  double mb = 4;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--tokenizers") && i + 1 < argc) dir = argv[++i];
    else if (!std::strcmp(argv[i], "--mb") && i + 1 < argc) mb = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--tokenizers DIR] [--mb N]\n", argv[0]);
      return 2;
    }
  }
  size_t total = 0;
  const std::vector<std::string> corpus = BuildCorpus(static_cast<size_t>(mb * 1e6), &total);
  const double total_mb = total / 1e6;

  // References over the same bytes, same run.
  std::vector<char> sink(8192);
  auto t0 = Clock::now();
  size_t guard = 0;
  for (int rep = 0; rep < 20; ++rep) {
    for (const std::string& d : corpus) {
      std::memcpy(sink.data(), d.data(), std::min(d.size(), sink.size()));
      guard += static_cast<unsigned char>(sink[rep % 64]);
    }
  }
  const double memcpy_mbs = 20 * total_mb / Seconds(t0, Clock::now());
  t0 = Clock::now();
  size_t chars = 0;
  for (int rep = 0; rep < 5; ++rep) {
    for (const std::string& d : corpus) {
      for (unsigned char c : d) chars += (c & 0xC0) != 0x80;
    }
  }
  const double scan_mbs = 5 * total_mb / Seconds(t0, Clock::now());
  std::printf("corpus: %zu docs, %.2f MB (English/Chinese/code), %zu chars per pass\n", corpus.size(),
              total_mb, chars / 5);
  std::printf("reference memcpy:        %9.1f MB/s\n", memcpy_mbs);
  std::printf("reference byte scan:     %9.1f MB/s\n", scan_mbs);
  std::printf("%-28s %10s %10s %12s %12s %12s\n", "tokenizer", "encode", "tokens", "vs scan", "decode",
              "stream");

  const char* folders[] = {"internvl2-1b-qwen2", "internvl2_5-1b-qwen2_5", "internvl2-internlm2",
                           "STANDIN-internvl2-40b-yi"};
  int failures = 0;
  for (const char* folder : folders) {
    auto tok = Tokenizer::Load(dir + "/" + folder);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s: %s\n", folder, tok.status().ToString().c_str());
      ++failures;
      continue;
    }
    std::vector<std::vector<int>> ids(corpus.size());
    size_t n_tokens = 0;
    t0 = Clock::now();
    for (size_t i = 0; i < corpus.size(); ++i) {
      ids[i] = *(*tok)->Encode(corpus[i]);
      n_tokens += ids[i].size();
    }
    const double encode_mbs = total_mb / Seconds(t0, Clock::now());
    t0 = Clock::now();
    size_t decoded = 0;
    for (const auto& d : ids) decoded += (*tok)->Decode(d, true).size();
    const double decode_mbs = total_mb / Seconds(t0, Clock::now());
    // Streaming: a token at a time, as generation does (first 64 docs).
    const size_t stream_docs = std::min<size_t>(64, ids.size());
    size_t stream_bytes = 0;
    t0 = Clock::now();
    for (size_t i = 0; i < stream_docs; ++i) {
      internvl::tokenizer::StreamingDetokenizer stream(tok->get());
      for (int id : ids[i]) stream_bytes += stream.Put(id).size();
      stream_bytes += stream.Flush().size();
    }
    const double stream_mbs = stream_bytes / 1e6 / Seconds(t0, Clock::now());
    std::printf("%-28s %6.2f MB/s %10zu %11.4fx %7.1f MB/s %7.1f MB/s\n", folder, encode_mbs, n_tokens,
                encode_mbs / scan_mbs, decode_mbs, stream_mbs);
    guard += decoded;
  }
  std::printf("(guard %zu)\n", guard % 7);
  return failures ? 1 : 0;
}
