// Guided decoding recognizers (src/engine/guided.h): every prefix of an accepted text is accepted, a
// text is complete exactly when it is whole, and what JSON (RFC 8259) or the choice list rules out is
// rejected at the first byte that makes it impossible.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "engine/guided.h"
#include "engine/json_schema.h"
#include "engine/schema_grammar.h"
#include "engine/sampling_params.h"

using namespace llmserve;

namespace {

// Feeds `text` one byte at a time: the number of bytes accepted (text.size() when all are), and
// whether the whole text is complete.
std::pair<size_t, bool> run(const Guide& g, const std::string& text) {
  GuideState s = g.start();
  for (size_t i = 0; i < text.size(); ++i)
    if (!g.feed(s, std::string_view(text).substr(i, 1))) return {i, false};
  return {text.size(), g.complete(s)};
}

// Each text is a whole accepted text exactly when `want` says so, and every prefix of an accepted one
// is alive.
void expect_language(const Guide& g, const std::vector<std::pair<std::string, bool>>& texts, const std::string& what) {
  for (const auto& [text, want] : texts) {
    const auto [n, complete] = run(g, text);
    EXPECT_EQ(n == text.size() && complete, want) << what << " on '" << text << "'";
    if (!want) continue;
    for (size_t k = 0; k < text.size(); ++k) {
      GuideState s = g.start();
      EXPECT_TRUE(g.feed(s, text.substr(0, k))) << what << " prefix " << k;
    }
  }
}

}  // namespace

TEST(GuidedJson, AcceptsObjectsAndEveryPrefix) {
  const auto g = Guide::json();
  for (const std::string doc :
       {"{}", " {\"a\": 1}", "{\"a\":[1,-2.5e+3,0,0.25,1E9,true,false,null,{\"b\":{}},[]],\"c\":\"x\\\"\\u00e9\\n\"}",
        "{\"k\": \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}", "{\n  \"list\": [\n    1,\n    2\n  ]\n}", "{\"\":\"\"}"}) {
    const auto [n, complete] = run(*g, doc);
    EXPECT_EQ(n, doc.size()) << doc;
    EXPECT_TRUE(complete) << doc;
    for (size_t k = 0; k + 1 < doc.size(); ++k) {  // proper prefixes: accepted, not complete
      GuideState s = g->start();
      ASSERT_TRUE(g->feed(s, doc.substr(0, k))) << doc.substr(0, k);
      EXPECT_FALSE(g->complete(s)) << doc.substr(0, k);
    }
  }
  // Whole multi-byte tokens at once, as the sampler feeds them.
  GuideState s = g->start();
  EXPECT_TRUE(g->feed(s, "{\"a\""));
  EXPECT_TRUE(g->feed(s, ": [1"));
  EXPECT_TRUE(g->feed(s, "0, 2]}"));
  EXPECT_TRUE(g->complete(s));
}

TEST(GuidedJson, RejectsAtTheFirstImpossibleByte) {
  const auto g = Guide::json();
  const std::vector<std::pair<std::string, size_t>> bad = {
      {"[1]", 0},            // the top level is an object
      {"\"s\"", 0},
      {"{}}", 2},            // nothing after the object
      {"{} ", 2},
      {"{'a':1}", 1},        // single quotes
      {"{\"a\" 1}", 5},      // a colon is needed
      {"{\"a\":01}", 6},     // leading zero
      {"{\"a\":1.}", 7},     // a digit after the point
      {"{\"a\":-}", 6},
      {"{\"a\":1e}", 7},
      {"{\"a\":tru}", 8},
      {"{\"a\":nul1}", 8},
      {"{\"a\":[1,]}", 8},   // no trailing commas
      {"{\"a\":1,}", 7},
      {"{\"a\":[1}", 7},     // mismatched closer
      {"{\"a\":\"x\ty\"}", 7},  // raw control character in a string
      {"{\"a\":\"\\x\"}", 7},   // unknown escape
      {"{\"a\":\"\\u12g4\"}", 10},
      {"{\"a\":\"\xc3(\"}", 7},  // bad UTF-8 continuation
      {"{\"a\":\"\xff\"}", 6},
      {"{1:2}", 1},          // keys are strings
  };
  for (const auto& [doc, at] : bad) EXPECT_EQ(run(*g, doc).first, at) << doc;
  // A dead state stays dead.
  GuideState s = g->start();
  EXPECT_FALSE(g->feed(s, "x"));
  EXPECT_FALSE(g->feed(s, "{"));
  EXPECT_FALSE(g->complete(s));
}

TEST(GuidedJson, BoundsWhitespaceRunsAndDepth) {
  const auto g = Guide::json();
  const std::string ws(Guide::kMaxWhitespace, ' ');
  EXPECT_TRUE(run(*g, "{" + ws + "\"a\":" + ws + "1" + ws + "}").second);
  EXPECT_EQ(run(*g, "{" + ws + " ").first, 1 + ws.size());  // one more space is one too many
  std::string deep = "{\"a\":";
  for (int d = 1; d < Guide::kMaxDepth; ++d) deep += "[";
  EXPECT_EQ(run(*g, deep).first, deep.size());  // kMaxDepth levels with the object
  EXPECT_EQ(run(*g, deep + "[").first, deep.size());
  std::string closed = deep;
  for (int d = 1; d < Guide::kMaxDepth; ++d) closed += "]";
  EXPECT_TRUE(run(*g, closed + "}").second);
}

TEST(GuidedChoice, ExactlyOneOfTheStrings) {
  const auto g = Guide::choice({"yes", "no", "maybe", "y", "yes"});
  for (const std::string c : {"yes", "no", "maybe", "y"}) EXPECT_EQ(run(*g, c), std::make_pair(c.size(), true)) << c;
  EXPECT_EQ(run(*g, "ye").second, false);   // a prefix only
  EXPECT_EQ(run(*g, "yess").first, 3u);
  EXPECT_EQ(run(*g, "n0").first, 1u);
  EXPECT_EQ(run(*g, "Yes").first, 0u);
  GuideState s = g->start();
  EXPECT_TRUE(g->feed(s, "y"));
  EXPECT_TRUE(g->complete(s));  // "y" is whole, and "yes" may still follow
  EXPECT_TRUE(g->feed(s, "es"));
  EXPECT_TRUE(g->complete(s));
  // Nested prefixes (the run of candidates is narrowed by binary search).
  const auto h = Guide::choice({"abd", "a", "ba", "abc", "b", "ab"});
  for (const std::string c : {"a", "ab", "abc", "abd", "b", "ba"}) EXPECT_EQ(run(*h, c), std::make_pair(c.size(), true)) << c;
  EXPECT_EQ(run(*h, "abe").first, 2u);
  EXPECT_EQ(run(*h, "bb").first, 1u);
  EXPECT_EQ(run(*h, "c").first, 0u);
  EXPECT_THROW(Guide::choice({}), Error);
  EXPECT_THROW(Guide::choice({"a", ""}), Error);
}

// The sampler's fast path: plain string bytes are exactly those a string state takes without leaving it.
TEST(GuidedJson, PlainStringBytes) {
  const auto g = Guide::json();
  for (const std::string t : {"abc", " x y", "caf\xc3\xa9", "\xe2\x82\xac", "{}[]:,"})
    EXPECT_TRUE(plain_string_bytes(t)) << t;
  for (const std::string t : {"a\"", "\\n", "\t", "\xc3", "\xe2\x82", "\xff", ""})
    EXPECT_EQ(plain_string_bytes(t), t.empty()) << t;
  GuideState s = g->start();
  ASSERT_TRUE(g->feed(s, "{\"k"));
  EXPECT_TRUE(g->in_plain_string(s));
  ASSERT_TRUE(g->feed(s, "caf\xc3"));
  EXPECT_FALSE(g->in_plain_string(s));  // inside a character
  ASSERT_TRUE(g->feed(s, "\xa9\\"));
  EXPECT_FALSE(g->in_plain_string(s));  // after a backslash
  ASSERT_TRUE(g->feed(s, "n\": "));
  EXPECT_FALSE(g->in_plain_string(s));  // a value expected, not a string
}

// json_schema: accepted documents are accepted byte by byte with every proper prefix incomplete (but
// for a top-level number or enum value, which may be whole before its end), and what the schema rules
// out is rejected at the first byte that makes it impossible.
namespace {
void accepts(const Guide& g, const std::string& doc) {
  const auto [n, complete] = run(g, doc);
  EXPECT_EQ(n, doc.size()) << doc;
  EXPECT_TRUE(complete) << doc;
}
}  // namespace

TEST(GuidedSchema, ObjectsInTheSchemasOrderWithRequiredAndOptionalProperties) {
  const auto g = Guide::schema(R"({"type": "object", "properties": {"name": {"type": "string"}, "nick": {"type": "string"},
      "age": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["name", "age"], "additionalProperties": false})");
  for (const std::string doc : {R"({"name": "Bo", "age": 3})", R"({"name":"Bo","nick":"b","age":-10,"ok":true})",
                                R"({ "name" : "x\"y" , "age" : 0 , "ok" : false })", R"({"name":"caf)" "\xc3\xa9" R"(","age":7})"}) {
    accepts(*g, doc);
    for (size_t k = 1; k + 1 < doc.size(); ++k) {
      GuideState s = g->start();
      ASSERT_TRUE(g->feed(s, doc.substr(0, k))) << doc.substr(0, k);
      EXPECT_FALSE(g->complete(s)) << doc.substr(0, k);
    }
  }
  const std::vector<std::pair<std::string, size_t>> bad = {
      {R"({"age": 3, "name": "x"})", 2},     // properties come in the schema's order
      {R"({"name": "x"})", 12},              // age is required
      {R"({"name": "x", "age": 3.5})", 22},  // an integer
      {R"({"name": "x", "age": 1e3})", 22},
      {R"({"name": 5, "age": 3})", 9},       // a string
      {R"({"name": "x", "age": 3, "zz": 1})", 25},  // no other properties
      {R"({"name": "x", "ok": true})", 15},  // age (required) before ok
      {R"({"name": "x", "age": 3,})", 23},   // no trailing comma
      {R"({"name": "x", "age": 3} )", 23},   // nothing after the value
      {R"(["name"])", 0},
  };
  for (const auto& [doc, at] : bad) EXPECT_EQ(run(*g, doc).first, at) << doc;
}

TEST(GuidedSchema, ArraysEnumsUnionsAndAnyValues) {
  const auto arr = Guide::schema(R"({"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2})");
  for (const std::string doc : {"[1]", "[ -2.5e+3 , 0 ]", "[0.25]"}) accepts(*arr, doc);
  EXPECT_EQ(run(*arr, "[]").first, 1u);
  EXPECT_EQ(run(*arr, "[1,2,3]").first, 4u);
  EXPECT_EQ(run(*arr, "[\"a\"]").first, 1u);

  const auto e = Guide::schema(R"({"enum": ["red", "green", 1, 12, null, {"a": [true]}]})");
  for (const std::string doc : {"\"red\"", "\"green\"", "1", "12", "null", "{\"a\":[true]}"}) accepts(*e, doc);
  EXPECT_EQ(run(*e, "\"blue\"").first, 1u);
  EXPECT_EQ(run(*e, "13").first, 1u);
  EXPECT_EQ(run(*e, "{\"a\": [true]}").first, 5u);  // enum values in compact form

  // An enum value that another extends ends at the byte after it, inside an object.
  const auto inner = Guide::schema(R"({"properties": {"n": {"enum": [1, 12]}, "s": {"const": "k"}}, "required": ["n", "s"]})");
  accepts(*inner, R"({"n": 1, "s": "k"})");
  accepts(*inner, R"({"n":12,"s":"k"})");
  EXPECT_EQ(run(*inner, R"({"n": 2)").first, 6u);

  const auto u = Guide::schema(R"({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
      "b": {"type": ["integer", "array"], "items": {"type": "boolean"}}}, "required": ["a", "b"]})");
  for (const std::string doc : {R"({"a": "x", "b": 4})", R"({"a": null, "b": [true, false]})"}) accepts(*u, doc);
  EXPECT_EQ(run(*u, R"({"a": 1)").first, 6u);
  EXPECT_EQ(run(*u, R"({"a": null, "b": "x")").first, 17u);

  // Any value: a property without a schema, a free-form object.
  const auto any = Guide::schema(R"({"type": "object", "properties": {"meta": {}, "obj": {"type": "object"}}, "required": ["meta"]})");
  for (const std::string doc : {R"({"meta": {"x": [1, "y", null]}})", R"({"meta": 5, "obj": {"k": 1.5}})", R"({"meta": -0.5})",
                                R"({"meta":"s"})"})
    accepts(*any, doc);
  EXPECT_EQ(run(*any, R"({"meta": [1,]})").first, 12u);
  EXPECT_EQ(run(*any, R"({"meta": 1, "obj": [1]})").first, 19u);  // a free-form object is still an object
  // A top-level number is whole as soon as it may end; a top-level integer takes no fraction.
  const auto num = Guide::schema(R"({"type": "integer"})");
  GuideState s = num->start();
  ASSERT_TRUE(num->feed(s, "-1"));
  EXPECT_TRUE(num->complete(s));
  EXPECT_TRUE(num->feed(s, "0"));
  EXPECT_FALSE(num->feed(s, "."));
}

TEST(GuidedSchema, ReferencesAndRecursion) {
  const auto g = Guide::schema(R"({"$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"},
      "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}, "required": ["v", "next"]}},
      "$ref": "#/$defs/Node"})");
  accepts(*g, R"({"v": 1, "next": {"v": 2, "next": {"v": 3, "next": null}}})");
  EXPECT_EQ(run(*g, R"({"v": 1, "next": {"v": 2}})").first, 24u);  // next is required
  const auto tree = Guide::schema(R"({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}})");
  accepts(*tree, R"({"kids": [{}, {"kids": [{"kids": []}]}]})");
  // Levels deeper than the state holds are refused, not overrun.
  std::string deep;
  for (int i = 0; i < kGuideMaxLevels; ++i) deep += "{\"kids\": [";
  EXPECT_LT(run(*tree, deep).first, deep.size());
}

// Objects told apart by a first property they all require (a tool call's "name"), as vLLM's schema for
// tool_choice "required": once the name is read, the object goes on as that alternative.
TEST(GuidedSchema, ObjectAlternativesToldApartByTheirFirstProperty) {
  const auto g = Guide::schema(R"({"type": "array", "minItems": 1, "items": {"anyOf": [
      {"type": "object", "properties": {"name": {"const": "get_weather"}, "parameters": {"type": "object",
       "properties": {"city": {"type": "string"}}, "required": ["city"]}}, "required": ["name", "parameters"]},
      {"type": "object", "properties": {"name": {"enum": ["add", "plus"]}, "parameters": {"type": "object",
       "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}, "required": ["name", "parameters"]},
      {"type": "null"}]}})");
  for (const std::string doc : {R"([{"name": "get_weather", "parameters": {"city": "Paris"}}])",
                                R"([{"name":"add","parameters":{"a":1,"b":2}}, {"name": "plus", "parameters": {"a": 0, "b": -3}}, null])"})
    accepts(*g, doc);
  EXPECT_EQ(run(*g, R"([{"name": "add", "parameters": {"city": "x"}}])").first, 33u);  // add takes a and b
  EXPECT_EQ(run(*g, R"([{"name": "get_weather", "parameters": {"a": 1}}])").first, 41u);
  EXPECT_EQ(run(*g, R"([{"name": "sub")").first, 11u);
  EXPECT_EQ(run(*g, R"([{"parameters": {}}])").first, 3u);  // the name comes first
  EXPECT_EQ(run(*g, R"([])").first, 1u);                    // minItems 1
}

namespace {
// The schema is refused with an Error whose message holds `says`.
void refused(const std::string& schema, const std::string& says) {
  try {
    Guide::schema(schema);
    ADD_FAILURE() << "accepted: " << schema;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(GuidedSchema, RefusesWhatItCannotGuide) {
  refused(R"({"type": "array", "not": {}})", "'not' is not supported");
  refused(R"({"type": "number", "multipleOf": 0.01})", "multipleOf is supported as a whole number up to 9997, not 0.01");
  refused(R"({"type": "integer", "multipleOf": 7, "minimum": 1, "maximum": 6})", "the bounds and multipleOf leave no integer");
  refused(R"({"type": "integer", "minimum": 5, "maximum": 4.5})", "the bounds leave no integer");
  refused(R"({"type": "number", "exclusiveMinimum": 1, "maximum": 1.0000001})", "the bounds leave no number");
  refused(R"({"type": "string", "minimum": 1})", "'minimum' applies to numbers, not to type string");
  refused(R"({"minimum": 1e300})", "bounds past +-2^53");
  refused(R"({"type": "string", "pattern": "(a"})", "pattern: missing )");
  refused(R"j({"type": "string", "pattern": "a(?=b)"})j", "pattern: lookaround assertions are not supported");
  refused(R"({"type": "integer", "pattern": "1"})", "'pattern' applies to strings, not to type integer");
  refused(R"({"type": "string", "pattern": "a", "format": "date"})", "pattern beside format 'date' is not supported");
  refused(R"({"type": "string", "maxLength": 2, "minLength": 3})", "maxLength is below minLength");
  refused(R"({"type": "string", "format": "date", "maxLength": 9})", "format 'date' matches no string of 0 to 9 characters");
  refused(R"({"type": "string", "pattern": "\\\\"})", "pattern matches no string without quotes, backslashes");
  refused(R"({"type": "string", "pattern": "[a-z]+x", "maxLength": 20000})", "needs more than 10000 automaton states");
  refused(R"({"type": "string", "minLength": 3000000000})", "minLength is larger than any output");
  // A schema's patterns share one construction budget: a few that each build in a tenth of a second
  // are taken, many are not (so a request cannot hold the server for long).
  std::string many_patterns = R"({"type": "object", "properties": {)";
  for (int i = 0; i < 4; ++i) many_patterns += cat(i ? ", " : "", R"("p)", i, R"(": {"pattern": "(\\w+\\s?){0,)", 40 - i, R"(}"})");
  refused(many_patterns + "}}", "take too long to build together");
  // Alternatives that begin alike go to a grammar (below), which refuses what it cannot hold.
  refused(R"({"anyOf": [{"type": "string", "maxLength": 20000}, {"type": "string", "pattern": "a"}]})",
          "alternatives that can both begin with '\"' (at #/anyOf): guided as a grammar, which cannot take this schema: "
          "a string's minLength / maxLength is over 10000");
  refused(R"({"anyOf": [{"type": "array", "maxItems": 1001}, {"type": "array", "minItems": 1}]})",
          "an array counts more than 1000 items");
  refused(R"({"items": [{"type": "integer"}], "prefixItems": [{}]})", "items as an array beside prefixItems");
  refused(R"({"prefixItems": [{}, {}], "items": false, "minItems": 3})", "maxItems is below minItems");
  refused(R"({"type": "strnig"})", "unknown type 'strnig'");
  refused(R"({"$ref": "#/components/X"})", "$ref '#/components/X'");
  refused(R"({"type": "object", "properties": {"b": {}}, "required": ["a"]})", "required property 'a' is not among the properties");
  refused(R"({"type": "object", "required": ["a"]})", "required without properties");
  refused(R"({"type": "array", "minItems": 3, "maxItems": 2})", "maxItems is below minItems");
  refused(R"(false)", "accepts nothing");
  refused(R"({"type": "object")", "not JSON");
  std::string many = R"({"enum": [)";
  for (int i = 0; i <= kMaxSchemaEnum; ++i) many += (i ? "," : "") + std::to_string(i);
  refused(many + "]}", "enum lists more than");
}

namespace {
// A schema and texts with the verdict on each (whole and valid, or not).
struct SchemaCase {
  const char* schema;
  std::vector<std::pair<std::string, bool>> texts;
};
// Each schema's guide, a grammar (the schema's own recognizer cannot follow these), takes each text
// whole exactly when its verdict says, with every prefix of an accepted one alive.
void expect_grammar_verdicts(const std::vector<SchemaCase>& cases) {
  for (const auto& c : cases) {
    const auto g = Guide::schema(c.schema);
    EXPECT_EQ(g->kind(), Guide::Kind::Grammar) << c.schema;
    expect_language(*g, c.texts, c.schema);
  }
}
}  // namespace

// Unions whose alternatives may begin with the same byte (Pydantic's unions of models, overlapping
// strings or numbers) are guided as a grammar made from the schema (schema_grammar.h), which follows every
// alternative the text so far allows. The expectations are Python's jsonschema's verdicts (Draft 2020-12
// with its format checker), except where marked narrower (only the listed properties are produced).
TEST(GuidedSchema, UnionsWhoseAlternativesBeginAlikeAsAGrammar) {
  const std::vector<SchemaCase> cases = {
      {R"({"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}], "$defs": {
          "Cat": {"type": "object", "title": "Cat", "properties": {"name": {"type": "string"}, "meows": {"type": "integer", "minimum": 0}},
                  "required": ["name", "meows"]},
          "Dog": {"type": "object", "title": "Dog", "properties": {"name": {"type": "string"}, "barks": {"type": "boolean"},
                  "born": {"type": "string", "format": "date"}}, "required": ["name", "barks"]}}})",
       {{R"({"name": "Tom", "meows": 3})", true}, {R"({"name": "Rex", "barks": true})", true},
        {R"({"name": "Rex", "barks": false, "born": "2020-01-31"})", true}, {R"({"name": "Tom", "meows": -1})", false},
        {R"({"name": "Tom"})", false}, {R"({"name": "Rex", "barks": 1})", false},
        {R"({"name": "Tom", "meows": 3, "barks": true})", false /* narrower */},
        {R"({"name": "Rex", "barks": true, "born": "2020-02-30"})", false}}},
      {R"({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "number"}]})", {{"1", true}, {"0.5", true}, {"-3", true}, {"12", true}}},
      {R"({"anyOf": [{"type": "object"}, {"type": "object", "properties": {"a": {}}}]})",
       {{R"({"a": 1})", true}, {"{}", true}, {R"({"b": [1]})", true}}},
      {R"({"type": "array", "items": {"anyOf": [{"type": "string", "pattern": "^[a-z]+$"}, {"type": "string", "format": "email"}]}})",
       {{R"(["abc", "a.b@ex.com"])", true}, {R"(["Abc"])", false}, {"[]", true}}},
  };
  expect_grammar_verdicts(cases);
  // The byte that makes a text impossible is refused at once: after the name, "meows" or "barks".
  const auto pets = Guide::schema(cases[0].schema);
  EXPECT_EQ(run(*pets, R"({"name": "Tom", "purrs": 1})").first, 17u);
  EXPECT_EQ(run(*pets, R"({"name": "Tom", "meows": true})").first, 25u);
  // Compact mode: no whitespace between tokens there either.
  const auto tight = Guide::schema(cases[0].schema, true);
  EXPECT_TRUE(run(*tight, R"({"name":"Tom","meows":3})").second);
  EXPECT_EQ(run(*tight, R"({"name": "Tom"})").first, 8u);
}

// minProperties / maxProperties (Pydantic's Dict[str, int] = Field(min_length=1) writes them): kept by
// the grammar made from the schema, for listed properties, maps and free-form objects. The expectations
// are Python's jsonschema's verdicts.
TEST(GuidedSchema, PropertyCountsAsAGrammar) {
  const std::vector<SchemaCase> cases = {
      {R"({"type": "object", "properties": {"a": {}, "b": {}, "c": {}}, "minProperties": 2})",
       {{R"({"a": 1, "b": 2})", true}, {R"({"a": 1})", false}, {"{}", false}, {R"({"a": 1, "b": 2, "c": 3})", true}, {R"({"b": 1, "c": 2})", true}}},
      {R"({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["b"], "maxProperties": 1})",
       {{R"({"b": 1})", true}, {R"({"a": 1, "b": 2})", false}, {"{}", false}}},
      {R"({"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1, "maxProperties": 2})",
       {{"{}", false}, {R"({"x": 1})", true}, {R"({"x": 1, "y": 2})", true}, {R"({"x": 1, "y": 2, "z": 3})", false}, {R"({"x": "s"})", false}}},
      {R"({"type": "object", "maxProperties": 1})", {{"{}", true}, {R"({"a": [1]})", true}, {R"({"a": 1, "b": 2})", false}}},
      {R"({"minProperties": 2})", {{R"({"a": 1})", false}, {R"({"a": 1, "b": {"c": null}})", true}, {R"({"a": 1, "b": 2, "c": 3})", true}}},
  };
  expect_grammar_verdicts(cases);
  // The byte that makes the count impossible is refused at once: a third entry, or '}' before the second.
  const auto two = Guide::schema(R"({"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2, "maxProperties": 2})");
  EXPECT_EQ(run(*two, R"({"x": 1, "y": 2, "z": 3})").first, 15u);
  EXPECT_EQ(run(*two, R"({"x": 1})").first, 7u);
  refused(R"({"type": "object", "minProperties": 3, "maxProperties": 2})", "maxProperties is below minProperties");
  refused(R"({"properties": {"a": {}}, "minProperties": 2})", "minProperties 2 is more than the 1 properties listed");
  refused(R"({"properties": {"a": {}, "b": {}}, "required": ["a", "b"], "maxProperties": 1})", "maxProperties 1 is below the 2 required");
  refused(R"({"type": "string", "minProperties": 1})", "'minProperties' applies to objects and arrays, not to type string");
  refused(R"({"type": "object", "maxProperties": 5000})", "minProperties / maxProperties (at #): guided as a grammar, which cannot take this schema: "
                                                          "an object counts more than 1000 properties");
  // A schema whose grammar would be huge (many objects of many optional properties, each counted up to
  // 1,000) is refused quickly, before its text grows without bound.
  std::string many = R"({"anyOf": [)";
  for (int o = 0; o < 40; ++o) {
    many += o ? ", {" : "{";
    many += R"("type": "object", "maxProperties": 1000, "properties": {)";
    for (int p = 0; p < 64; ++p) many += cat(p ? ", " : "", "\"p", o, "_", p, "\": {}");
    many += "}}";
  }
  const auto t0 = std::chrono::steady_clock::now();
  refused(many + "]}", "too large");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
}

// Keys under a schema: propertyNames (Pydantic's Dict[Literal["x", "y"], int] and Dict[SomeEnum, int])
// and patternProperties with one pattern (Dict[constr(pattern=...), int]; its keys match the pattern
// whole, so every output validates), kept by the grammar made from the schema. The expectations are
// Python's jsonschema's verdicts, except where marked narrower.
TEST(GuidedSchema, ConstrainedKeysAsAGrammar) {
  const std::vector<SchemaCase> cases = {
      {R"({"type": "object", "additionalProperties": {"type": "integer"}, "propertyNames": {"enum": ["x", "y"]}})",
       {{R"({"x": 1})", true}, {R"({"z": 1})", false}, {"{}", true}, {R"({"x": 1, "y": 2})", true}, {R"({"x": "s"})", false}}},
      {R"({"$defs": {"E": {"enum": ["a", "b"], "type": "string"}}, "type": "object", "additionalProperties": {"type": "integer"},
          "propertyNames": {"$ref": "#/$defs/E"}})",
       {{R"({"a": 1})", true}, {R"({"c": 1})", false}}},
      {R"({"type": "object", "patternProperties": {"^k[0-9]$": {"type": "integer"}}})",
       {{R"({"k1": 1})", true}, {R"({"k1": "s"})", false}, {R"({"a": 1})", false /* narrower */}, {R"({"k1": 1, "k2": 2})", true}}},
      {R"({"type": "object", "propertyNames": {"pattern": "^[a-z]+$", "maxLength": 3}})",
       {{R"({"ab": [1]})", true}, {R"({"abcd": 1})", false}, {R"({"A": 1})", false}}},
  };
  expect_grammar_verdicts(cases);
  refused(R"({"properties": {"a": {}}, "propertyNames": {"enum": ["a"]}})", "propertyNames beside properties is not supported");
  refused(R"({"type": "object", "patternProperties": {"^a": {}, "^b": {}}})", "patternProperties is supported with one pattern");
  refused(R"({"type": "object", "propertyNames": {"type": "integer"}})", "propertyNames must describe strings");
  refused(R"({"type": "object", "patternProperties": {"(": {}}})", "missing )");
}

// uniqueItems for items of a few values (Pydantic's Set[SomeEnum]), kept by the grammar made from the
// schema: each value (1 and 1.0 being one, as JSON Schema compares them) at most once. Python's
// jsonschema's verdicts.
TEST(GuidedSchema, UniqueItemsOfAFewValuesAsAGrammar) {
  expect_grammar_verdicts({
      {R"({"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": true})",
       {{R"(["a", "b"])", true}, {R"(["a", "a"])", false}, {"[]", true}, {R"(["c", "b", "a"])", true}}},
      {R"({"type": "array", "items": {"type": "boolean"}, "uniqueItems": true, "minItems": 2})",
       {{"[true, false]", true}, {"[true]", false}, {"[true, true]", false}}},
      {R"({"type": "array", "items": {"enum": [1, 1.0, "x"]}, "uniqueItems": true})", {{"[1, 1.0]", false}, {R"([1, "x"])", true}}},
      {R"({"$defs": {"E": {"enum": ["p", "q"], "type": "string"}}, "type": "array", "items": {"$ref": "#/$defs/E"}, "uniqueItems": true,
          "maxItems": 1})",
       {{R"(["p"])", true}, {R"(["p", "q"])", false}}},
  });
  EXPECT_EQ(Guide::schema(R"({"type": "array", "items": {"type": "integer"}, "uniqueItems": false})")->kind(), Guide::Kind::Schema);
  refused(R"({"type": "array", "items": {"type": "integer"}, "uniqueItems": true})",
          "uniqueItems is supported for items that are an enum of up to 10 values or booleans");
  refused(R"({"type": "array", "items": {"type": "boolean"}, "uniqueItems": true, "minItems": 3})",
          "uniqueItems with minItems 3 leaves no array of its 2 values");
}

// The grammar made from a schema takes exactly the texts of the schema's own recognizer: every schema
// of the tests above that the recognizer follows, on their texts and on each one-byte edit of them
// (deleted, replaced or inserted), reaches the same byte with the same completeness after each byte.
TEST(GuidedSchema, TheGrammarOfASchemaTakesTheSameTexts) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {R"({"type": "object", "properties": {"name": {"type": "string"}, "nick": {"type": "string"}, "age": {"type": "integer"},
          "ok": {"type": "boolean"}}, "required": ["name", "age"], "additionalProperties": false})",
       {R"({"name": "Bo", "age": 3})", R"({"name":"Bo","nick":"b","age":-10,"ok":true})", R"({ "name" : "x\"y\u00e9" , "age" : 0 })",
        "{\"name\":\"caf\xc3\xa9\",\"age\":7}"}},
      {R"({"properties": {"x": {"type": "integer"}, "y": {"type": "string"}, "z": {"type": "boolean"}}, "required": ["z"]})",
       {R"({"z": true})", R"({"y": "s", "z": false})", R"({"x": 1, "z": true})"}},
      {R"({"properties": {"p": {}, "q": {"type": "null"}}})", {"{}", R"({"q": null})", R"({"p": [], "q": null})"}},
      {R"({"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2})", {"[1]", "[ -2.5e+3 , 0 ]", "[0.25]"}},
      {R"({"enum": ["red", "green", 1, 12, null, {"a": [true]}]})", {"\"red\"", "12", "null", "{\"a\":[true]}"}},
      {R"({"properties": {"n": {"enum": [1, 12]}, "s": {"const": "k"}}, "required": ["n", "s"]})", {R"({"n": 12, "s": "k"})"}},
      {R"({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]},
          "b": {"type": ["integer", "array"], "items": {"type": "boolean"}}}, "required": ["a", "b"]})",
       {R"({"a": "x", "b": 4})", R"({"a": null, "b": [true, false]})"}},
      {R"({"type": "object", "properties": {"meta": {}, "obj": {"type": "object"}}, "required": ["meta"]})",
       {R"({"meta": {"x": [1, "y", null]}})", R"({"meta": 5, "obj": {"k": 1.5e-2}})"}},
      {R"({"type": "integer"})", {"-10", "0"}},
      {R"({"$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/$defs/Node"},
          {"type": "null"}]}}, "required": ["v", "next"]}}, "$ref": "#/$defs/Node"})",
       {R"({"v": 1, "next": {"v": 2, "next": null}})"}},
      {R"({"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "object", "properties": {"name": {"const": "f"},
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}, "required": ["name", "parameters"]},
          {"type": "object", "properties": {"name": {"enum": ["add", "plus"]}, "parameters": {"type": "object"}}, "required": ["name", "parameters"]},
          {"type": "null"}]}})",
       {R"([{"name": "f", "parameters": {"city": "P"}}, null])", R"([{"name":"plus","parameters":{"a":1}}])"}},
      {R"({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"})", {R"("AB-123")"}},
      {R"({"type": "string", "minLength": 2, "maxLength": 4})", {R"("ab")", "\"\xe4\xb8\xad\xe6\x96\x87\"", "\"a\xf0\x9f\x98\x80\""}},
      {R"({"type": "string", "minLength": 3})", {R"("abcd")"}},
      {R"({"type": "string", "pattern": "[a-z\u00e9\u4e2d]+", "maxLength": 3})", {R"("ab")", "\"\xc3\xa9\xe4\xb8\xad\""}},
      {R"({"type": "string", "pattern": "[^a]+"})", {"\"b\xf0\x9f\x98\x80\xe4\xb8\xad\""}},
      {R"({"type": "string", "format": "date-time"})", {R"("2024-05-06T07:08:09.123+02:00")"}},
      {R"({"type": "string", "format": "email"})", {R"("a.b@example.com")"}},
      {R"({"type": "string", "format": "ipv4"})", {R"("192.168.0.1")"}},
      {R"({"type": "integer", "minimum": 0, "maximum": 150})", {"42", "150", "-0"}},
      {R"({"type": "number", "minimum": 0, "maximum": 1})", {"0.5", "1.0"}},
      {R"({"type": "integer", "multipleOf": 5, "minimum": 1, "maximum": 100})", {"55"}},
      {R"({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "items": false})", {R"([1, "a"])"}},
      {R"({"prefixItems": [{"type": "boolean"}], "items": {"type": "null"}})", {"[true, null, null]", "[]"}},
      {R"({"type": "array", "minItems": 3, "items": {"type": "integer"}})", {"[1, 2, 3, 4]"}},
      {R"({"anyOf": [{"type": "integer"}, {"type": "number"}]})", {"-3.25e2"}},
      {R"({"type": "object", "additionalProperties": {"type": "integer"}})",
       {R"({"a": 1, "b": 2})", "{}", "{" + std::string(Guide::kMaxWhitespace, ' ') + R"("a":)" + std::string(Guide::kMaxWhitespace, '\n') + "1}"}},
      {R"({"type": "object", "additionalProperties": false})", {"{}"}},
  };
  const std::string edits = std::string(" \n\",:{}[]01-.eatn\\\x7f\xc3\xa9\x80\xed\xf0") + '\0';
  auto trace = [](const Guide& g, const std::string& text) {
    std::vector<int> t;  // per byte: 2 complete, 1 taken, then the end
    GuideState s = g.start();
    t.push_back(g.complete(s));
    for (size_t i = 0; i < text.size(); ++i) {
      if (!g.feed(s, std::string_view(text).substr(i, 1))) break;
      t.push_back(1 + g.complete(s));
    }
    return t;
  };
  size_t compared = 0;
  for (const auto& [schema, texts] : cases) {
    for (bool compact : {false, true}) {
      const auto direct = Guide::schema(schema, compact);
      ASSERT_EQ(direct->kind(), Guide::Kind::Schema) << schema;
      const auto gram = Guide::grammar(json_schema_grammar(compile_json_schema(nlohmann::ordered_json::parse(schema)),
                                                           compact ? 0 : Guide::kMaxWhitespace));
      for (const std::string& text : texts) {
        if (!compact) {
          EXPECT_EQ(run(*direct, text), std::make_pair(text.size(), true)) << schema << " on " << text;
        }
        std::vector<std::string> variants = {text};
        for (size_t i = 0; i <= text.size(); ++i) {
          if (i < text.size()) variants.push_back(text.substr(0, i) + text.substr(i + 1));
          for (char e : edits) {
            variants.push_back(text.substr(0, i) + e + text.substr(i));
            if (i < text.size()) variants.push_back(text.substr(0, i) + e + text.substr(i + 1));
          }
        }
        for (const auto& v : variants) {
          EXPECT_EQ(trace(*direct, v), trace(*gram, v)) << schema << (compact ? " (compact)" : "") << " on " << v;
          ++compared;
        }
      }
    }
  }
  EXPECT_GT(compared, 50000u);
}

// Strings with pattern, format, minLength and maxLength. Every output the guide completes is valid under
// the schema as Python's jsonschema (Draft 2020-12, its format checker) says; the expectations here are
// its verdicts, except where marked narrower: such strings are produced without escapes, a pattern or
// format keyword without a type makes a string, and the formats are guided as subsets (an email
// address's domain has two labels or more; dates leave out February 29).
TEST(GuidedSchema, StringPatternsFormatsAndLengthsAsJsonschemaValidatesThem) {
  struct Case {
    const char* schema;
    std::vector<std::pair<std::string, bool>> texts;
  };
  const std::vector<Case> cases = {
      {R"({"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"})",
       {{R"("AB-123")", true}, {R"("AB-12")", false}, {R"("ab-123")", false}, {R"("AB-1234")", false}}},
      {R"({"type": "string", "minLength": 2, "maxLength": 4})",
       {{R"("ab")", true}, {R"("a")", false}, {R"("abcd")", true}, {R"("abcde")", false}, {"\"\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\"", true},
        {"\"\xf0\x9f\x98\x80\xf0\x9f\x98\x80\"", true}, {R"("a\"b")", false /* narrower: no escapes */}}},
      {R"({"type": "string", "minLength": 3})", {{R"("abc")", true}, {R"("ab")", false}, {"\"\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\"", true}}},
      {R"({"type": "string", "pattern": "[a-z]+", "maxLength": 3})", {{R"("abc")", true}, {R"("abcd")", false}, {R"("")", false}}},
      {R"({"type": "string", "format": "date"})",
       {{R"("2024-02-28")", true}, {R"("2024-13-01")", false}, {R"("2024-04-31")", false}, {R"("24-01-01")", false},
        {R"("0000-01-01")", false}}},
      {R"({"type": "string", "format": "date-time"})",
       {{R"("2024-05-06T07:08:09Z")", true}, {R"("2024-05-06T07:08:09.123+02:00")", true}, {R"("2024-05-06 07:08:09Z")", false},
        {R"("2024-05-06T24:00:00Z")", false}}},
      {R"({"type": "string", "format": "uuid"})",
       {{R"("123e4567-e89b-12d3-a456-426614174000")", true}, {R"("123e4567e89b12d3a456426614174000")", false}}},
      {R"({"type": "string", "format": "ipv4"})", {{R"("192.168.0.1")", true}, {R"("256.1.1.1")", false}, {R"("01.2.3.4")", false}}},
      {R"({"type": "string", "format": "email"})",
       {{R"("a.b@example.com")", true}, {R"("a@b.co")", true}, {R"("ab@localhost")", false /* narrower */}}},
      {R"({"type": "string", "format": "hostname"})", {{R"("any text at all")", true}}},  // (not guided: an annotation)
      {R"({"type": "object", "properties": {"id": {"pattern": "^x\\d+$"}}, "required": ["id"]})",
       {{R"({"id": "x12"})", true}, {R"({"id": "y12"})", false}, {R"({"id": 12})", false /* narrower */}}},
  };
  for (const auto& c : cases) {
    const auto g = Guide::schema(c.schema);
    for (const auto& [text, want] : c.texts) {
      const auto [n, complete] = run(*g, text);
      EXPECT_EQ(n == text.size() && complete, want) << c.schema << " on " << text;
    }
  }
  // A constrained string's bytes are checked as they come: past maxLength, and where the pattern
  // cannot go on, at once; its closing quote only where the text is whole.
  const auto two = Guide::schema(R"({"type": "string", "maxLength": 2})");
  EXPECT_EQ(run(*two, R"("abc")").first, 3u);
  const auto code = Guide::schema(R"({"type": "string", "pattern": "[A-Z]{2}\\d"})");
  EXPECT_EQ(run(*code, R"("A1")").first, 2u);
  EXPECT_EQ(run(*code, R"("AB")").first, 3u);
  // The sampler's fast path: inside a string with a maximum length, plain text is accepted exactly up
  // to the characters left; inside a pattern's string every token is walked.
  const auto eight = Guide::schema(R"({"type": "string", "minLength": 1, "maxLength": 8})");
  GuideState s = eight->start();
  ASSERT_TRUE(eight->feed(s, "\"ab\xc3\xa9"));
  ASSERT_EQ(eight->plain_string_room(s), 5);
  for (const std::string piece : {"x", "xy", "\xe4\xb8\xad\xe6\x96\x87", "hello", "hello!", "\xf0\x9f\x98\x80 \xf0\x9f\x98\x80 \xf0\x9f\x98\x80"}) {
    ASSERT_TRUE(plain_string_bytes(piece)) << piece;
    const auto g = guided_tokens({piece});
    GuideState t = s;
    EXPECT_EQ(eight->feed(t, piece), g->chars[0] <= 5) << piece << " (" << g->chars[0] << " characters)";
  }
  GuideState p = code->start();
  ASSERT_TRUE(code->feed(p, "\"A"));
  EXPECT_EQ(code->plain_string_room(p), -1);
  const auto plain = Guide::schema(R"({"type": "string"})");
  p = plain->start();
  ASSERT_TRUE(plain->feed(p, "\"a"));
  EXPECT_EQ(plain->plain_string_room(p), INT64_MAX);
}

// Numbers within minimum / maximum / exclusiveMinimum / exclusiveMaximum, and multiples of a whole
// multipleOf: the expectations are Python's
// jsonschema's verdicts, except where marked narrower: integers are written without a fraction, numbers
// without an exponent and with at most 6 fraction digits.
TEST(GuidedSchema, NumberBoundsAsJsonschemaValidatesThem) {
  struct Case {
    const char* schema;
    std::vector<std::pair<std::string, bool>> texts;
  };
  const std::vector<Case> cases = {
      {R"({"type": "integer", "minimum": 0, "maximum": 150})",
       {{"0", true}, {"150", true}, {"151", false}, {"-1", false}, {"42", true}, {"-0", true}, {"1.0", false /* narrower */}}},
      {R"({"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 3.5})", {{"-3", false}, {"-2", true}, {"3", true}, {"4", false}}},
      {R"({"type": "number", "minimum": 0, "maximum": 1})",
       {{"0", true}, {"0.5", true}, {"1", true}, {"1.0", true}, {"1.000001", false}, {"-0.0", true}, {"0.999999", true},
        {"0.9999999", false /* narrower */}, {"1e-3", false /* narrower */}}},
      {R"({"type": "number", "exclusiveMaximum": 0.1})", {{"0.1", false}, {"0.099999", true}, {"0.09", true}, {"-5", true}}},
      {R"({"type": "number", "minimum": -2.5})", {{"-2.5", true}, {"-2.500001", false}, {"-2.49", true}, {"1000", true}}},
      {R"({"type": "object", "properties": {"age": {"type": "integer", "minimum": 18}}, "required": ["age"]})",
       {{R"({"age": 18})", true}, {R"({"age": 17})", false}, {R"({"age": 180})", true}}},
      {R"({"type": "integer", "multipleOf": 5, "minimum": 1, "maximum": 100})",
       {{"5", true}, {"0", false}, {"100", true}, {"105", false}, {"7", false}, {"-5", false}}},
      {R"({"type": "number", "multipleOf": 3})", {{"9", true}, {"-12", true}, {"9.0", false /* narrower */}, {"10", false}, {"0", true}}},
  };
  for (const auto& c : cases) {
    const auto g = Guide::schema(c.schema);
    for (const auto& [text, want] : c.texts) {
      const auto [n, complete] = run(*g, text);
      EXPECT_EQ(n == text.size() && complete, want) << c.schema << " on " << text;
    }
  }
  // A digit that would pass the bound is refused at once; a number is whole where it is in range.
  const auto age = Guide::schema(R"({"type": "integer", "minimum": 0, "maximum": 150})");
  EXPECT_EQ(run(*age, "16").first, 2u);
  EXPECT_EQ(run(*age, "160").first, 2u);
  EXPECT_EQ(run(*age, "-1").first, 1u);  // ('-' may begin -0)
  // Each bounded number keeps its own bounds, however close (a schema's automata are shared by bounds).
  const auto two = Guide::schema(R"({"type": "object", "properties": {"a": {"type": "integer", "maximum": 1000000.5},
      "b": {"type": "integer", "maximum": 1000001.4}}, "required": ["a", "b"]})");
  EXPECT_EQ(run(*two, R"({"a": 1000000, "b": 1000001})"), std::make_pair(size_t{28}, true));
  EXPECT_EQ(run(*two, R"({"a": 1000001)").first, 12u);
  // In a union the bounded number's first bytes are its own: a string or a non-negative integer.
  const auto u = Guide::schema(R"({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]})");
  EXPECT_EQ(run(*u, "12"), std::make_pair(size_t{2}, true));
  EXPECT_EQ(run(*u, "0").first, 0u);
}

// Tuples (prefixItems, as Pydantic writes tuple[int, str]; before 2020-12 items as an array with additionalItems) and a union of integer and number (as
// Union[int, float]): the expectations are Python's jsonschema's verdicts.
TEST(GuidedSchema, TuplesAndIntegerOrNumber) {
  struct Case {
    const char* schema;
    std::vector<std::pair<std::string, bool>> texts;
  };
  const std::vector<Case> cases = {
      {R"({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "items": false})",
       {{R"([1, "a"])", true}, {"[1]", false}, {R"(["a", 1])", false}, {R"([1, "a", 2])", false}}},
      {R"({"prefixItems": [{"type": "boolean"}], "items": {"type": "null"}})",
       {{"[true, null, null]", true}, {"[]", true}, {"[null]", false}}},
      {R"({"type": ["integer", "number"]})", {{"1.5", true}, {"2", true}}},
      // Before 2020-12 (Draft 7's verdicts): items as an array is the tuple, additionalItems the rest.
      {R"({"type": "array", "items": [{"type": "integer"}, {"type": "string"}], "additionalItems": false})",
       {{R"([1, "a"])", true}, {"[1]", true}, {R"([1, "a", 2])", false}, {R"(["a"])", false}, {"[]", true}}},
      {R"({"type": "array", "items": [{"type": "boolean"}], "additionalItems": {"type": "null"}})",
       {{"[true, null, null]", true}, {"[true, 1]", false}, {"[]", true}}},
      {R"({"type": "array", "items": [{"type": "integer"}]})", {{R"([1, "x", {}])", true}, {R"(["x"])", false}}},
      {R"({"anyOf": [{"type": "integer"}, {"type": "number"}]})", {{"-3.25e2", true}}},
  };
  for (const auto& c : cases) {
    const auto g = Guide::schema(c.schema);
    for (const auto& [text, want] : c.texts) {
      const auto [n, complete] = run(*g, text);
      EXPECT_EQ(n == text.size() && complete, want) << c.schema << " on " << text;
    }
  }
}

// Objects without properties take additionalProperties (Pydantic's Dict[str, int] is such a schema):
// a schema for every value, or false for none. They were guided as any object before. The expectations
// are Python's jsonschema's verdicts.
TEST(GuidedSchema, MapsOfAdditionalProperties) {
  struct Case {
    const char* schema;
    std::vector<std::pair<std::string, bool>> texts;
  };
  const std::vector<Case> cases = {
      {R"({"type": "object", "additionalProperties": {"type": "integer"}})",
       {{R"({"a": 1, "b": 2})", true}, {R"({"a": "x"})", false}, {"{}", true}}},
      {R"({"type": "object", "additionalProperties": false})", {{"{}", true}, {R"({"a": 1})", false}}},
      {R"({"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}})",
       {{R"({"x": [1, 2]})", true}, {R"({"x": [1.5]})", false}}},
  };
  for (const auto& c : cases) {
    const auto g = Guide::schema(c.schema);
    for (const auto& [text, want] : c.texts) {
      const auto [n, complete] = run(*g, text);
      EXPECT_EQ(n == text.size() && complete, want) << c.schema << " on " << text;
    }
  }
  // A key is plain string content (the sampler's fast path); a value is its schema's.
  const auto m = Guide::schema(R"({"type": "object", "additionalProperties": {"type": "integer"}})");
  GuideState s = m->start();
  ASSERT_TRUE(m->feed(s, "{\"ke"));
  EXPECT_TRUE(m->in_plain_string(s));
  ASSERT_TRUE(m->feed(s, "y\": "));
  EXPECT_FALSE(m->in_plain_string(s));
}

// Strings come out as well-formed UTF-8 only: no overlong forms, surrogates, or code points past
// U+10FFFF (Python's bytes.decode refuses each of these).
TEST(GuidedJson, StringsTakeWellFormedUtf8Only) {
  const auto g = Guide::json();
  for (const std::string bad : {"\xe0\x80\x80", "\xed\xa0\x80", "\xf0\x80\x80\x80", "\xf4\x90\x80\x80", "\xc0\xaf"}) {
    const std::string doc = "{\"k\": \"" + bad + "\"}";
    EXPECT_LT(run(*g, doc).first, doc.size()) << "accepted an ill-formed sequence";
  }
  for (const std::string good : {"\xe0\xa0\x80", "\xed\x9f\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", "\xee\x80\x80"}) {
    const std::string doc = "{\"k\": \"" + good + "\"}";
    EXPECT_EQ(run(*g, doc), std::make_pair(doc.size(), true));
  }
  EXPECT_FALSE(plain_string_bytes("\xed\xa0\x80"));
}

TEST(GuidedSchema, StuckOnlyPastTheDeepestLevel) {
  const auto tree = Guide::schema(R"({"type": "object", "properties": {"kid": {"$ref": "#"}}, "required": ["kid"]})");
  GuideState s = tree->start();
  EXPECT_FALSE(tree->stuck(s));
  for (int i = 1; i < kGuideMaxLevels; ++i) {
    ASSERT_TRUE(tree->feed(s, "{\"kid\":")) << i;
    EXPECT_FALSE(tree->stuck(s)) << i;
  }
  // The deepest level's object has its key; its value cannot open another level, and "kid" is
  // required: only whitespace is left, then nothing.
  ASSERT_TRUE(tree->feed(s, "{\"kid\""));
  GuideState colon = s;
  EXPECT_FALSE(tree->feed(colon, ":"));
  ASSERT_TRUE(tree->feed(s, std::string(Guide::kMaxWhitespace, ' ')));
  EXPECT_TRUE(tree->stuck(s));
  EXPECT_FALSE(tree->complete(s));
  EXPECT_FALSE(Guide::json()->stuck(Guide::json()->start()));
}

// vLLM's disable_any_whitespace: no whitespace between tokens (inside strings it is text).
TEST(GuidedSchema, CompactModeTakesNoWhitespace) {
  const auto j = Guide::json(true);
  EXPECT_TRUE(run(*j, R"({"a":[1,{"b":" x "}]})").second);
  EXPECT_EQ(run(*j, R"({ "a":1})").first, 1u);
  EXPECT_EQ(run(*j, R"({"a": 1})").first, 5u);
  EXPECT_NE(j->id(), Guide::json()->id());  // (their allowed-token caches are apart)
  const auto s = Guide::schema(R"({"properties": {"a": {"type": "array", "items": {}}}})", true);
  EXPECT_TRUE(run(*s, R"({"a":[1,"x y",{"k":null}]})").second);
  EXPECT_EQ(run(*s, "\n{}").first, 0u);
  EXPECT_EQ(run(*s, R"({"a" :[]})").first, 4u);
  EXPECT_EQ(run(*s, R"({"a":[1, 2]})").first, 8u);
}

// Schemas whose references fan out or loop compile quickly (each union asked once per question) or are
// refused, never run away.
TEST(GuidedSchema, ReferenceCyclesAndFanOutStayBounded) {
  auto quick = [](const std::string& schema, bool ok) {
    const auto t0 = std::chrono::steady_clock::now();
    if (ok)
      EXPECT_NO_THROW(Guide::schema(schema)) << schema;
    else
      EXPECT_THROW(Guide::schema(schema), Error) << schema;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0) << schema;
  };
  // A union that lists itself twice (a walk without memory takes 2^depth steps to find its first
  // bytes; it is ambiguous, null either way, so refused) - quickly.
  quick(R"({"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/A"}, {"type": "null"}]}}, "$ref": "#/$defs/A"})", false);
  // Recursion through a container: fine.
  const auto g = Guide::schema(R"({"$defs": {"A": {"anyOf": [{"type": "array", "items": {"$ref": "#/$defs/A"}}, {"type": "null"}]}},
      "$ref": "#/$defs/A"})");
  EXPECT_TRUE(run(*g, "[[null, []], null]").second);
  EXPECT_EQ(run(*g, "[7]").first, 1u);
  // Unions that reach each other both ways and can both begin a value with 'n': refused as quickly.
  quick(R"({"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/B"}, {"$ref": "#/$defs/B"}, {"type": "null"}]},
      "B": {"anyOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/A"}, {"type": "boolean"}]}}, "$ref": "#/$defs/A"})", false);
  const auto self = Guide::schema(R"({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"})");  // any value
  EXPECT_TRUE(run(*self, "[1]").second);
  // More nodes than a schema may have: refused.
  std::string big = R"({"type": "array", "items": {"anyOf": [)";
  for (int i = 0; i < kMaxSchemaNodes; ++i) big += (i ? "," : "") + std::string(R"({"type": "array", "items": {"type": "null"}, "maxItems": )") + std::to_string(i) + "}";
  quick(big + "]}}", false);
}

TEST(GuidedSchema, DeeplyNestedSchemaTextIsRefusedBeforeParsing) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  try {
    Guide::schema(deep);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper than"), std::string::npos) << e.what();
  }
}

// A guide after the reasoning (reasoning_parser, as vLLM's structured outputs): any text up to the
// first </think>, then the guide's text; the answer may also be the guided text from its start, unless
// the prompt opened the reasoning. The end of sequence is allowed only once the guided text is whole.
TEST(GuidedAfterThink, AnyReasoningThenTheGuidedText) {
  const auto json = Guide::json();
  const auto g = Guide::after_think(json, false);
  EXPECT_EQ(Guide::after_think(json, false), g);  // (one per guide: its allowed-token cache is shared)
  EXPECT_NE(g->id(), json->id());
  expect_language(*g, {{"<think>\nany text { [ </thin\n</think>\n\n{\"a\": 1}", true},
                       {"{\"a\": 1}", true},
                       {"<think>no end {}", false},
                       {"<think></think>", false},
                       {"<think>x</think>{} after", false}},
                  "json after <think>");
  EXPECT_EQ(run(*g, "<thinking>{}").first, 6u);  // not <think>: JSON from the first byte, which '<' is not
  EXPECT_EQ(run(*g, " <think>").first, 1u);      // (no byte before <think>: a space begins the JSON)
  // </think> in pieces (across tokens), after a '<' that began no tag.
  GuideState s = g->start();
  ASSERT_TRUE(g->feed(s, "<think>a <</th"));
  EXPECT_FALSE(g->complete(s));
  EXPECT_EQ(g->plain_string_room(s), -1);
  ASSERT_TRUE(g->feed(s, "ink>{\"k\""));
  EXPECT_TRUE(g->feed(s, ": 2}"));
  EXPECT_TRUE(g->complete(s));
  // Keys tell the phases apart (the sampler caches allowed tokens by them).
  GuideState a = g->start(), b = g->start();
  ASSERT_TRUE(g->feed(a, "<think>"));
  EXPECT_NE(g->key(a), g->key(b));
  // The prompt opened the reasoning: the answer is reasoning until </think>.
  const auto opened = Guide::after_think(json, true);
  expect_language(*opened, {{"plan</think>{}", true}, {"{}", false}, {"</think>{\"x\": [1]}", true}}, "json after an opened <think>");
  // A schema and a grammar after the reasoning.
  const auto schema = Guide::after_think(Guide::schema(R"({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})"), false);
  expect_language(*schema, {{"<think>n?</think>{\"n\": 3}", true}, {"<think></think>{\"n\": \"x\"}", false}}, "schema after <think>");
  const auto gram = Guide::after_think(Guide::grammar("root ::= \"yes\" | \"no\""), false);
  expect_language(*gram, {{"<think>hmm</think>yes", true}, {"no", true}, {"<think>hmm</think> yes", false}}, "grammar after <think>");
  SamplingParams p;
  p.guided = "json";
  p.guided_after_think = 2;
  EXPECT_EQ(make_guide(p), opened);
}

// Regular expressions (regex_dfa.h): the texts re.fullmatch(pattern, text, re.ASCII) accepts, no
// others (expected values from Python 3.11), every prefix of an accepted text alive, and what Python
// refuses or llmserve cannot guide refused with an Error.
TEST(GuidedRegex, AcceptsWhatPythonsFullmatchAccepts) {
  struct Case {
    const char* pattern;
    std::vector<std::pair<std::string, bool>> texts;
  };
  const std::vector<Case> cases = {
      {"[0-9]{3}-[0-9]{4}", {{"555-1234", true}, {"555-12345", false}, {"55-1234", false}, {"555-123", false}}},
      {"(yes|no|maybe)", {{"yes", true}, {"no", true}, {"maybe", true}, {"ye", false}, {"yesno", false}}},
      {R"(\d+(\.\d+)?)", {{"3", true}, {"3.14", true}, {"3.", false}, {".5", false}, {"\xd9\xa3", false}}},  // (Arabic-Indic 3: not \d in re.ASCII)
      {"[A-Z][a-z]*( [A-Z][a-z]*)*", {{"Hello World", true}, {"Hello world", false}, {"H", true}, {"", false}}},
      {R"((?P<user>\w+)@(?:\w+\.)+[a-z]{2,})", {{"a_b@x.co", true}, {"a@b.c", false}, {"\xc3\xa9@x.com", false}}},
      {R"([^\n]*)", {{"any thing \xe4\xb8\xad \xf0\x9f\x98\x80", true}, {"two\nlines", false}}},
      {"caf\xc3\xa9|\xe4\xb8\xad\xe6\x96\x87|\xf0\x9f\x98\x80+", {{"caf\xc3\xa9", true}, {"\xe4\xb8\xad\xe6\x96\x87", true}, {"\xf0\x9f\x98\x80\xf0\x9f\x98\x80", true}, {"cafe", false}}},
      {"^a{2,3}$", {{"aa", true}, {"aaa", true}, {"aaaa", false}, {"a", false}}},
      {R"(\x41\u00e9[\t ]\s)", {{"A\xc3\xa9 \n", true}, {"A\xc3\xa9\t\t", true}, {"A\xc3\xa9  x", false}}},
  };
  for (const auto& c : cases) expect_language(*Guide::regex(c.pattern), c.texts, c.pattern);
  // A byte is refused as soon as no accepted text continues that way.
  EXPECT_EQ(run(*Guide::regex("[0-9]{3}-[0-9]{4}"), "55x").first, 2u);
  EXPECT_EQ(run(*Guide::regex("(yes|no)"), "nay").first, 1u);
  // Only valid UTF-8 comes out: '.' takes a whole character, never a stray continuation byte.
  EXPECT_EQ(run(*Guide::regex(".."), "\x80").first, 0u);
  EXPECT_EQ(run(*Guide::regex("."), "\xc3\xa9").second, true);
}

TEST(GuidedRegex, RefusesWhatPythonRefusesAndWhatItCannotGuide) {
  for (const char* bad : {"a**", "a{3,2}", "[z-a]", "(a", "a)", R"([\w-z])",  // Python's errors
                          "a(?=b)", R"((a)\1)", "(?i)a", R"(a\b)", "x*+",       // not guided (Python takes them)
                          "(.{0,50}){0,50}", "[^x]{1,1000}", "(a|b)*a(a|b){14}"}) {  // too large
    EXPECT_THROW(Guide::regex(bad), Error) << bad;
  }
  // Deep nesting is refused before the recursive parser could overflow the stack.
  EXPECT_THROW(Guide::regex(std::string(100000, '(') + std::string(100000, ')')), Error);
}

// A request's guide is compiled once: checking it (the server, then the engine) and serving it get
// the same one, even when nothing held it in between.
TEST(GuidedRegex, CheckingAndServingShareOneCompiledGuide) {
  SamplingParams p;
  p.guided = "regex";
  p.guided_schema = "[a-z]{1,40}@[a-z]{1,40}\\.(com|org)";
  const uint64_t first = make_guide(p)->id();  // (ids are never reused, unlike addresses)
  EXPECT_EQ(make_guide(p)->id(), first);
  p.guided_schema = "[0-9]+";
  EXPECT_NE(make_guide(p)->id(), first);
}

// Context-free grammars (grammar.h): each grammar's language as Lark's Earley parser finds it for the
// same grammar, every prefix of an accepted text alive, and a byte refused as soon as no text of the
// language continues it.
TEST(GuidedGrammar, AcceptsTheLanguageAndEveryPrefix) {
  struct Case {
    const char* grammar;
    std::vector<std::pair<std::string, bool>> texts;
  };
  const std::vector<Case> cases = {
      // vLLM's documented example
      {"root ::= select_statement\n"
       "select_statement ::= \"SELECT \" column \" from \" table \" where \" condition\n"
       "column ::= \"col_1 \" | \"col_2 \"\n"
       "table ::= \"table_1 \" | \"table_2 \"\n"
       "condition ::= column \"= \" number\n"
       "number ::= \"1 \" | \"2 \"\n",
       {{"SELECT col_1  from table_2  where col_2 = 1 ", true}, {"SELECT col_3  from table_2  where col_2 = 1 ", false},
        {"SELECT col_1  from table_2  where col_2 = 1", false}}},
      // recursion: nested parentheses
      {"root ::= expr\nexpr ::= term ((\"+\" | \"-\") term)*\nterm ::= [0-9]+ | \"(\" expr \")\"",
       {{"(1+2)-3", true}, {"((12))", true}, {"(1+2", false}, {"1+", false}, {"1++2", false}, {"", false}}},
      // lines, comments, optional parts, empty alternatives
      {"root ::= greeting   # a comment\n   name?\ngreeting ::= \"hi\" | \"hello\"\nname ::= \" \" [A-Z] [a-z]* | \"\"",
       {{"hi", true}, {"hello Ann", true}, {"hello ann", false}, {"hello ", false}}},
      // code points: classes, negation, '.', escapes
      {"root ::= [\xce\xb1-\xcf\x89]+ \"!\" [^\\n]* \"\\n\" . \"\\u00e9\\x41\"",
       {{"\xce\xb1\xce\xb2!x y\n\xe4\xb8\xad\xc3\xa9" "A", true}, {"ab!\nx\xc3\xa9" "A", false}, {"\xce\xb1!\n\n\xc3\xa9" "A", true}}},
      // direct left recursion, as the repetition it stands for (left-associative operators)
      {"root ::= expr\nexpr ::= expr \"+\" term | expr \"-\" term | term\nterm ::= term \"*\" [0-9] | [0-9] | \"(\" expr \")\"",
       {{"1+2*3-4", true}, {"(1-2)*3", true}, {"1", true}, {"1+", false}, {"+1", false}, {"1**2", false}, {"(1+2", false}}},
      {"root ::= list \".\"\nlist ::= list \",\" [a-z]+ | [a-z]+",
       {{"a,bc,d.", true}, {"a.", true}, {"a,.", false}, {",a.", false}}},
      // bounded repetitions
      {"root ::= \"a\"{2,3} [0-9]{1,} (\"x\" | \"y\"){0,2}",
       {{"aa1", true}, {"aaa123xy", true}, {"a1", false}, {"aaaa1", false}, {"aa1xyx", false}}},
  };
  for (const auto& c : cases) expect_language(*Guide::grammar(c.grammar), c.texts, c.grammar);
  // Refused at the first byte no text continues: a wrong keyword, a character outside every class,
  // and the lead byte of a character no class holds (bytes of a character arrive one at a time).
  EXPECT_EQ(run(*Guide::grammar(cases[0].grammar), "SELECT cox").first, 9u);
  EXPECT_EQ(run(*Guide::grammar(cases[1].grammar), "(1+a").first, 3u);
  EXPECT_EQ(run(*Guide::grammar("root ::= [a-z]+"), "ab\xc3\xa9").first, 2u);
  EXPECT_EQ(run(*Guide::grammar("root ::= [a-z\xc3\xa9]+"), "ab\xc3\xa9").first, 4u);
  EXPECT_EQ(run(*Guide::grammar("root ::= .+"), "a\xed\xa0\x80").first, 2u);  // (a surrogate is not UTF-8)
  // A repetition does not grow the stacks (a rule that refers to itself last is left, not nested); nesting
  // does, up to Grammar::kMaxDepth.
  std::string long_text;
  for (int i = 0; i < 4000; ++i) long_text += "a ";
  EXPECT_TRUE(run(*Guide::grammar("root ::= ([a-z] \" \")* \"!\""), long_text + "!").second);
  EXPECT_TRUE(run(*Guide::grammar("root ::= list \"!\"\nlist ::= list [a-z] \" \" | \"\""), long_text + "!").second);  // (left recursion too)
  const auto nest = Guide::grammar(cases[1].grammar);
  EXPECT_TRUE(run(*nest, std::string(500, '(') + "1" + std::string(500, ')')).second);
  EXPECT_LT(run(*nest, std::string(1100, '(') + "1" + std::string(1100, ')')).first, 1100u);
}

TEST(GuidedGrammar, RefusesWhatItCannotTake) {
  const std::pair<std::string, std::string> bad[] = {
      {"root ::= a\na ::= b \"x\" | \"y\"\nb ::= a \"z\"", "left-recursive through rule 'a'"},
      {"root ::= a\na ::= (a \"x\")? \"y\"", "left-recursive through rule 'a'"},
      {"root ::= root | \"y\"", "left-recursive through rule 'root'"},
      {"root ::= root \"x\"", "left-recursive through rule 'root'"},
      {"root ::= root \"x\"? | \"y\"", "left-recursive"},
      {"root ::= (\"a\"?)*", "left-recursive"},
      {"root ::= b", "rule 'b' is used but not defined"},
      {"start ::= \"a\"", "no 'root' rule"},
      {"root: \"a\"", "Lark's"},
      {"root ::= \"a", "without its closing"},
      {"root ::= \"\\q\"", "unknown escape"},
      {"root ::= \"a\"{3,2}", "repetition bounds"},
      {"root ::= [b-a]", "runs backwards"},
      {"root ::= (=\"a\")", "lookahead"},
      {"root ::= \"a\"\nroot ::= \"b\"", "defined twice"},
      {"root ::= " + std::string(200, '(') + "\"a\"" + std::string(200, ')'), "nested more than 100"},
      {"root ::= \"" + std::string(200001, 'a') + "\"", "too large"},
  };
  for (const auto& [g, why] : bad) {
    try {
      Guide::grammar(g);
      ADD_FAILURE() << "taken: " << g;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
  // Requests name it: structured_outputs.grammar and guided_grammar, one kind of guide at a time.
  SamplingParams p;
  sampling_params_from_json(nlohmann::json::parse(R"({"structured_outputs": {"grammar": "root ::= \"yes\" | \"no\""}})"), p);
  EXPECT_EQ(p.guided, "grammar");
  EXPECT_EQ(make_guide(p)->kind(), Guide::Kind::Grammar);
  SamplingParams q;
  EXPECT_THROW(sampling_params_from_json(nlohmann::json::parse(R"({"guided_grammar": "root ::= \"a\"", "guided_regex": "a"})"), q), Error);
  SamplingParams r;  // (checked where every request is: its guide compiled)
  sampling_params_from_json(nlohmann::json::parse(R"({"guided_grammar": "root ::= root \"a\""})"), r);
  EXPECT_THROW(sampling_params_validate(r, 1000), Error);
}
