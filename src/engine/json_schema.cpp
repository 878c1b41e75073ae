#include "engine/json_schema.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "engine/number_range.h"
#include "engine/regex_dfa.h"

namespace llmserve {
namespace {

using ojson = nlohmann::ordered_json;
using Type = SchemaNode::Type;

// Keywords that do not restrict the text produced further (annotations, and additionalProperties:
// only the listed properties are ever produced, which every setting of it allows).
const std::set<std::string> kIgnored = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                                        "additionalProperties", "strict", "deprecated", "readOnly", "writeOnly"};
const std::set<std::string> kKnown = {"type",  "properties", "required", "items",     "minItems",  "maxItems",
                                      "enum",  "const",      "anyOf",    "oneOf",     "allOf",     "$ref",
                                      "$defs", "definitions", "pattern", "format",    "minLength", "maxLength",
                                      "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "prefixItems",
                                      "additionalItems", "minProperties", "maxProperties", "propertyNames",
                                      "patternProperties", "uniqueItems"};
const char* const kStringKeywords[] = {"pattern", "format", "minLength", "maxLength"};
const char* const kNumberKeywords[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"};

// The formats guided (JSON Schema's format keyword; any other is an annotation), as patterns whose
// every text is valid in that format (RFC 3339 dates and times, leaving out February 29 and leap
// seconds; RFC 4122 UUIDs; dotted-quad IPv4 without leading zeros; a dot-atom email address at a
// domain of two labels or more).
const std::map<std::string, std::string>& format_patterns() {
  static const std::map<std::string, std::string> f = [] {
    const std::string year = R"((?:[1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9]))";
    const std::string month_day = R"((?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)|02-(?:0[1-9]|1\d|2[0-8])))";
    const std::string date = year + "-" + month_day;
    const std::string time = R"((?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d))";
    const std::string octet = R"((?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))";
    const std::string label = R"([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)";
    return std::map<std::string, std::string>{
        {"date", date},
        {"time", time},
        {"date-time", date + "T" + time},
        {"uuid", R"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"},
        {"ipv4", octet + R"(\.)" + octet + R"(\.)" + octet + R"(\.)" + octet},
        {"email", R"([A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@)" + label + R"((?:\.)" + label + ")+"},
    };
  }();
  return f;
}

// Bytes a constrained string's text never holds: the quote, the backslash (no escapes) and the
// control characters JSON requires escaped.
const std::array<bool, 256>& json_string_banned() {
  static const std::array<bool, 256> b = [] {
    std::array<bool, 256> x{};
    for (int c = 0; c < 0x20; ++c) x[static_cast<size_t>(c)] = true;
    x['"'] = x['\\'] = true;
    return x;
  }();
  return b;
}

// A key as it stands between the quotes of compact JSON.
std::string escaped_key(const std::string& k) {
  const std::string d = ojson(k).dump();
  return d.substr(1, d.size() - 2);
}

class Compiler {
 public:
  explicit Compiler(const ojson& root) : root_(root) {}

  JsonSchema run() {
    out_.root = compile(root_, "#");
    for (size_t i = 0; i < out_.nodes.size(); ++i) {
      if (out_.nodes[i].type != Type::Union) continue;
      try {
        dispatch(static_cast<int32_t>(i));
      } catch (const Error& e) {  // alternatives that begin alike: the schema goes to a grammar
        if (out_.needs_grammar.empty()) out_.needs_grammar = e.what();
      }
    }
    return std::move(out_);
  }

 private:
  [[noreturn]] void fail(const std::string& where, const std::string& what) const {
    throw Error(cat("json_schema: ", what, " (at ", where, ")"));
  }

  int32_t add(SchemaNode n) {
    if (out_.nodes.size() >= static_cast<size_t>(kMaxSchemaNodes)) fail("#", cat("more than ", kMaxSchemaNodes, " schema nodes"));
    out_.nodes.push_back(std::move(n));
    return static_cast<int32_t>(out_.nodes.size()) - 1;
  }

  int32_t ref(const std::string& r, const std::string& where) {
    auto it = refs_.find(r);
    if (it != refs_.end()) return it->second;
    const ojson* target = nullptr;
    if (r == "#") {
      target = &root_;
    } else {
      for (const char* defs : {"#/$defs/", "#/definitions/"}) {
        const std::string prefix = defs;
        if (r.compare(0, prefix.size(), prefix) != 0) continue;
        const std::string name = r.substr(prefix.size()), key = prefix.substr(2, prefix.size() - 3);
        if (root_.contains(key) && root_[key].is_object() && root_[key].contains(name)) target = &root_[key][name];
      }
    }
    if (!target) fail(where, cat("$ref '", r, "' is not '#', '#/$defs/NAME' or '#/definitions/NAME' of this schema"));
    // The node exists before its schema is compiled, so a recursive reference finds it.
    const int32_t id = add(SchemaNode{});
    refs_[r] = id;
    const int32_t body = compile(*target, r);
    out_.nodes[static_cast<size_t>(id)] = out_.nodes[static_cast<size_t>(body)];
    if (where_.count(static_cast<size_t>(body))) where_[static_cast<size_t>(id)] = where_[static_cast<size_t>(body)];
    return id;
  }

  int32_t compile(const ojson& s, const std::string& where) {
    if (++depth_ > 64) fail(where, "nested too deeply");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    if (s.is_boolean()) {
      if (!s.get<bool>()) fail(where, "the schema false accepts nothing");
      return add(SchemaNode{});
    }
    if (!s.is_object()) fail(where, "a schema must be an object or a boolean");
    for (const auto& [k, v] : s.items())
      if (!kIgnored.count(k) && !kKnown.count(k)) fail(where, cat("'", k, "' is not supported by llmserve's guided decoding"));
    if (s.contains("$ref")) {
      if (!s["$ref"].is_string()) fail(where, "$ref must be a string");
      for (const auto& [k, v] : s.items())
        if (kKnown.count(k) && k != "$ref" && k != "$defs" && k != "definitions")
          fail(where, cat("'", k, "' beside $ref is not supported"));
      return ref(s["$ref"].get<std::string>(), where);
    }
    if (s.contains("enum") || s.contains("const")) {
      SchemaNode n;
      n.type = Type::Enum;
      if (s.contains("const")) n.texts.push_back(s["const"].dump());
      if (s.contains("enum")) {
        if (!s["enum"].is_array() || s["enum"].empty()) fail(where, "enum must be a non-empty array");
        for (const auto& v : s["enum"]) n.texts.push_back(v.dump());
      }
      std::sort(n.texts.begin(), n.texts.end());
      n.texts.erase(std::unique(n.texts.begin(), n.texts.end()), n.texts.end());
      if (s.contains("const") && s.contains("enum") && n.texts.size() > 1) {
        // Both: only the const value, and only when the enum lists it.
        const std::string c = s["const"].dump();
        bool listed = false;
        for (const auto& v : s["enum"]) listed = listed || v.dump() == c;
        if (!listed) fail(where, "const is not one of enum");
        n.texts = {c};
      }
      if (n.texts.size() > static_cast<size_t>(kMaxSchemaEnum)) fail(where, cat("enum lists more than ", kMaxSchemaEnum, " values"));
      return add(std::move(n));
    }
    for (const char* k : {"anyOf", "oneOf"}) {
      if (!s.contains(k)) continue;
      const ojson& alts = s[k];
      if (!alts.is_array() || alts.empty()) fail(where, cat(k, " must be a non-empty array"));
      if (s.contains("type") || s.contains("properties") || s.contains("items"))
        fail(where, cat("'", k, "' beside type, properties or items is not supported"));
      if (alts.size() == 1) return compile(alts[0], cat(where, "/", k, "/0"));
      SchemaNode n;
      n.type = Type::Union;
      for (size_t i = 0; i < alts.size(); ++i) n.alts.push_back(compile(alts[i], cat(where, "/", k, "/", i)));
      where_[out_.nodes.size()] = cat(where, "/", k);
      return add(std::move(n));
    }
    if (s.contains("allOf")) {
      const ojson& all = s["allOf"];
      if (!all.is_array() || all.size() != 1 || s.size() > 1 + count_ignored(s))
        fail(where, "allOf is supported with one schema and nothing beside it");
      return compile(all[0], where + "/allOf/0");
    }
    std::vector<std::string> types;
    if (s.contains("type")) {
      const ojson& t = s["type"];
      if (t.is_string()) {
        types.push_back(t.get<std::string>());
      } else if (t.is_array() && !t.empty()) {
        for (const auto& x : t) {
          if (!x.is_string()) fail(where, "type must be a string or an array of strings");
          types.push_back(x.get<std::string>());
        }
      } else {
        fail(where, "type must be a string or an array of strings");
      }
    } else if (s.contains("properties") || s.contains("required") || s.contains("minProperties") || s.contains("maxProperties")) {
      types.push_back("object");
    } else if (s.contains("items") || s.contains("prefixItems") || s.contains("minItems") || s.contains("maxItems")) {
      types.push_back("array");
    } else if (std::any_of(std::begin(kStringKeywords), std::end(kStringKeywords), [&](const char* k) { return s.contains(k); })) {
      types.push_back("string");
    } else if (std::any_of(std::begin(kNumberKeywords), std::end(kNumberKeywords), [&](const char* k) { return s.contains(k); })) {
      types.push_back("number");
    }
    if (types.empty()) return add(SchemaNode{});  // any JSON value
    if (types.size() == 1) return typed(s, types[0], where, true);
    SchemaNode u;
    u.type = Type::Union;
    for (const auto& t : types) u.alts.push_back(typed(s, t, where, false));
    where_[out_.nodes.size()] = where + "/type";
    return add(std::move(u));
  }

  size_t count_ignored(const ojson& s) const {
    size_t n = 0;
    for (const auto& [k, v] : s.items()) n += kIgnored.count(k) + (k == "$defs" || k == "definitions");
    return n;
  }

  // `only`: t is the schema's one type (then keywords of other types are an error; with a list of
  // types each keyword serves the type it applies to).
  int32_t typed(const ojson& s, const std::string& t, const std::string& where, bool only) {
    SchemaNode n;
    static const std::map<std::string, Type> kTypes = {{"object", Type::Object}, {"array", Type::Array},
                                                       {"string", Type::String}, {"integer", Type::Integer},
                                                       {"number", Type::Number}, {"boolean", Type::Boolean},
                                                       {"null", Type::Null}};
    const auto it = kTypes.find(t);
    if (it == kTypes.end()) fail(where, cat("unknown type '", t, "'"));
    n.type = it->second;
    // An object without properties: what additionalProperties says of its properties (absent or true:
    // any; false: none; a schema: any keys, values under it).
    const ojson* extra = s.contains("additionalProperties") ? &s["additionalProperties"] : nullptr;
    if (extra && !extra->is_boolean() && !extra->is_object()) fail(where, "additionalProperties must be a boolean or a schema");
    const bool no_extra = extra && extra->is_boolean() && !extra->get<bool>();
    const bool pattern_props = s.contains("patternProperties"), names = s.contains("propertyNames");
    if (n.type == Type::Object && (pattern_props || (names && !no_extra))) {
      // Keys under a schema (Pydantic's Dict[Literal[...], V], Dict[SomeEnum, V], Dict[constr(pattern=...), V]):
      // a map whose keys' node is propertyNames, or patternProperties' one pattern (matched whole, as a
      // string's pattern is: its keys all match, so every output validates).
      const char* kw = pattern_props ? "patternProperties" : "propertyNames";
      if (s.contains("properties")) fail(where, cat(kw, " beside properties is not supported"));
      if (pattern_props && names) fail(where, "patternProperties beside propertyNames is not supported");
      if (s.contains("required")) fail(where, "required without properties is not supported");
      n.type = Type::Map;
      if (pattern_props) {
        const ojson& pp = s["patternProperties"];
        if (!pp.is_object() || pp.size() != 1) fail(where, "patternProperties is supported with one pattern");
        if (extra && extra->is_object()) fail(where, "patternProperties beside an additionalProperties schema is not supported");
        for (const auto& el : pp.items()) {
          n.key_node = compile(ojson{{"type", "string"}, {"pattern", el.key()}}, where + "/patternProperties");
          n.items = compile(el.value(), cat(where, "/patternProperties/", el.key()));
        }
      } else {
        n.key_node = compile(s["propertyNames"], where + "/propertyNames");
        n.items = extra && extra->is_object() ? compile(*extra, where + "/additionalProperties") : add(SchemaNode{});
      }
      const SchemaNode& key = out_.nodes[static_cast<size_t>(n.key_node)];
      const bool strings = key.type == Type::String ||
                           (key.type == Type::Enum && std::all_of(key.texts.begin(), key.texts.end(), [](const std::string& t) { return t[0] == '"'; }));
      if (!strings) fail(where, cat(kw, " must describe strings (a type string schema, or an enum of strings)"));
      if (out_.needs_grammar.empty()) out_.needs_grammar = cat("json_schema: ", kw, " (at ", where, ")");
    } else if (n.type == Type::Object && !s.contains("properties") && extra && extra->is_object()) {
      if (s.contains("required")) fail(where, "required without properties is not supported");
      n.type = Type::Map;
      n.items = compile(*extra, where + "/additionalProperties");
    } else if (n.type == Type::Object && !s.contains("properties") && !no_extra) {  // a generic JSON object
      if (s.contains("required")) fail(where, "required without properties is not supported");
      n.type = Type::Any;
      n.any_object = true;
    } else if (n.type == Type::Object) {
      std::set<std::string> required;
      if (s.contains("required")) {
        if (!s["required"].is_array()) fail(where, "required must be an array of strings");
        for (const auto& r : s["required"]) {
          if (!r.is_string()) fail(where, "required must be an array of strings");
          required.insert(r.get<std::string>());
        }
      }
      if (s.contains("properties")) {
        if (!s["properties"].is_object()) fail(where, "properties must be an object");
        if (s["properties"].size() > static_cast<size_t>(kMaxSchemaProperties))
          fail(where, cat("more than ", kMaxSchemaProperties, " properties"));
        for (const auto& [k, v] : s["properties"].items()) {
          n.keys.push_back(escaped_key(k));
          n.required.push_back(required.erase(k) > 0);
          n.values.push_back(-1);
        }
        size_t i = 0;
        for (const auto& [k, v] : s["properties"].items()) n.values[i++] = compile(v, cat(where, "/properties/", k));
      }
      if (!required.empty()) fail(where, cat("required property '", *required.begin(), "' is not among the properties"));
    }
    if (n.type == Type::Object || n.type == Type::Map || (n.type == Type::Any && n.any_object)) {
      // minProperties / maxProperties: kept by the grammar only (a free-form object becomes a map of any values).
      n.min_props = count(s, "minProperties", 0, where);
      n.max_props = count(s, "maxProperties", -1, where);
      if (n.max_props >= 0 && n.max_props < n.min_props) fail(where, "maxProperties is below minProperties");
      if (n.type == Type::Object) {
        const auto listed = static_cast<int64_t>(n.keys.size());
        const auto needed = static_cast<int64_t>(std::count(n.required.begin(), n.required.end(), 1));
        if (n.min_props > listed)
          fail(where, cat("minProperties ", n.min_props, " is more than the ", listed, " properties listed (only those are produced)"));
        if (n.max_props >= 0 && n.max_props < needed) fail(where, cat("maxProperties ", n.max_props, " is below the ", needed, " required properties"));
      }
      if (n.min_props > 0 || n.max_props >= 0) {
        if (n.type == Type::Any) n.type = Type::Map, n.any_object = false, n.items = add(SchemaNode{});
        if (out_.needs_grammar.empty()) out_.needs_grammar = cat("json_schema: minProperties / maxProperties (at ", where, ")");
      }
    }
    if (n.type == Type::Array) {
      n.min_items = count(s, "minItems", 0, where);
      n.max_items = count(s, "maxItems", -1, where);
      // Tuples: prefixItems (2020-12) are the first items' schemas, items the rest's (false: no more);
      // before 2020-12, items as an array is the tuple and additionalItems the rest (which, beside items
      // as one schema, says nothing).
      const bool old_tuple = s.contains("items") && s["items"].is_array();
      if (old_tuple && s.contains("prefixItems")) fail(where, "items as an array beside prefixItems");
      const char* tuple = old_tuple ? "items" : "prefixItems";
      if (s.contains(tuple)) {
        if (!s[tuple].is_array()) fail(where, "prefixItems must be an array of schemas");
        if (s[tuple].size() > static_cast<size_t>(kMaxSchemaProperties)) fail(where, cat("more than ", kMaxSchemaProperties, " ", tuple));
        for (size_t i = 0; i < s[tuple].size(); ++i) n.prefix.push_back(compile(s[tuple][i], cat(where, "/", tuple, "/", i)));
      }
      const char* rest_key = old_tuple ? "additionalItems" : "items";
      const ojson* rest = s.contains(rest_key) ? &s[rest_key] : nullptr;
      if (rest && rest->is_boolean() && !rest->get<bool>()) {
        const auto p = static_cast<int64_t>(n.prefix.size());
        n.max_items = n.max_items < 0 ? p : std::min(n.max_items, p);
      } else {
        n.items = rest ? compile(*rest, cat(where, "/", rest_key)) : add(SchemaNode{});
      }
      if (n.max_items >= 0 && n.max_items < n.min_items) fail(where, "maxItems is below minItems (or items: false leaves fewer)");
      if (s.contains("uniqueItems")) {
        if (!s["uniqueItems"].is_boolean()) fail(where, "uniqueItems must be a boolean");
        // (Items of a few values, each used at most once: the values left are the grammar's state.)
        const SchemaNode* it = n.items >= 0 ? &out_.nodes[static_cast<size_t>(n.items)] : nullptr;
        const size_t values = !it ? 0 : it->type == Type::Enum ? it->texts.size() : it->type == Type::Boolean ? 2 : it->type == Type::Null ? 1 : 0;
        if (s["uniqueItems"].get<bool>()) {
          if (!n.prefix.empty() || values == 0 || values > static_cast<size_t>(kMaxUniqueValues))
            fail(where, cat("uniqueItems is supported for items that are an enum of up to ", kMaxUniqueValues,
                            " values or booleans (and no prefixItems)"));
          n.unique = true;
          if (out_.needs_grammar.empty()) out_.needs_grammar = cat("json_schema: uniqueItems (at ", where, ")");
        }
      }
    } else if (n.type == Type::String) {
      string_constraints(s, n, where);
    } else if (n.type == Type::Integer || n.type == Type::Number) {
      number_bounds(s, n, where);
    }
    if (only) {
      if (n.type != Type::Object && n.type != Type::Any && n.type != Type::Array && n.type != Type::Map)
        for (const char* k : {"properties", "required", "items", "prefixItems", "additionalItems", "minItems", "maxItems",
                              "minProperties", "maxProperties", "propertyNames", "patternProperties", "uniqueItems"})
          if (s.contains(k)) fail(where, cat("'", k, "' applies to objects and arrays, not to type ", t));
      if (n.type != Type::String)
        for (const char* k : kStringKeywords)
          if (s.contains(k)) fail(where, cat("'", k, "' applies to strings, not to type ", t));
      if (n.type != Type::Integer && n.type != Type::Number)
        for (const char* k : kNumberKeywords)
          if (s.contains(k)) fail(where, cat("'", k, "' applies to numbers, not to type ", t));
    }
    return add(std::move(n));
  }

  // A non-negative integer keyword (dflt when absent).
  int64_t count(const ojson& s, const char* k, int64_t dflt, const std::string& where) const {
    if (!s.contains(k)) return dflt;
    if (!s[k].is_number_integer() || s[k].get<int64_t>() < 0) fail(where, cat(k, " must be a non-negative integer"));
    return s[k].get<int64_t>();
  }

  // A number's bounds and multipleOf (SchemaNode::content: an automaton over its text).
  void number_bounds(const ojson& s, SchemaNode& n, const std::string& where) {
    NumberBounds b;
    bool any = false;
    int64_t multiple = 0;  // (0: none)
    if (s.contains("multipleOf")) {
      // Whole numbers only: a fraction's multiples are judged in doubles by validators (Python's
      // jsonschema finds 0.07 no multiple of 0.01).
      const ojson& m = s["multipleOf"];
      if (!m.is_number() || !(m.get<double>() > 0)) fail(where, "multipleOf must be a number above 0");
      const double k = m.get<double>();
      if (k != std::floor(k) || k > RegexDfa::kMaxStates - 3)
        fail(where, cat("multipleOf is supported as a whole number up to ", RegexDfa::kMaxStates - 3, ", not ", m.dump()));
      multiple = static_cast<int64_t>(k);
    }
    for (const char* k : kNumberKeywords) {
      if (!s.contains(k) || std::string(k) == "multipleOf") continue;
      if (!s[k].is_number()) fail(where, cat(k, " must be a number"));
      any = true;
      const double v = s[k].get<double>();
      const std::string key = k;
      auto tighter = [&](std::optional<double>& bound, bool& strict, bool lower, bool is_strict) {
        if (!bound || (lower ? v > *bound : v < *bound) || (v == *bound && is_strict)) bound = v, strict = is_strict;
      };
      if (key == "minimum" || key == "exclusiveMinimum") tighter(b.lo, b.lo_strict, true, key == "exclusiveMinimum");
      if (key == "maximum" || key == "exclusiveMaximum") tighter(b.hi, b.hi_strict, false, key == "exclusiveMaximum");
    }
    if (!any && !multiple) return;
    const bool integer = n.type == Type::Integer || multiple;  // (a whole number's multiples are integers)
    std::string key = integer ? "i" : "n";  // (the bounds' bits: a printed double may round)
    for (const double v : {b.lo.value_or(NAN), b.hi.value_or(NAN)}) key.append(reinterpret_cast<const char*>(&v), sizeof v);
    key += cat(b.lo_strict, b.hi_strict, 'm', multiple);
    auto& dfa = automata_[key];
    if (!dfa) {
      try {
        RegexDfa d = number_range_dfa(integer, b);
        dfa = std::make_shared<const RegexDfa>(multiple ? d.intersect(RegexDfa::multiples(multiple)) : std::move(d));
      } catch (const Error& e) {
        if (std::string(e.what()).find("no text") != std::string::npos)
          fail(where, cat("the bounds", multiple ? " and multipleOf" : "", " leave no ",
                          integer ? "integer" : "number (of up to 6 fraction digits, no exponent)"));
        fail(where, cat("minimum / maximum", multiple ? " / multipleOf" : "", ": ", e.what()));
      }
      count_states(*dfa, where);
    }
    n.content = dfa;
  }

  void count_states(const RegexDfa& dfa, const std::string& where) {
    pattern_states_ += static_cast<int64_t>(dfa.num_states());
    if (pattern_states_ > kMaxSchemaPatternStates)
      fail(where, cat("the schema's patterns, formats and bounds need more than ", kMaxSchemaPatternStates,
                      " automaton states together; too large to guide"));
  }

  // A string's pattern, format and length bounds (SchemaNode::content, min_length, max_length).
  void string_constraints(const ojson& s, SchemaNode& n, const std::string& where) {
    n.min_length = count(s, "minLength", 0, where);
    n.max_length = count(s, "maxLength", -1, where);
    if (n.max_length >= 0 && n.max_length < n.min_length) fail(where, "maxLength is below minLength");
    // (Past 2^31 - 1 code points no output reaches: a minimum there is refused, a maximum is none.)
    if (n.min_length > INT32_MAX) fail(where, "minLength is larger than any output");
    if (n.max_length > INT32_MAX) n.max_length = -1;
    std::string pattern, what;
    if (s.contains("format")) {
      if (!s["format"].is_string()) fail(where, "format must be a string");
      const auto it = format_patterns().find(s["format"].get<std::string>());
      if (it != format_patterns().end()) pattern = it->second, what = cat("format '", it->first, "'");
    }
    if (s.contains("pattern")) {
      if (!s["pattern"].is_string()) fail(where, "pattern must be a string");
      if (!pattern.empty()) fail(where, cat("pattern beside ", what, " is not supported"));
      pattern = s["pattern"].get<std::string>();
      what = "pattern";
    }
    if (pattern.empty()) return;  // the bounds, if any, are counted as the string is produced
    const std::string key = cat(pattern, '\0', n.min_length, '\0', n.max_length);
    auto& dfa = automata_[key];
    if (!dfa) {
      std::unique_ptr<RegexDfa> whole;
      try {  // (one construction budget for all of a schema's patterns, so that many cannot take long)
        whole = std::make_unique<RegexDfa>(pattern, work_left_);
        work_left_ -= whole->work();
      } catch (const Error& e) {
        const std::string why = e.what();
        if (work_left_ < RegexDfa::kMaxWork && why.find("too long to build") != std::string::npos)
          fail(where, "the schema's patterns and formats take too long to build together; too large to guide");
        fail(where, cat(what, ": ", why.rfind("regex: ", 0) == 0 ? why.substr(7) : why));
      }
      try {
        dfa = std::make_shared<const RegexDfa>(whole->restricted(json_string_banned(), n.min_length, n.max_length));
      } catch (const Error& e) {
        const bool bounded = n.min_length > 0 || n.max_length >= 0;
        if (std::string(e.what()).find("no text") == std::string::npos)
          fail(where, cat(what, bounded ? " with minLength / maxLength " : " ", e.what()));
        fail(where, cat(what, " matches no string", bounded ? cat(" of ", n.min_length, " to ", n.max_length < 0 ? "any number of" : std::to_string(n.max_length), " characters") : "",
                        " without quotes, backslashes or control characters (guided strings take no escapes)"));
      }
      count_states(*dfa, where);
    }
    n.content = dfa;
    n.min_length = 0, n.max_length = -1;  // (inside the automaton)
  }

  // The bytes a node's values may begin with.
  // (Each union met once per question: shared or cyclic alternatives add nothing the second time, so
  // the walk is linear in the nodes, whatever the schema's references.)
  std::array<bool, 256> first_bytes(int32_t id) {
    std::set<int32_t> seen;
    return first_bytes(id, seen);
  }
  std::array<bool, 256> first_bytes(int32_t id, std::set<int32_t>& seen) {
    std::array<bool, 256> f{};
    const SchemaNode& n = out_.nodes[static_cast<size_t>(id)];
    if (n.type == Type::Union && !seen.insert(id).second) return f;
    auto set = [&](const char* cs) {
      for (const char* c = cs; *c; ++c) f[static_cast<unsigned char>(*c)] = true;
    };
    switch (n.type) {
      case Type::Any: set(n.any_object ? "{" : "{[\"-0123456789tfn"); break;
      case Type::Object:
      case Type::Tagged:
      case Type::Map: set("{"); break;
      case Type::Array: set("["); break;
      case Type::String: set("\""); break;
      case Type::Integer:
      case Type::Number:
        if (!n.content) {
          set("-0123456789");
          break;
        }
        for (int c = 0; c < 256; ++c) f[static_cast<size_t>(c)] = n.content->next(n.content->start(), static_cast<unsigned char>(c)) != RegexDfa::kDead;
        break;
      case Type::Boolean: set("tf"); break;
      case Type::Null: set("n"); break;
      case Type::Enum:
        for (const auto& t : n.texts) f[static_cast<unsigned char>(t[0])] = true;
        break;
      case Type::Union:
        for (int32_t a : n.alts) {
          const auto g = first_bytes(a, seen);
          for (int c = 0; c < 256; ++c) f[c] = f[c] || g[c];
        }
        break;
    }
    return f;
  }

  void dispatch(int32_t id) {
    std::array<int32_t, 256> by;
    by.fill(-1);
    std::vector<int32_t> alts = out_.nodes[static_cast<size_t>(id)].alts;
    // A number without bounds takes every integer: integers without bounds beside it add nothing (as
    // Pydantic's Union[int, float]).
    auto plain = [&](int32_t a, Type t) {
      const SchemaNode& x = out_.nodes[static_cast<size_t>(a)];
      return x.type == t && !x.content;
    };
    if (std::any_of(alts.begin(), alts.end(), [&](int32_t a) { return plain(a, Type::Number); }))
      alts.erase(std::remove_if(alts.begin(), alts.end(), [&](int32_t a) { return plain(a, Type::Integer); }), alts.end());
    std::vector<int32_t> objects;  // alternatives that begin with '{'
    for (int32_t a : alts) {
      const auto f = first_bytes(a);
      if (f['{'] && std::find(objects.begin(), objects.end(), a) == objects.end()) objects.push_back(a);
      for (int c = 0; c < 256; ++c) {
        if (!f[c] || (c == '{' && objects.size() > 1) || by[c] == a) continue;  // (one alternative listed twice: no conflict)
        if (by[c] >= 0) fail(where_[static_cast<size_t>(id)], cat("alternatives that can both begin with '", static_cast<char>(c), "'"));
        by[c] = a;
      }
    }
    if (objects.size() > 1) by['{'] = tagged(objects, where_[static_cast<size_t>(id)]);
    out_.nodes[static_cast<size_t>(id)].by_first = by;
  }

  // Object alternatives told apart by their first property (see SchemaNode::Tagged), or an Error.
  int32_t tagged(const std::vector<int32_t>& objects, const std::string& where) {
    auto refuse = [&] {
      fail(where, "object alternatives that no first property, required in each and a const or enum, tells apart");
    };
    SchemaNode t, e;
    t.type = Type::Tagged;
    e.type = Type::Enum;
    std::vector<std::pair<std::string, int32_t>> by_text;
    for (int32_t a : objects) {
      const SchemaNode& o = out_.nodes[static_cast<size_t>(a)];
      if (o.type != Type::Object || o.keys.empty() || !o.required[0]) refuse();
      if (t.keys.empty()) t.keys = {o.keys[0]};
      if (o.keys[0] != t.keys[0]) refuse();
      const SchemaNode& v = out_.nodes[static_cast<size_t>(o.values[0])];
      if (v.type != Type::Enum) refuse();
      for (const auto& text : v.texts) by_text.emplace_back(text, a);
    }
    std::sort(by_text.begin(), by_text.end());
    for (size_t i = 0; i < by_text.size(); ++i) {
      if (i > 0 && by_text[i].first == by_text[i - 1].first) refuse();  // two alternatives share a value
      e.texts.push_back(by_text[i].first);
      t.tag_alts.push_back(by_text[i].second);
    }
    if (e.texts.size() > static_cast<size_t>(kMaxSchemaEnum)) fail(where, cat("more than ", kMaxSchemaEnum, " object alternatives told apart by a first property"));
    t.values = {add(std::move(e))};
    t.required = {1};
    return add(std::move(t));
  }

  const ojson& root_;
  JsonSchema out_;
  std::map<std::string, int32_t> refs_;
  std::map<std::string, std::shared_ptr<const RegexDfa>> automata_;  // by pattern or number bounds (and lengths): made once
  int64_t pattern_states_ = 0;
  int64_t work_left_ = RegexDfa::kMaxWork;
  std::map<size_t, std::string> where_;
  int depth_ = 0;
};

}  // namespace

JsonSchema compile_json_schema(const nlohmann::ordered_json& schema) { return Compiler(schema).run(); }

}  // namespace llmserve
