#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <memory>
#include <vector>

namespace llmserve::unicode {

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string r;
  size_t at = 0;
  for (size_t hit = s.find(from); hit != std::string_view::npos; hit = s.find(from, at)) {
    r.append(s, at, hit - at);
    r.append(to);
    at = hit + from.size();
  }
  r.append(s.substr(at));
  return r;
}
namespace {

struct CategoryRange {
  char32_t first, last;
  uint8_t cat;
};
struct CodeValue {
  char32_t cp;
  uint8_t value;
};
struct Decomposition {
  char32_t cp, first, second;
};
struct Composition {
  char32_t first, second, composite;
};

#include "tokenizer/unicode_data.inc"

// Direct table for the Basic Multilingual Plane; binary search above it.
const std::array<uint8_t, 0x10000>& bmp_table() {
  static const auto table = [] {
    auto t = std::make_unique<std::array<uint8_t, 0x10000>>();
    t->fill(0);
    for (const auto& r : kCategoryRanges)
      for (char32_t c = r.first; c <= r.last && c < 0x10000; ++c) (*t)[c] = r.cat;
    return t;
  }();
  return *table;
}

constexpr char32_t SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
constexpr int LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

uint8_t ccc(char32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::lower_bound(std::begin(kCombiningClass), std::end(kCombiningClass), cp,
                             [](const CodeValue& v, char32_t c) { return v.cp < c; });
  return it != std::end(kCombiningClass) && it->cp == cp ? it->value : 0;
}

void decompose(char32_t cp, std::u32string& out) {
  if (cp >= SBase && cp < SBase + SCount) {
    const int s = static_cast<int>(cp - SBase);
    out.push_back(LBase + s / NCount);
    out.push_back(VBase + (s % NCount) / TCount);
    if (s % TCount) out.push_back(TBase + s % TCount);
    return;
  }
  auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), cp,
                             [](const Decomposition& d, char32_t c) { return d.cp < c; });
  if (it == std::end(kDecompositions) || it->cp != cp) {
    out.push_back(cp);
    return;
  }
  decompose(it->first, out);
  if (it->second) decompose(it->second, out);
}

char32_t compose(char32_t a, char32_t b) {
  if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
    return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
  if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
    return a + (b - TBase);
  auto it = std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::make_pair(a, b),
                             [](const Composition& c, const std::pair<char32_t, char32_t>& k) {
                               return c.first < k.first || (c.first == k.first && c.second < k.second);
                             });
  if (it != std::end(kCompositions) && it->first == a && it->second == b) return it->composite;
  return 0;
}

// Length of a UTF-8 sequence from its lead byte, 0 if the byte cannot start one.
int seq_len(unsigned char b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// Whether `b` may follow `lead` as the second byte (the tighter ranges of E0, ED, F0, F4).
bool second_ok(unsigned char lead, unsigned char b) {
  if (lead == 0xE0) return b >= 0xA0 && b <= 0xBF;
  if (lead == 0xED) return b >= 0x80 && b <= 0x9F;
  if (lead == 0xF0) return b >= 0x90 && b <= 0xBF;
  if (lead == 0xF4) return b >= 0x80 && b <= 0x8F;
  return b >= 0x80 && b <= 0xBF;
}

// Scans one character at s[i]: returns bytes consumed and sets cp (U+FFFD for an invalid maximal
// subpart). `complete` is false when the sequence is valid so far but runs past the end.
size_t scan(std::string_view s, size_t i, char32_t& cp, bool& complete) {
  complete = true;
  const auto lead = static_cast<unsigned char>(s[i]);
  const int n = seq_len(lead);
  if (n == 0) {
    cp = 0xFFFD;
    return 1;
  }
  if (n == 1) {
    cp = lead;
    return 1;
  }
  char32_t v = lead & (0xFF >> (n + 1));
  size_t k = 1;
  for (; k < static_cast<size_t>(n); ++k) {
    if (i + k >= s.size()) {
      complete = false;
      cp = 0xFFFD;
      return k;
    }
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? !second_ok(lead, b) : (b < 0x80 || b > 0xBF)) {
      cp = 0xFFFD;
      return k;
    }
    v = (v << 6) | (b & 0x3F);
  }
  cp = v;
  return k;
}

}  // namespace

Cat category(char32_t cp) {
  if (cp < 0x10000) return static_cast<Cat>(bmp_table()[cp]);
  auto it = std::upper_bound(std::begin(kCategoryRanges), std::end(kCategoryRanges), cp,
                             [](char32_t c, const CategoryRange& r) { return c < r.first; });
  if (it == std::begin(kCategoryRanges)) return Cat::Cn;
  --it;
  return cp <= it->last ? static_cast<Cat>(it->cat) : Cat::Cn;
}

char major(Cat c) {
  static const char m[] = "CLLLLLMMMNNNPPPPPPPSSSSZZZCCCC";
  return m[static_cast<int>(c)];
}

bool is_white_space(char32_t c) {
  return (c >= 0x9 && c <= 0xD) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

const char* version() { return kUnicodeVersion; }

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    char32_t cp;
    bool complete;
    i += scan(s, i, cp, complete);
    out.push_back(cp);
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

std::u32string nfc(const std::u32string& s) {
  if (std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x300; })) return s;
  std::u32string d;
  for (char32_t c : s) decompose(c, d);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j, [](char32_t a, char32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // Canonical composition.
  std::u32string out;
  size_t starter = std::u32string::npos;
  int last_ccc = -1;
  for (char32_t c : d) {
    const int cc = ccc(c);
    if (starter != std::u32string::npos && (last_ccc < cc || (last_ccc == 0 && out.size() == starter + 1))) {
      if (char32_t comp = compose(out[starter], c)) {
        out[starter] = comp;
        continue;
      }
    }
    if (cc == 0) {
      starter = out.size();
      last_ccc = 0;
    } else {
      last_ccc = cc;
    }
    out.push_back(c);
  }
  return out;
}

std::string nfc_utf8(std::string_view s) {
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0xCC; })) return std::string(s);
  return encode_utf8(nfc(decode_utf8(s)));
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    char32_t cp;
    bool complete;
    const size_t n = scan(bytes, i, cp, complete);
    if (cp == 0xFFFD && !(n == 3 && bytes.substr(i, 3) == "\xEF\xBF\xBD")) {
      out += "\xEF\xBF\xBD";
    } else {
      out.append(bytes.substr(i, n));
    }
    i += n;
  }
  return out;
}

size_t utf8_stable_prefix(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    char32_t cp;
    bool complete;
    const size_t n = scan(bytes, i, cp, complete);
    if (!complete) break;
    i += n;
  }
  return i;
}

char32_t utf8_at(std::string_view s, size_t i, size_t& len) {
  char32_t cp;
  bool complete;
  len = scan(s, i, cp, complete);
  return cp;
}

size_t utf8_char_start(std::string_view s, size_t i) {
  size_t k = i;
  while (k > 0 && i - k < 3 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  return k;
}

}  // namespace llmserve::unicode
