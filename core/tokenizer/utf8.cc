#include "core/tokenizer/utf8.h"

#include <memory>

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

namespace internvl::tokenizer {
namespace {

enum class Scan { kComplete, kInvalid, kTruncated };

// Scans one sequence at p[0..n). On kComplete and kInvalid, *len is the number
// of bytes consumed: the whole character, or the maximal ill-formed subpart
// (the lead byte plus the continuation bytes that were still acceptable),
// which is what Python replaces by one U+FFFD. On kTruncated the input ended
// while the sequence was still well-formed (*len = bytes available).
Scan ScanOne(const unsigned char* p, size_t n, size_t* len) {
  const unsigned char b = p[0];
  if (b < 0x80) {
    *len = 1;
    return Scan::kComplete;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // accepted range of the second byte
  if (b >= 0xC2 && b <= 0xDF) {
    need = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;  // no surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    *len = 1;
    return Scan::kInvalid;
  }
  for (size_t j = 1; j < need; ++j) {
    if (j >= n) {
      *len = j;
      return Scan::kTruncated;
    }
    const unsigned char c = p[j];
    const bool ok = j == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) {
      *len = j;
      return Scan::kInvalid;
    }
  }
  *len = need;
  return Scan::kComplete;
}

}  // namespace

size_t FindInvalidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    if (ScanOne(p + i, s.size() - i, &len) != Scan::kComplete) return i;
    i += len;
  }
  return kUtf8Valid;
}

std::string DecodeUtf8Replace(absl::string_view bytes) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len;
    const Scan r = ScanOne(p + i, bytes.size() - i, &len);
    if (r == Scan::kComplete) {
      out.append(bytes.data() + i, len);
    } else {
      out.append(kReplacement, 3);
    }
    i += len;
  }
  return out;
}

size_t IncompleteUtf8Suffix(absl::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  // A lead byte can never be a continuation byte, so the candidate sequence
  // starts at the last lead byte among the final three bytes.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char b = p[n - back];
    if (b >= 0x80 && b <= 0xBF) continue;  // continuation byte: look further back
    size_t len;
    return ScanOne(p + n - back, back, &len) == Scan::kTruncated ? back : 0;
  }
  return 0;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string NormalizeNfc(absl::string_view utf8) {
  bool ascii = true;
  for (char c : utf8) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(utf8);
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) return std::string(utf8);  // ICU data missing: leave text as is
  const icu::StringPiece piece(utf8.data(), static_cast<int32_t>(utf8.size()));
  if (nfc->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return std::string(utf8);
  status = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out);
  nfc->normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) return std::string(utf8);
  return out;
}

}  // namespace internvl::tokenizer
