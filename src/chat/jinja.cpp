#include "chat/jinja.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <unordered_map>

#include "chat/py_case.h"
#include "common/error.h"
#include "tokenizer/unicode.h"

namespace llmserve::jinja {

// ============================================================ lexing of the template source
namespace {

enum class SegKind { Text, Expr, Stmt };

struct Segment {
  SegKind kind;
  std::string text;
  int line = 1;
};

[[noreturn]] void fail_at(int line, const std::string& msg) { throw Error(cat("chat template line ", line, ": ", msg)); }

int count_lines(const std::string& s, size_t from, size_t to) {
  return static_cast<int>(std::count(s.begin() + static_cast<long>(from), s.begin() + static_cast<long>(to), '\n'));
}

// Where the tag whose body starts at `body` closes (`close`: "}}" or "%}"), as Jinja2's lexer finds it:
// not inside a string literal, nor inside brackets ({{ {'a': {'b': 1}} }}, {{ '}}' }}).
size_t find_tag_close(const std::string& src, size_t body, const char* close) {
  int depth = 0;
  char quote = 0;
  for (size_t k = body; k < src.size(); ++k) {
    const char c = src[k];
    if (quote) {
      if (c == '\\') {
        ++k;
      } else if (c == quote) {
        quote = 0;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (depth == 0 && src.compare(k, 2, close) == 0) {
      return k;
    } else if (c == '(' || c == '[' || c == '{') {
      ++depth;
    } else if ((c == ')' || c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return src.find(close, body);  // (unbalanced: the plain first close, and the parser says what is missing)
}

// Splits the source into text, {{ expr }} and {% stmt %} segments, applying whitespace control
// ('-' strips all whitespace on that side), trim_blocks (the first newline after a block tag goes)
// and lstrip_blocks (spaces and tabs before a block tag at the start of a line go). Comments vanish
// like block tags.
std::vector<Segment> lex(const std::string& src) {
  std::vector<Segment> segs;
  size_t i = 0;
  int line = 1;
  bool strip_next = false, trim_next_newline = false;
  // Jinja's `line_starting`: the text that follows begins a line (template start, or the previous
  // tag's trailing whitespace or trimmed newline ended with '\n').
  bool line_starting = true;
  while (i <= src.size()) {
    size_t open = src.find('{', i);
    while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
           src[open + 1] != '#')
      open = src.find('{', open + 1);
    if (open != std::string::npos && open + 1 >= src.size()) open = std::string::npos;
    std::string text = src.substr(i, open == std::string::npos ? std::string::npos : open - i);
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && std::isspace(static_cast<unsigned char>(text[k]))) ++k;
      line_starting = line_starting || (k > 0 && text[k - 1] == '\n');
      text.erase(0, k);
    } else if (trim_next_newline) {
      if (text.rfind("\r\n", 0) == 0) {
        text.erase(0, 2);
        line_starting = true;
      } else if (!text.empty() && text[0] == '\n') {
        text.erase(0, 1);
        line_starting = true;
      }
    }
    strip_next = trim_next_newline = false;
    if (open == std::string::npos) {
      if (!text.empty()) segs.push_back({SegKind::Text, text, line});
      break;
    }
    const char kind = src[open + 1];
    const bool minus_left = open + 2 < src.size() && src[open + 2] == '-';
    const bool plus_left = open + 2 < src.size() && src[open + 2] == '+';
    const bool block = kind == '%' || kind == '#';
    if (minus_left) {
      while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    } else if (block && !plus_left) {
      // lstrip_blocks: whitespace between the start of the line and the tag goes.
      const size_t l_pos = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
      if (l_pos > 0 || line_starting) {
        bool all_ws = l_pos < text.size();
        for (size_t k = l_pos; k < text.size(); ++k)
          if (!std::isspace(static_cast<unsigned char>(text[k]))) all_ws = false;
        if (all_ws) text.erase(l_pos);
      }
    }
    line_starting = false;
    line += count_lines(src, i, open);
    if (!text.empty()) segs.push_back({SegKind::Text, text, line});
    const char* close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t body = open + 2 + ((minus_left || plus_left) ? 1 : 0);
    size_t end = kind == '#' ? src.find(close, body) : find_tag_close(src, body, close);
    if (end == std::string::npos) fail_at(line, cat("unclosed '{", kind, "'"));
    bool minus_right = end > body && src[end - 1] == '-';
    bool plus_right = end > body && src[end - 1] == '+';
    std::string inner = src.substr(body, end - body - ((minus_right || plus_right) ? 1 : 0));
    const int tag_line = line;
    line += count_lines(src, open, end);
    i = end + 2;
    if (kind == '#') {
      strip_next = minus_right;
      trim_next_newline = !minus_right && !plus_right;
      continue;
    }
    // {% raw %} ... {% endraw %}: copied verbatim.
    std::string trimmed = inner;
    trimmed.erase(0, trimmed.find_first_not_of(" \t\r\n"));
    trimmed.erase(trimmed.find_last_not_of(" \t\r\n") + 1);
    if (kind == '%' && trimmed == "raw") {
      size_t search = i;
      for (;;) {
        size_t r = src.find("{%", search);
        if (r == std::string::npos) fail_at(tag_line, "unclosed raw block");
        size_t r2 = r + 2;
        if (r2 < src.size() && (src[r2] == '-' || src[r2] == '+')) ++r2;
        size_t e = src.find("%}", r2);
        if (e == std::string::npos) fail_at(tag_line, "unclosed raw block");
        std::string t = src.substr(r2, e - r2);
        if (!t.empty() && t.back() == '-') t.pop_back();
        t.erase(0, t.find_first_not_of(" \t\r\n"));
        t.erase(t.find_last_not_of(" \t\r\n") + 1);
        if (t == "endraw") {
          std::string raw = src.substr(i, r - i);
          if (!minus_right && !plus_right && !raw.empty() && raw[0] == '\n') raw.erase(0, 1);
          if (src[r + 2] == '-')
            while (!raw.empty() && std::isspace(static_cast<unsigned char>(raw.back()))) raw.pop_back();
          if (!raw.empty()) segs.push_back({SegKind::Text, raw, tag_line});
          minus_right = e > 0 && src[e - 1] == '-';
          line += count_lines(src, i, e);
          i = e + 2;
          break;
        }
        search = e + 2;
      }
      strip_next = minus_right;
      trim_next_newline = !minus_right;
      continue;
    }
    segs.push_back({kind == '{' ? SegKind::Expr : SegKind::Stmt, inner, tag_line});
    strip_next = minus_right;
    trim_next_newline = block && !minus_right && !plus_right;
  }
  return segs;
}

// ============================================================ expression tokens
enum class Tok { Name, String, Int, Float, Op, End };

struct Token {
  Tok kind;
  std::string text;
  int64_t i = 0;
  double f = 0;
};

std::vector<Token> tokenize(const std::string& s, int line) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Tok::Name, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      bool is_float = false;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        is_float = true;
        ++j;
        if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      std::string num = s.substr(i, j - i);
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      Token t{is_float ? Tok::Float : Tok::Int, num};
      if (is_float) {
        t.f = std::stod(num);
      } else {
        t.i = std::stoll(num);
      }
      out.push_back(t);
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {  // Python's unicode-escape, as Jinja2 decodes string literals
          const char e = s[++j];
          auto hex = [&](size_t digits) {
            uint32_t cp = 0;
            for (size_t k = 1; k <= digits; ++k) {
              const char h = j + k < s.size() ? s[j + k] : '\0';
              if (!std::isxdigit(static_cast<unsigned char>(h))) fail_at(line, "truncated \\x, \\u or \\U escape");
              cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
            }
            if (cp > 0x10FFFF) fail_at(line, "illegal Unicode character in escape");
            j += digits;
            unicode::append_utf8(v, static_cast<char32_t>(cp));
          };
          switch (e) {
            case 'n': v += '\n'; break;
            case 't': v += '\t'; break;
            case 'r': v += '\r'; break;
            case 'a': v += '\a'; break;
            case 'b': v += '\b'; break;
            case 'f': v += '\f'; break;
            case 'v': v += '\v'; break;
            case '\\': v += '\\'; break;
            case '\'': v += '\''; break;
            case '"': v += '"'; break;
            case '\n': break;  // a line continuation
            case 'x': hex(2); break;
            case 'u': hex(4); break;
            case 'U': hex(8); break;
            default:
              if (e >= '0' && e <= '7') {  // up to three octal digits
                uint32_t cp = static_cast<uint32_t>(e - '0');
                for (int k = 0; k < 2 && j + 1 < s.size() && s[j + 1] >= '0' && s[j + 1] <= '7'; ++k) cp = cp * 8 + static_cast<uint32_t>(s[++j] - '0');
                unicode::append_utf8(v, static_cast<char32_t>(cp));
              } else {
                v += '\\';
                v += e;
              }
          }
        } else {
          v += s[j];
        }
      }
      if (j >= s.size()) fail_at(line, "unterminated string");
      out.push_back({Tok::String, v});
      i = j + 1;
    } else {
      static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                  "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};
      bool found = false;
      for (const char* op : ops) {
        const size_t n = std::strlen(op);
        if (s.compare(i, n, op) == 0) {
          out.push_back({Tok::Op, op});
          i += n;
          found = true;
          break;
        }
      }
      if (!found) fail_at(line, cat("unexpected character '", c, "'"));
    }
  }
  out.push_back({Tok::End, ""});
  return out;
}

}  // namespace

// ============================================================ AST
struct Expr;
using ExprP = std::shared_ptr<Expr>;

struct Expr {
  enum Kind { Literal, Name, ListLit, DictLit, Attr, Index, Slice, Call, Filter, Test, Unary, Binary, And, Or, Not, Cond } kind;
  Value value;                 // Literal
  std::string name;            // Name, Attr, Filter, Test, Unary/Binary op
  std::vector<ExprP> items;    // ListLit; DictLit as key, value pairs; Slice: obj, a, b, c (null allowed)
  ExprP a, b, c;               // operands
  std::vector<ExprP> args;     // Call/Filter/Test positional
  std::vector<std::pair<std::string, ExprP>> kwargs;
  bool negated = false;        // Test
  bool tuple = false;          // ListLit written as a tuple: (a, b), a, b
  int line = 0;
};

struct Node {
  enum Kind { Root, Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Block } kind;
  std::string text;                                  // Text; Set target name; Macro name
  std::string attr;                                  // Set: ns.attr
  ExprP expr;                                        // Output; Set value; For iterable
  ExprP cond;                                        // For: if filter
  std::vector<std::string> targets;                  // For loop variables
  std::vector<std::pair<ExprP, std::vector<std::shared_ptr<Node>>>> branches;  // If
  std::vector<std::shared_ptr<Node>> body, else_body;
  std::vector<std::pair<std::string, ExprP>> params;  // Macro
  int line = 0;
};
using NodeP = std::shared_ptr<Node>;

// ============================================================ parser
namespace {

class ExprParser {
 public:
  ExprParser(std::vector<Token> toks, int line) : t_(std::move(toks)), line_(line) {}
  bool at_end() const { return t_[p_].kind == Tok::End; }
  const Token& peek() const { return t_[p_]; }
  bool is_op(const char* op) const { return t_[p_].kind == Tok::Op && t_[p_].text == op; }
  bool is_name(const char* n) const { return t_[p_].kind == Tok::Name && t_[p_].text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(cat("expected '", op, "', got '", peek().text, "'"));
    ++p_;
  }
  std::string name() {
    if (peek().kind != Tok::Name) fail(cat("expected a name, got '", peek().text, "'"));
    return t_[p_++].text;
  }
  void expect_name(const char* n) {
    if (!is_name(n)) fail(cat("expected '", n, "', got '", peek().text, "'"));
    ++p_;
  }
  void expect_end() {
    if (!at_end()) fail(cat("unexpected '", peek().text, "'"));
  }
  [[noreturn]] void fail(const std::string& m) const { fail_at(line_, m); }

  ExprP expression() { return conditional(); }
  // A for loop's iterable: no conditional expression (a trailing `if` filters the loop).
  ExprP iterable() { return or_expr(); }

  // Tuple without parentheses (for loop iterables, set values): a, b -> list.
  ExprP tuple_or_expression() {
    ExprP first = expression();
    if (!is_op(",")) return first;
    auto l = make(Expr::ListLit);
    l->tuple = true;
    l->items.push_back(first);
    while (is_op(",")) {
      ++p_;
      if (at_end()) break;
      l->items.push_back(expression());
    }
    return l;
  }

  ExprP make(Expr::Kind k) {
    auto e = std::make_shared<Expr>();
    e->kind = k;
    e->line = line_;
    return e;
  }

 private:
  ExprP conditional() {
    ExprP e = or_expr();
    if (is_name("if")) {
      ++p_;
      auto c = make(Expr::Cond);
      c->a = e;
      c->b = or_expr();
      if (is_name("else")) {
        ++p_;
        c->c = conditional();
      }
      return c;
    }
    return e;
  }
  ExprP or_expr() {
    ExprP e = and_expr();
    while (is_name("or")) {
      ++p_;
      auto o = make(Expr::Or);
      o->a = e;
      o->b = and_expr();
      e = o;
    }
    return e;
  }
  ExprP and_expr() {
    ExprP e = not_expr();
    while (is_name("and")) {
      ++p_;
      auto o = make(Expr::And);
      o->a = e;
      o->b = not_expr();
      e = o;
    }
    return e;
  }
  ExprP not_expr() {
    if (is_name("not")) {
      ++p_;
      auto n = make(Expr::Not);
      n->a = not_expr();
      return n;
    }
    return compare();
  }
  ExprP compare() {
    ExprP e = concat();
    ExprP chained;  // the right operand of the comparison before: a < b < c is a < b and b < c (Python's)
    for (;;) {
      std::string op;
      if (peek().kind == Tok::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                      peek().text == ">" || peek().text == "<=" || peek().text == ">=")) {
        op = t_[p_++].text;
      } else if (is_name("in")) {
        ++p_;
        op = "in";
      } else if (is_name("not") && t_[p_ + 1].kind == Tok::Name && t_[p_ + 1].text == "in") {
        p_ += 2;
        op = "not in";
      } else if (is_name("is")) {
        ++p_;
        auto t = make(Expr::Test);
        if (is_name("not")) {
          ++p_;
          t->negated = true;
        }
        t->a = e;
        t->name = name();
        if (is_op("(")) {
          call_args(t->args, t->kwargs);
        } else if (peek().kind == Tok::String || peek().kind == Tok::Int || peek().kind == Tok::Float || is_op("[") || is_op("{") ||
                   (peek().kind == Tok::Name && !is_name("and") && !is_name("or") && !is_name("else") &&
                    !is_name("if") && !is_name("not") && !is_name("in") && !is_name("is"))) {
          t->args.push_back(primary_postfix());
        }
        e = t;
        chained = nullptr;
        continue;
      } else {
        return e;
      }
      auto b = make(Expr::Binary);
      b->name = op;
      b->a = chained ? chained : e;
      b->b = concat();
      if (chained) {
        auto both = make(Expr::And);
        both->a = e;
        both->b = b;
        e = both;
      } else {
        e = b;
      }
      chained = b->b;
    }
  }
  ExprP concat() {
    ExprP e = additive();
    while (is_op("~")) {
      ++p_;
      auto b = make(Expr::Binary);
      b->name = "~";
      b->a = e;
      b->b = additive();
      e = b;
    }
    return e;
  }
  ExprP additive() {
    ExprP e = multiplicative();
    while (is_op("+") || is_op("-")) {
      auto b = make(Expr::Binary);
      b->name = t_[p_++].text;
      b->a = e;
      b->b = multiplicative();
      e = b;
    }
    return e;
  }
  // Jinja2's precedence below: '**' is left-associative and takes unary operands (2 ** 3 ** 2 is 64,
  // -2 ** 2 is 4), and a unary minus applies before the filters after it (-1 | abs is 1).
  ExprP multiplicative() {
    ExprP e = power();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      auto b = make(Expr::Binary);
      b->name = t_[p_++].text;
      b->a = e;
      b->b = power();
      e = b;
    }
    return e;
  }
  ExprP power() {
    ExprP e = unary();
    while (is_op("**")) {
      ++p_;
      auto b = make(Expr::Binary);
      b->name = "**";
      b->a = e;
      b->b = unary();
      e = b;
    }
    return e;
  }
  ExprP unary(bool with_filters = true) {
    ExprP e;
    if (is_op("-") || is_op("+")) {
      auto u = make(Expr::Unary);
      u->name = t_[p_++].text;
      u->a = unary(false);
      e = u;
    } else {
      e = primary_postfix();
    }
    while (with_filters && is_op("|")) {
      ++p_;
      auto f = make(Expr::Filter);
      f->a = e;
      f->name = name();
      if (is_op("(")) call_args(f->args, f->kwargs);
      e = f;
    }
    return e;
  }

  void call_args(std::vector<ExprP>& args, std::vector<std::pair<std::string, ExprP>>& kwargs) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().kind == Tok::Name && t_[p_ + 1].kind == Tok::Op && t_[p_ + 1].text == "=") {
        std::string k = name();
        ++p_;
        kwargs.emplace_back(k, expression());
      } else {
        args.push_back(expression());
      }
      if (!is_op(",")) break;
      ++p_;
    }
    expect_op(")");
  }

  ExprP primary_postfix() {
    ExprP e = primary();
    for (;;) {
      if (is_op(".")) {
        ++p_;
        auto a = make(Expr::Attr);
        a->a = e;
        if (peek().kind == Tok::Int) {
          a->name = std::to_string(t_[p_++].i);
        } else {
          a->name = name();
        }
        e = a;
      } else if (is_op("[")) {
        ++p_;
        ExprP parts[3] = {nullptr, nullptr, nullptr};
        int n = 0;
        bool is_slice = false;
        while (true) {
          if (!is_op(":") && !is_op("]")) parts[n] = expression();
          if (is_op(":")) {
            is_slice = true;
            ++p_;
            if (++n > 2) fail("bad slice");
            continue;
          }
          break;
        }
        expect_op("]");
        if (is_slice) {
          auto s = make(Expr::Slice);
          s->a = e;
          s->items = {parts[0], parts[1], parts[2]};
          e = s;
        } else {
          auto ix = make(Expr::Index);
          ix->a = e;
          ix->b = parts[0];
          e = ix;
        }
      } else if (is_op("(")) {
        auto c = make(Expr::Call);
        c->a = e;
        call_args(c->args, c->kwargs);
        e = c;
      } else {
        return e;
      }
    }
  }

  ExprP primary() {
    const Token& t = peek();
    if (t.kind == Tok::String) {
      auto l = make(Expr::Literal);
      std::string s = t.text;
      ++p_;
      while (peek().kind == Tok::String) s += t_[p_++].text;  // adjacent literals concatenate
      l->value = Value(s);
      return l;
    }
    if (t.kind == Tok::Int || t.kind == Tok::Float) {
      auto l = make(Expr::Literal);
      l->value = t.kind == Tok::Int ? Value(t.i) : Value(t.f);
      ++p_;
      return l;
    }
    if (t.kind == Tok::Name) {
      ++p_;
      auto l = make(Expr::Literal);
      if (t.text == "true" || t.text == "True") return l->value = Value(true), l;
      if (t.text == "false" || t.text == "False") return l->value = Value(false), l;
      if (t.text == "none" || t.text == "None") return l->value = Value::none(), l;
      auto n = make(Expr::Name);
      n->name = t.text;
      return n;
    }
    if (is_op("(")) {
      ++p_;
      if (is_op(")")) {
        ++p_;
        auto empty = make(Expr::ListLit);
        empty->tuple = true;
        return empty;
      }
      ExprP e = expression();
      if (is_op(",")) {
        auto l = make(Expr::ListLit);
        l->tuple = true;
        l->items.push_back(e);
        while (is_op(",")) {
          ++p_;
          if (is_op(")")) break;
          l->items.push_back(expression());
        }
        e = l;
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      ++p_;
      auto l = make(Expr::ListLit);
      while (!is_op("]")) {
        l->items.push_back(expression());
        if (!is_op(",")) break;
        ++p_;
      }
      expect_op("]");
      return l;
    }
    if (is_op("{")) {
      ++p_;
      auto d = make(Expr::DictLit);
      while (!is_op("}")) {
        d->items.push_back(expression());
        expect_op(":");
        d->items.push_back(expression());
        if (!is_op(",")) break;
        ++p_;
      }
      expect_op("}");
      return d;
    }
    fail(cat("unexpected '", t.text.empty() ? "end of expression" : t.text, "'"));
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int line_;
};

class Parser {
 public:
  explicit Parser(std::vector<Segment> segs) : s_(std::move(segs)) {}

  NodeP parse() {
    auto root = std::make_shared<Node>();
    root->kind = Node::Root;
    std::string stop;
    root->body = block({}, stop);
    if (!stop.empty()) fail_at(line_, cat("unexpected '", stop, "'"));
    return root;
  }

 private:
  // Parses nodes until one of `ends` (a statement keyword) is met; its keyword goes to `stop`,
  // and the statement's parser stays at that segment for the caller.
  std::vector<NodeP> block(const std::vector<std::string>& ends, std::string& stop) {
    std::vector<NodeP> out;
    stop.clear();
    while (i_ < s_.size()) {
      const Segment& seg = s_[i_];
      line_ = seg.line;
      if (seg.kind == SegKind::Text) {
        auto n = std::make_shared<Node>();
        n->kind = Node::Text;
        n->text = seg.text;
        out.push_back(n);
        ++i_;
        continue;
      }
      ExprParser ep(tokenize(seg.text, seg.line), seg.line);
      if (seg.kind == SegKind::Expr) {
        auto n = std::make_shared<Node>();
        n->kind = Node::Output;
        n->line = seg.line;
        n->expr = ep.expression();
        ep.expect_end();
        out.push_back(n);
        ++i_;
        continue;
      }
      if (ep.at_end()) fail_at(seg.line, "empty statement");
      const std::string kw = ep.peek().text;
      if (std::find(ends.begin(), ends.end(), kw) != ends.end()) {
        stop = kw;
        return out;
      }
      ++i_;
      ep.name();
      out.push_back(statement(kw, ep, seg.line));
    }
    if (!ends.empty()) fail_at(line_, cat("missing '", ends.back(), "'"));
    return out;
  }

  // The statement segment at i_-1 has keyword `kw`; `ep` is past it.
  NodeP statement(const std::string& kw, ExprParser& ep, int line) {
    auto n = std::make_shared<Node>();
    n->line = line;
    std::string stop;
    if (kw == "if") {
      n->kind = Node::If;
      ExprP cond = ep.expression();
      ep.expect_end();
      for (;;) {
        auto body = block({"elif", "else", "endif"}, stop);
        n->branches.emplace_back(cond, body);
        ExprParser sp(tokenize(s_[i_].text, s_[i_].line), s_[i_].line);
        sp.name();
        ++i_;
        if (stop == "elif") {
          cond = sp.expression();
          sp.expect_end();
          continue;
        }
        sp.expect_end();
        if (stop == "else") {
          n->else_body = block({"endif"}, stop);
          ++i_;
        }
        break;
      }
      return n;
    }
    if (kw == "for") {
      n->kind = Node::For;
      n->targets.push_back(ep.name());
      while (ep.is_op(",")) {
        ep.expect_op(",");
        n->targets.push_back(ep.name());
      }
      ep.expect_name("in");
      // The iterable stops before a trailing `if` (loop filter) or `recursive`.
      n->expr = ep.iterable();
      if (ep.is_name("if")) {
        ep.name();
        n->cond = ep.expression();
      }
      if (ep.is_name("recursive")) ep.fail("recursive loops are not supported");
      ep.expect_end();
      n->body = block({"else", "endfor"}, stop);
      ++i_;
      if (stop == "else") {
        n->else_body = block({"endfor"}, stop);
        ++i_;
      }
      return n;
    }
    if (kw == "set") {
      std::string target = ep.name();
      if (ep.is_op(".")) {
        ep.expect_op(".");
        n->attr = ep.name();
      }
      n->text = target;
      if (ep.is_op("=")) {
        ep.expect_op("=");
        n->kind = Node::Set;
        n->expr = ep.tuple_or_expression();
        ep.expect_end();
        return n;
      }
      ep.expect_end();
      n->kind = Node::SetBlock;
      n->body = block({"endset"}, stop);
      ++i_;
      return n;
    }
    if (kw == "macro") {
      n->kind = Node::Macro;
      n->text = ep.name();
      ep.expect_op("(");
      while (!ep.is_op(")")) {
        std::string p = ep.name();
        ExprP def;
        if (ep.is_op("=")) {
          ep.expect_op("=");
          def = ep.expression();
        }
        n->params.emplace_back(p, def);
        if (!ep.is_op(",")) break;
        ep.expect_op(",");
      }
      ep.expect_op(")");
      ep.expect_end();
      n->body = block({"endmacro"}, stop);
      ++i_;
      return n;
    }
    if (kw == "break" || kw == "continue") {
      ep.expect_end();
      n->kind = kw == "break" ? Node::Break : Node::Continue;
      return n;
    }
    if (kw == "generation") {  // transformers' assistant-mask marker: renders its body
      ep.expect_end();
      n->kind = Node::Block;
      n->body = block({"endgeneration"}, stop);
      ++i_;
      return n;
    }
    fail_at(line, cat("unsupported statement '", kw, "'"));
  }

  std::vector<Segment> s_;
  size_t i_ = 0;
  int line_ = 1;
};

}  // namespace
}  // namespace llmserve::jinja

namespace llmserve::jinja {
namespace {

// Python's str.isspace: what strip() and trim take off by default (Unicode whitespace: U+00A0, U+3000
// and the like too, not only ASCII's).
bool py_space(char32_t c) {
  return (c >= 0x9 && c <= 0xD) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

}  // namespace

std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right) {
  const std::u32string set = unicode::decode_utf8(chars);
  // (broken UTF-8 reads as U+FFFD, which is kept)
  auto in = [&](char32_t c) { return c != 0xFFFD && (chars.empty() ? py_space(c) : set.find(c) != std::u32string::npos); };
  size_t b = 0, e = s.size(), n;
  if (left)
    while (b < e && in(unicode::utf8_at(s, b, n))) b += n;
  if (right)
    for (size_t j; e > b; e = j) {
      j = std::max(b, unicode::utf8_char_start(s, e - 1));
      if (!in(unicode::utf8_at(s, j, n)) || j + n != e) break;
    }
  return s.substr(b, e - b);
}

namespace {

// Python indexes strings by code point: strings that are not ASCII are indexed, sliced and reversed as
// code points (their UTF-8 bytes would give pieces of characters).
bool is_ascii(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}
// Bytes of the whitespace character (Python's) at s[i], 0 where there is none.
size_t space_at(const std::string& s, size_t i) {
  size_t n;
  return py_space(unicode::utf8_at(s, i, n)) ? n : 0;
}
// Jinja2's title filter (do_title, not str.title): the text split before and after each run of '-',
// whitespace, '(', '{', '[' or '<', and each part's first character upper-cased, the rest of it
// lower-cased (as a string of its own: a final sigma is judged within the part).
std::string jinja_title(const std::string& s) {
  auto sep = [&](size_t i, size_t& n) {
    const char32_t c = unicode::utf8_at(s, i, n);
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_space(c);
  };
  std::string out;
  for (size_t i = 0, n; i < s.size();) {
    const bool in_sep = sep(i, n);
    size_t end = i;
    for (size_t k; end < s.size() && sep(end, k) == in_sep;) end += k;
    if (in_sep) {
      out.append(s, i, end - i);
    } else {
      out += pycase::upper(std::string_view(s).substr(i, n));
      out += pycase::lower(std::string_view(s).substr(i + n, end - i - n));
    }
    i = end;
  }
  return out;
}

// Python's printf-style formatting, `fmt % args` (Jinja2's format filter): %s %r %a %d %i %u %o %x %X
// %e %E %f %F %g %G %c %%, flags '#0- +', width and precision (either may be '*'), and %(key)s with a
// mapping. Sets `error` (Python's TypeError text) instead of throwing.
std::string py_percent(const std::string& fmt, const List& args, const Value* mapping, std::string& error) {
  std::string out;
  size_t next = 0;
  auto take = [&]() -> const Value* {
    if (mapping) return mapping;
    if (next >= args.size()) {
      error = "not enough arguments for format string";
      return nullptr;
    }
    return &args[next++];
  };
  auto pad = [](std::string body, int64_t width, bool left) {  // to `width` characters with spaces
    const int64_t len = static_cast<int64_t>(unicode::decode_utf8(body).size());
    if (width <= len) return body;
    std::string r = left ? body : std::string(static_cast<size_t>(width - len), ' ');
    r.append(left ? std::string(static_cast<size_t>(width - len), ' ') : body);
    return r;
  };
  Value keyed_value;  // a %(key)s conversion's value
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) return error = "incomplete format", "";
    const Value* keyed = nullptr;
    if (fmt[i] == '(') {
      const size_t close = fmt.find(')', i);
      if (close == std::string::npos) return error = "incomplete format key", "";
      if (!mapping || !mapping->is_dict()) return error = "format requires a mapping", "";
      const Value v = mapping->get(fmt.substr(i + 1, close - i - 1));
      if (v.is_undefined()) return error = cat("'", fmt.substr(i + 1, close - i - 1), "'"), "";
      keyed_value = v;
      keyed = &keyed_value;
      i = close + 1;
    }
    bool alt = false, zero = false, left = false, space = false, plus = false;
    for (; i < fmt.size() && std::strchr("#0- +", fmt[i]); ++i) {
      alt |= fmt[i] == '#', zero |= fmt[i] == '0', left |= fmt[i] == '-', space |= fmt[i] == ' ', plus |= fmt[i] == '+';
    }
    int64_t width = -1, prec = -1;
    auto number = [&](int64_t& n) {
      if (i < fmt.size() && fmt[i] == '*') {
        const Value* w = take();
        if (!w) return false;
        if (w->type() != Value::Type::Int) return error = "* wants int", false;
        n = w->as_int(), ++i;
        if (&n == &width && n < 0) left = true, n = -n;
        return true;
      }
      if (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i]))) {
        n = 0;
        for (; i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i])); ++i) n = std::min<int64_t>(n * 10 + (fmt[i] - '0'), 100000);
      }
      return true;
    };
    if (!number(width)) return "";
    if (i < fmt.size() && fmt[i] == '.') {
      ++i, prec = 0;
      if (!number(prec)) return "";
    }
    while (i < fmt.size() && std::strchr("hlL", fmt[i])) ++i;
    if (i >= fmt.size()) return error = "incomplete format", "";
    const char type = fmt[i];
    if (type == '%') {
      out += '%';
      continue;
    }
    const Value* v = keyed ? keyed : take();
    if (!v) return "";
    std::string body;
    if (type == 's' || type == 'r' || type == 'a') {
      body = type == 's' ? v->to_string() : v->repr();
      if (prec >= 0) {
        std::u32string u = unicode::decode_utf8(body);
        if (static_cast<int64_t>(u.size()) > prec) body = unicode::encode_utf8(u.substr(0, static_cast<size_t>(prec)));
      }
      out += pad(body, width, left);
      continue;
    }
    if (type == 'c') {
      if (v->is_string() && unicode::decode_utf8(v->str()).size() == 1) {
        body = v->str();
      } else if (v->type() == Value::Type::Int && v->as_int() >= 0 && v->as_int() < 0x110000) {
        unicode::append_utf8(body, static_cast<char32_t>(v->as_int()));
      } else {
        return error = "%c requires an int or a unicode character", "";
      }
      out += pad(body, width, left);
      continue;
    }
    if (!v->is_number() && v->type() != Value::Type::Bool)
      return error = cat("%", std::string(1, type), " format: a real number is required, not ", v->type_name()), "";
    const double x = v->type() == Value::Type::Bool ? (v->as_bool() ? 1 : 0) : v->as_float();
    std::string spec = "%";
    if (alt) spec += '#';
    if (zero && !left) spec += '0';
    if (left) spec += '-';
    if (plus) spec += '+';
    else if (space) spec += ' ';
    if (width >= 0) spec += std::to_string(width);
    char buf[512];
    if (std::strchr("diuoxX", type)) {
      if (type != 'd' && type != 'i' && type != 'u' && v->type() == Value::Type::Float)
        return error = cat("%", std::string(1, type), " format: an integer is required, not float"), "";
      const long long n = v->type() == Value::Type::Bool ? (v->as_bool() ? 1 : 0) : v->type() == Value::Type::Int ? v->as_int() : static_cast<long long>(x);
      if (prec >= 0) spec.append(".").append(std::to_string(std::min<int64_t>(prec, 400)));
      spec += "ll";
      spec += (type == 'i' || type == 'u') ? 'd' : type;
      if (type == 'o' && alt) {  // Python's alternate octal is "0o17", C's "017"
        std::snprintf(buf, sizeof buf, "%llo", n < 0 ? static_cast<unsigned long long>(-n) : static_cast<unsigned long long>(n));
        std::string body_o = n < 0 ? "-" : plus ? "+" : space ? " " : "";
        body_o.append("0o").append(buf);
        out += pad(body_o, width, left);
        continue;
      }
      if (std::strchr("oxX", type) && n < 0) {  // Python prints the sign and the magnitude
        const char* magnitude = type == 'o' ? "%llo" : type == 'x' ? (alt ? "%#llx" : "%llx") : (alt ? "%#llX" : "%llX");
        std::snprintf(buf, sizeof buf, magnitude, static_cast<unsigned long long>(-n));
        std::string body_n = "-";
        body_n.append(buf);
        out += pad(body_n, width, left);
        continue;
      }
      std::snprintf(buf, sizeof buf, spec.c_str(), n);
    } else if (std::strchr("eEfFgG", type)) {
      spec.append(".").append(std::to_string(prec < 0 ? 6 : std::min<int64_t>(prec, 400)));
      spec += type;
      std::snprintf(buf, sizeof buf, spec.c_str(), x);
    } else {
      return error = cat("unsupported format character '", std::string(1, type), "'"), "";
    }
    out += buf;
  }
  if (!mapping && next < args.size()) return error = "not all arguments converted during string formatting", "";
  return out;
}

// Jinja2's attribute paths (make_attrgetter): "a.b.0" looks up a, then b, then index 0.
Value attr_path(const Value& item, const std::string& path) {
  Value v = item;
  for (size_t at = 0; at <= path.size();) {
    size_t dot = path.find('.', at);
    if (dot == std::string::npos) dot = path.size();
    const std::string part = path.substr(at, dot - at);
    const bool digits = !part.empty() && part.size() <= 18 && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    if (digits && v.is_list()) {
      const size_t k = static_cast<size_t>(std::stoull(part));
      v = k < v.list().size() ? v.list()[k] : Value();
    } else {
      v = v.is_dict() ? v.get(part) : Value();
    }
    at = dot + 1;
  }
  return v;
}

// markupsafe.escape: what Jinja2's escape / e filters give.
std::string html_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    switch (c) {
      case '&': r += "&amp;"; break;
      case '<': r += "&lt;"; break;
      case '>': r += "&gt;"; break;
      case '\'': r += "&#39;"; break;
      case '"': r += "&#34;"; break;
      default: r += c;
    }
  }
  return r;
}

struct BreakSignal {};
struct ContinueSignal {};

[[noreturn]] void rfail(const Expr& e, const std::string& m) { fail_at(e.line, m); }


int64_t py_index(int64_t i, size_t n) { return i < 0 ? i + static_cast<int64_t>(n) : i; }

class Renderer {
 public:
  explicit Renderer(const Dict& vars) {
    scopes_.emplace_back();
    for (const auto& [k, v] : vars) scopes_.back()[k] = v;
    install_globals();
  }

  void render(const std::vector<NodeP>& nodes, std::string& out) {
    for (const auto& n : nodes) exec(*n, out);
  }

 private:
  using Scope = std::unordered_map<std::string, Value>;
  std::vector<Scope> scopes_;

  void install_globals() {
    Scope& g = scopes_.front();
    auto def = [&](const char* name, Function f) {
      if (!g.count(name)) g[name] = Value(std::move(f));
    };
    def("raise_exception", [](Args& a) -> Value {
      throw Error(cat("chat template error: ", a.get(0, "message").to_string()));
    });
    def("strftime_now", [](Args& a) -> Value {
      const std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof buf, a.get(0, "format").to_string().c_str(), &tm);
      return Value(std::string(buf, n));
    });
    def("namespace", [](Args& a) -> Value {
      Dict d;
      if (!a.pos.empty() && a.pos[0].is_dict()) d = a.pos[0].dict();
      for (auto& [k, v] : a.kw) d.emplace_back(k, v);
      return Value(std::move(d));
    });
    def("range", [](Args& a) -> Value {
      int64_t start = 0, stop, step = 1;
      if (a.pos.size() == 1) {
        stop = a.pos[0].as_int();
      } else if (a.pos.size() >= 2) {
        start = a.pos[0].as_int();
        stop = a.pos[1].as_int();
        if (a.pos.size() > 2) step = a.pos[2].as_int();
      } else {
        throw Error("chat template: range() needs arguments");
      }
      if (step == 0) throw Error("chat template: range() step is 0");
      List l;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        l.emplace_back(i);
        if (l.size() > 1000000) throw Error("chat template: range() too large");
      }
      return Value(std::move(l));
    });
    def("dict", [](Args& a) -> Value {
      Dict d;
      for (auto& [k, v] : a.kw) d.emplace_back(k, v);
      return Value(std::move(d));
    });
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value();
  }

  void exec(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::Text: out += n.text; break;
      case Node::Output: out += eval(*n.expr).to_string(); break;
      case Node::If:
        for (const auto& [cond, body] : n.branches)
          if (eval(*cond).truthy()) {
            render(body, out);
            return;
          }
        render(n.else_body, out);
        break;
      case Node::For: exec_for(n, out); break;
      case Node::Set: {
        Value v = eval(*n.expr);
        if (!n.attr.empty()) {
          Value ns = lookup(n.text);
          if (!ns.is_dict()) fail_at(n.line, cat("cannot set attribute of '", n.text, "' (not a namespace)"));
          ns.set(n.attr, v);
        } else {
          scopes_.back()[n.text] = v;
        }
        break;
      }
      case Node::SetBlock: {
        std::string s;
        render(n.body, s);
        scopes_.back()[n.text] = Value(s);
        break;
      }
      case Node::Macro: {
        const Node* node = &n;
        scopes_.back()[n.text] = Value(Function([this, node](Args& a) -> Value {
          Scope sc;
          for (size_t i = 0; i < node->params.size(); ++i) {
            const auto& [pname, pdef] = node->params[i];
            Value v = a.get(i, pname);
            if (v.is_undefined() && pdef) v = eval(*pdef);
            sc[pname] = v;
          }
          scopes_.push_back(std::move(sc));
          std::string s;
          try {
            render(node->body, s);
          } catch (...) {
            scopes_.pop_back();
            throw;
          }
          scopes_.pop_back();
          return Value(s);
        }));
        break;
      }
      case Node::Break: throw BreakSignal{};
      case Node::Continue: throw ContinueSignal{};
      case Node::Block: render(n.body, out); break;
      case Node::Root: render(n.body, out); break;
    }
  }

  List iterate(const Value& v, int line) {
    if (v.is_list()) return v.list();
    if (v.is_dict()) {
      List keys;
      for (const auto& kv : v.dict()) keys.emplace_back(kv.first);
      return keys;
    }
    if (v.is_string()) {
      List chars;
      const std::string& s = v.str();
      for (size_t i = 0, n; i < s.size(); i += n) {
        unicode::utf8_at(s, i, n);
        chars.emplace_back(s.substr(i, n));
      }
      return chars;
    }
    if (v.is_undefined() || v.is_none()) {
      if (v.is_none()) fail_at(line, "cannot iterate over None");
      return {};
    }
    fail_at(line, cat("cannot iterate over a ", v.type_name()));
  }

  void bind_targets(const Node& n, Scope& sc, const Value& item) {
    if (n.targets.size() == 1) {
      sc[n.targets[0]] = item;
      return;
    }
    if (!item.is_list() || item.list().size() != n.targets.size())
      fail_at(n.line, cat("cannot unpack into ", n.targets.size(), " loop variables"));
    for (size_t k = 0; k < n.targets.size(); ++k) sc[n.targets[k]] = item.list()[k];
  }

  void exec_for(const Node& n, std::string& out) {
    List items = iterate(eval(*n.expr), n.line);
    if (n.cond) {  // the loop filter runs before loop.* is computed
      List kept;
      for (const auto& it : items) {
        scopes_.emplace_back();
        bind_targets(n, scopes_.back(), it);
        const bool keep = eval(*n.cond).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(it);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      render(n.else_body, out);
      return;
    }
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      Scope sc;
      bind_targets(n, sc, items[i]);
      Dict loop = {{"index", Value(i + 1)},
                   {"index0", Value(i)},
                   {"revindex", Value(len - i)},
                   {"revindex0", Value(len - i - 1)},
                   {"first", Value(i == 0)},
                   {"last", Value(i == len - 1)},
                   {"length", Value(len)},
                   {"previtem", i > 0 ? items[i - 1] : Value()},
                   {"nextitem", i + 1 < len ? items[i + 1] : Value()}};
      loop.emplace_back("cycle", Value(Function([i](Args& a) -> Value {
                          if (a.pos.empty()) return Value();
                          return a.pos[static_cast<size_t>(i) % a.pos.size()];
                        })));
      sc["loop"] = Value(std::move(loop));
      scopes_.push_back(std::move(sc));
      try {
        render(n.body, out);
      } catch (const BreakSignal&) {
        scopes_.pop_back();
        break;
      } catch (const ContinueSignal&) {
      } catch (...) {
        scopes_.pop_back();
        throw;
      }
      scopes_.pop_back();
    }
  }

  Args eval_args(const std::vector<ExprP>& args, const std::vector<std::pair<std::string, ExprP>>& kw) {
    Args a;
    for (const auto& e : args) a.pos.push_back(eval(*e));
    for (const auto& [k, e] : kw) a.kw.emplace_back(k, eval(*e));
    return a;
  }

  Value attr(const Value& obj, const std::string& name, const Expr& e) {
    if (obj.is_dict()) return obj.get(name);
    if (obj.is_undefined()) rfail(e, cat("'", name, "' of an undefined value"));
    if (obj.is_list() && !name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) {
      const int64_t i = std::stoll(name);
      return i < static_cast<int64_t>(obj.list().size()) ? obj.list()[i] : Value();
    }
    return Value();  // other attributes are undefined (methods are handled by calls)
  }

  Value index(const Value& obj, const Value& key, const Expr& e) {
    if (obj.is_dict()) {
      if (!key.is_string()) return Value();
      return obj.get(key.str());
    }
    if (obj.is_list() || obj.is_string()) {
      if (!key.is_number() || key.type() == Value::Type::Float) rfail(e, "indices must be integers");
      const bool wide = obj.is_string() && !is_ascii(obj.str());
      const std::u32string u = wide ? unicode::decode_utf8(obj.str()) : std::u32string();
      const size_t n = obj.is_list() ? obj.list().size() : wide ? u.size() : obj.str().size();
      const int64_t i = py_index(key.as_int(), n);
      if (i < 0 || i >= static_cast<int64_t>(n)) return Value();
      if (wide) return Value(unicode::encode_utf8(u.substr(static_cast<size_t>(i), 1)));
      return obj.is_list() ? obj.list()[i] : Value(obj.str().substr(i, 1));
    }
    if (obj.is_undefined()) rfail(e, "subscript of an undefined value");
    return Value();
  }

  Value slice(const Value& obj, const Expr& e) {
    auto part = [&](int k) -> std::optional<int64_t> {
      if (!e.items[k]) return std::nullopt;
      Value v = eval(*e.items[k]);
      if (v.is_none()) return std::nullopt;
      return v.as_int();
    };
    const int64_t step = part(2).value_or(1);
    if (step == 0) rfail(e, "slice step cannot be zero");
    const bool is_list = obj.is_list();
    if (!is_list && !obj.is_string()) rfail(e, cat("cannot slice a ", obj.type_name()));
    const bool wide = !is_list && !is_ascii(obj.str());
    const std::u32string u = wide ? unicode::decode_utf8(obj.str()) : std::u32string();
    const int64_t n = is_list ? static_cast<int64_t>(obj.list().size()) : wide ? static_cast<int64_t>(u.size()) : static_cast<int64_t>(obj.str().size());
    auto clamp = [&](std::optional<int64_t> v, int64_t def) {
      if (!v) return def;
      int64_t x = *v < 0 ? *v + n : *v;
      if (step > 0) return std::clamp<int64_t>(x, 0, n);
      return std::clamp<int64_t>(x, -1, n - 1);
    };
    const int64_t start = clamp(part(0), step > 0 ? 0 : n - 1), stop = clamp(part(1), step > 0 ? n : -1);
    List l;
    std::string s;
    std::u32string w;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (is_list) {
        l.push_back(obj.list()[i]);
      } else if (wide) {
        w += u[static_cast<size_t>(i)];
      } else {
        s += obj.str()[i];
      }
    }
    if (wide) return Value(unicode::encode_utf8(w));
    return is_list ? Value(std::move(l)) : Value(s);
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Literal: return e.value;
      case Expr::Name: return lookup(e.name);
      case Expr::ListLit: {
        List l;
        for (const auto& x : e.items) l.push_back(eval(*x));
        return e.tuple ? Value::tuple(std::move(l)) : Value(std::move(l));
      }
      case Expr::DictLit: {
        Value d{Dict{}};
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) d.set(eval(*e.items[i]).to_string(), eval(*e.items[i + 1]));
        return d;
      }
      case Expr::Attr: return attr(eval(*e.a), e.name, e);
      case Expr::Index: return index(eval(*e.a), eval(*e.b), e);
      case Expr::Slice: return slice(eval(*e.a), e);
      case Expr::Call: return call(e);
      case Expr::Filter: return filter(e);
      case Expr::Test: {
        const bool r = test(e);
        return Value(e.negated ? !r : r);
      }
      case Expr::Unary: {
        Value v = eval(*e.a);
        if (!v.is_number()) rfail(e, cat("bad operand for unary ", e.name, ": ", v.type_name()));
        if (e.name == "+") return v;
        return v.type() == Value::Type::Int ? Value(-v.as_int()) : Value(-v.as_float());
      }
      case Expr::Binary: return binary(e);
      case Expr::And: {
        Value a = eval(*e.a);
        return a.truthy() ? eval(*e.b) : a;
      }
      case Expr::Or: {
        Value a = eval(*e.a);
        return a.truthy() ? a : eval(*e.b);
      }
      case Expr::Not: return Value(!eval(*e.a).truthy());
      case Expr::Cond:
        if (eval(*e.b).truthy()) return eval(*e.a);
        return e.c ? eval(*e.c) : Value();
    }
    return Value();
  }

  // What sort, dictsort and unique compare without case_sensitive: a string lower-cased (ASCII letters).
  static Value folded(const Value& k) { return k.is_string() ? Value(pycase::lower(k.str())) : k; }

  // a < b (op "<", ">", "<=" or ">="): numbers, or strings (UTF-8 byte order is code point order, Python's).
  bool ordered(const std::string& op, const Value& a, const Value& b, const Expr& e) {
    int c;
    if (a.is_number() && b.is_number()) {
      c = a.as_float() < b.as_float() ? -1 : a.as_float() > b.as_float() ? 1 : 0;
    } else if (a.is_string() && b.is_string()) {
      c = a.str().compare(b.str());
    } else {
      rfail(e, cat("cannot compare ", a.type_name(), " and ", b.type_name()));
    }
    if (op == "<") return c < 0;
    if (op == ">") return c > 0;
    if (op == "<=") return c <= 0;
    return c >= 0;
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    Value a = eval(*e.a), b = eval(*e.b);
    if (op == "==") return Value(a == b);
    if (op == "!=") return Value(!(a == b));
    if (op == "in" || op == "not in") {
      bool r = false;
      if (b.is_string()) {
        if (!a.is_string()) rfail(e, "'in <string>' requires a string on the left");
        r = b.str().find(a.str()) != std::string::npos;
      } else if (b.is_list()) {
        r = std::find(b.list().begin(), b.list().end(), a) != b.list().end();
      } else if (b.is_dict()) {
        r = a.is_string() && !b.get(a.str()).is_undefined();
      } else if (!b.is_undefined()) {
        rfail(e, cat("'in' on a ", b.type_name()));
      }
      return Value(op == "in" ? r : !r);
    }
    if (op == "~") return Value(a.to_string() + b.to_string());
    if (op == "<" || op == ">" || op == "<=" || op == ">=") return Value(ordered(op, a, b, e));
    if (op == "+") {
      if (a.is_string() && b.is_string()) return Value(a.str() + b.str());
      if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {  // (a list and a tuple: Python's TypeError)
        List l = a.list();
        l.insert(l.end(), b.list().begin(), b.list().end());
        return a.is_tuple() ? Value::tuple(std::move(l)) : Value(std::move(l));
      }
    }
    if (op == "*" && ((a.is_string() && b.type() == Value::Type::Int) || (b.is_string() && a.type() == Value::Type::Int))) {
      const std::string& s = a.is_string() ? a.str() : b.str();
      const int64_t n = a.is_string() ? b.as_int() : a.as_int();
      std::string r;
      for (int64_t i = 0; i < n && r.size() < 10'000'000; ++i) r += s;
      return Value(r);
    }
    if (op == "*" && ((a.is_list() && b.type() == Value::Type::Int) || (b.is_list() && a.type() == Value::Type::Int))) {
      const Value& x = a.is_list() ? a : b;  // Python's repetition: [0] * 3
      const int64_t n = a.is_list() ? b.as_int() : a.as_int();
      List l;
      for (int64_t i = 0; i < n && l.size() < 1'000'000; ++i) l.insert(l.end(), x.list().begin(), x.list().end());
      return x.is_tuple() ? Value::tuple(std::move(l)) : Value(std::move(l));
    }
    if (!a.is_number() || !b.is_number())
      rfail(e, cat("unsupported operand types for ", op, ": ", a.type_name(), " and ", b.type_name()));
    const bool ints = a.type() == Value::Type::Int && b.type() == Value::Type::Int;
    if (op == "+") return ints ? Value(a.as_int() + b.as_int()) : Value(a.as_float() + b.as_float());
    if (op == "-") return ints ? Value(a.as_int() - b.as_int()) : Value(a.as_float() - b.as_float());
    if (op == "*") return ints ? Value(a.as_int() * b.as_int()) : Value(a.as_float() * b.as_float());
    if (op == "/") {
      if (b.as_float() == 0) rfail(e, "division by zero");
      return Value(a.as_float() / b.as_float());
    }
    if (op == "//" || op == "%") {
      if (b.as_float() == 0) rfail(e, "division by zero");
      if (ints) {
        int64_t q = a.as_int() / b.as_int(), r = a.as_int() % b.as_int();
        if (r != 0 && ((r < 0) != (b.as_int() < 0))) --q, r += b.as_int();  // Python floors
        return op == "//" ? Value(q) : Value(r);
      }
      const double q = std::floor(a.as_float() / b.as_float());
      return op == "//" ? Value(q) : Value(a.as_float() - q * b.as_float());
    }
    if (op == "**") return ints && b.as_int() >= 0 ? Value(static_cast<int64_t>(std::pow(a.as_int(), b.as_int())))
                                                   : Value(std::pow(a.as_float(), b.as_float()));
    rfail(e, cat("unknown operator ", op));
  }

  // Method calls on strings, dicts and lists; other calls go to callables.
  Value call(const Expr& e) {
    if (e.a->kind == Expr::Attr) {
      Value obj = eval(*e.a->a);
      const std::string& m = e.a->name;
      Args a = eval_args(e.args, e.kwargs);
      if (obj.is_string()) return string_method(obj.str(), m, a, e);
      if (obj.is_dict()) {
        Value f = obj.get(m);
        if (f.is_callable()) return f.fn()(a);
        if (m == "items") {
          List l;
          for (const auto& [k, v] : obj.dict()) l.push_back(Value::tuple({Value(k), v}));
          return Value(std::move(l));
        }
        if (m == "keys" || m == "values") {
          List l;
          for (const auto& [k, v] : obj.dict()) l.push_back(m == "keys" ? Value(k) : v);
          return Value(std::move(l));
        }
        if (m == "get") {
          Value v = obj.get(a.get(0, "key").to_string());
          return v.is_undefined() ? a.get(1, "default", Value::none()) : v;
        }
        rfail(e, cat("dict has no method '", m, "'"));
      }
      if (obj.is_list()) {
        if (m == "index") {
          auto it = std::find(obj.list().begin(), obj.list().end(), a.get(0, "value"));
          if (it == obj.list().end()) rfail(e, "list.index: value not found");
          return Value(static_cast<int64_t>(it - obj.list().begin()));
        }
        if (m == "count") return Value(static_cast<int64_t>(std::count(obj.list().begin(), obj.list().end(), a.get(0, "value"))));
        rfail(e, cat("list has no method '", m, "' (templates cannot modify lists)"));
      }
      if (obj.is_undefined()) rfail(e, cat("'", m, "' of an undefined value"));
      rfail(e, cat(obj.type_name(), " has no method '", m, "'"));
    }
    Value f = eval(*e.a);
    if (!f.is_callable()) rfail(e, f.is_undefined() ? "call of an undefined function" : cat("a ", f.type_name(), " is not callable"));
    Args a = eval_args(e.args, e.kwargs);
    return f.fn()(a);
  }

  Value string_method(const std::string& s, const std::string& m, const Args& a, const Expr& e) {
    auto arg_str = [&](size_t i, const char* name, const std::string& def) {
      Value v = a.get(i, name);
      return v.is_undefined() || v.is_none() ? def : v.to_string();
    };
    if (m == "startswith" || m == "endswith") {
      Value p = a.get(0, "prefix");
      List opts = p.is_list() ? p.list() : List{p};
      for (const auto& o : opts) {
        const std::string& x = o.to_string();
        if (m == "startswith" ? s.rfind(x, 0) == 0 : (s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0))
          return Value(true);
      }
      return Value(false);
    }
    if (m == "strip") return Value(strip_chars(s, arg_str(0, "chars", ""), true, true));
    if (m == "lstrip") return Value(strip_chars(s, arg_str(0, "chars", ""), true, false));
    if (m == "rstrip") return Value(strip_chars(s, arg_str(0, "chars", ""), false, true));
    if (m == "upper") return Value(pycase::upper(s));
    if (m == "lower") return Value(pycase::lower(s));
    if (m == "title") return Value(pycase::title(s));
    if (m == "capitalize") return Value(pycase::capitalize(s));
    if (m == "swapcase") return Value(pycase::swapcase(s));
    if (m == "islower") return Value(pycase::islower(s));
    if (m == "isupper") return Value(pycase::isupper(s));
    if (m == "rsplit") {  // as split, but at most maxsplit splits counted from the right
      Value sep = a.get(0, "sep");
      const int64_t maxsplit = a.get(1, "maxsplit", Value(static_cast<int64_t>(-1))).as_int();
      if (maxsplit < 0) return string_method(s, "split", a, e);
      std::vector<std::string> tail;  // the parts split off, right to left
      size_t end = s.size();
      if (sep.is_undefined() || sep.is_none()) {
        auto space_before = [&](size_t p) {  // bytes of a whitespace character ending at p, or 0
          const size_t k = unicode::utf8_char_start(s, p - 1);
          return space_at(s, k) == p - k ? p - k : 0;
        };
        for (int64_t n = 0; n < maxsplit; ++n) {
          for (size_t w; end > 0 && (w = space_before(end)) > 0;) end -= w;
          if (end == 0) break;
          size_t start = end;
          while (start > 0 && space_before(start) == 0) --start;
          tail.push_back(s.substr(start, end - start));
          end = start;
        }
        const std::string head = strip_chars(s.substr(0, end), "", false, true);
        List out;
        if (!head.empty()) out.emplace_back(head);
        for (auto it = tail.rbegin(); it != tail.rend(); ++it) out.emplace_back(*it);
        return Value(std::move(out));
      }
      const std::string d = sep.to_string();
      if (d.empty()) rfail(e, "rsplit: empty separator");
      for (int64_t n = 0; n < maxsplit && end >= d.size(); ++n) {
        const size_t k = s.rfind(d, end - d.size());
        if (k == std::string::npos) break;
        tail.push_back(s.substr(k + d.size(), end - k - d.size()));
        end = k;
      }
      List out{Value(s.substr(0, end))};
      for (auto it = tail.rbegin(); it != tail.rend(); ++it) out.emplace_back(*it);
      return Value(std::move(out));
    }
    if (m == "split") {
      Value sep = a.get(0, "sep");
      const int64_t maxsplit = a.get(1, "maxsplit", Value(static_cast<int64_t>(-1))).as_int();
      List parts;
      if (sep.is_undefined() || sep.is_none()) {
        size_t i = 0;
        int64_t n = 0;
        while (i < s.size()) {
          for (size_t w; i < s.size() && (w = space_at(s, i)) > 0;) i += w;
          if (i >= s.size()) break;
          if (maxsplit >= 0 && n == maxsplit) {
            parts.emplace_back(strip_chars(s.substr(i), "", false, true));
            break;
          }
          size_t j = i;
          while (j < s.size() && space_at(s, j) == 0) ++j;
          parts.emplace_back(s.substr(i, j - i));
          ++n;
          i = j;
        }
        return Value(std::move(parts));
      }
      const std::string d = sep.to_string();
      if (d.empty()) rfail(e, "split: empty separator");
      size_t i = 0;
      int64_t n = 0;
      for (;;) {
        const size_t k = s.find(d, i);
        if (k == std::string::npos || (maxsplit >= 0 && n == maxsplit)) {
          parts.emplace_back(s.substr(i));
          break;
        }
        parts.emplace_back(s.substr(i, k - i));
        i = k + d.size();
        ++n;
      }
      return Value(std::move(parts));
    }
    if (m == "replace") {
      const std::string from = a.get(0, "old").to_string(), to = a.get(1, "new").to_string();
      int64_t count = a.get(2, "count", Value(static_cast<int64_t>(-1))).as_int();
      if (from.empty()) return Value(s);
      std::string r;
      size_t i = 0;
      for (;;) {
        const size_t k = count == 0 ? std::string::npos : s.find(from, i);
        if (k == std::string::npos) {
          r += s.substr(i);
          break;
        }
        r += s.substr(i, k - i) + to;
        i = k + from.size();
        if (count > 0) --count;
      }
      return Value(r);
    }
    if (m == "find" || m == "rfind" || m == "index" || m == "rindex") {  // code point positions, as Python
      const std::string sub = a.get(0, "sub").to_string();
      const size_t k = m[0] == 'r' ? s.rfind(sub) : s.find(sub);
      if (k == std::string::npos && m.find("index") != std::string::npos) rfail(e, "substring not found");
      return Value(k == std::string::npos ? int64_t{-1} : unicode::code_points(std::string_view(s).substr(0, k)));
    }
    if (m == "count") {
      const std::string sub = a.get(0, "sub").to_string();
      int64_t n = 0;
      if (!sub.empty())
        for (size_t k = s.find(sub); k != std::string::npos; k = s.find(sub, k + sub.size())) ++n;
      return Value(n);
    }
    if (m == "join") {
      std::string r;
      const List items = iterate(a.get(0, "iterable"), e.line);
      for (size_t i = 0; i < items.size(); ++i) r += (i ? s : "") + items[i].to_string();
      return Value(r);
    }
    if (m == "isdigit" || m == "isalpha" || m == "isspace") {
      if (s.empty()) return Value(false);
      for (char32_t c : unicode::decode_utf8(s)) {
        const bool ok = m == "isdigit"   ? unicode::category(c) == unicode::Cat::Nd
                        : m == "isalpha" ? unicode::is_letter(c)
                                         : py_space(c);
        if (!ok) return Value(false);
      }
      return Value(true);
    }
    rfail(e, cat("string has no method '", m, "'"));
  }

  Value filter(const Expr& e) {
    Value v = eval(*e.a);
    Args a = eval_args(e.args, e.kwargs);
    const std::string& f = e.name;
    if (f == "tojson") {  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
      JsonFormat fmt;
      const Value ascii = a.get(0, "ensure_ascii"), ind = a.get(1, "indent"), seps = a.get(2, "separators"),
                  sort = a.get(3, "sort_keys");
      fmt.ensure_ascii = !ascii.is_undefined() && ascii.truthy();
      if (ind.is_number()) fmt.indent = static_cast<int>(std::max<int64_t>(0, ind.as_int()));
      if (seps.is_list()) {
        if (seps.list().size() != 2) rfail(e, "tojson: separators must be an (item, key) pair");
        fmt.item_sep = seps.list()[0].to_string(), fmt.key_sep = seps.list()[1].to_string();
      }
      fmt.sort_keys = !sort.is_undefined() && sort.truthy();
      return Value(v.to_json(fmt));
    }
    if (f == "trim") return Value(strip_chars(v.to_string(), a.get(0, "chars").is_undefined() ? "" : a.get(0, "chars").to_string(), true, true));
    if (f == "length" || f == "count") {
      if (v.is_string()) return Value(static_cast<int64_t>(iterate(v, e.line).size()));
      if (v.is_list()) return Value(static_cast<int64_t>(v.list().size()));
      if (v.is_dict()) return Value(static_cast<int64_t>(v.dict().size()));
      if (v.is_undefined()) return Value(int64_t{0});
      rfail(e, cat("length of a ", v.type_name()));
    }
    if (f == "string") return Value(v.to_string());
    if (f == "safe") return v;
    if (f == "title") return Value(jinja_title(v.to_string()));
    if (f == "upper" || f == "lower" || f == "capitalize") return string_method(v.to_string(), f, a, e);
    if (f == "replace") return string_method(v.to_string(), "replace", a, e);
    if (f == "int") {
      if (v.is_number()) return Value(v.as_int());
      if (v.is_string()) {
        try {
          return Value(static_cast<int64_t>(std::stoll(strip_chars(v.str(), "", true, true))));
        } catch (...) {
          return a.get(0, "default", Value(int64_t{0}));
        }
      }
      return a.get(0, "default", Value(int64_t{0}));
    }
    if (f == "float") {
      if (v.is_number()) return Value(v.as_float());
      try {
        return Value(std::stod(v.to_string()));
      } catch (...) {
        return a.get(0, "default", Value(0.0));
      }
    }
    if (f == "abs") {
      if (!v.is_number()) rfail(e, "abs of a non-number");
      return v.type() == Value::Type::Int ? Value(static_cast<int64_t>(std::llabs(v.as_int()))) : Value(std::fabs(v.as_float()));
    }
    if (f == "default" || f == "d") {
      const bool boolean = a.get(1, "boolean", Value(false)).truthy();
      if (v.is_undefined() || (boolean && !v.truthy())) return a.get(0, "default_value", Value(""));
      return v;
    }
    if (f == "first" || f == "last") {
      List l = iterate(v, e.line);
      if (l.empty()) return Value();
      return f == "first" ? l.front() : l.back();
    }
    if (f == "list") return Value(iterate(v, e.line));
    if (f == "reverse") {
      if (v.is_string()) {
        std::u32string u = unicode::decode_utf8(v.str());
        std::reverse(u.begin(), u.end());
        return Value(unicode::encode_utf8(u));
      }
      List l = iterate(v, e.line);
      std::reverse(l.begin(), l.end());
      return Value(std::move(l));
    }
    if (f == "join") {
      const std::string sep = a.get(0, "d", Value("")).to_string();
      Value attrname = a.get(1, "attribute");
      std::string r;
      List l = iterate(v, e.line);
      for (size_t i = 0; i < l.size(); ++i)
        r += (i ? sep : "") + (attrname.is_undefined() ? l[i] : attr_path(l[i], attrname.to_string())).to_string();
      return Value(r);
    }
    if (f == "items") {
      if (!v.is_dict()) rfail(e, "items of a non-mapping");
      List l;
      for (const auto& [k, x] : v.dict()) l.push_back(Value::tuple({Value(k), x}));
      return Value(std::move(l));
    }
    if (f == "dictsort" || f == "sort") {
      // Jinja2's dictsort(case_sensitive=False, by='key', reverse=False) -> [key, value] pairs, and
      // sort(reverse=False, case_sensitive=False, attribute=None); strings compare lower-cased unless
      // case_sensitive (ASCII letters), numbers as numbers.
      const bool dict = f == "dictsort";
      if (dict && !v.is_dict()) rfail(e, "dictsort of a non-mapping");
      const bool cs = a.get(dict ? 0 : 1, "case_sensitive", Value(false)).truthy();
      const bool by_value = dict && a.get(1, "by", Value(std::string("key"))).to_string() == "value";
      const bool reverse = a.get(dict ? 2 : 0, "reverse", Value(false)).truthy();
      const Value attr = dict ? Value() : a.get(2, "attribute");
      List items;
      if (dict) {
        for (const auto& [k, x] : v.dict()) items.push_back(Value::tuple({Value(k), x}));
      } else {
        items = iterate(v, e.line);
      }
      auto key = [&](const Value& item) {
        Value k = dict ? item.list()[by_value ? 1 : 0] : attr.is_undefined() ? item : attr_path(item, attr.to_string());
        return cs ? k : folded(k);
      };
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        return reverse ? ordered("<", key(y), key(x), e) : ordered("<", key(x), key(y), e);
      });
      return Value(std::move(items));
    }
    if (f == "select" || f == "reject" || f == "selectattr" || f == "rejectattr") {
      // The items that pass a named test (select('odd'), reject('in', xs)), or are truthy without one; the
      // *attr forms test an attribute of each item (selectattr('role', 'equalto', 'user')).
      const bool attr = f.size() > 6, want = f[0] == 's';
      const size_t test_at = attr ? 1 : 0;
      const std::string attrname = attr ? a.get(0, "attr").to_string() : "";
      List out;
      for (const auto& item : iterate(v, e.line)) {
        const Value x = attr ? attr_path(item, attrname) : item;
        bool r;
        if (a.pos.size() <= test_at) {
          r = x.truthy();
        } else {
          Args targs;
          for (size_t k = test_at + 1; k < a.pos.size(); ++k) targs.pos.push_back(a.pos[k]);
          r = named_test(a.pos[test_at].to_string(), x, targs, e);
        }
        if (r == want) out.push_back(item);
      }
      return Value(std::move(out));
    }
    if (f == "map") {
      Value attrname = a.get(99, "attribute");
      List out;
      for (const auto& item : iterate(v, e.line)) {
        if (!attrname.is_undefined()) {
          Value x = attr_path(item, attrname.to_string());
          out.push_back(x.is_undefined() ? a.get(99, "default") : x);
        } else if (!a.pos.empty()) {
          Expr fe = e;
          fe.name = a.pos[0].to_string();
          Args rest;
          for (size_t k = 1; k < a.pos.size(); ++k) rest.pos.push_back(a.pos[k]);
          out.push_back(apply_named_filter(fe.name, item, rest, e));
        } else {
          rfail(e, "map needs an attribute or a filter name");
        }
      }
      return Value(std::move(out));
    }
    if (f == "unique") {  // Jinja2's unique(case_sensitive=False, attribute=None): the first of each
      const bool cs = a.get(0, "case_sensitive", Value(false)).truthy();
      const Value attr = a.get(1, "attribute");
      auto key = [&](const Value& item) {
        Value k = attr.is_undefined() ? item : attr_path(item, attr.to_string());
        return cs ? k : folded(k);
      };
      List out, keys;
      for (const auto& item : iterate(v, e.line)) {
        Value k = key(item);
        if (std::find(keys.begin(), keys.end(), k) != keys.end()) continue;
        keys.push_back(k);
        out.push_back(item);
      }
      return Value(std::move(out));
    }
    if (f == "indent") {  // Jinja2's do_indent(width=4, first=False, blank=False), lines split as str.splitlines
      const Value w = a.get(0, "width", Value(int64_t{4}));
      const std::string pad = w.is_string() ? w.str() : std::string(static_cast<size_t>(std::max<int64_t>(0, w.as_int())), ' ');
      const bool first = a.get(1, "first", Value(false)).truthy(), blank = a.get(2, "blank", Value(false)).truthy();
      std::string text = v.to_string();
      text += '\n';
      std::vector<std::string> lines;  // str.splitlines: \n, \r, \r\n, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029
      std::string cur;
      for (size_t i = 0, n; i < text.size(); i += n) {
        const char32_t c = unicode::utf8_at(text, i, n);
        if (c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e) || c == 0x85 || c == 0x2028 || c == 0x2029) {
          if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++n;
          lines.push_back(std::move(cur));
          cur.clear();
        } else {
          cur.append(text, i, n);
        }
      }
      if (!cur.empty()) lines.push_back(std::move(cur));
      std::string r;
      for (size_t i = 0; i < lines.size(); ++i) {
        if (i > 0) r += "\n";
        if (i > 0 && (blank || !lines[i].empty())) r += pad;
        r += lines[i];
      }
      return Value(first ? pad + r : r);
    }
    if (f == "wordcount") {  // len(re.findall(r"\w+", s)): runs of letters, numbers and '_'
      int64_t words = 0;
      bool in_word = false;
      for (char32_t c : unicode::decode_utf8(v.to_string())) {
        const bool w = c == '_' || unicode::is_letter(c) || unicode::is_number(c);
        words += w && !in_word;
        in_word = w;
      }
      return Value(words);
    }
    if (f == "max" || f == "min") {  // (case_sensitive=False, attribute=None): the first extreme item
      const bool cs = a.get(0, "case_sensitive", Value(false)).truthy();
      const Value attr = a.get(1, "attribute");
      const List l = iterate(v, e.line);
      if (l.empty()) return Value();
      auto key = [&](const Value& item) {
        Value k = attr.is_undefined() ? item : attr_path(item, attr.to_string());
        return cs ? k : folded(k);
      };
      size_t best = 0;
      for (size_t i = 1; i < l.size(); ++i)
        if (ordered(f == "max" ? ">" : "<", key(l[i]), key(l[best]), e)) best = i;
      return l[best];
    }
    if (f == "sum") {  // (attribute=None, start=0)
      const Value attr = a.get(0, "attribute");
      Value total = a.get(1, "start", Value(int64_t{0}));
      for (const auto& item : iterate(v, e.line)) {
        const Value x = attr.is_undefined() ? item : attr_path(item, attr.to_string());
        if (!total.is_number() || !x.is_number()) rfail(e, cat("sum: unsupported operand types: ", total.type_name(), " and ", x.type_name()));
        total = total.type() == Value::Type::Int && x.type() == Value::Type::Int ? Value(total.as_int() + x.as_int())
                                                                                  : Value(total.as_float() + x.as_float());
      }
      return total;
    }
    if (f == "round") {  // (precision=0, method='common'): Python's round, or math.ceil / floor at that precision
      const int64_t prec = a.get(0, "precision", Value(int64_t{0})).as_int();
      const std::string method = a.get(1, "method", Value("common")).to_string();
      if (method != "common" && method != "ceil" && method != "floor") rfail(e, "round: method must be common, ceil or floor");
      if (!v.is_number()) rfail(e, cat("round of a ", v.type_name()));
      if (method == "common") {
        if (v.type() == Value::Type::Int) {  // round(int, n): the int itself, or to a multiple of 10**-n, ties to even
          if (prec >= 0 || prec < -18) return prec >= 0 ? v : Value(int64_t{0});
          int64_t p10 = 1;
          for (int64_t k = 0; k < -prec; ++k) p10 *= 10;
          const int64_t x = v.as_int(), q = x / p10 - (x % p10 < 0 ? 1 : 0), rem = x - q * p10;  // floor division
          const int64_t up = 2 * rem > p10 || (2 * rem == p10 && (q & 1)) ? 1 : 0;
          return Value((q + up) * p10);
        }
        const double x = v.as_float();
        if (!std::isfinite(x)) return Value(x);
        if (prec >= 0 && prec <= 300) {  // correctly rounded, ties to even, as Python's round (from the exact binary value)
          char buf[512];
          std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(prec), x);
          return Value(std::strtod(buf, nullptr));
        }
        const double p10 = std::pow(10.0, static_cast<double>(-prec));
        return Value(std::nearbyint(x / p10) * p10);
      }
      const double p10 = std::pow(10.0, static_cast<double>(prec));
      return Value((method == "ceil" ? std::ceil(v.as_float() * p10) : std::floor(v.as_float() * p10)) / p10);
    }
    if (f == "center") {  // str.center(width=80)
      const std::u32string u = unicode::decode_utf8(v.to_string());
      const int64_t width = a.get(0, "width", Value(int64_t{80})).as_int(), len = static_cast<int64_t>(u.size());
      if (width <= len) return Value(v.to_string());
      const int64_t marg = width - len, left = marg / 2 + (marg & width & 1);
      std::string r(static_cast<size_t>(left), ' ');
      r.append(v.to_string()).append(static_cast<size_t>(marg - left), ' ');
      return Value(r);
    }
    if (f == "truncate") {  // (length=255, killwords=False, end='...', leeway=5)
      const std::u32string u = unicode::decode_utf8(v.to_string());
      const int64_t length = a.get(0, "length", Value(int64_t{255})).as_int();
      const bool killwords = a.get(1, "killwords", Value(false)).truthy();
      const std::u32string end = unicode::decode_utf8(a.get(2, "end", Value("...")).to_string());
      const int64_t leeway = a.get(3, "leeway", Value(int64_t{5})).as_int();
      if (length < static_cast<int64_t>(end.size())) rfail(e, cat("truncate: expected length >= ", end.size(), ", got ", length));
      if (leeway < 0) rfail(e, cat("truncate: expected leeway >= 0, got ", leeway));
      if (static_cast<int64_t>(u.size()) <= length + leeway) return Value(v.to_string());
      std::u32string head = u.substr(0, static_cast<size_t>(length - static_cast<int64_t>(end.size())));
      if (!killwords) {
        const size_t sp = head.rfind(U' ');
        if (sp != std::u32string::npos) head.resize(sp);
      }
      return Value(unicode::encode_utf8(head + end));
    }
    if (f == "batch") {  // (linecount, fill_with=None): lists of linecount items, the last padded
      const int64_t n = a.get(0, "linecount").as_int();
      const Value fill = a.get(1, "fill_with");
      if (n <= 0) rfail(e, "batch: linecount must be positive");
      List out, cur;
      for (const auto& item : iterate(v, e.line)) {
        if (static_cast<int64_t>(cur.size()) == n) out.emplace_back(std::move(cur)), cur = List{};
        cur.push_back(item);
      }
      if (!cur.empty()) {
        if (!fill.is_undefined() && !fill.is_none())
          while (static_cast<int64_t>(cur.size()) < n) cur.push_back(fill);
        out.emplace_back(std::move(cur));
      }
      return Value(std::move(out));
    }
    if (f == "slice") {  // (slices, fill_with=None): `slices` columns, the first ones one longer
      const int64_t slices = a.get(0, "slices").as_int();
      const Value fill = a.get(1, "fill_with");
      if (slices <= 0) rfail(e, "slice: slices must be positive");
      const List seq = iterate(v, e.line);
      const int64_t length = static_cast<int64_t>(seq.size()), per = length / slices, extra = length % slices;
      List out;
      int64_t offset = 0;
      for (int64_t k = 0; k < slices; ++k) {
        const int64_t start = offset + k * per;
        if (k < extra) ++offset;
        const int64_t end = offset + (k + 1) * per;
        List part(seq.begin() + start, seq.begin() + end);
        if (!fill.is_undefined() && !fill.is_none() && k >= extra) part.push_back(fill);
        out.emplace_back(std::move(part));
      }
      return Value(std::move(out));
    }
    if (f == "format") {  // value % args (positional) or value % kwargs (a mapping), as Python's printf-style
      if (!a.pos.empty() && !a.kw.empty()) rfail(e, "format: can't handle positional and keyword arguments at the same time");
      std::string err;
      Value mapping{Dict{}};
      for (const auto& [k, x] : a.kw) mapping.set(k, x);
      const std::string r = py_percent(v.to_string(), a.pos, a.kw.empty() ? nullptr : &mapping, err);
      if (!err.empty()) rfail(e, cat("format: ", err));
      return Value(r);
    }
    if (f == "escape" || f == "e" || f == "forceescape") return Value(html_escape(v.to_string()));
    if (f == "filesizeformat") {  // (binary=False): "12.3 kB", "1 Byte", "10 Bytes"
      const bool binary = a.get(0, "binary", Value(false)).truthy();
      double bytes;
      if (v.is_number()) {
        bytes = v.as_float();
      } else {
        try {
          bytes = std::stod(v.to_string());
        } catch (...) {
          rfail(e, cat("filesizeformat of ", v.repr()));
        }
      }
      const double base = binary ? 1024 : 1000;
      static const char* dec[] = {"kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"};
      static const char* bin[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"};
      if (bytes == 1) return Value("1 Byte");
      if (bytes < base) return Value(cat(static_cast<int64_t>(bytes), " Bytes"));
      double unit = base;
      int k = 0;
      for (; k < 8; ++k) {
        unit = std::pow(base, k + 2);
        if (bytes < unit) break;
      }
      k = std::min(k, 7);
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.1f %s", base * bytes / unit, binary ? bin[k] : dec[k]);
      return Value(std::string(buf));
    }
    rfail(e, cat("unknown filter '", f, "'"));
  }

  Value apply_named_filter(const std::string& name, const Value& v, const Args& a, const Expr& where) {
    Expr fe;
    fe.kind = Expr::Filter;
    fe.name = name;
    fe.line = where.line;
    auto lit = std::make_shared<Expr>();
    lit->kind = Expr::Literal;
    lit->value = v;
    fe.a = lit;
    for (const auto& x : a.pos) {
      auto l = std::make_shared<Expr>();
      l->kind = Expr::Literal;
      l->value = x;
      fe.args.push_back(l);
    }
    return filter(fe);
  }

  bool test(const Expr& e) {
    Value v = eval(*e.a);
    Args a = eval_args(e.args, e.kwargs);
    return named_test(e.name, v, a, e);
  }

  bool named_test(const std::string& t, const Value& v, const Args& a, const Expr& e) {
    if (t == "defined") return !v.is_undefined();
    if (t == "undefined") return v.is_undefined();
    if (t == "none") return v.is_none();
    if (t == "string") return v.is_string();
    if (t == "number") return v.is_number();
    if (t == "integer") return v.type() == Value::Type::Int;
    if (t == "float") return v.type() == Value::Type::Float;
    if (t == "boolean") return v.type() == Value::Type::Bool;
    if (t == "true") return v.type() == Value::Type::Bool && v.as_bool();
    if (t == "false") return v.type() == Value::Type::Bool && !v.as_bool();
    if (t == "mapping") return v.is_dict();
    if (t == "sequence") return v.is_list() || v.is_string();
    if (t == "iterable") return v.is_list() || v.is_string() || v.is_dict();
    if (t == "callable") return v.is_callable();
    if (t == "odd" || t == "even") {
      if (!v.is_number()) rfail(e, cat("'", t, "' test of a non-number"));
      return (v.as_int() % 2 != 0) == (t == "odd");
    }
    if (t == "divisibleby") return a.get(0, "num").as_int() != 0 && v.as_int() % a.get(0, "num").as_int() == 0;
    if (t == "eq" || t == "equalto" || t == "==") return v == a.get(0, "other");
    if (t == "ne" || t == "!=") return !(v == a.get(0, "other"));
    static const std::pair<const char*, const char*> order_tests[] = {
        {"lt", "<"}, {"lessthan", "<"}, {"<", "<"}, {"le", "<="}, {"<=", "<="},
        {"gt", ">"}, {"greaterthan", ">"}, {">", ">"}, {"ge", ">="}, {">=", ">="}};
    for (const auto& [name, op] : order_tests)
      if (t == name) return ordered(op, v, a.get(0, "other"), e);
    if (t == "in") {
      Value c = a.get(0, "seq");
      if (c.is_list()) return std::find(c.list().begin(), c.list().end(), v) != c.list().end();
      if (c.is_string()) return v.is_string() && c.str().find(v.str()) != std::string::npos;
      if (c.is_dict()) return v.is_string() && !c.get(v.str()).is_undefined();
      return false;
    }
    if (t == "lower") return pycase::islower(v.to_string());  // (Jinja2: str(value).islower())
    if (t == "upper") return pycase::isupper(v.to_string());
    rfail(e, cat("unknown test '", t, "'"));
  }
};

}  // namespace

Template::Template(const std::string& source) : root_(Parser(lex(source)).parse()) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;

std::string Template::render(const Dict& variables) const {
  Renderer r(variables);
  std::string out;
  try {
    r.render(root_->body, out);
  } catch (const BreakSignal&) {
    throw Error("chat template: 'break' outside a loop");
  } catch (const ContinueSignal&) {
    throw Error("chat template: 'continue' outside a loop");
  }
  return out;
}

}  // namespace llmserve::jinja
