#include "engine/guided.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_text.h"
#include "engine/grammar.h"
#include "engine/json_schema.h"
#include "engine/regex_dfa.h"
#include "engine/schema_grammar.h"
#include "engine/sampling_params.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

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

// A byte inside a string (after its opening quote): 0 rejected, 1 taken, 2 the closing quote.
int string_char(GuideState& s, unsigned char c) {
  if (s.utf8 > 0) {  // a continuation byte of a multi-byte character: the bits above the count of
                     // those left narrow the next one's range (no overlong forms, surrogates or
                     // code points past U+10FFFF: well-formed UTF-8 only)
    static constexpr unsigned char lo[5] = {0x80, 0xA0, 0x80, 0x90, 0x80}, hi[5] = {0xBF, 0xBF, 0x9F, 0xBF, 0x8F};
    const int k = s.utf8 >> 2;
    if (c < lo[k] || c > hi[k]) return 0;
    s.utf8 = static_cast<uint8_t>((s.utf8 & 3) - 1);
    return 1;
  }
  if (s.sub == 1) {  // after a backslash
    if (c == 'u') return s.sub = 2, 1;
    if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') return s.sub = 0, 1;
    return 0;
  }
  if (s.sub >= 2) {  // the four hex digits of \uXXXX
    if (!is_hex(c)) return 0;
    s.sub = s.sub == 5 ? 0 : s.sub + 1;
    return 1;
  }
  if (c == '"') return 2;
  if (c == '\\') return s.sub = 1, 1;
  if (c < 0x20) return 0;  // control characters must be escaped
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return s.utf8 = 1, 1;
  if (c >= 0xE0 && c <= 0xEF) return s.utf8 = static_cast<uint8_t>(2 | (c == 0xE0 ? 1 << 2 : c == 0xED ? 2 << 2 : 0)), 1;
  if (c >= 0xF0 && c <= 0xF4) return s.utf8 = static_cast<uint8_t>(3 | (c == 0xF0 ? 3 << 2 : c == 0xF4 ? 4 << 2 : 0)), 1;
  return 0;
}

// A byte inside a string or key; the closing quote ends it.
bool string_byte(GuideState& s, unsigned char c) {
  const int r = string_char(s, c);
  if (r == 2) {
    if (s.mode == kKey)
      s.mode = kColon;
    else
      value_done(s);
  }
  return r != 0;
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

namespace {
uint64_t new_guide_id() {
  static std::atomic<uint64_t> next{1};
  return next++;
}
}  // namespace

Guide::Guide(Kind k) : kind_(k), id_(new_guide_id()) {}

std::shared_ptr<const Guide> Guide::json(bool compact) {
  static const std::shared_ptr<const Guide> spaced(new Guide(Kind::Json)), tight = [] {
    auto g = std::shared_ptr<Guide>(new Guide(Kind::Json));
    g->max_ws_ = 0;
    return g;
  }();
  return compact ? tight : spaced;
}

std::string Guide::key(const GuideState& s) const {
  std::string k(reinterpret_cast<const char*>(&id_), sizeof id_);
  auto put = [&](const auto& v) { k.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(s.dead);
  put(s.think), put(s.think_at);
  if (kind_ == Kind::Regex) {
    put(s.rx);
    return k;
  }
  if (kind_ == Kind::Grammar) {
    if (!s.dead) Grammar::key(*s.gram, k);
    return k;
  }
  if (kind_ != Kind::Choice) {
    put(s.mode), put(s.sub), put(s.ws), put(s.utf8), put(s.depth), put(s.stack[0]), put(s.stack[1]);
  } else {
    put(s.lo), put(s.hi), put(s.off);
  }
  if (kind_ == Kind::Schema) {
    put(s.levels), put(s.cand), put(s.off), put(s.rx);
    for (int i = 0; i < s.levels; ++i) put(s.frames[i].node), put(s.frames[i].idx), put(s.frames[i].phase);
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

std::shared_ptr<const Guide> Guide::schema(const std::string& schema_json, bool compact) {
  nlohmann::ordered_json j;
  try {
    j = parse_json<nlohmann::ordered_json>(schema_json);  // (nesting bounded before parsing)
  } catch (const std::exception& e) {
    throw Error(cat("json_schema: not JSON (", e.what(), ")"));
  }
  JsonSchema compiled = compile_json_schema(j);
  if (!compiled.needs_grammar.empty()) {  // (alternatives that begin alike, counted properties) the schema as a grammar
    try {
      return grammar(json_schema_grammar(compiled, compact ? 0 : kMaxWhitespace));
    } catch (const Error& e) {
      throw Error(cat(compiled.needs_grammar, ": guided as a grammar, which cannot take this schema: ", e.what()));
    }
  }
  auto g = std::shared_ptr<Guide>(new Guide(Kind::Schema));
  g->schema_ = std::make_shared<const JsonSchema>(std::move(compiled));
  if (compact) g->max_ws_ = 0;
  return g;
}

std::shared_ptr<const Guide> Guide::regex(const std::string& pattern) {
  auto g = std::shared_ptr<Guide>(new Guide(Kind::Regex));
  g->regex_ = std::make_shared<const RegexDfa>(pattern);
  return g;
}

std::shared_ptr<const Guide> Guide::grammar(const std::string& text) {
  auto g = std::shared_ptr<Guide>(new Guide(Kind::Grammar));
  g->grammar_ = std::make_shared<const Grammar>(text);
  g->grammar_start_ = std::make_shared<const GrammarState>(g->grammar_->start());  // (a start too ambiguous throws here)
  return g;
}

std::shared_ptr<const Guide> Guide::after_think(const std::shared_ptr<const Guide>& g, bool opened) {
  static std::mutex mu;
  static std::map<std::pair<uint64_t, bool>, std::weak_ptr<const Guide>> made;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(g->id(), opened);
  if (auto it = made.find(key); it != made.end())
    if (auto w = it->second.lock()) return w;
  for (auto it = made.begin(); it != made.end();) it = it->second.expired() ? made.erase(it) : std::next(it);
  auto w = std::shared_ptr<Guide>(new Guide(*g));
  w->id_ = new_guide_id();  // (a guide of its own: its states' allowed tokens are not g's)
  w->think_ = opened ? 2 : 1;
  made[key] = w;
  return w;
}

GuideState Guide::start() const {
  GuideState s;
  s.think = think_;
  if (kind_ == Kind::Grammar) s.gram = grammar_start_;  // (shared until fed)
  s.mode = kStart;
  s.lo = 0, s.hi = static_cast<int32_t>(choices_.size()), s.off = 0;
  if (kind_ == Kind::Schema) {
    s.mode = kValue;
    s.levels = 1;
    s.frames[0] = {schema_->root, 0, 0};
  }
  return s;
}

bool Guide::feed(GuideState& s, std::string_view bytes) const {
  if (s.dead) return false;
  if (s.think != 0) {  // after_think: the reasoning's bytes first
    static constexpr std::string_view kOpen = "<think>", kClose = "</think>";
    size_t i = 0;
    for (; i < bytes.size() && s.think != 0; ++i) {
      const char c = bytes[i];
      if (s.think == 1) {  // the answer's start
        if (c == kOpen[s.think_at]) {
          if (++s.think_at == kOpen.size()) s.think = 2, s.think_at = 0;
          continue;
        }
        // Not a reasoning: what looked like its start and the rest are the guided text.
        const std::string text = std::string(kOpen.substr(0, s.think_at)) + std::string(bytes.substr(i));
        s.think = 0, s.think_at = 0;
        return feed(s, text);
      }
      s.think_at = c == kClose[s.think_at] ? s.think_at + 1 : c == '<' ? 1 : 0;
      if (s.think_at == kClose.size()) s.think = 0, s.think_at = 0;
    }
    bytes = bytes.substr(i);
    if (bytes.empty()) return true;
  }
  if (kind_ == Kind::Regex) {
    for (unsigned char c : bytes)
      if ((s.rx = regex_->next(s.rx, c)) == RegexDfa::kDead) return s.dead = true, false;
    return true;
  }
  if (kind_ == Kind::Grammar) {
    if (bytes.empty()) return true;
    GrammarState g = *s.gram;
    for (unsigned char c : bytes)
      if (!grammar_->feed(g, c)) return s.dead = true, false;
    s.gram = std::make_shared<const GrammarState>(std::move(g));
    return true;
  }
  for (unsigned char c : bytes) {
    const bool ok = kind_ == Kind::Json ? json_byte(s, c) : kind_ == Kind::Choice ? choice_byte(s, c) : schema_byte(s, c);
    if (!ok) return s.dead = true, false;
  }
  return true;
}

bool Guide::complete(const GuideState& s) const {
  if (s.dead || s.think != 0) return false;
  if (kind_ == Kind::Json) return s.mode == kDone;
  if (kind_ == Kind::Schema) return s.levels == 0 || schema_could_end(s);
  if (kind_ == Kind::Regex) return regex_->accepting(s.rx);
  if (kind_ == Kind::Grammar) return Grammar::complete(*s.gram);
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
  if (is_ws(c)) return ++s.ws <= max_ws_;
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

bool Guide::stuck(const GuideState& s) const {
  // (JSON mode and choices always have a next byte or are whole: only a schema's depth can run out.)
  if (kind_ != Kind::Schema || s.dead || complete(s)) return false;
  for (int c = 0; c < 256; ++c) {
    GuideState t = s;
    const char b = static_cast<char>(c);
    if (feed(t, std::string_view(&b, 1))) return false;
  }
  return true;
}

int64_t Guide::plain_string_room(const GuideState& s) const {
  constexpr int64_t kAny = INT64_MAX;
  if (s.dead || s.think != 0 || s.sub != 0 || s.utf8 != 0) return -1;
  if (kind_ == Kind::Json) return s.mode == kString || s.mode == kKey ? kAny : -1;
  if (kind_ != Kind::Schema || s.levels == 0) return -1;
  const GuideState::Frame& f = s.frames[s.levels - 1];
  const SchemaNode& n = schema_->nodes[static_cast<size_t>(f.node)];
  if (n.type == SchemaNode::Type::String) {
    if (f.phase != 1 || n.content) return -1;  // (an automaton's string: every token walked)
    return n.max_length < 0 ? kAny : n.max_length - s.off;
  }
  if (n.type == SchemaNode::Type::Map) return f.phase == 2 ? kAny : -1;  // (a key)
  return n.type == SchemaNode::Type::Any && f.phase == 1 && (s.mode == kString || s.mode == kKey) ? kAny : -1;
}

// json_schema (Kind::Schema). Phases of a level: 0 before its value (whitespace, then the first byte
// picks the way); then by the node's type:
//   object: 1 after '{', 2 in a key (candidates s.cand, s.off bytes matched; a map's key: any string), 3 before ':', 5 after a
//           property's value, 6 after ','; idx: the first property that may come next;
//   array:  1 after '[', 2 after an item, 3 after ','; idx: items so far;
//   scalars, enum and any: 1 inside the value (the json fields above scan it).
// A finished value removes its level; the byte that ended a number or an enum value is then fed to
// the level below (whose phase was set before the value began).
namespace {
using Type = SchemaNode::Type;

// The properties of object node n that may come next at property index i: i up to the first required
// one at or after it (the ones between are optional).
uint64_t next_keys(const SchemaNode& n, uint16_t i) {
  uint64_t m = 0;
  for (size_t j = i; j < n.keys.size(); ++j) {
    m |= uint64_t{1} << j;
    if (n.required[j]) break;
  }
  return m;
}
bool required_left(const SchemaNode& n, uint16_t i) {
  for (size_t j = i; j < n.required.size(); ++j)
    if (n.required[j]) return true;
  return false;
}
// Keeps the candidates whose text has byte c at offset off.
uint64_t narrow(const std::vector<std::string>& texts, uint64_t cand, int32_t off, unsigned char c) {
  uint64_t m = 0;
  for (uint64_t b = cand; b; b &= b - 1) {
    const int i = __builtin_ctzll(b);
    const std::string& t = texts[static_cast<size_t>(i)];
    if (static_cast<size_t>(off) < t.size() && static_cast<unsigned char>(t[static_cast<size_t>(off)]) == c) m |= uint64_t{1} << i;
  }
  return m;
}
// The candidate that is exactly off bytes long, or -1.
int whole(const std::vector<std::string>& texts, uint64_t cand, int32_t off) {
  for (uint64_t b = cand; b; b &= b - 1) {
    const int i = __builtin_ctzll(b);
    if (static_cast<int32_t>(texts[static_cast<size_t>(i)].size()) == off) return i;
  }
  return -1;
}
bool endable_number(const GuideState& s) { return s.sub == 2 || s.sub == 3 || s.sub == 5 || s.sub == 8; }
}  // namespace

bool Guide::schema_could_end(const GuideState& s) const {
  // Only a top-level number or enum value can be whole without a closing byte.
  if (s.levels != 1 || s.frames[0].phase != 1) return false;
  const SchemaNode& n = schema_->nodes[static_cast<size_t>(s.frames[0].node)];
  if (n.type == Type::Integer || n.type == Type::Number) return n.content ? n.content->accepting(s.rx) : endable_number(s);
  if (n.type == Type::Enum) return whole(n.texts, s.cand, s.off) >= 0;
  if (n.type == Type::Any) return s.mode == kNumber && s.depth == 0 && endable_number(s);
  return false;
}

bool Guide::schema_byte(GuideState& s, unsigned char c) const {
  const auto& nodes = schema_->nodes;
  auto finish = [&] {  // the innermost value is whole
    const GuideState::Frame done = s.frames[s.levels - 1];
    s.rx = 0;  // (a constrained value's automaton state: none now, so equal states have equal keys)
    if (--s.levels == 0) {
      s.mode = kDone;
      return;
    }
    GuideState::Frame& up = s.frames[s.levels - 1];
    const SchemaNode& un = nodes[static_cast<size_t>(up.node)];
    if (un.type == Type::Tagged)  // the tag's value names the alternative: its other properties follow
      up.node = un.tag_alts[static_cast<size_t>(whole(nodes[static_cast<size_t>(done.node)].texts, s.cand, s.off))];
  };
  auto open = [&](int32_t node) {  // a value begins (its first byte is fed next)
    if (s.levels >= kGuideMaxLevels) return false;
    s.frames[s.levels++] = {node, 0, 0};
    return true;
  };
  for (;;) {
    if (s.levels == 0) return false;  // nothing after the value
    GuideState::Frame& f = s.frames[s.levels - 1];
    const SchemaNode& n = nodes[static_cast<size_t>(f.node)];
    if (f.phase == 0) {  // before a value: whitespace, then its first byte
      if (is_ws(c)) return ++s.ws <= max_ws_;
      s.ws = 0, s.sub = 0, s.utf8 = 0;
      switch (n.type) {
        case Type::Union: {
          const int32_t a = n.by_first[c];
          if (a < 0) return false;
          f.node = a;
          continue;  // the alternative takes the byte
        }
        case Type::Any:
          if (n.any_object && c != '{') return false;
          s.mode = kValue, s.depth = 0, f.phase = 1;
          if (!json_byte(s, c)) return false;
          if (s.mode == kDone) finish();
          return true;
        case Type::Object:
        case Type::Tagged:
        case Type::Map:
          if (c != '{') return false;
          f.phase = 1, f.idx = 0;
          return true;
        case Type::Array:
          if (c != '[') return false;
          f.phase = 1, f.idx = 0;
          return true;
        case Type::String:
          if (c != '"') return false;
          f.phase = 1, s.rx = 0, s.off = 0;  // (a constrained string's automaton state, characters so far)
          return true;
        case Type::Integer:
        case Type::Number:
          if (n.content) {  // bounds: the automaton takes the text
            if ((s.rx = n.content->next(n.content->start(), c)) == RegexDfa::kDead) return false;
            f.phase = 1;
            return true;
          }
          if (c == '-') s.sub = 1;
          else if (c == '0') s.sub = 2;
          else if (c >= '1' && c <= '9') s.sub = 3;
          else return false;
          f.phase = 1;
          return true;
        case Type::Boolean:
        case Type::Null: {
          const int lit = c == 't' ? 0 : c == 'f' ? 1 : c == 'n' ? 2 : -1;
          if (lit < 0 || (n.type == Type::Null) != (lit == 2)) return false;
          s.sub = static_cast<uint8_t>(lit * 8 + 1), f.phase = 1;
          return true;
        }
        case Type::Enum: {
          s.cand = narrow(n.texts, (n.texts.size() >= 64 ? ~uint64_t{0} : (uint64_t{1} << n.texts.size()) - 1), 0, c);
          if (!s.cand) return false;
          s.off = 1, f.phase = 1;
          return true;
        }
      }
      return false;
    }
    switch (n.type) {
      case Type::Any: {
        if (s.mode == kNumber && s.depth == 0) {
          const int r = number_byte(s, c);
          if (r >= 0) return r == 1;
          finish();
          continue;  // the number ended before c
        }
        if (!json_byte(s, c)) return false;
        if (s.mode == kDone) finish();
        return true;
      }
      case Type::String: {
        if (n.content) {  // the text between the quotes: the automaton's (it never takes '"')
          if (c == '"') return n.content->accepting(s.rx) && (finish(), true);
          return (s.rx = n.content->next(s.rx, c)) != RegexDfa::kDead;
        }
        if (n.constrained()) {  // length bounds alone: characters counted, no escapes
          if (s.utf8 == 0 && c == '"') return s.off >= n.min_length && (finish(), true);
          if (c == '\\') return false;
          const bool first_byte = s.utf8 == 0;
          if (!string_char(s, c)) return false;
          if (!first_byte) return true;
          if (n.max_length >= 0) return ++s.off <= n.max_length;
          s.off += s.off < n.min_length;  // (no upper bound: counted up to the lower one only)
          return true;
        }
        const int r = string_char(s, c);
        if (r == 2) finish();
        return r != 0;
      }
      case Type::Integer:
      case Type::Number: {
        if (n.content) {  // a byte the automaton cannot take ends the number where it is whole
          const int32_t t = n.content->next(s.rx, c);
          if (t != RegexDfa::kDead) return s.rx = t, true;
          if (!n.content->accepting(s.rx)) return false;
          finish();
          continue;
        }
        const bool fraction = c == '.' || c == 'e' || c == 'E';
        const int r = n.type == Type::Integer && fraction && (s.sub == 2 || s.sub == 3) ? -1 : number_byte(s, c);
        if (r >= 0) return r == 1;
        finish();
        continue;
      }
      case Type::Boolean:
      case Type::Null: {
        const char* lit = kLiterals[s.sub / 8];
        const int at = s.sub % 8;
        if (c != static_cast<unsigned char>(lit[at])) return false;
        if (lit[at + 1] == '\0')
          finish();
        else
          ++s.sub;
        return true;
      }
      case Type::Enum: {
        const uint64_t m = narrow(n.texts, s.cand, s.off, c);
        if (m) {
          s.cand = m, ++s.off;
          return true;
        }
        if (whole(n.texts, s.cand, s.off) < 0) return false;
        finish();
        continue;  // the value ended before c
      }
      case Type::Object:
      case Type::Tagged:  // (until its first property's value is read, then the alternative's object)
      case Type::Map: {   // (any keys: plain JSON strings; every value under n.items; nothing required)
        const bool map = n.type == Type::Map;
        switch (f.phase) {
          case 1:
          case 6:
            if (is_ws(c)) return ++s.ws <= max_ws_;
            s.ws = 0;
            if (c == '}' && f.phase == 1 && !required_left(n, f.idx)) return finish(), true;
            if (c != '"') return false;
            s.cand = next_keys(n, f.idx), s.off = 0, s.sub = 0, s.utf8 = 0, f.phase = 2;
            return map || s.cand != 0;
          case 2: {
            if (map) {
              const int r = string_char(s, c);
              if (r == 2) f.phase = 3;
              return r != 0;
            }
            const uint64_t m = narrow(n.keys, s.cand, s.off, c);
            if (m) {
              s.cand = m, ++s.off;
              return true;
            }
            const int k = c == '"' ? whole(n.keys, s.cand, s.off) : -1;
            if (k < 0) return false;
            f.idx = static_cast<uint16_t>(k + 1), f.phase = 3;
            s.cand = uint64_t{1} << k;  // (which property: its value's node, below)
            return true;
          }
          case 3:
            if (is_ws(c)) return ++s.ws <= max_ws_;
            s.ws = 0;
            if (c != ':') return false;
            f.phase = 5;
            return open(map ? n.items : n.values[static_cast<size_t>(f.idx - 1)]);
          case 5:
            if (is_ws(c)) return ++s.ws <= max_ws_;
            s.ws = 0;
            if (c == ',' && (map || f.idx < n.keys.size())) return f.phase = 6, true;
            if (c == '}' && !required_left(n, f.idx)) return finish(), true;
            return false;
          default:
            return false;
        }
      }
      case Type::Array:
        switch (f.phase) {
          case 1:
          case 3:
            if (is_ws(c)) return ++s.ws <= max_ws_;
            if (c == ']' && f.phase == 1 && n.min_items == 0) return s.ws = 0, finish(), true;
            if (n.max_items >= 0 && f.idx >= n.max_items) return false;
            f.phase = 2;
            if (!open(f.idx < n.prefix.size() ? n.prefix[f.idx] : n.items)) return false;
            ++f.idx;
            continue;  // the item takes the byte
          case 2:
            if (is_ws(c)) return ++s.ws <= max_ws_;
            s.ws = 0;
            if (c == ',' && (n.max_items < 0 || f.idx < n.max_items)) return f.phase = 3, true;
            if (c == ']' && f.idx >= n.min_items) return finish(), true;
            return false;
          default:
            return false;
        }
      case Type::Union:
        return false;  // (resolved in phase 0)
    }
    return false;
  }
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
  t->chars.resize(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    t->plain[i] = !bytes[i].empty() && plain_string_bytes(bytes[i]);
    if (t->plain[i]) t->chars[i] = static_cast<int32_t>(unicode::code_points(bytes[i]));
  }
  t->bytes = std::move(bytes);
  return t;
}

std::shared_ptr<const GuidedTokens> guided_tokens(const Tokenizer& tok) {
  std::vector<std::string> bytes(static_cast<size_t>(tok.vocab_size()));
  for (int32_t id = 0; id < tok.vocab_size(); ++id) bytes[id] = tok.token_bytes(id, true);
  return guided_tokens(std::move(bytes));
}

namespace {
std::shared_ptr<const Guide> guide_from_the_first_byte(const SamplingParams& p) {
  if (p.guided == "json") return Guide::json(p.guided_compact);
  if (p.guided == "choice") return Guide::choice(p.guided_choice);
  if (p.guided == "json_schema" || p.guided == "regex" || p.guided == "grammar") {
    // One guide per schema text or pattern while any sequence uses it: a request's n sequences, and
    // requests sending the same one, share it (and so the sampler's cache of allowed tokens per state).
    // The last few made are kept alive too, so that checking a request (the server, then the engine)
    // and serving it compile it once: a large pattern takes up to a quarter second.
    static std::mutex mu;
    static std::map<std::string, std::weak_ptr<const Guide>> made;
    static std::deque<std::shared_ptr<const Guide>> recent;
    std::lock_guard<std::mutex> lock(mu);
    const std::string key = (p.guided == "regex" ? "r" : p.guided == "grammar" ? "g" : p.guided_compact ? "1" : "0") + p.guided_schema;
    if (auto g = made[key].lock()) return g;
    for (auto it = made.begin(); it != made.end();) it = it->second.expired() ? made.erase(it) : std::next(it);
    auto g = p.guided == "regex"     ? Guide::regex(p.guided_schema)
             : p.guided == "grammar" ? Guide::grammar(p.guided_schema)
                                     : Guide::schema(p.guided_schema, p.guided_compact);
    made[key] = g;
    recent.push_back(g);
    if (recent.size() > 4) recent.pop_front();
    return g;
  }
  return nullptr;
}
}  // namespace

std::shared_ptr<const Guide> make_guide(const SamplingParams& p) {
  auto g = guide_from_the_first_byte(p);
  return g && p.guided_after_think ? Guide::after_think(g, p.guided_after_think == 2) : g;
}

}  // namespace llmserve
