// A plain-std:: interface over libsentencepiece.
//
// Two reasons keep sentencepiece behind it:
//  1. sentencepiece_processor.h defines its own absl::string_view, which
//     clashes with Abseil: only sp_plugin.cc includes it, with no Abseil.
//  2. Debian's libsentencepiece0 exports a private copy of protobuf-lite
//     (3.14) under the real protobuf symbol names. In a process that also
//     loads libprotobuf.so.32 (libtorch and gRPC do) whichever loads first
//     wins the symbols: libprotobuf's static initialisers crash, or
//     sentencepiece's version check aborts. So sentencepiece lives in a
//     plugin, libinternvl_sp.so, that Load() opens with
//     dlopen(RTLD_LOCAL | RTLD_DEEPBIND): the plugin and libsentencepiece
//     resolve their own protobuf copy first, the rest of the process never
//     sees it.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace internvl::tokenizer {

class SpProcessor {
 public:
  // Loads a serialized ModelProto (tokenizer.model) through the plugin. On
  // failure returns null and sets *error (also when the plugin is missing).
  static std::unique_ptr<SpProcessor> Load(const std::string& path, std::string* error);
  // Inline so that the vtable and typeinfo need no symbol across the plugin
  // boundary.
  virtual ~SpProcessor() = default;

  // sp_model.encode(text, out_type=str): the pieces, with byte-fallback pieces
  // spelled "<0xAB>" and unknown characters as their surface text.
  virtual bool EncodeAsPieces(const std::string& text, std::vector<std::string>* pieces,
                              std::string* error) const = 0;
  // sp_model.decode(pieces) (DecodePieces): pieces that are not in the model
  // are emitted verbatim, byte pieces are joined into UTF-8 (U+FFFD for
  // ill-formed bytes), "▁" becomes a space.
  virtual std::string DecodePieces(const std::vector<std::string>& pieces) const = 0;

  virtual int PieceToId(const std::string& piece) const = 0;  // unk_id() when unknown
  virtual std::string IdToPiece(int id) const = 0;
  virtual int piece_size() const = 0;
  virtual int unk_id() const = 0;
  virtual bool IsByte(int id) const = 0;
  virtual bool IsControl(int id) const = 0;
  virtual bool IsUnknown(int id) const = 0;
};

// The plugin's one exported entry point (C linkage, looked up by dlsym).
extern "C" using SpCreateFn = SpProcessor* (*)(const char* path, std::string* error);
inline constexpr char kSpCreateSymbol[] = "internvl_sp_create";

}  // namespace internvl::tokenizer
