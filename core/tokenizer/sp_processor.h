// A narrow wrapper over libsentencepiece's SentencePieceProcessor.
//
// Why this exists: sentencepiece_processor.h declares its own
// `absl::string_view`, which clashes with Abseil's. Only sp_processor.cc
// includes it, and that file includes no Abseil header; this interface uses
// plain std types and reports errors as strings.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace internvl::tokenizer {

class SpProcessor {
 public:
  // Loads a serialized ModelProto (tokenizer.model). On failure returns null
  // and sets *error.
  static std::unique_ptr<SpProcessor> Load(const std::string& path, std::string* error);
  ~SpProcessor();

  // sp_model.encode(text, out_type=str): the pieces, with byte-fallback pieces
  // spelled "<0xAB>" and unknown characters as their surface text.
  bool EncodeAsPieces(const std::string& text, std::vector<std::string>* pieces,
                      std::string* error) const;
  // sp_model.decode(pieces) (DecodePieces): pieces that are not in the model
  // are emitted verbatim, byte pieces are joined into UTF-8 (U+FFFD for
  // ill-formed bytes), "▁" becomes a space.
  std::string DecodePieces(const std::vector<std::string>& pieces) const;

  int PieceToId(const std::string& piece) const;  // unk_id() when unknown
  std::string IdToPiece(int id) const;
  int piece_size() const;
  int unk_id() const;
  bool IsByte(int id) const;
  bool IsControl(int id) const;
  bool IsUnknown(int id) const;

 private:
  SpProcessor();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace internvl::tokenizer
