// A JSON schema compiled for guided decoding (vLLM's json_schema structured outputs): a table of nodes
// the byte-level recognizer (src/engine/guided.h) walks. Supported: type (one or a list), properties
// with required (properties are produced in the schema's order, optional ones may be left out; no
// others), items and prefixItems (or, before 2020-12, items as an array and additionalItems) with minItems / maxItems, enum and const (any JSON values), anyOf / oneOf whose
// alternatives begin with different bytes (e.g. a string or null, an object or an array) or are objects
// told apart by the value of a first property they all require (a const or enum each; other unions, and
// minProperties / maxProperties, are guided through a grammar made from the schema:
// JsonSchema::needs_grammar), allOf of one
// schema, $ref to "#", "#/$defs/..." or "#/definitions/...", and the annotations (title, description,
// default, examples, $schema, $id, strict) that do not restrict the produced text further;
// additionalProperties restricts an object without properties only (false: {}; a schema: any keys
// whose values it takes; the listed properties are the only ones ever produced otherwise). Strings take minLength / maxLength (code points), pattern (matched whole, as xgrammar
// and outlines match it; the regex_dfa.h subset) and format date, time, date-time, uuid, ipv4 and email
// (other formats are annotations, as JSON Schema has them by default): such strings are produced
// without escapes, so their text is their value. Integers and numbers take minimum, maximum,
// exclusiveMinimum and exclusiveMaximum (number_range.h), and a whole multipleOf. A schema using
// anything else (uniqueItems, ...) is refused with an Error naming the keyword, rather than guided to text that may not satisfy it.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace llmserve {

class RegexDfa;

struct SchemaNode {
  enum class Type : uint8_t { Any, Object, Array, String, Integer, Number, Boolean, Null, Enum, Union, Tagged, Map };
  Type type = Type::Any;
  // Any: an object of any properties only ("type": "object" without "properties").
  bool any_object = false;
  // Object: the properties in the schema's order; each key as it stands between the quotes (JSON
  // escapes applied), its value's node, whether it is required.
  std::vector<std::string> keys;
  std::vector<int32_t> values;
  std::vector<char> required;
  // Map: the keys' node (propertyNames, or patternProperties' pattern: a string or an enum of strings;
  // -1: any string), kept by the grammar only.
  int32_t key_node = -1;
  // Object, Map: bounds on the properties' count (minProperties, maxProperties; max -1: none), kept by
  // the grammar only (JsonSchema::needs_grammar).
  int64_t min_props = 0, max_props = -1;
  // Array: the nodes of the first items (prefixItems), then of every other item (-1: none allowed:
  // max_items is then at most prefix's size); the item count's bounds (max -1: none). Map (an object
  // without properties whose additionalProperties is a schema): items is every value's node.
  std::vector<int32_t> prefix;
  int32_t items = -1;
  int64_t min_items = 0, max_items = -1;
  // Array: uniqueItems, for items that are one of a few values (an enum, booleans), kept by the grammar only.
  bool unique = false;
  // Enum: each allowed value as compact JSON text.
  std::vector<std::string> texts;
  // Union: the alternatives, and the one a value starting with each byte belongs to (-1: none).
  std::vector<int32_t> alts;
  std::array<int32_t, 256> by_first{};
  // Tagged: object alternatives of a union told apart by their first property, required in each and a
  // const / enum of values no two share (as a tool call's "name"): keys = {that key}, values = {an enum
  // of every alternative's values}; tag_alts[i]: the alternative whose value is that enum's texts[i].
  // Once the value is read the object goes on as that alternative.
  std::vector<int32_t> tag_alts;
  // String: the text between the quotes, when constrained: an automaton over it (a pattern or a
  // format, with any length bounds inside it), or else bounds on its code points counted as they come
  // (max -1: none). No escapes either way. Integer, Number: with bounds, an automaton over the text.
  std::shared_ptr<const RegexDfa> content;
  int64_t min_length = 0, max_length = -1;
  bool constrained() const { return content || min_length > 0 || max_length >= 0; }
};

struct JsonSchema {
  std::vector<SchemaNode> nodes;
  int32_t root = 0;
  // Why the byte-level recognizer of guided.h cannot follow this schema (empty when it can): a union
  // whose alternatives may begin with the same byte, other than objects told apart by a first
  // property (as Pydantic's unions of models), an object's minProperties / maxProperties, or its keys'
  // propertyNames / patternProperties (Pydantic's dicts with constrained keys). Such a
  // schema is guided as a grammar (schema_grammar.h).
  std::string needs_grammar;
};

// Limits that keep a recognizer's state small: properties of one object and values of one enum (a
// 64-bit candidate mask). (Values nest at most kGuideMaxLevels deep: guided.h.)
constexpr int kMaxSchemaProperties = 64;
constexpr int kMaxSchemaEnum = 64;
// Values an array with uniqueItems may choose among (the grammar has a rule per subset of them).
constexpr int kMaxUniqueValues = 10;
// Nodes of one compiled schema (a request's schema is refused beyond it).
constexpr int kMaxSchemaNodes = 4096;
// Automaton states of one schema's patterns and formats together (each at most RegexDfa::kMaxStates).
constexpr int kMaxSchemaPatternStates = 20000;

// Throws Error (naming the keyword and where it stands) for what is not supported.
JsonSchema compile_json_schema(const nlohmann::ordered_json& schema);

}  // namespace llmserve
