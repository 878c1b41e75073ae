#include "engine/grammar.h"

#include <algorithm>
#include <map>

#include "common/error.h"

namespace llmserve {

// ---- parsing ------------------------------------------------------------------------------------
// Rules are parsed into alternatives of items (a character class or a rule reference); groups and
// repetitions become rules of their own; then every rule's alternatives are laid out in elems_.
struct Grammar::Parser {
  using Seq = std::vector<Element>;
  using Alts = std::vector<Seq>;
  const std::string& t;
  Grammar& g;
  size_t pos = 0;
  std::vector<Alts> rules;
  std::vector<std::string> names;  // "" for the rules groups and repetitions make
  std::vector<size_t> first_use;   // where a named rule was first referred to (or defined)
  std::vector<bool> defined;
  std::map<std::string, int32_t> by_name;
  size_t elements = 0;
  int nesting = 0;  // groups open (the parser recurses into them)

  Parser(const std::string& text, Grammar& grammar) : t(text), g(grammar) {}

  [[noreturn]] void fail(const std::string& what, size_t at) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < t.size(); ++i) t[i] == '\n' ? (++line, col = 1) : ++col;
    throw Error(cat("grammar: ", what, " (line ", line, ", column ", col, ")"));
  }
  [[noreturn]] void fail(const std::string& what) const { fail(what, pos); }

  void count(size_t n) {
    if ((elements += n) > kMaxElements)
      fail(cat("the grammar is too large (over ", kMaxElements, " elements once its repetitions are spelled out)"));
  }
  void ws() {
    while (pos < t.size()) {
      const char c = t[pos];
      if (c == '#') {
        while (pos < t.size() && t[pos] != '\n') ++pos;
      } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos;
      } else {
        break;
      }
    }
  }
  static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  }
  std::string name() {
    const size_t b = pos;
    while (pos < t.size() && name_char(t[pos])) ++pos;
    return t.substr(b, pos - b);
  }
  // Whether a rule definition (`name ::=`) starts here.
  bool at_definition() {
    const size_t keep = pos;
    const bool named = !name().empty();
    ws();
    const bool def = named && t.compare(pos, 3, "::=") == 0;
    pos = keep;
    return def;
  }
  int32_t rule_named(const std::string& n, size_t at) {
    auto it = by_name.find(n);
    if (it != by_name.end()) return it->second;
    return by_name[n] = new_rule(n, at);
  }
  int32_t new_rule(const std::string& n, size_t at) {
    rules.emplace_back();
    names.push_back(n);
    first_use.push_back(at);
    defined.push_back(n.empty());
    return static_cast<int32_t>(rules.size()) - 1;
  }
  int32_t rule_of(Alts alts) {
    const int32_t r = new_rule("", pos);
    rules[static_cast<size_t>(r)] = std::move(alts);
    return r;
  }
  Element chars(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated) {
    std::sort(ranges.begin(), ranges.end());
    CharClass c;
    c.negated = negated;
    for (const auto& r : ranges) {
      if (!c.ranges.empty() && r.first <= c.ranges.back().second + 1) {
        c.ranges.back().second = std::max(c.ranges.back().second, r.second);
      } else {
        c.ranges.push_back(r);
      }
    }
    g.classes_.push_back(std::move(c));
    count(1);
    return {Kind::Chars, static_cast<int32_t>(g.classes_.size()) - 1};
  }

  void parse() {
    ws();
    while (pos < t.size()) {
      const size_t at = pos;
      const std::string n = name();
      if (n.empty()) fail("a rule name expected");
      ws();
      if (t.compare(pos, 3, "::=") != 0)
        fail(t.compare(pos, 1, ":") == 0 ? "'::=' expected (Lark's `name: ...` rules are not supported; write `name ::= ...`)"
                                         : "'::=' expected after the rule name");
      pos += 3;
      const int32_t r = rule_named(n, at);
      if (defined[static_cast<size_t>(r)]) fail(cat("rule '", n, "' is defined twice"), at);
      defined[static_cast<size_t>(r)] = true;
      Alts alts = alternatives(false);
      rules[static_cast<size_t>(r)] = std::move(alts);
      ws();
    }
    auto root = by_name.find("root");
    if (root == by_name.end() || !defined[static_cast<size_t>(root->second)]) fail("no 'root' rule (the text starts at root ::= ...)", 0);
    for (size_t r = 0; r < rules.size(); ++r)
      if (!defined[r]) fail(cat("rule '", names[r], "' is used but not defined"), first_use[r]);
    g.root_ = root->second;
  }

  Alts alternatives(bool nested) {
    Alts alts;
    alts.push_back(sequence(nested));
    while (pos < t.size() && t[pos] == '|') {
      ++pos;
      alts.push_back(sequence(nested));
    }
    return alts;
  }

  Seq sequence(bool nested) {
    Seq seq;
    while (true) {
      ws();
      if (pos >= t.size() || t[pos] == '|') break;
      if (t[pos] == ')') {
        if (!nested) fail("')' without its '('");
        break;
      }
      if (!nested && at_definition()) break;
      Seq unit = primary();
      ws();
      unit = repeated(std::move(unit));
      seq.insert(seq.end(), unit.begin(), unit.end());
    }
    return seq;
  }

  // A repetition operator after a unit, if any: the unit spelled out with rules for the optional parts.
  Seq repeated(Seq unit) {
    if (pos >= t.size()) return unit;
    const char c = t[pos];
    size_t lo = 0, hi = 0;
    bool bounded = true;
    if (c == '*') {
      bounded = false;
    } else if (c == '+') {
      lo = 1, bounded = false;
    } else if (c == '?') {
      hi = 1;
    } else if (c == '{') {
      const size_t at = pos;
      auto number = [&] {
        ws();
        const size_t b = pos;
        while (pos < t.size() && t[pos] >= '0' && t[pos] <= '9' && pos - b < 5) ++pos;
        if (pos == b) fail("a number expected in {m,n}");
        return static_cast<size_t>(std::stoul(t.substr(b, pos - b)));
      };
      ++pos;
      lo = hi = number();
      ws();
      if (pos < t.size() && t[pos] == ',') {
        ++pos;
        ws();
        if (pos < t.size() && t[pos] == '}') {
          bounded = false;
        } else {
          hi = number();
        }
      }
      ws();
      if (pos >= t.size() || t[pos] != '}') fail("'}' expected");
      if ((bounded && hi < lo) || lo > 1000 || (bounded && hi > 1000)) fail("repetition bounds must be 0 <= m <= n <= 1000", at);
      if (bounded && hi == 0) fail("a repetition {0} or {0,0} matches nothing; leave it out", at);
    } else {
      return unit;
    }
    ++pos;
    // The unit as one element (a rule when it has several).
    const Element x = unit.size() == 1 ? unit[0] : Element{Kind::Ref, rule_of(Alts{unit})};
    Seq out(lo, x);
    count(lo);
    if (!bounded) {  // x*: S ::= x S | (empty)
      const int32_t s = new_rule("", pos);
      rules[static_cast<size_t>(s)] = Alts{Seq{x, Element{Kind::Ref, s}}, Seq{}};
      out.push_back({Kind::Ref, s});
      count(3);
    } else if (hi > lo) {  // up to hi - lo more: R_k ::= x R_(k-1) | (empty), R_1 ::= x | (empty)
      int32_t tail = -1;
      for (size_t k = 0; k < hi - lo; ++k) {
        Seq more = {x};
        if (tail >= 0) more.push_back({Kind::Ref, tail});
        tail = rule_of(Alts{more, Seq{}});
        count(3);
      }
      out.push_back({Kind::Ref, tail});
    }
    return out;
  }

  uint32_t hex(size_t digits) {
    if (pos + digits > t.size()) fail("a hexadecimal escape is cut short");
    uint32_t v = 0;
    for (size_t i = 0; i < digits; ++i) {
      const char c = t[pos++];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) fail("a hexadecimal digit expected");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) fail("an escape outside Unicode's scalar values");
    return v;
  }
  // One character of a literal or class (its escape decoded), as a code point.
  uint32_t character() {
    if (pos >= t.size()) fail("the grammar ends inside a literal or class");
    const unsigned char c = static_cast<unsigned char>(t[pos]);
    if (c == '\\') {
      if (++pos >= t.size()) fail("the grammar ends inside an escape");
      const char e = t[pos++];
      switch (e) {
        case 'n': return '\n';
        case 'r': return '\r';
        case 't': return '\t';
        case '0': return 0;
        case 'x': return hex(2);
        case 'u': return hex(4);
        case 'U': return hex(8);
        case '\\': case '"': case '\'': case '[': case ']': case '-': case '^': case '/': return static_cast<uint32_t>(e);
        default: fail(cat("unknown escape '\\", std::string(1, e), "'"), pos - 2);
      }
    }
    // UTF-8 in the grammar's text.
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || pos + static_cast<size_t>(n) > t.size()) fail("the grammar is not UTF-8");
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (int i = 1; i < n; ++i) {
      const unsigned char b = static_cast<unsigned char>(t[pos + static_cast<size_t>(i)]);
      if ((b & 0xC0) != 0x80) fail("the grammar is not UTF-8");
      cp = (cp << 6) | (b & 0x3F);
    }
    pos += static_cast<size_t>(n);
    return cp;
  }

  Seq primary() {
    const char c = t[pos];
    if (c == '"') {
      const size_t at = pos++;
      Seq seq;
      while (pos < t.size() && t[pos] != '"') {
        const uint32_t cp = character();
        seq.push_back(chars({{cp, cp}}, false));
      }
      if (pos >= t.size()) fail("a string literal without its closing '\"'", at);
      ++pos;
      if (seq.empty()) seq.push_back({Kind::Ref, rule_of(Alts(1))});  // "" : the empty text
      return seq;
    }
    if (c == '[') {
      const size_t at = pos++;
      bool negated = false;
      if (pos < t.size() && t[pos] == '^') negated = true, ++pos;
      std::vector<std::pair<uint32_t, uint32_t>> ranges;
      while (pos < t.size() && t[pos] != ']') {
        const uint32_t a = character();
        uint32_t b = a;
        if (pos + 1 < t.size() && t[pos] == '-' && t[pos + 1] != ']') {
          ++pos;
          b = character();
          if (b < a) fail("a character range runs backwards", at);
        }
        ranges.push_back({a, b});
      }
      if (pos >= t.size()) fail("a character class without its closing ']'", at);
      ++pos;
      if (ranges.empty() && !negated) fail("an empty character class matches nothing", at);
      return {chars(std::move(ranges), negated)};
    }
    if (c == '.') {
      ++pos;
      return {chars({}, true)};
    }
    if (c == '(') {
      const size_t at = pos++;
      if (pos < t.size() && t[pos] == '=') fail("lookahead assertions are not supported", at);
      if (++nesting > 100) fail("groups nested more than 100 deep", at);
      Alts alts = alternatives(true);
      --nesting;
      ws();
      if (pos >= t.size() || t[pos] != ')') fail("'(' without its ')'", at);
      ++pos;
      return {{Kind::Ref, rule_of(std::move(alts))}};
    }
    if (name_char(c)) {
      const size_t at = pos;
      const std::string n = name();
      count(1);
      return {{Kind::Ref, rule_named(n, at)}};
    }
    fail(cat("unexpected '", std::string(1, c), "'"));
  }

  // Direct left recursion, A ::= A a1 | ... | b1 | ..., becomes A ::= b1 T | ... with T ::= a1 T | ... |
  // (empty): the same texts, recognized as a repetition is (xgrammar's Earley parser takes such rules as
  // written). Left as it is, for check_left_recursion to refuse: A ::= A (nothing after it), a rule with no
  // other alternative (no finite text), and recursion through other rules or groups.
  void rewrite_left_recursion() {
    const size_t n = rules.size();
    for (size_t r = 0; r < n; ++r) {
      Alts rec, base;
      for (const Seq& a : rules[r]) {
        if (!a.empty() && a[0].kind == Kind::Ref && a[0].value == static_cast<int32_t>(r)) {
          rec.emplace_back(a.begin() + 1, a.end());
        } else {
          base.push_back(a);
        }
      }
      if (rec.empty() || base.empty() || std::any_of(rec.begin(), rec.end(), [](const Seq& a) { return a.empty(); })) continue;
      const int32_t tail = new_rule("", first_use[r]);
      for (Seq& a : rec) a.push_back({Kind::Ref, tail});
      rec.emplace_back();  // (empty)
      for (Seq& b : base) b.push_back({Kind::Ref, tail});
      count(base.size() + rec.size());
      rules[static_cast<size_t>(tail)] = std::move(rec);
      rules[r] = std::move(base);
    }
  }

  // A rule that can reach itself before a character is consumed has no finite expansion. (Both passes
  // are linear and iterative: a grammar may hold many rules.)
  void check_left_recursion() const {
    const size_t n = rules.size();
    // Nullable rules (those that can match the empty text), by counting down each alternative's items.
    std::vector<char> nullable(n, 0);
    std::vector<std::pair<size_t, size_t>> alt_of;  // (rule, references left to prove empty)
    std::vector<std::vector<size_t>> users(n);       // rule -> alternatives referring to it (once per reference)
    std::vector<size_t> queue;
    for (size_t r = 0; r < n; ++r)
      for (const Seq& alt : rules[r]) {
        if (std::any_of(alt.begin(), alt.end(), [](const Element& e) { return e.kind == Kind::Chars; })) continue;
        alt_of.push_back({r, alt.size()});
        for (const Element& e : alt) users[static_cast<size_t>(e.value)].push_back(alt_of.size() - 1);
        if (alt.empty() && !nullable[r]) nullable[r] = 1, queue.push_back(r);
      }
    while (!queue.empty()) {
      const size_t u = queue.back();
      queue.pop_back();
      for (size_t a : users[u])
        if (--alt_of[a].second == 0 && !nullable[alt_of[a].first]) nullable[alt_of[a].first] = 1, queue.push_back(alt_of[a].first);
    }
    // r -> s when s may come first in one of r's alternatives; a cycle is left recursion.
    std::vector<std::vector<int32_t>> first(n);
    for (size_t r = 0; r < n; ++r)
      for (const Seq& alt : rules[r])
        for (const Element& e : alt) {
          if (e.kind != Kind::Ref) break;
          first[r].push_back(e.value);
          if (!nullable[static_cast<size_t>(e.value)]) break;
        }
    std::vector<char> mark(n, 0);  // 1: on the path, 2: done
    std::vector<std::pair<size_t, size_t>> path;  // (rule, next edge)
    for (size_t r0 = 0; r0 < n; ++r0) {
      if (mark[r0]) continue;
      path.push_back({r0, 0});
      mark[r0] = 1;
      while (!path.empty()) {
        auto& [r, i] = path.back();
        if (i == first[r].size()) {
          mark[r] = 2;
          path.pop_back();
          continue;
        }
        const size_t u = static_cast<size_t>(first[r][i++]);
        if (mark[u] == 1) {
          // Name a rule of the cycle (the path from u on), else the last named one before it.
          std::string who;
          bool in_cycle = false;
          for (const auto& step : path) {
            in_cycle = in_cycle || step.first == u;
            if (names[step.first].empty()) continue;
            who = names[step.first];
            if (in_cycle) break;
          }
          fail(cat("the grammar is left-recursive", who.empty() ? "" : cat(" through rule '", who, "'"),
                   " (a rule reaches itself before any character; write the "
                   "repetition with * or +, and repeat nothing that can be empty)"), first_use[u]);
        }
        if (mark[u] == 0) mark[u] = 1, path.push_back({u, 0});
      }
    }
  }

  void lay_out() {
    g.alts_.resize(rules.size());
    for (size_t r = 0; r < rules.size(); ++r)
      for (const Seq& alt : rules[r]) {
        g.alts_[r].push_back(static_cast<int32_t>(g.elems_.size()));
        g.elems_.insert(g.elems_.end(), alt.begin(), alt.end());
        g.elems_.push_back({Kind::End, 0});
      }
  }
};

Grammar::Grammar(const std::string& text) {
  Parser p(text, *this);
  p.parse();
  p.rewrite_left_recursion();
  p.check_left_recursion();
  p.lay_out();
}

// ---- recognition ----------------------------------------------------------------------------------

bool Grammar::matches(int32_t cls, uint32_t cp) const {
  const CharClass& c = classes_[static_cast<size_t>(cls)];
  auto it = std::upper_bound(c.ranges.begin(), c.ranges.end(), std::make_pair(cp, UINT32_MAX));
  const bool in = it != c.ranges.begin() && std::prev(it)->second >= cp;
  return in != c.negated;
}

bool Grammar::meets(int32_t cls, uint32_t lo, uint32_t hi) const {
  const CharClass& c = classes_[static_cast<size_t>(cls)];
  if (!c.negated) {
    for (const auto& [a, b] : c.ranges)
      if (a <= hi && b >= lo) return true;
    return false;
  }
  // Negated: some code point of [lo, hi] lies outside every range.
  uint32_t next = lo;
  for (const auto& [a, b] : c.ranges) {
    if (b < next) continue;
    if (a > next) return true;
    if (b >= hi) return false;
    next = b + 1;
  }
  return next <= hi;
}

bool Grammar::expand(std::vector<int32_t>& stack, std::vector<std::vector<int32_t>>& out, size_t depth) const {
  if (depth > kMaxDepth) return false;
  while (!stack.empty()) {
    const int32_t p = stack.back();
    const Element& e = elems_[static_cast<size_t>(p)];
    if (e.kind == Kind::End) {  // the alternative is done: back to the rule that referred to it
      stack.pop_back();
      continue;
    }
    if (e.kind == Kind::Chars) break;
    // A reference: where to go on once the rule is matched (nothing to keep when the alternative ends
    // there, so a rule repeating itself at its end does not grow the stack), then each alternative.
    stack.pop_back();
    if (elems_[static_cast<size_t>(p) + 1].kind != Kind::End) stack.push_back(p + 1);
    if (stack.size() + 1 > kMaxDepth) return false;
    const auto& starts = alts_[static_cast<size_t>(e.value)];
    for (size_t i = 0; i < starts.size(); ++i) {
      std::vector<int32_t> s = stack;
      s.push_back(starts[i]);
      if (!expand(s, out, depth + 1)) return false;
    }
    return true;
  }
  out.push_back(stack);
  return out.size() <= kMaxStacks * 4;  // (duplicates are dropped after)
}

namespace {
void settle(std::vector<std::vector<int32_t>>& stacks) {
  std::sort(stacks.begin(), stacks.end());
  stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
}
}  // namespace

Grammar::State Grammar::start() const {
  State s;
  std::vector<int32_t> stack;
  for (int32_t a : alts_[static_cast<size_t>(root_)]) {
    stack.assign(1, a);
    if (!expand(stack, s.stacks)) throw Error("grammar: the start of the grammar is too ambiguous or too deeply nested");
  }
  settle(s.stacks);
  if (s.stacks.size() > kMaxStacks) throw Error("grammar: the start of the grammar is too ambiguous");
  return s;
}

bool Grammar::advance(const std::vector<std::vector<int32_t>>& stacks, uint32_t cp,
                      std::vector<std::vector<int32_t>>& next) const {
  for (const auto& stack : stacks) {
    if (stack.empty() || !matches(elems_[static_cast<size_t>(stack.back())].value, cp)) continue;
    std::vector<int32_t> st = stack;
    st.back() += 1;
    if (!expand(st, next)) return false;
  }
  settle(next);
  return !next.empty() && next.size() <= kMaxStacks;
}

bool Grammar::feed(State& s, unsigned char b) const {
  uint32_t bits, lo, hi;
  int left;
  if (s.need == 0) {
    if (b < 0x80) {
      std::vector<std::vector<int32_t>> next;
      if (!advance(s.stacks, b, next)) return false;
      s.stacks = std::move(next);
      return true;
    }
    if (b >= 0xC2 && b <= 0xDF) {
      bits = b & 0x1F, left = 1, lo = 0x80, hi = 0x7FF;
    } else if (b >= 0xE0 && b <= 0xEF) {
      bits = b & 0x0F, left = 2, lo = 0x800, hi = 0xFFFF;
    } else if (b >= 0xF0 && b <= 0xF4) {
      bits = b & 0x07, left = 3, lo = 0x10000, hi = 0x10FFFF;
    } else {
      return false;  // a continuation byte, or a lead byte UTF-8 never has
    }
  } else {
    if ((b & 0xC0) != 0x80) return false;
    bits = (s.partial << 6) | (b & 0x3F), left = s.need - 1, lo = s.lo, hi = s.hi;
  }
  // The code points the bytes so far may still become: no overlong forms, no surrogates.
  lo = std::max(lo, bits << (6 * left));
  hi = std::min(hi, (bits << (6 * left)) | ((1u << (6 * left)) - 1));
  if (lo <= 0xDFFF && hi >= 0xD800) {
    if (lo >= 0xD800) lo = 0xE000;
    if (hi <= 0xDFFF) hi = 0xD7FF;
  }
  if (lo > hi) return false;
  if (left == 0) {
    std::vector<std::vector<int32_t>> next;
    if (!advance(s.stacks, bits, next)) return false;
    s.stacks = std::move(next);
    s.partial = 0, s.need = 0, s.lo = s.hi = 0;
    return true;
  }
  // Some stack must take a code point the partial one may still become.
  bool open = false;
  for (const auto& stack : s.stacks)
    if (!stack.empty() && meets(elems_[static_cast<size_t>(stack.back())].value, lo, hi)) open = true;
  if (!open) return false;
  s.partial = bits, s.need = static_cast<uint8_t>(left), s.lo = lo, s.hi = hi;
  return true;
}

void Grammar::key(const State& s, std::string& out) {
  auto put = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(s.need), put(s.partial), put(s.lo), put(s.hi), put(static_cast<uint32_t>(s.stacks.size()));
  for (const auto& st : s.stacks) {
    put(static_cast<uint32_t>(st.size()));
    for (int32_t p : st) put(static_cast<uint32_t>(p));
  }
}

}  // namespace llmserve
