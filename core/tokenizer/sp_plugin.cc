// libinternvl_sp.so: the only translation unit that includes
// sentencepiece_processor.h (see sp_processor.h): no Abseil header here.
#include <sentencepiece_processor.h>

#include "core/tokenizer/sp_processor.h"

namespace internvl::tokenizer {
namespace {

class SentencePieceImpl final : public SpProcessor {
 public:
  bool Load(const std::string& path, std::string* error) {
    const auto status = sp_.Load(path);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    return true;
  }

  bool EncodeAsPieces(const std::string& text, std::vector<std::string>* pieces, std::string* error) const override {
    pieces->clear();
    const auto status = sp_.Encode(text, pieces);
    if (!status.ok()) {
      *error = status.ToString();
      return false;
    }
    return true;
  }

  std::string DecodePieces(const std::vector<std::string>& pieces) const override {
    std::string out;
    // Decoding pieces cannot fail for a loaded model; an error leaves `out` empty.
    (void)sp_.Decode(pieces, &out);
    return out;
  }

  int PieceToId(const std::string& piece) const override { return sp_.PieceToId(piece); }
  std::string IdToPiece(int id) const override { return sp_.IdToPiece(id); }
  int piece_size() const override { return sp_.GetPieceSize(); }
  int unk_id() const override { return sp_.unk_id(); }
  bool IsByte(int id) const override { return sp_.IsByte(id); }
  bool IsControl(int id) const override { return sp_.IsControl(id); }
  bool IsUnknown(int id) const override { return sp_.IsUnknown(id); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace
}  // namespace internvl::tokenizer

extern "C" __attribute__((visibility("default"))) internvl::tokenizer::SpProcessor* internvl_sp_create(
    const char* path, std::string* error) {
  auto* p = new internvl::tokenizer::SentencePieceImpl();
  if (!p->Load(path, error)) {
    delete p;
    return nullptr;
  }
  return p;
}
