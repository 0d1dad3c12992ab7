// The only translation unit that includes sentencepiece_processor.h (see
// sp_processor.h): no Abseil header may be included here.
#include "core/tokenizer/sp_processor.h"

#include <sentencepiece_processor.h>

namespace internvl::tokenizer {

struct SpProcessor::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SpProcessor::SpProcessor() : impl_(std::make_unique<Impl>()) {}
SpProcessor::~SpProcessor() = default;

std::unique_ptr<SpProcessor> SpProcessor::Load(const std::string& path, std::string* error) {
  std::unique_ptr<SpProcessor> p(new SpProcessor());
  const auto status = p->impl_->sp.Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return p;
}

bool SpProcessor::EncodeAsPieces(const std::string& text, std::vector<std::string>* pieces,
                                 std::string* error) const {
  pieces->clear();
  const auto status = impl_->sp.Encode(text, pieces);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

std::string SpProcessor::DecodePieces(const std::vector<std::string>& pieces) const {
  std::string out;
  // Decoding pieces cannot fail for a loaded model; an error leaves `out` empty.
  (void)impl_->sp.Decode(pieces, &out);
  return out;
}

int SpProcessor::PieceToId(const std::string& piece) const { return impl_->sp.PieceToId(piece); }
std::string SpProcessor::IdToPiece(int id) const { return impl_->sp.IdToPiece(id); }
int SpProcessor::piece_size() const { return impl_->sp.GetPieceSize(); }
int SpProcessor::unk_id() const { return impl_->sp.unk_id(); }
bool SpProcessor::IsByte(int id) const { return impl_->sp.IsByte(id); }
bool SpProcessor::IsControl(int id) const { return impl_->sp.IsControl(id); }
bool SpProcessor::IsUnknown(int id) const { return impl_->sp.IsUnknown(id); }

}  // namespace internvl::tokenizer
