// UTF-8 helpers with the exact semantics the HF reference relies on:
// Python's `bytes.decode("utf-8", errors="replace")` (one U+FFFD per maximal
// ill-formed subpart, Unicode Table 3-7), detection of a valid-but-incomplete
// trailing sequence (what a streaming detokenizer must hold back), and NFC
// normalisation (Qwen2Tokenizer.prepare_for_tokenization) through ICU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace internvl::tokenizer {

inline constexpr size_t kUtf8Valid = static_cast<size_t>(-1);

// Byte offset of the first ill-formed UTF-8 sequence in `s` (a truncated
// sequence at the end counts as ill-formed), or kUtf8Valid.
size_t FindInvalidUtf8(absl::string_view s);

// Python's bytes.decode("utf-8", errors="replace").
std::string DecodeUtf8Replace(absl::string_view bytes);

// Length of the trailing run of `bytes` that is a well-formed but incomplete
// UTF-8 sequence (1..3), or 0. Such bytes may still become a character once
// more bytes arrive.
size_t IncompleteUtf8Suffix(absl::string_view bytes);

// Appends code point `cp` (assumed a Unicode scalar value) as UTF-8.
void AppendUtf8(uint32_t cp, std::string* out);

// Unicode NFC of valid UTF-8 text (unicodedata.normalize("NFC", text)).
// ASCII-only and already-normalised text is returned without copying work.
std::string NormalizeNfc(absl::string_view utf8);

}  // namespace internvl::tokenizer
