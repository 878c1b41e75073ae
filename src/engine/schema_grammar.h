// A compiled JSON schema (json_schema.h) as a context-free grammar (grammar.h) that accepts the same
// texts: the way a schema is guided when its anyOf / oneOf alternatives cannot be told apart by a
// value's first byte (or, for objects, by a first property's const value), as Pydantic's unions of
// models: the grammar's recognizer follows every alternative that the text so far allows, where the
// schema's own recognizer follows one. Whitespace between tokens is bounded as there (max_ws bytes in a
// row: 16, or 0 in compact mode); patterns, formats and number bounds become rules, one per automaton
// state (over code points).
#pragma once
#include <cstddef>
#include <string>

namespace llmserve {

struct JsonSchema;

// The grammar's text (its start rule `root`). Throws Error for what a grammar here cannot hold: an
// array with more than kMaxGrammarItems items counted (maxItems, minItems, prefixItems), a string's
// length bounds past kMaxGrammarChars (a pattern's or format's are inside its automaton: no limit).
constexpr int kMaxGrammarItems = 1000;
constexpr int kMaxGrammarChars = 10000;
constexpr size_t kMaxGrammarText = size_t{16} << 20;  // the grammar's text (checked after each schema node)
std::string json_schema_grammar(const JsonSchema& schema, int max_ws);

}  // namespace llmserve
