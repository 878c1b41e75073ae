#include "engine/guided.h"

#include <algorithm>
#include <atomic>

#include "common/error.h"
#include "engine/sampling_params.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {
namespace {

// JSON modes (GuideState::mode).
enum : uint8_t {
  kStart,     // before the top-level object
  kValue,     // a value expected
  kArrFirst,  // after '[': a value or ']'
  kObjFirst,  // after '{': a key or '}'
  kObjKey,    // after ',' in an object: a key
  kColon,     // after a key
  kAfter,     // after a value inside a container: ',' or its closer
  kString,    // inside a string value (sub: 0 plain, 1 after '\', 2-5 the hex digits of \u)
  kKey,       // inside a key (as kString)
  kNumber,    // sub: see number_byte
  kLiteral,   // sub: literal * 8 + bytes matched
  kDone,      // the top-level object closed
};

const char* const kLiterals[3] = {"true", "false", "null"};

bool is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_hex(unsigned char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
bool top_is_object(const GuideState& s) { return (s.stack[(s.depth - 1) / 64] >> ((s.depth - 1) % 64)) & 1u; }

bool push(GuideState& s, bool object) {
  if (s.depth >= Guide::kMaxDepth) return false;
  const uint64_t bit = uint64_t{1} << (s.depth % 64);
  if (object)
    s.stack[s.depth / 64] |= bit;
  else
    s.stack[s.depth / 64] &= ~bit;
  ++s.depth;
  return true;
}

void value_done(GuideState& s) { s.mode = s.depth == 0 ? kDone : kAfter; }

// The first byte of a value.
bool value_start(GuideState& s, unsigned char c) {
  s.sub = 0;
  switch (c) {
    case '{': s.mode = kObjFirst; return push(s, true);
    case '[': s.mode = kArrFirst; return push(s, false);
    case '"': s.mode = kString; return true;
    case '-': s.mode = kNumber, s.sub = 1; return true;
    case '0': s.mode = kNumber, s.sub = 2; return true;
    case 't': s.mode = kLiteral, s.sub = 0 * 8 + 1; return true;
    case 'f': s.mode = kLiteral, s.sub = 1 * 8 + 1; return true;
    case 'n': s.mode = kLiteral, s.sub = 2 * 8 + 1; return true;
    default:
      if (c >= '1' && c <= '9') {
        s.mode = kNumber, s.sub = 3;
        return true;
      }
      return false;
  }
}

// A byte inside a string or key; the closing quote ends it.
bool string_byte(GuideState& s, unsigned char c) {
  if (s.utf8 > 0) {  // a continuation byte of a multi-byte character
    if ((c & 0xC0) != 0x80) return false;
    --s.utf8;
    return true;
  }
  if (s.sub == 1) {  // after a backslash
    if (c == 'u') return s.sub = 2, true;
    if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') return s.sub = 0, true;
    return false;
  }
  if (s.sub >= 2) {  // the four hex digits of \uXXXX
    if (!is_hex(c)) return false;
    s.sub = s.sub == 5 ? 0 : s.sub + 1;
    return true;
  }
  if (c == '"') {
    if (s.mode == kKey)
      s.mode = kColon;
    else
      value_done(s);
    return true;
  }
  if (c == '\\') return s.sub = 1, true;
  if (c < 0x20) return false;  // control characters must be escaped
  if (c < 0x80) return true;
  if (c >= 0xC2 && c <= 0xDF) return s.utf8 = 1, true;
  if (c >= 0xE0 && c <= 0xEF) return s.utf8 = 2, true;
  if (c >= 0xF0 && c <= 0xF4) return s.utf8 = 3, true;
  return false;
}

// Number states: 1 after '-', 2 a leading 0, 3 integer digits, 4 after '.', 5 fraction digits, 6 after
// 'e', 7 after the exponent's sign, 8 exponent digits. Returns 1 consumed, 0 rejected, -1 the number
// ended before this byte (which the caller feeds again in the next mode).
int number_byte(GuideState& s, unsigned char c) {
  const bool digit = is_digit(c), exp = c == 'e' || c == 'E';
  switch (s.sub) {
    case 1: if (c == '0') return s.sub = 2, 1; if (digit) return s.sub = 3, 1; return 0;
    case 2: if (c == '.') return s.sub = 4, 1; if (exp) return s.sub = 6, 1; return -1;
    case 3: if (digit) return 1; if (c == '.') return s.sub = 4, 1; if (exp) return s.sub = 6, 1; return -1;
    case 4: if (digit) return s.sub = 5, 1; return 0;
    case 5: if (digit) return 1; if (exp) return s.sub = 6, 1; return -1;
    case 6: if (c == '+' || c == '-') return s.sub = 7, 1; if (digit) return s.sub = 8, 1; return 0;
    case 7: if (digit) return s.sub = 8, 1; return 0;
    case 8: if (digit) return 1; return -1;
    default: return 0;
  }
}

}  // namespace

Guide::Guide(Kind k) : kind_(k) {
  static std::atomic<uint64_t> next{1};
  id_ = next++;
}

std::shared_ptr<const Guide> Guide::json() {
  static const std::shared_ptr<const Guide> g(new Guide(Kind::Json));
  return g;
}

std::string Guide::key(const GuideState& s) const {
  std::string k(reinterpret_cast<const char*>(&id_), sizeof id_);
  auto put = [&](const auto& v) { k.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(s.dead);
  if (kind_ == Kind::Json) {
    put(s.mode), put(s.sub), put(s.ws), put(s.utf8), put(s.depth), put(s.stack[0]), put(s.stack[1]);
  } else {
    put(s.lo), put(s.hi), put(s.off);
  }
  return k;
}

std::shared_ptr<const Guide> Guide::choice(std::vector<std::string> choices) {
  if (choices.empty()) throw Error("'guided_choice' must be a non-empty list of strings");
  for (const auto& c : choices)
    if (c.empty()) throw Error("'guided_choice' strings must not be empty");
  std::sort(choices.begin(), choices.end());
  choices.erase(std::unique(choices.begin(), choices.end()), choices.end());
  auto g = std::shared_ptr<Guide>(new Guide(Kind::Choice));
  g->choices_ = std::move(choices);
  return g;
}

GuideState Guide::start() const {
  GuideState s;
  s.mode = kStart;
  s.lo = 0, s.hi = static_cast<int32_t>(choices_.size()), s.off = 0;
  return s;
}

bool Guide::feed(GuideState& s, std::string_view bytes) const {
  if (s.dead) return false;
  for (unsigned char c : bytes)
    if (!(kind_ == Kind::Json ? json_byte(s, c) : choice_byte(s, c))) return s.dead = true, false;
  return true;
}

bool Guide::complete(const GuideState& s) const {
  if (s.dead) return false;
  if (kind_ == Kind::Json) return s.mode == kDone;
  return s.lo < s.hi && static_cast<int32_t>(choices_[s.lo].size()) == s.off;
}

bool Guide::json_byte(GuideState& s, unsigned char c) const {
  if (s.mode == kString || s.mode == kKey) return string_byte(s, c);
  if (s.mode == kNumber) {
    const int r = number_byte(s, c);
    if (r >= 0) return r == 1;
    value_done(s);  // the number ended: this byte belongs to what follows it
  }
  if (s.mode == kLiteral) {
    const char* lit = kLiterals[s.sub / 8];
    const int at = s.sub % 8;
    if (c != static_cast<unsigned char>(lit[at])) return false;
    if (lit[at + 1] == '\0')
      value_done(s);
    else
      ++s.sub;
    return true;
  }
  if (s.mode == kDone) return false;
  if (is_ws(c)) return ++s.ws <= kMaxWhitespace;
  s.ws = 0;
  switch (s.mode) {
    case kStart: return c == '{' && (s.mode = kObjFirst, push(s, true));
    case kValue: return value_start(s, c);
    case kArrFirst:
      if (c == ']') return --s.depth, value_done(s), true;
      return value_start(s, c);
    case kObjFirst:
      if (c == '}') return --s.depth, value_done(s), true;
      [[fallthrough]];
    case kObjKey:
      if (c != '"') return false;
      s.mode = kKey, s.sub = 0;
      return true;
    case kColon: return c == ':' && (s.mode = kValue, true);
    case kAfter:
      if (c == ',') return s.mode = top_is_object(s) ? kObjKey : kValue, true;
      if ((c == '}' && top_is_object(s)) || (c == ']' && !top_is_object(s))) return --s.depth, value_done(s), true;
      return false;
    default: return false;
  }
}

bool Guide::choice_byte(GuideState& s, unsigned char c) const {
  // The candidates share the fed prefix and are sorted: the one that is the prefix itself (if any)
  // comes first, the others in the order of their next byte, so those continuing with c are one run.
  auto first = choices_.begin() + s.lo, last = choices_.begin() + s.hi;
  if (first != last && static_cast<int32_t>(first->size()) == s.off) ++first;
  const auto next = [&](const std::string& x) { return static_cast<unsigned char>(x[s.off]); };
  const auto lo = std::partition_point(first, last, [&](const std::string& x) { return next(x) < c; });
  const auto hi = std::partition_point(lo, last, [&](const std::string& x) { return next(x) == c; });
  if (lo == hi) return false;
  s.lo = static_cast<int32_t>(lo - choices_.begin()), s.hi = static_cast<int32_t>(hi - choices_.begin()), ++s.off;
  return true;
}

bool Guide::in_plain_string(const GuideState& s) const {
  return kind_ == Kind::Json && !s.dead && (s.mode == kString || s.mode == kKey) && s.sub == 0 && s.utf8 == 0;
}

bool plain_string_bytes(std::string_view bytes) {
  GuideState s;
  s.mode = kString;
  for (unsigned char c : bytes) {
    if (c == '"' || c == '\\') return false;
    if (!string_byte(s, c)) return false;
  }
  return s.utf8 == 0;
}

std::shared_ptr<const GuidedTokens> guided_tokens(std::vector<std::string> bytes) {
  auto t = std::make_shared<GuidedTokens>();
  t->plain.resize(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) t->plain[i] = !bytes[i].empty() && plain_string_bytes(bytes[i]);
  t->bytes = std::move(bytes);
  return t;
}

std::shared_ptr<const GuidedTokens> guided_tokens(const Tokenizer& tok) {
  std::vector<std::string> bytes(static_cast<size_t>(tok.vocab_size()));
  for (int32_t id = 0; id < tok.vocab_size(); ++id) bytes[id] = tok.token_bytes(id, true);
  return guided_tokens(std::move(bytes));
}

std::shared_ptr<const Guide> make_guide(const SamplingParams& p) {
  if (p.guided == "json") return Guide::json();
  if (p.guided == "choice") return Guide::choice(p.guided_choice);
  return nullptr;
}

}  // namespace llmserve
