#include "chat/py_case.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

#include "tokenizer/unicode.h"

namespace llmserve::pycase {
namespace {

struct CaseMapping {
  uint32_t cp;
  const char* to;  // UTF-8
};
struct CodeRange {
  uint32_t first, last;
};

#include "chat/case_data.inc"

template <size_t N>
const char* mapped(const CaseMapping (&table)[N], char32_t c) {
  const auto it = std::lower_bound(std::begin(table), std::end(table), static_cast<uint32_t>(c),
                                   [](const CaseMapping& m, uint32_t v) { return m.cp < v; });
  return it != std::end(table) && it->cp == c ? it->to : nullptr;
}

template <size_t N>
bool in(const CodeRange (&table)[N], char32_t c) {
  const auto it = std::upper_bound(std::begin(table), std::end(table), static_cast<uint32_t>(c),
                                   [](uint32_t v, const CodeRange& r) { return v < r.first; });
  return it != std::begin(table) && c <= std::prev(it)->last;
}

bool cased(char32_t c) { return in(kCasedRanges, c); }
bool ignorable(char32_t c) { return in(kCaseIgnorableRanges, c); }

template <size_t N>
void append_mapped(std::string& out, const CaseMapping (&table)[N], char32_t c) {
  if (const char* m = mapped(table, c)) {
    out += m;
  } else {
    unicode::append_utf8(out, c);
  }
}

constexpr char32_t kCapitalSigma = 0x3A3;

// CPython's lower_ucs4: the full lowercase mapping, except that a capital sigma is final (U+03C2)
// after a cased character (case-ignorable ones skipped) not followed by one (likewise).
void append_lower(std::string& out, const std::u32string& s, size_t i) {
  const char32_t c = s[i];
  if (c != kCapitalSigma) return append_mapped(out, kLowerMap, c);
  size_t j = i;
  while (j > 0 && ignorable(s[j - 1])) --j;
  bool final_sigma = j > 0 && cased(s[j - 1]);
  if (final_sigma) {
    size_t k = i + 1;
    while (k < s.size() && ignorable(s[k])) ++k;
    final_sigma = k == s.size() || !cased(s[k]);
  }
  unicode::append_utf8(out, final_sigma ? 0x3C2 : 0x3C3);
}

// Each character of s through `one` (out, the decoded text, the index), as CPython's case methods walk.
template <typename F>
std::string map_chars(std::string_view s, F&& one) {
  const std::u32string u = unicode::decode_utf8(s);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < u.size(); ++i) one(out, u, i);
  return out;
}

}  // namespace

std::string lower(std::string_view s) { return map_chars(s, append_lower); }

std::string upper(std::string_view s) {
  return map_chars(s, [](std::string& out, const std::u32string& u, size_t i) { append_mapped(out, kUpperMap, u[i]); });
}

std::string title(std::string_view s) {  // title case after an uncased character, lower case after a cased one
  return map_chars(s, [](std::string& out, const std::u32string& u, size_t i) {
    if (i > 0 && cased(u[i - 1])) {
      append_lower(out, u, i);
    } else {
      append_mapped(out, kTitleMap, u[i]);
    }
  });
}

std::string capitalize(std::string_view s) {  // the first character title case, the rest lower case
  return map_chars(s, [](std::string& out, const std::u32string& u, size_t i) {
    if (i == 0) {
      append_mapped(out, kTitleMap, u[0]);
    } else {
      append_lower(out, u, i);
    }
  });
}

std::string swapcase(std::string_view s) {
  return map_chars(s, [](std::string& out, const std::u32string& u, size_t i) {
    if (in(kUppercaseRanges, u[i])) {
      append_lower(out, u, i);
    } else if (in(kLowercaseRanges, u[i])) {
      append_mapped(out, kUpperMap, u[i]);
    } else {
      unicode::append_utf8(out, u[i]);
    }
  });
}

namespace {
// CPython's islower / isupper: no character of the other case or titlecase, and at least one of `want`.
template <size_t A, size_t B>
bool all_of_case(std::string_view s, const CodeRange (&want)[A], const CodeRange (&other)[B]) {
  bool any = false;
  for (char32_t c : unicode::decode_utf8(s)) {
    if (in(other, c) || in(kTitlecaseRanges, c)) return false;
    any = any || in(want, c);
  }
  return any;
}
}  // namespace

bool islower(std::string_view s) { return all_of_case(s, kLowercaseRanges, kUppercaseRanges); }
bool isupper(std::string_view s) { return all_of_case(s, kUppercaseRanges, kLowercaseRanges); }

const char* unicode_version() { return kCaseUnicodeVersion; }

}  // namespace llmserve::pycase
