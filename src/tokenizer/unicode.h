// Unicode support for the tokenizer: UTF-8 <-> code points, general categories, the White_Space
// property, and NFC normalization. Tables are generated from the Unicode data by
// scripts/gen_unicode_tables.py (src/tokenizer/unicode_data.inc).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace llmserve::unicode {

// General category, in the generator's order.
enum class Cat : uint8_t {
  Cn, Lu, Ll, Lt, Lm, Lo, Mn, Mc, Me, Nd, Nl, No, Pc, Pd, Ps, Pe, Pi, Pf, Po, Sm, Sc, Sk, So, Zs, Zl, Zp,
  Cc, Cf, Cs, Co
};

Cat category(char32_t cp);
// Major class letter of a category: 'L', 'M', 'N', 'P', 'S', 'Z' or 'C'.
char major(Cat c);
inline bool is_letter(char32_t cp) { return major(category(cp)) == 'L'; }
inline bool is_number(char32_t cp) { return major(category(cp)) == 'N'; }
// The White_Space property (what \s matches in Unicode-aware regex engines).
bool is_white_space(char32_t cp);
const char* version();

// Decodes UTF-8; each invalid or truncated sequence becomes U+FFFD.
std::u32string decode_utf8(std::string_view s);
void append_utf8(std::string& out, char32_t cp);
inline size_t utf8_length(char32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }
// The characters (code points) of UTF-8 text: its bytes that are not continuation bytes.
inline int64_t code_points(std::string_view s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}
std::string encode_utf8(std::u32string_view s);

// Canonical composition (NFC).
std::u32string nfc(const std::u32string& s);
std::string nfc_utf8(std::string_view s);

// Replaces invalid UTF-8 the way Rust's String::from_utf8_lossy does (one U+FFFD per maximal
// invalid subpart), which is what Hugging Face tokenizers' decode produces.
std::string utf8_lossy(std::string_view bytes);
inline bool is_utf8(std::string_view bytes) { return utf8_lossy(bytes) == bytes; }
// Length of the longest prefix of `bytes` that lossy decoding can emit now: complete characters and
// invalid bytes, but not a valid-so-far sequence cut off at the end (more bytes may complete it).
size_t utf8_stable_prefix(std::string_view bytes);
// s with every occurrence of `from` (not empty) replaced by `to`, left to right (HF's Replace with a string).
std::string replace_all(std::string_view s, std::string_view from, std::string_view to);
// The character at byte i of s (i < s.size()): its code point (U+FFFD for an invalid or cut-off
// sequence, as decode_utf8 reads it) and, in `len`, its bytes (at least 1).
char32_t utf8_at(std::string_view s, size_t i, size_t& len);
// The start of the character byte i belongs to: i, or the lead byte before i's continuation bytes
// (at most 3 back).
size_t utf8_char_start(std::string_view s, size_t i);

}  // namespace llmserve::unicode
