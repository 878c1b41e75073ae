#include "tokenizer/regex.h"

#include <memory>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace llmserve {
namespace {

char32_t fold(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';   // LATIN SMALL LETTER LONG S
  if (c == 0x212A) return 'k';  // KELVIN SIGN
  return c;
}

// Parse tree.
struct Node {
  enum Kind { Char, Class, Any, Seq, Alt, Repeat, Look } kind;
  char32_t c = 0;
  bool icase = false;
  int cls = -1;
  std::vector<std::unique_ptr<Node>> kids;
  int min = 0, max = -1;  // Repeat; max -1 = unbounded
  bool greedy = true;
  bool negative = false;  // Look
};

}  // namespace

bool Regex::CharClass::matches(char32_t c) const {
  bool hit = false;
  for (const auto& it : items) {
    bool m = false;
    switch (it.kind) {
      case ClassItem::Range:
        m = (c >= it.lo && c <= it.hi) || (icase && fold(c) >= it.lo && fold(c) <= it.hi);
        break;
      case ClassItem::Category: m = static_cast<char32_t>(unicode::category(c)) == it.lo; break;
      case ClassItem::Major: m = static_cast<char32_t>(unicode::major(unicode::category(c))) == it.lo; break;
      case ClassItem::Space: m = unicode::is_white_space(c); break;
      case ClassItem::Digit: m = unicode::category(c) == unicode::Cat::Nd; break;
      case ClassItem::Word: {
        const char mj = unicode::major(unicode::category(c));
        m = mj == 'L' || mj == 'N' || c == '_' || unicode::category(c) == unicode::Cat::Mn;
        break;
      }
    }
    if (m != it.negated) {
      hit = true;
      break;
    }
  }
  return hit != negated;
}

class RegexCompiler {
 public:
  RegexCompiler(Regex& re, const std::u32string& p) : re_(re), p_(p) {}

  void compile() {
    auto root = parse_alt(false);
    if (i_ != p_.size()) fail("unbalanced ')'");
    re_.progs_.emplace_back();
    emit_program(*root, 0);
  }

 private:
  [[noreturn]] void fail(const std::string& why) {
    throw Error(cat("tokenizer regex '", re_.pattern_, "': ", why, " at offset ", i_));
  }
  bool more() const { return i_ < p_.size(); }
  char32_t peek() const { return p_[i_]; }

  std::unique_ptr<Node> parse_alt(bool icase) {
    auto first = parse_seq(icase);
    if (!more() || peek() != '|') return first;
    auto alt = std::make_unique<Node>();
    alt->kind = Node::Alt;
    alt->kids.push_back(std::move(first));
    while (more() && peek() == '|') {
      ++i_;
      alt->kids.push_back(parse_seq(icase));
    }
    return alt;
  }

  std::unique_ptr<Node> parse_seq(bool icase) {
    auto seq = std::make_unique<Node>();
    seq->kind = Node::Seq;
    while (more() && peek() != '|' && peek() != ')') {
      auto atom = parse_atom(icase);
      seq->kids.push_back(parse_quant(std::move(atom)));
    }
    return seq;
  }

  std::unique_ptr<Node> parse_quant(std::unique_ptr<Node> atom) {
    if (!more()) return atom;
    int mn, mx;
    const char32_t q = peek();
    if (q == '?') {
      mn = 0, mx = 1;
    } else if (q == '*') {
      mn = 0, mx = -1;
    } else if (q == '+') {
      mn = 1, mx = -1;
    } else if (q == '{' && i_ + 1 < p_.size() && p_[i_ + 1] >= '0' && p_[i_ + 1] <= '9') {
      ++i_;
      mn = number();
      mx = mn;
      if (more() && peek() == ',') {
        ++i_;
        mx = more() && peek() == '}' ? -1 : number();
      }
      if (!more() || peek() != '}') fail("bad {m,n}");
      if (mx != -1 && mx < mn) fail("{m,n} with n < m");
      if (mn > 1000 || mx > 1000) fail("repetition count too large");
    } else {
      return atom;
    }
    ++i_;
    auto r = std::make_unique<Node>();
    r->kind = Node::Repeat;
    r->min = mn;
    r->max = mx;
    if (more() && peek() == '?') {
      r->greedy = false;
      ++i_;
    } else if (more() && peek() == '+') {
      fail("possessive quantifiers are not supported");
    }
    r->kids.push_back(std::move(atom));
    return r;
  }

  int number() {
    int v = 0;
    if (!more() || peek() < '0' || peek() > '9') fail("expected a number");
    while (more() && peek() >= '0' && peek() <= '9') v = v * 10 + static_cast<int>(p_[i_++] - '0');
    return v;
  }

  std::unique_ptr<Node> make_char(char32_t c, bool icase) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Char;
    n->icase = icase;
    n->c = icase ? fold(c) : c;
    return n;
  }

  std::unique_ptr<Node> make_class(Regex::CharClass cc) {
    auto n = std::make_unique<Node>();
    n->kind = Node::Class;
    n->cls = static_cast<int>(re_.classes_.size());
    re_.classes_.push_back(std::move(cc));
    return n;
  }

  std::unique_ptr<Node> parse_atom(bool icase) {
    const char32_t c = p_[i_++];
    if (c == '(') {
      bool inner_icase = icase;
      std::unique_ptr<Node> look;
      if (more() && peek() == '?') {
        ++i_;
        if (!more()) fail("unterminated group");
        const char32_t k = p_[i_++];
        if (k == ':') {
        } else if (k == 'i' && more() && peek() == ':') {
          ++i_;
          inner_icase = true;
        } else if (k == '!' || k == '=') {
          look = std::make_unique<Node>();
          look->kind = Node::Look;
          look->negative = k == '!';
        } else {
          fail("unsupported group syntax");
        }
      }
      auto body = parse_alt(inner_icase);
      if (!more() || peek() != ')') fail("missing ')'");
      ++i_;
      if (look) {
        look->kids.push_back(std::move(body));
        return look;
      }
      return body;
    }
    if (c == '[') return parse_class(icase);
    if (c == '.') {
      auto n = std::make_unique<Node>();
      n->kind = Node::Any;
      return n;
    }
    if (c == '\\') {
      if (!more()) fail("trailing backslash");
      Regex::CharClass cc;
      cc.icase = icase;
      if (escape_class(cc)) return make_class(std::move(cc));
      return make_char(escape_char(), icase);
    }
    if (c == '^' || c == '$') fail("anchors are not supported");
    if (c == ')' || c == '*' || c == '+' || c == '?') fail("unexpected metacharacter");
    return make_char(c, icase);
  }

  // \s \S \d \D \w \W \p{..} \P{..} as class items; returns false for a plain escaped char.
  bool escape_class(Regex::CharClass& cc) {
    const char32_t e = peek();
    Regex::ClassItem item{Regex::ClassItem::Space};
    switch (e) {
      case 's': case 'S': item.kind = Regex::ClassItem::Space; item.negated = e == 'S'; break;
      case 'd': case 'D': item.kind = Regex::ClassItem::Digit; item.negated = e == 'D'; break;
      case 'w': case 'W': item.kind = Regex::ClassItem::Word; item.negated = e == 'W'; break;
      case 'p': case 'P': {
        ++i_;
        item.negated = e == 'P';
        std::string name;
        if (more() && peek() == '{') {
          ++i_;
          while (more() && peek() != '}') name.push_back(static_cast<char>(p_[i_++]));
          if (!more()) fail("unterminated \\p{");
        } else if (more()) {
          name.push_back(static_cast<char>(peek()));
        } else {
          fail("bad \\p");
        }
        if (!name.empty() && name[0] == '^') {
          item.negated = !item.negated;
          name.erase(0, 1);
        }
        category_item(name, item);
        cc.items.push_back(item);
        ++i_;
        return true;
      }
      default: return false;
    }
    ++i_;
    cc.items.push_back(item);
    return true;
  }

  void category_item(const std::string& name, Regex::ClassItem& item) {
    static const char* cats[] = {"Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
                                 "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};
    static const std::pair<const char*, char> majors[] = {
        {"L", 'L'}, {"Letter", 'L'}, {"N", 'N'}, {"Number", 'N'}, {"M", 'M'}, {"Mark", 'M'}, {"P", 'P'},
        {"Punctuation", 'P'}, {"S", 'S'}, {"Symbol", 'S'}, {"Z", 'Z'}, {"Separator", 'Z'}, {"C", 'C'}, {"Other", 'C'}};
    for (const auto& [n, m] : majors)
      if (name == n) {
        item.kind = Regex::ClassItem::Major;
        item.lo = static_cast<char32_t>(m);
        return;
      }
    for (int k = 0; k < 30; ++k)
      if (name == cats[k]) {
        item.kind = Regex::ClassItem::Category;
        item.lo = static_cast<char32_t>(k);
        return;
      }
    fail("unsupported property \\p{" + name + "}");
  }

  char32_t escape_char() {
    const char32_t e = p_[i_++];
    switch (e) {
      case 'n': return '\n';
      case 'r': return '\r';
      case 't': return '\t';
      case 'f': return '\f';
      case 'v': return '\v';
      case '0': return 0;
      case 'x': {
        char32_t v = 0;
        int n = 0;
        const bool braces = more() && peek() == '{';
        if (braces) ++i_;
        while (more() && (braces ? peek() != '}' : n < 2)) {
          const char32_t h = p_[i_++];
          v = v * 16 + (h >= '0' && h <= '9' ? h - '0' : (h | 32) >= 'a' && (h | 32) <= 'f' ? (h | 32) - 'a' + 10 : 0);
          ++n;
        }
        if (braces) ++i_;
        return v;
      }
      default:
        if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '0' && e <= '9')) {
          --i_;
          fail("unsupported escape");
        }
        return e;  // escaped punctuation
    }
  }

  std::unique_ptr<Node> parse_class(bool icase) {
    Regex::CharClass cc;
    cc.icase = icase;
    if (more() && peek() == '^') {
      cc.negated = true;
      ++i_;
    }
    bool first = true;
    while (more() && (peek() != ']' || first)) {
      first = false;
      char32_t lo;
      if (peek() == '\\') {
        ++i_;
        if (!more()) fail("trailing backslash");
        if (escape_class(cc)) continue;
        lo = escape_char();
      } else if (peek() == '[') {
        fail("nested classes are not supported");
      } else {
        lo = p_[i_++];
      }
      char32_t hi = lo;
      if (more() && peek() == '-' && i_ + 1 < p_.size() && p_[i_ + 1] != ']') {
        ++i_;
        if (peek() == '\\') {
          ++i_;
          hi = escape_char();
        } else {
          hi = p_[i_++];
        }
        if (hi < lo) fail("bad range");
      }
      Regex::ClassItem item{Regex::ClassItem::Range};
      item.lo = lo;
      item.hi = hi;
      cc.items.push_back(item);
    }
    if (!more()) fail("unterminated class");
    ++i_;
    return make_class(std::move(cc));
  }

  // Code generation into progs_[prog].
  std::vector<Regex::Inst>& prog(int p) { return re_.progs_[p]; }
  int pc(int p) { return static_cast<int>(prog(p).size()); }
  int emit(int p, Regex::Inst in) {
    prog(p).push_back(in);
    return pc(p) - 1;
  }

  void emit_program(const Node& n, int p) {
    gen(n, p);
    emit(p, {Regex::Op::Match});
  }

  void gen(const Node& n, int p) {
    using Op = Regex::Op;
    switch (n.kind) {
      case Node::Char: {
        Regex::Inst in{Op::Char};
        in.c = n.c;
        in.icase = n.icase;
        emit(p, in);
        break;
      }
      case Node::Class: {
        Regex::Inst in{Op::Class};
        in.x = n.cls;
        emit(p, in);
        break;
      }
      case Node::Any: emit(p, {Op::Any}); break;
      case Node::Seq:
        for (const auto& k : n.kids) gen(*k, p);
        break;
      case Node::Alt: {
        std::vector<int> jumps;
        for (size_t k = 0; k < n.kids.size(); ++k) {
          int split = -1;
          if (k + 1 < n.kids.size()) split = emit(p, {Op::Split});
          gen(*n.kids[k], p);
          if (k + 1 < n.kids.size()) {
            jumps.push_back(emit(p, {Op::Jmp}));
            prog(p)[split].x = split + 1;
            prog(p)[split].y = pc(p);
          }
        }
        for (int j : jumps) prog(p)[j].x = pc(p);
        break;
      }
      case Node::Repeat: {
        const Node& body = *n.kids[0];
        for (int k = 0; k < n.min; ++k) gen(body, p);
        if (n.max == -1) {
          // L: split(body, out); body; jmp L
          const int split = emit(p, {Op::Split});
          gen(body, p);
          Regex::Inst j{Op::Jmp};
          j.x = split;
          emit(p, j);
          set_split(p, split, split + 1, pc(p), n.greedy);
        } else {
          // Nested optionals: (body (body ...)?)?
          std::vector<int> splits;
          for (int k = n.min; k < n.max; ++k) {
            splits.push_back(emit(p, {Op::Split}));
            gen(body, p);
          }
          for (int s : splits) set_split(p, s, s + 1, pc(p), n.greedy);
        }
        break;
      }
      case Node::Look: {
        const int sub = static_cast<int>(re_.progs_.size());
        re_.progs_.emplace_back();
        emit_program(*n.kids[0], sub);
        Regex::Inst in{Op::Look};
        in.x = sub;
        in.negative = n.negative;
        emit(p, in);
        break;
      }
    }
  }

  void set_split(int p, int at, int take, int skip, bool greedy) {
    prog(p)[at].x = greedy ? take : skip;
    prog(p)[at].y = greedy ? skip : take;
  }

  Regex& re_;
  const std::u32string& p_;
  size_t i_ = 0;
};

Regex::Regex(const std::string& pattern) : pattern_(pattern) {
  const std::u32string p = unicode::decode_utf8(pattern);
  RegexCompiler(*this, p).compile();
}

bool Regex::run(int prog_index, const std::u32string& text, size_t start, size_t& end) const {
  const auto& prog = progs_[prog_index];
  struct Frame {
    int pc;
    size_t pos;
  };
  thread_local std::vector<Frame> stack_storage;
  const size_t base = stack_storage.size();
  stack_storage.push_back({0, start});
  size_t steps = 0;
  bool found = false;
  while (stack_storage.size() > base) {
    Frame f = stack_storage.back();
    stack_storage.pop_back();
    int pc = f.pc;
    size_t i = f.pos;
    for (;;) {
      if (++steps > 50'000'000) {
        stack_storage.resize(base);
        throw Error(cat("tokenizer regex '", pattern_, "': too much backtracking"));
      }
      const Inst& in = prog[pc];
      bool ok = true;
      switch (in.op) {
        case Op::Char:
          ok = i < text.size() && (in.icase ? fold(text[i]) == in.c : text[i] == in.c);
          if (ok) ++i, ++pc;
          break;
        case Op::Class:
          ok = i < text.size() && classes_[in.x].matches(text[i]);
          if (ok) ++i, ++pc;
          break;
        case Op::Any:
          ok = i < text.size() && text[i] != '\n';
          if (ok) ++i, ++pc;
          break;
        case Op::Split:
          stack_storage.push_back({in.y, i});
          pc = in.x;
          break;
        case Op::Jmp: pc = in.x; break;
        case Op::Look: {
          size_t e;
          const bool m = run(in.x, text, i, e);
          ok = m != in.negative;
          if (ok) ++pc;
          break;
        }
        case Op::Match:
          end = i;
          found = true;
          break;
      }
      if (found || !ok) break;
    }
    if (found) break;
  }
  stack_storage.resize(base);
  return found;
}

bool Regex::search(const std::u32string& text, size_t from, size_t& begin, size_t& end) const {
  for (size_t s = from; s <= text.size(); ++s) {
    if (run(0, text, s, end)) {
      begin = s;
      return true;
    }
  }
  return false;
}

}  // namespace llmserve
