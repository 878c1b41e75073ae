#include "engine/schema_grammar.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "engine/json_schema.h"
#include "engine/regex_dfa.h"

namespace llmserve {
namespace {

using Type = SchemaNode::Type;

// Bytes as a grammar literal: "..." with the quote, the backslash and control characters escaped
// (other bytes, UTF-8 included, as they are).
std::string literal(const std::string& bytes) {
  std::string out = "\"";
  for (unsigned char c : bytes) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7F) {
      static const char* hex = "0123456789ABCDEF";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// A code point inside a grammar class: \uHHHH / \UHHHHHHHH for all but letters and digits.
std::string class_char(uint32_t cp) {
  if ((cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return std::string(1, static_cast<char>(cp));
  char buf[16];
  if (cp <= 0xFFFF)
    std::snprintf(buf, sizeof buf, "\\u%04X", cp);
  else
    std::snprintf(buf, sizeof buf, "\\U%08X", cp);
  return buf;
}

std::string char_class(const std::vector<std::pair<uint32_t, uint32_t>>& ranges) {
  std::string out = "[";
  for (const auto& [a, b] : ranges) {
    out += class_char(a);
    if (b != a) out += "-" + class_char(b);
  }
  return out + "]";
}

// The generic JSON rules (RFC 8259, as the JSON recognizer of guided.h takes it).
const char* const kJsonRules = R"(jchar ::= [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] )
jstr ::= "\"" jchar* "\""
jint ::= "-"? ( "0" | [1-9] [0-9]* )
jnum ::= jint ( "." [0-9]+ )? ( [eE] [+\-]? [0-9]+ )?
jval ::= jobj | jarr | jstr | jnum | "true" | "false" | "null"
jobj ::= "{" ws ( jstr ws ":" ws jval ws ( "," ws jstr ws ":" ws jval ws )* )? "}"
jarr ::= "[" ws ( jval ws ( "," ws jval ws )* )? "]"
)";

class Writer {
 public:
  explicit Writer(const JsonSchema& s) : s_(s) {}

  std::string run(int max_ws) {
    out_ = "root ::= ws n" + std::to_string(s_.root) + "\n";
    out_ += max_ws > 0 ? "ws ::= [ \\t\\n\\r]{0," + std::to_string(max_ws) + "}\n" : "ws ::= \"\"\n";
    out_ += kJsonRules;
    // Every node reachable from the root through its children (a union's alternatives, not the
    // dispatch by first byte, which the grammar does not need).
    std::vector<int32_t> todo = {s_.root};
    std::set<int32_t> seen = {s_.root};
    while (!todo.empty()) {
      const int32_t id = todo.back();
      todo.pop_back();
      for (int32_t c : node(id))
        if (c >= 0 && seen.insert(c).second) todo.push_back(c);
      if (out_.size() > kMaxGrammarText)
        throw Error(cat("the grammar made from this schema is over ", kMaxGrammarText >> 20, " MiB; too large to guide"));
    }
    return std::move(out_);
  }

 private:
  static std::string n(int32_t id) { return "n" + std::to_string(id); }

  // Writes node id's rules; returns the nodes they refer to.
  std::vector<int32_t> node(int32_t id) {
    const SchemaNode& x = s_.nodes[static_cast<size_t>(id)];
    const std::string me = n(id);
    std::string& o = out_;
    switch (x.type) {
      case Type::Any:
        o += me + " ::= " + (x.any_object ? "jobj" : "jval") + "\n";
        return {};
      case Type::Boolean: o += me + " ::= \"true\" | \"false\"\n"; return {};
      case Type::Null: o += me + " ::= \"null\"\n"; return {};
      case Type::Enum: {
        o += me + " ::= ";
        for (size_t i = 0; i < x.texts.size(); ++i) o += (i ? " | " : "") + literal(x.texts[i]);
        o += "\n";
        return {};
      }
      case Type::Integer:
      case Type::Number:
        o += me + " ::= " + (x.content ? automaton(*x.content) : x.type == Type::Integer ? "jint" : "jnum") + "\n";
        return {};
      case Type::String:
        if (x.content) {
          o += me + " ::= \"\\\"\" " + automaton(*x.content) + " \"\\\"\"\n";
        } else if (x.constrained()) {
          // Characters counted, no escapes: min of them, then up to max - min more (any more without a max).
          if (x.min_length > kMaxGrammarChars || x.max_length > kMaxGrammarChars)
            throw Error(cat("a string's minLength / maxLength is over ", kMaxGrammarChars));
          const std::string c = "[^\"\\\\\\x00-\\x1F]";
          o += me + " ::= \"\\\"\"";
          for (int64_t i = 0; i < x.min_length; ++i) o += " " + c;
          if (x.max_length < 0) {
            o += " " + c + "* \"\\\"\"\n";
          } else {
            o += " " + me + "-r" + std::to_string(x.max_length - x.min_length) + " \"\\\"\"\n";
            for (int64_t k = 1; k <= x.max_length - x.min_length; ++k)
              o += cat(me, "-r", k, " ::= ", c, k > 1 ? cat(" ", me, "-r", k - 1) : std::string(), " | \"\"\n");
            o += me + "-r0 ::= \"\"\n";
          }
        } else {
          o += me + " ::= jstr\n";
        }
        return {};
      case Type::Union: {
        o += me + " ::= ";
        for (size_t i = 0; i < x.alts.size(); ++i) o += (i ? " | " : "") + n(x.alts[i]);
        o += "\n";
        return x.alts;
      }
      case Type::Map: return map(id, x);
      case Type::Object: return object(id, x);
      case Type::Array: return array(id, x);
      case Type::Tagged: return {};  // (reached only through a union's dispatch, which the grammar does not use)
    }
    return {};
  }

  // The count states of a list of entries (an object's properties, a map's keys): c entries so far, up to
  // `max`; without a maximum the count stops at max(min, 1), past which every count behaves alike.
  static int64_t count_cap(int64_t min, int64_t max) {
    const int64_t cap = max >= 0 ? max : std::max<int64_t>(min, 1);
    if (cap > kMaxGrammarItems) throw Error(cat("an object counts more than ", kMaxGrammarItems, " properties (minProperties, maxProperties)"));
    return cap;
  }

  // Properties in the schema's order, each optional one may be left out, their count within
  // minProperties / maxProperties: -r<i>-<c> is the rest from property i after c properties (a comma
  // before the next when c > 0). Only the states from which the object can still be finished are written.
  std::vector<int32_t> object(int32_t id, const SchemaNode& x) {
    const std::string me = n(id);
    const int64_t k = static_cast<int64_t>(x.keys.size()), cap = count_cap(x.min_props, x.max_props);
    auto next = [&](int64_t c) { return x.max_props < 0 ? std::min(c + 1, cap) : c + 1; };
    // alive[i][c]: the rest from (i, c) can finish the object (at i == k: c >= min).
    std::vector<std::vector<char>> alive(static_cast<size_t>(k + 1), std::vector<char>(static_cast<size_t>(cap + 1), 0));
    for (int64_t c = 0; c <= cap; ++c) alive[k][c] = c >= x.min_props;
    for (int64_t i = k - 1; i >= 0; --i)
      for (int64_t c = 0; c <= cap; ++c)
        alive[i][c] = (next(c) <= cap && alive[i + 1][next(c)]) || (!x.required[i] && alive[i + 1][c]);
    if (!alive[0][0]) throw Error("an object's required properties and minProperties / maxProperties leave no object");
    auto rule = [&](int64_t i, int64_t c) { return cat(me, "-r", i, "-", c); };
    out_ += me + " ::= \"{\" ws " + rule(0, 0) + " \"}\"\n";
    for (int64_t i = 0; i <= k; ++i)
      for (int64_t c = 0; c <= cap; ++c) {
        if (!alive[i][c]) continue;
        std::vector<std::string> alts;
        if (i == k) {
          alts.push_back("\"\"");
        } else {
          if (next(c) <= cap && alive[i + 1][next(c)])
            alts.push_back(cat(c > 0 ? "\",\" ws " : "", literal("\"" + x.keys[i] + "\""), " ws \":\" ws ", n(x.values[i]), " ws ",
                               rule(i + 1, next(c))));
          if (!x.required[i] && alive[i + 1][c]) alts.push_back(rule(i + 1, c));
        }
        out_ += rule(i, c) + " ::= ";
        for (size_t a = 0; a < alts.size(); ++a) out_ += (a ? " | " : "") + alts[a];
        out_ += "\n";
      }
    return x.values;
  }

  // Any keys, each value under `items`, their count within minProperties / maxProperties: -m<c> is the
  // rest after c entries.
  std::vector<int32_t> map(int32_t id, const SchemaNode& x) {
    const std::string me = n(id);
    const int64_t cap = count_cap(x.min_props, x.max_props);
    out_ += me + " ::= \"{\" ws " + me + "-m0\n";
    for (int64_t c = 0; c <= cap; ++c) {
      std::vector<std::string> alts;
      if (c >= x.min_props) alts.push_back("\"}\"");
      if (x.max_props < 0 || c < x.max_props)
        alts.push_back(cat(c > 0 ? "\",\" ws " : "", x.key_node >= 0 ? n(x.key_node) : std::string("jstr"), " ws \":\" ws ",
                           n(x.items), " ws ", me, "-m",
                           x.max_props < 0 ? std::min(c + 1, cap) : c + 1));
      out_ += cat(me, "-m", c, " ::= ");
      for (size_t a = 0; a < alts.size(); ++a) out_ += (a ? " | " : "") + alts[a];
      out_ += "\n";
    }
    return {x.items, x.key_node};
  }

  // -t<j>: the rest of the array after j items (a comma before the next one when j > 0); past the
  // items counted (prefixItems, minItems, maxItems) one rule repeats.
  std::vector<int32_t> array(int32_t id, const SchemaNode& x) {
    if (x.unique) return unique_array(id, x);
    const std::string me = n(id);
    const int64_t prefix = static_cast<int64_t>(x.prefix.size());
    int64_t last = std::max<int64_t>(prefix, x.min_items);  // the first j from which the rules repeat
    if (x.max_items >= 0) last = x.max_items;
    else last = std::max<int64_t>(last, 1);
    if (last > kMaxGrammarItems)
      throw Error(cat("an array counts more than ", kMaxGrammarItems, " items (maxItems, minItems or prefixItems)"));
    out_ += me + " ::= \"[\" ws " + me + "-t0\n";
    std::vector<int32_t> refs = x.prefix;
    if (x.items >= 0) refs.push_back(x.items);
    for (int64_t j = 0; j <= last; ++j) {
      const int32_t item = j < prefix ? x.prefix[static_cast<size_t>(j)] : x.items;
      const bool more = item >= 0 && (x.max_items < 0 || j < x.max_items);
      std::vector<std::string> alts;
      if (j >= x.min_items) alts.push_back("\"]\"");
      if (more) {
        const int64_t next = x.max_items < 0 && j == last ? j : j + 1;
        alts.push_back(cat(j > 0 ? "\",\" ws " : "", n(item), " ws ", me, "-t", next));
      }
      if (alts.empty()) throw Error("internal error: an array state with no way on");  // (the compiler checked minItems)
      out_ += cat(me, "-t", j, " ::= ");
      for (size_t i = 0; i < alts.size(); ++i) out_ += (i ? " | " : "") + alts[i];
      out_ += "\n";
    }
    return refs;
  }

  // uniqueItems over items of a few values: -u<mask> is the rest after the values in `mask` (their
  // equality classes: 1 and 1.0 are one value, as JSON Schema compares them) were used.
  std::vector<int32_t> unique_array(int32_t id, const SchemaNode& x) {
    const std::string me = n(id);
    const SchemaNode& it = s_.nodes[static_cast<size_t>(x.items)];
    const std::vector<std::string> texts = it.type == Type::Enum      ? it.texts
                                           : it.type == Type::Boolean ? std::vector<std::string>{"true", "false"}
                                                                      : std::vector<std::string>{"null"};
    std::vector<std::vector<std::string>> classes;
    std::vector<nlohmann::json> values;
    for (const auto& t : texts) {
      const nlohmann::json v = nlohmann::json::parse(t);
      size_t k = 0;
      while (k < values.size() && values[k] != v) ++k;
      if (k == values.size()) values.push_back(v), classes.emplace_back();
      classes[k].push_back(t);
    }
    const int m = static_cast<int>(classes.size());
    if (x.min_items > m) throw Error(cat("uniqueItems with minItems ", x.min_items, " leaves no array of its ", m, " values"));
    const int most = x.max_items >= 0 ? static_cast<int>(std::min<int64_t>(x.max_items, m)) : m;
    out_ += me + " ::= \"[\" ws " + me + "-u0\n";
    for (uint32_t mask = 0; mask < (1u << m); ++mask) {
      const int c = __builtin_popcount(mask);
      if (c > most) continue;
      std::vector<std::string> alts;
      if (c >= x.min_items) alts.push_back("\"]\"");
      if (c < most)
        for (int j = 0; j < m; ++j)
          if (!(mask >> j & 1u))
            for (const auto& t : classes[static_cast<size_t>(j)])
              alts.push_back(cat(c > 0 ? "\",\" ws " : "", literal(t), " ws ", me, "-u", mask | (1u << j)));
      out_ += cat(me, "-u", mask, " ::= ");
      for (size_t a = 0; a < alts.size(); ++a) out_ += (a ? " | " : "") + alts[a];
      out_ += "\n";
    }
    return {};
  }

  // An automaton over UTF-8 bytes as rules over code points, one per state met at a character's
  // boundary: d<k>-<state> ::= [class] d<k>-<next> | ... | "" (when accepting). Returns its start rule.
  std::string automaton(const RegexDfa& dfa) {
    auto it = automata_.find(&dfa);
    if (it != automata_.end()) return it->second;
    const std::string name = cat("d", automata_.size());
    automata_[&dfa] = name + "-0";
    std::vector<int32_t> todo = {dfa.start()};
    std::set<int32_t> seen = {dfa.start()};
    while (!todo.empty()) {
      const int32_t st = todo.back();
      todo.pop_back();
      // Code point ranges by the state they lead to.
      std::map<int32_t, std::vector<std::pair<uint32_t, uint32_t>>> by_next;
      auto add = [&](uint32_t cp_lo, uint32_t cp_hi, int32_t t) {
        auto& r = by_next[t];
        if (!r.empty() && r.back().second + 1 == cp_lo)
          r.back().second = cp_hi;
        else
          r.push_back({cp_lo, cp_hi});
      };
      for (uint32_t b = 0; b < 0x80; ++b) {
        const int32_t t = dfa.next(st, static_cast<unsigned char>(b));
        if (t != RegexDfa::kDead) add(b, b, t);
      }
      // Multi-byte characters: each lead byte, then the continuation bytes' code points (in increasing
      // order, so ranges merge as they grow), less overlong forms, surrogates and those past U+10FFFF.
      struct Lead {
        uint32_t first, last;
        int conts;
        uint32_t lo, hi;  // the code points of this length
      };
      for (const Lead& l : {Lead{0xC2, 0xDF, 1, 0x80, 0x7FF}, Lead{0xE0, 0xEF, 2, 0x800, 0xFFFF}, Lead{0xF0, 0xF4, 3, 0x10000, 0x10FFFF}}) {
        for (uint32_t b = l.first; b <= l.last; ++b) {
          const int32_t s1 = dfa.next(st, static_cast<unsigned char>(b));
          if (s1 == RegexDfa::kDead) continue;
          const uint32_t base = (b & (0x3Fu >> l.conts)) << (6 * l.conts);
          for (const Seg& g : suffixes(dfa, s1, l.conts)) {
            const uint32_t a = std::max(base + g.lo, l.lo), z = std::min(base + g.hi, l.hi);
            if (a > z) continue;
            if (a < 0xD800) add(a, std::min(z, 0xD7FFu), g.target);
            if (z > 0xDFFF) add(std::max(a, 0xE000u), z, g.target);
          }
        }
      }
      std::string rule = cat(name, "-", st, " ::= ");
      bool first = true;
      for (const auto& [t, ranges] : by_next) {
        rule += cat(first ? "" : " | ", char_class(ranges), " ", name, "-", t);
        first = false;
        if (seen.insert(t).second) todo.push_back(t);
      }
      if (dfa.accepting(st)) rule += first ? "\"\"" : " | \"\"";
      else if (first) throw Error("internal error: an automaton state with no way on");
      out_ += rule + "\n";
    }
    return automata_[&dfa];
  }

  // The values of `left` continuation bytes (0 to 64^left - 1) read from state st, in ranges by the
  // state they lead to (made once per state and length).
  struct Seg {
    uint32_t lo, hi;
    int32_t target;
  };
  const std::vector<Seg>& suffixes(const RegexDfa& dfa, int32_t st, int left) {
    const auto key = std::make_tuple(&dfa, st, left);
    auto it = suffixes_.find(key);
    if (it != suffixes_.end()) return it->second;
    std::vector<Seg> out;
    auto add = [&](uint32_t lo, uint32_t hi, int32_t t) {
      if (!out.empty() && out.back().target == t && out.back().hi + 1 == lo)
        out.back().hi = hi;
      else
        out.push_back({lo, hi, t});
    };
    for (uint32_t c = 0; c < 64; ++c) {
      const int32_t t = dfa.next(st, static_cast<unsigned char>(0x80 | c));
      if (t == RegexDfa::kDead) continue;
      if (left == 1) {
        add(c, c, t);
        continue;
      }
      const uint32_t base = c << (6 * (left - 1));
      for (const Seg& g : suffixes(dfa, t, left - 1)) add(base + g.lo, base + g.hi, g.target);
    }
    return suffixes_[key] = std::move(out);
  }

  const JsonSchema& s_;
  std::string out_;
  std::map<const RegexDfa*, std::string> automata_;
  std::map<std::tuple<const RegexDfa*, int32_t, int>, std::vector<Seg>> suffixes_;
};

}  // namespace

std::string json_schema_grammar(const JsonSchema& schema, int max_ws) { return Writer(schema).run(max_ws); }

}  // namespace llmserve
