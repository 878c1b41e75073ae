#include "engine/json_schema.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"

namespace llmserve {
namespace {

using ojson = nlohmann::ordered_json;
using Type = SchemaNode::Type;

// Keywords that do not restrict the text produced further (annotations, and additionalProperties:
// only the listed properties are ever produced, which every setting of it allows).
const std::set<std::string> kIgnored = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                                        "additionalProperties", "strict", "deprecated", "readOnly", "writeOnly"};
const std::set<std::string> kKnown = {"type", "properties", "required", "items", "minItems", "maxItems", "enum", "const",
                                      "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions"};

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
    for (size_t i = 0; i < out_.nodes.size(); ++i)
      if (out_.nodes[i].type == Type::Union) dispatch(static_cast<int32_t>(i));
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
    } else if (s.contains("properties") || s.contains("required")) {
      types.push_back("object");
    } else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) {
      types.push_back("array");
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
    if (n.type == Type::Object && !s.contains("properties")) {  // any properties: a generic JSON object
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
    } else if (n.type == Type::Array) {
      n.items = s.contains("items") ? compile(s["items"], where + "/items") : add(SchemaNode{});
      auto bound = [&](const char* k, int64_t dflt) {
        if (!s.contains(k)) return dflt;
        if (!s[k].is_number_integer() || s[k].get<int64_t>() < 0) fail(where, cat(k, " must be a non-negative integer"));
        return s[k].get<int64_t>();
      };
      n.min_items = bound("minItems", 0);
      n.max_items = bound("maxItems", -1);
      if (n.max_items >= 0 && n.max_items < n.min_items) fail(where, "maxItems is below minItems");
    } else if (only) {
      for (const char* k : {"properties", "required", "items", "minItems", "maxItems"})
        if (s.contains(k)) fail(where, cat("'", k, "' applies to objects and arrays, not to type ", t));
    }
    return add(std::move(n));
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
      case Type::Tagged: set("{"); break;
      case Type::Array: set("["); break;
      case Type::String: set("\""); break;
      case Type::Integer:
      case Type::Number: set("-0123456789"); break;
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
    const std::vector<int32_t> alts = out_.nodes[static_cast<size_t>(id)].alts;
    std::vector<int32_t> objects;  // alternatives that begin with '{'
    for (int32_t a : alts) {
      const auto f = first_bytes(a);
      if (f['{'] && std::find(objects.begin(), objects.end(), a) == objects.end()) objects.push_back(a);
      for (int c = 0; c < 256; ++c) {
        if (!f[c] || (c == '{' && objects.size() > 1) || by[c] == a) continue;  // (one alternative listed twice: no conflict)
        if (by[c] >= 0)
          fail(where_[static_cast<size_t>(id)],
               cat("alternatives that can both begin with '", static_cast<char>(c),
                   "' are not supported (guided decoding picks the alternative by a value's first byte)"));
        by[c] = a;
      }
    }
    if (objects.size() > 1) by['{'] = tagged(objects, where_[static_cast<size_t>(id)]);
    out_.nodes[static_cast<size_t>(id)].by_first = by;
  }

  // Object alternatives told apart by their first property (see SchemaNode::Tagged), or an Error.
  int32_t tagged(const std::vector<int32_t>& objects, const std::string& where) {
    auto refuse = [&] {
      fail(where, "alternatives that can both begin with '{' are supported only as objects whose first property, "
                  "required in each, is a const or enum that tells them apart");
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
    if (e.texts.size() > static_cast<size_t>(kMaxSchemaEnum)) fail(where, cat("more than ", kMaxSchemaEnum, " tagged alternatives"));
    t.values = {add(std::move(e))};
    t.required = {1};
    return add(std::move(t));
  }

  const ojson& root_;
  JsonSchema out_;
  std::map<std::string, int32_t> refs_;
  std::map<size_t, std::string> where_;
  int depth_ = 0;
};

}  // namespace

JsonSchema compile_json_schema(const nlohmann::ordered_json& schema) { return Compiler(schema).run(); }

}  // namespace llmserve
