#include "engine/regex_dfa.h"

#include <algorithm>
#include <map>
#include <set>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace llmserve {
namespace {

// Code point sets: sorted, disjoint, merged ranges, never the surrogates (they have no UTF-8).
using Ranges = std::vector<std::pair<char32_t, char32_t>>;
constexpr char32_t kMaxCp = 0x10FFFF;

Ranges normalized(Ranges r) {
  Ranges cut;
  for (auto [a, b] : r) {  // surrogates out
    if (a > b) continue;
    if (b < 0xD800 || a > 0xDFFF) {
      cut.push_back({a, b});
    } else {
      if (a < 0xD800) cut.push_back({a, 0xD7FF});
      if (b > 0xDFFF) cut.push_back({0xE000, b});
    }
  }
  std::sort(cut.begin(), cut.end());
  Ranges out;
  for (auto [a, b] : cut) {
    if (!out.empty() && a <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, b);
    } else {
      out.push_back({a, b});
    }
  }
  return out;
}

Ranges complement(const Ranges& r) {
  Ranges out;
  char32_t next = 0;
  for (auto [a, b] : r) {
    if (a > next) out.push_back({next, a - 1});
    next = b + 1;
  }
  if (next <= kMaxCp) out.push_back({next, kMaxCp});
  return normalized(out);
}

// \d, \w and \s as re.ASCII has them (and xgrammar, vLLM's default guided-decoding backend, and JSON
// Schema's ECMA-262 patterns have \d and \w): a model's digits are 0-9, not every script's.
const Ranges& class_ranges(char kind) {
  static const Ranges digit = {{'0', '9'}};
  static const Ranges word = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
  static const Ranges space = {{'\t', '\r'}, {' ', ' '}};
  return kind == 'd' ? digit : kind == 'w' ? word : space;
}

// ---- the pattern's syntax tree --------------------------------------------------------------------

struct Node {
  enum Kind { Set, Cat, Alt, Repeat } kind = Set;
  Ranges set;             // Set: one character of these
  std::vector<int> kids;  // Cat, Alt; Repeat: one
  int min = 0, max = -1;  // Repeat (-1: unbounded)
};

class Parser {
 public:
  explicit Parser(const std::string& pattern) : p_(unicode::decode_utf8(pattern)) {}

  int parse(std::vector<Node>& nodes) {
    nodes_ = &nodes;
    if (at('^')) ++i_;  // (anchors at the ends: the whole output matches anyway)
    const int root = alternation();
    if (i_ < p_.size() && p_[i_] == '$' && i_ + 1 == p_.size()) ++i_;
    if (i_ < p_.size()) fail(p_[i_] == ')' ? "unbalanced parenthesis" : p_[i_] == '$' ? "'$' before the end" : "unexpected character");
    return root;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const { throw Error(cat("regex: ", why, " at position ", i_)); }
  bool at(char32_t c) const { return i_ < p_.size() && p_[i_] == c; }
  int add(Node n) {
    if (nodes_->size() > 100000) fail("pattern too large");
    nodes_->push_back(std::move(n));
    return static_cast<int>(nodes_->size()) - 1;
  }
  int set(Ranges r) {
    Node n;
    n.set = normalized(std::move(r));
    return add(std::move(n));
  }

  int alternation() {
    std::vector<int> alts{concatenation()};
    while (at('|')) {
      ++i_;
      alts.push_back(concatenation());
    }
    if (alts.size() == 1) return alts[0];
    Node n;
    n.kind = Node::Alt;
    n.kids = std::move(alts);
    return add(std::move(n));
  }

  int concatenation() {
    Node n;
    n.kind = Node::Cat;
    while (i_ < p_.size() && !at('|') && !at(')')) {
      if (at('$') && i_ + 1 == p_.size()) break;
      n.kids.push_back(repetition());
    }
    return add(std::move(n));
  }

  // {m}, {m,}, {,n}, {m,n} at i_ (a '{' that is none of them is a literal, as in Python).
  bool bounds(int& lo, int& hi) {
    size_t j = i_ + 1;
    auto number = [&](int& v) {
      const size_t from = j;
      int64_t x = 0;
      while (j < p_.size() && p_[j] >= '0' && p_[j] <= '9') x = std::min<int64_t>(x * 10 + (p_[j++] - '0'), 1 << 20);
      v = static_cast<int>(x);
      return j > from;
    };
    int a = 0, b = -1;
    const bool has_a = number(a);
    if (j < p_.size() && p_[j] == '}') {
      if (!has_a) return false;
      b = a;
    } else {
      if (j >= p_.size() || p_[j] != ',') return false;
      ++j;
      if (!number(b)) b = -1;
      if (j >= p_.size() || p_[j] != '}') return false;
    }
    i_ = j + 1;
    lo = a, hi = b;
    return true;
  }

  // A quantifier at i_ (consumed when there is one).
  bool quantifier(int& lo, int& hi) {
    if (at('*')) return lo = 0, hi = -1, ++i_, true;
    if (at('+')) return lo = 1, hi = -1, ++i_, true;
    if (at('?')) return lo = 0, hi = 1, ++i_, true;
    return at('{') && bounds(lo, hi);
  }

  int repetition() {
    const int atom_node = atom();
    int lo, hi;
    if (!quantifier(lo, hi)) return atom_node;
    if (hi >= 0 && hi < lo) fail("min repeat greater than max repeat");
    if (lo > 1000 || hi > 1000) fail("repeat counts above 1000 are not supported");
    if (at('?')) {
      ++i_;  // lazy: the same texts
    } else if (at('+')) {
      fail("possessive quantifiers are not supported");
    }
    int a, b;
    if (quantifier(a, b)) fail("multiple repeat");
    Node n;
    n.kind = Node::Repeat;
    n.kids = {atom_node};
    n.min = lo, n.max = hi;
    return add(std::move(n));
  }

  int atom() {
    if (i_ >= p_.size()) fail("missing atom");
    const char32_t c = p_[i_];
    if (c == '*' || c == '+' || c == '?') fail("nothing to repeat");
    if (c == '(') {
      ++i_;
      if (at('?')) {
        ++i_;
        if (at(':')) {
          ++i_;
        } else if ((at('P') && i_ + 1 < p_.size() && p_[i_ + 1] == '<') ||
                   (at('<') && i_ + 1 < p_.size() && p_[i_ + 1] != '=' && p_[i_ + 1] != '!')) {
          const size_t open = at('P') ? i_ + 2 : i_ + 1;  // (?P<name>...), or ECMAScript's (?<name>...)
          const size_t close = p_.find('>', open);
          if (close == std::u32string::npos || close == open) fail("bad group name");
          if (!names_.insert(p_.substr(open, close - open)).second) fail("redefinition of group name");
          i_ = close + 1;
        } else if (at('P') && i_ + 1 < p_.size() && p_[i_ + 1] == '=') {
          fail("backreferences are not supported");
        } else if (at('=') || at('!') || at('<')) {
          fail("lookaround assertions are not supported");
        } else {
          fail("inline flags and other (?...) groups are not supported");
        }
      }
      if (++depth_ > 100) fail("groups nested deeper than 100 levels");  // (the parser and the builder recurse)
      const int inner = alternation();
      --depth_;
      if (!at(')')) fail("missing ), unterminated subpattern");
      ++i_;
      return inner;
    }
    if (c == '[') return set(char_class());
    if (c == '.') {
      ++i_;
      return set({{0, '\n' - 1}, {'\n' + 1, kMaxCp}});
    }
    if (c == '^' || c == '$') fail("anchors other than a leading '^' and a trailing '$' are not supported");
    if (c == '\\') {
      Ranges r;
      escape(false, r);
      return set(std::move(r));
    }
    ++i_;
    return set({{c, c}});
  }

  // An escape at i_ (a backslash) into r; inside a class \b is a backspace.
  void escape(bool in_class, Ranges& r) {
    ++i_;
    if (i_ >= p_.size()) fail("bad escape (end of pattern)");
    const char32_t e = p_[i_++];
    auto one = [&](char32_t x) { r.push_back({x, x}); };
    auto hex = [&](int digits) {
      char32_t v = 0;
      for (int k = 0; k < digits; ++k) {
        if (i_ >= p_.size() || !std::isxdigit(static_cast<int>(p_[i_]))) fail("incomplete escape");
        const char32_t h = p_[i_++];
        v = v * 16 + static_cast<char32_t>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
      }
      if (v > kMaxCp) fail("bad escape (code point out of range)");
      one(v);
    };
    switch (e) {
      case 'd': case 'w': case 's': {
        const Ranges& k = class_ranges(static_cast<char>(e));
        r.insert(r.end(), k.begin(), k.end());
        return;
      }
      case 'D': case 'W': case 'S': {
        const Ranges k = complement(class_ranges(static_cast<char>(e | 0x20)));
        r.insert(r.end(), k.begin(), k.end());
        return;
      }
      case 'n': return one('\n');
      case 't': return one('\t');
      case 'r': return one('\r');
      case 'f': return one('\f');
      case 'v': return one('\v');
      case 'a': return one('\a');
      case 'x': return hex(2);
      case 'u': return hex(4);
      case 'U': return hex(8);
      case 'b':
        if (in_class) return one('\b');
        fail("word boundaries (\\b) are not supported");
      default: break;
    }
    if (e == '0') {  // octal: \0, \01, \012
      char32_t v = 0;
      for (int k = 0; k < 2 && i_ < p_.size() && p_[i_] >= '0' && p_[i_] <= '7'; ++k) v = v * 8 + (p_[i_++] - '0');
      return one(v);
    }
    if (e >= '1' && e <= '9') fail(in_class ? "bad escape in a class" : "backreferences are not supported");
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) fail(cat("bad escape \\", static_cast<char>(e), " (not supported)"));
    one(e);  // an escaped metacharacter or other symbol
  }

  // One character of a class, or a class escape (\d ...), at i_.
  Ranges class_item() {
    Ranges r;
    if (at('\\')) {
      escape(true, r);
    } else {
      r.push_back({p_[i_], p_[i_]});
      ++i_;
    }
    return r;
  }

  Ranges char_class() {
    ++i_;  // '['
    bool negate = false;
    if (at('^')) negate = true, ++i_;
    Ranges r;
    bool first = true;
    for (;;) {
      if (i_ >= p_.size()) fail("unterminated character set");
      if (at(']') && !first) {
        ++i_;
        break;
      }
      first = false;
      // one item: a character (maybe a range's start) or a class escape
      const Ranges item = class_item();
      const bool single = item.size() == 1 && item[0].first == item[0].second;
      if (at('-') && i_ + 1 < p_.size() && p_[i_ + 1] != ']') {
        if (!single) fail("bad character range");
        ++i_;
        const Ranges hi = class_item();
        if (hi.size() != 1 || hi[0].first != hi[0].second) fail("bad character range");
        if (hi[0].first < item[0].first) fail("bad character range");
        r.push_back({item[0].first, hi[0].first});
        continue;
      }
      r.insert(r.end(), item.begin(), item.end());
    }
    r = normalized(std::move(r));
    return negate ? complement(r) : r;
  }

  std::u32string p_;
  size_t i_ = 0;
  std::set<std::u32string> names_;
  int depth_ = 0;
  std::vector<Node>* nodes_ = nullptr;
};

// ---- NFA over bytes ------------------------------------------------------------------------------

struct Nfa {
  struct Edge {
    uint8_t lo, hi;
    int to;
  };
  struct State {
    std::vector<Edge> edges;
    std::vector<int> eps;
  };
  std::vector<State> states;
  int add() {
    if (states.size() >= 200000) throw Error("regex: the pattern is too large to guide");
    states.emplace_back();
    return static_cast<int>(states.size()) - 1;
  }
};

// The UTF-8 byte sequences (a byte range per position) of the code points a..b, which have one
// encoded length: split until every position's bytes form one range (the utf8-ranges method).
void utf8_sequences(char32_t a, char32_t b, int n, std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  for (int i = 1; i < n; ++i) {
    const char32_t m = (char32_t{1} << (6 * i)) - 1;
    if ((a & ~m) != (b & ~m)) {
      if ((a & m) != 0) {
        utf8_sequences(a, a | m, n, out);
        utf8_sequences((a | m) + 1, b, n, out);
        return;
      }
      if ((b & m) != m) {
        utf8_sequences(a, (b & ~m) - 1, n, out);
        utf8_sequences(b & ~m, b, n, out);
        return;
      }
    }
  }
  std::string ea, eb;
  unicode::append_utf8(ea, a);
  unicode::append_utf8(eb, b);
  std::vector<std::pair<uint8_t, uint8_t>> seq;
  for (int k = 0; k < n; ++k) seq.push_back({static_cast<uint8_t>(ea[static_cast<size_t>(k)]), static_cast<uint8_t>(eb[static_cast<size_t>(k)])});
  out.push_back(std::move(seq));
}

// Adds node `id` between NFA states from and a new end state; returns the end.
int build(const std::vector<Node>& nodes, int id, int from, Nfa& nfa) {
  const Node& n = nodes[static_cast<size_t>(id)];
  switch (n.kind) {
    case Node::Set: {
      const int end = nfa.add();
      static const char32_t limits[4] = {0x7F, 0x7FF, 0xFFFF, kMaxCp};
      std::vector<std::vector<std::pair<uint8_t, uint8_t>>> seqs;
      for (auto [a, b] : n.set) {
        char32_t lo = 0;
        for (int len = 1; len <= 4; ++len) {
          const char32_t x = std::max(a, lo), y = std::min(b, limits[len - 1]);
          if (x <= y) utf8_sequences(x, y, len, seqs);
          lo = limits[len - 1] + 1;
        }
      }
      for (const auto& seq : seqs) {
        int at = from;
        for (size_t k = 0; k < seq.size(); ++k) {
          const int to = k + 1 == seq.size() ? end : nfa.add();
          nfa.states[static_cast<size_t>(at)].edges.push_back({seq[k].first, seq[k].second, to});
          at = to;
        }
      }
      return end;
    }
    case Node::Cat: {
      int at = from;
      for (int k : n.kids) at = build(nodes, k, at, nfa);
      return at;
    }
    case Node::Alt: {
      const int end = nfa.add();
      for (int k : n.kids) {
        const int e = build(nodes, k, from, nfa);
        nfa.states[static_cast<size_t>(e)].eps.push_back(end);
      }
      return end;
    }
    case Node::Repeat: {
      int at = from;
      for (int k = 0; k < n.min; ++k) at = build(nodes, n.kids[0], at, nfa);
      if (n.max < 0) {  // then any number more: a loop
        const int loop = nfa.add();
        nfa.states[static_cast<size_t>(at)].eps.push_back(loop);
        const int e = build(nodes, n.kids[0], loop, nfa);
        nfa.states[static_cast<size_t>(e)].eps.push_back(loop);
        return loop;
      }
      const int end = nfa.add();
      for (int k = n.min; k < n.max; ++k) {
        nfa.states[static_cast<size_t>(at)].eps.push_back(end);
        at = build(nodes, n.kids[0], at, nfa);
      }
      nfa.states[static_cast<size_t>(at)].eps.push_back(end);
      return end;
    }
  }
  return from;
}

}  // namespace

RegexDfa::RegexDfa(const std::string& pattern, int64_t max_work) {
  std::vector<Node> nodes;
  const int root = Parser(pattern).parse(nodes);
  Nfa nfa;
  const int begin = nfa.add();
  const int final_state = build(nodes, root, begin, nfa);

  // Subset construction: a DFA state is the epsilon closure of a set of NFA states.
  std::vector<uint32_t> seen(nfa.states.size(), 0);  // == mark: in this closure already
  uint32_t mark = 0;
  int64_t work = 0;
  auto closure = [&](std::vector<int> set) {
    ++mark;
    std::vector<int> stack = set, out;
    for (int s : set) seen[static_cast<size_t>(s)] = mark;
    while (!stack.empty()) {
      const int s = stack.back();
      stack.pop_back();
      out.push_back(s);
      for (int t : nfa.states[static_cast<size_t>(s)].eps)
        if (seen[static_cast<size_t>(t)] != mark) seen[static_cast<size_t>(t)] = mark, stack.push_back(t);
    }
    work += static_cast<int64_t>(out.size());
    std::sort(out.begin(), out.end());
    return out;
  };
  std::map<std::vector<int>, int32_t> ids;
  std::vector<std::vector<int>> sets;
  auto intern = [&](std::vector<int> set) {
    auto it = ids.find(set);
    if (it != ids.end()) return it->second;
    if (static_cast<int>(sets.size()) >= kMaxStates)
      throw Error(cat("regex: the pattern needs more than ", kMaxStates, " automaton states; it is too large to guide"));
    const int32_t id = static_cast<int32_t>(sets.size());
    ids.emplace(set, id);
    sets.push_back(std::move(set));
    return id;
  };
  intern(closure({begin}));
  // The construction's work is bounded too (a pattern like (.{0,50}){0,50} has few states but huge
  // ones): past max_work steps the pattern is refused rather than compiled for seconds.
  for (size_t d = 0; d < sets.size(); ++d) {
    std::array<std::vector<int>, 256> moves;
    for (int s : sets[d])
      for (const auto& e : nfa.states[static_cast<size_t>(s)].edges) {
        work += e.hi - e.lo + 1;
        for (int b = e.lo; b <= e.hi; ++b) moves[static_cast<size_t>(b)].push_back(e.to);
      }
    work += static_cast<int64_t>(sets[d].size());
    if (work > max_work) throw Error("regex: the pattern is too large to guide (its automaton takes too long to build)");
    std::array<int32_t, 256> row;
    for (int b = 0; b < 256; ++b) {
      auto& m = moves[static_cast<size_t>(b)];
      if (m.empty()) {
        row[static_cast<size_t>(b)] = kDead;
        continue;
      }
      std::sort(m.begin(), m.end());
      m.erase(std::unique(m.begin(), m.end()), m.end());
      row[static_cast<size_t>(b)] = intern(closure(std::move(m)));
    }
    next_.push_back(row);
    accept_.push_back(std::binary_search(sets[d].begin(), sets[d].end(), final_state));
  }
  work_ = work;
  prune("regex: the pattern matches no text");
}

void RegexDfa::prune(const char* when_empty) {
  // Only states from which an accepted text can still be reached are kept as targets: a byte that
  // leads anywhere else is refused at once (so the sampler never walks into a dead end).
  std::vector<char> live(next_.size(), 0);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t d = 0; d < next_.size(); ++d) {
      if (live[d]) continue;
      bool l = accept_[d] != 0;
      for (int b = 0; b < 256 && !l; ++b) l = next_[d][static_cast<size_t>(b)] >= 0 && live[static_cast<size_t>(next_[d][static_cast<size_t>(b)])];
      if (l) live[d] = 1, changed = true;
    }
  }
  if (!live[0]) throw Error(when_empty);
  for (auto& row : next_)
    for (auto& t : row)
      if (t >= 0 && !live[static_cast<size_t>(t)]) t = kDead;
}

template <typename Step, typename Accept>
RegexDfa RegexDfa::product(Step step, Accept accept, const char* when_empty) const {
  RegexDfa out;
  std::map<std::pair<int32_t, int64_t>, int32_t> ids;
  std::vector<std::pair<int32_t, int64_t>> pairs;
  auto intern = [&](int32_t d, int64_t x) {
    auto [it, fresh] = ids.emplace(std::make_pair(d, x), static_cast<int32_t>(pairs.size()));
    if (fresh) {
      if (static_cast<int>(pairs.size()) >= kMaxStates)
        throw Error(cat("needs more than ", kMaxStates, " automaton states; it is too large to guide"));
      pairs.push_back({d, x});
    }
    return it->second;
  };
  intern(start(), 0);
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto [d, x] = pairs[i];
    std::array<int32_t, 256> row;
    for (int b = 0; b < 256; ++b) {
      const int32_t t = next(d, static_cast<unsigned char>(b));
      const int64_t x2 = t == kDead ? -1 : step(x, static_cast<unsigned char>(b));
      row[static_cast<size_t>(b)] = x2 < 0 ? kDead : intern(t, x2);
    }
    out.next_.push_back(row);
    out.accept_.push_back(accepting(d) && accept(x));
  }
  out.prune(when_empty);
  return out;
}

RegexDfa RegexDfa::restricted(const std::array<bool, 256>& banned, int64_t min_chars, int64_t max_chars) const {
  // The product with a count of the characters so far (counted at their first bytes: every text here
  // is whole UTF-8), which stops at min_chars when there is no upper bound.
  const int64_t top = max_chars >= 0 ? max_chars : min_chars;
  return product(
      [&](int64_t k, unsigned char b) -> int64_t {
        const int64_t k2 = (b & 0xC0) == 0x80 ? k : k + 1;
        return banned[b] || (max_chars >= 0 && k2 > max_chars) ? -1 : std::min(k2, top);
      },
      [&](int64_t k) { return k >= min_chars; }, "matches no text within these bounds");
}

RegexDfa RegexDfa::intersect(const RegexDfa& other) const {
  // The product with the other automaton's state (0, its start, at first).
  return product([&](int64_t o, unsigned char b) -> int64_t { return other.next(static_cast<int32_t>(o), b); },
                 [&](int64_t o) { return other.accepting(static_cast<int32_t>(o)); }, "matches no text of both");
}

RegexDfa RegexDfa::multiples(int64_t k) {
  // States: 0 the start, 1 after '-', 2 after a lone 0 (nothing may follow it), 3 + r after a leading
  // digit 1-9 and more, r the value so far modulo k.
  if (k < 1 || k > kMaxStates - 3) throw Error(cat("multiples of ", k, " cannot be guided"));
  RegexDfa out;
  const auto n = static_cast<size_t>(k + 3);
  std::array<int32_t, 256> dead;
  dead.fill(kDead);
  out.next_.assign(n, dead);
  out.accept_.assign(n, 0);
  for (int32_t from : {0, 1}) {
    out.next_[static_cast<size_t>(from)]['0'] = 2;
    for (int d = 1; d <= 9; ++d) out.next_[static_cast<size_t>(from)][static_cast<size_t>('0' + d)] = static_cast<int32_t>(3 + d % k);
  }
  out.next_[0]['-'] = 1;
  out.accept_[2] = 1;
  for (int64_t r = 0; r < k; ++r)
    for (int d = 0; d <= 9; ++d) out.next_[static_cast<size_t>(3 + r)][static_cast<size_t>('0' + d)] = static_cast<int32_t>(3 + (r * 10 + d) % k);
  out.accept_[3] = 1;
  out.prune("matches no text");
  return out;
}

}  // namespace llmserve
