// Guided decoding (vLLM's structured outputs): a byte-level recognizer of the text a
// request may produce, which the sampler turns into a mask over the vocabulary each step (a token is
// allowed when its bytes keep the output a prefix of an accepted text; EOS once the text is whole).
//   json:   response_format {"type": "json_object"}: one JSON object (RFC 8259: strings with escapes
//           and UTF-8, numbers, literals, nesting up to kMaxDepth), at most kMaxWhitespace whitespace
//           bytes in a row (a model stuck emitting newlines cannot fill max_tokens with them; none at
//           all in compact mode), nothing after the object;
//   choice: guided_choice: exactly one of the given strings;
//   schema: response_format {"type": "json_schema"} / structured_outputs json / guided_json: one JSON
//           value valid under a schema of the subset src/engine/json_schema.h describes (whitespace
//           as for json, nothing after the value);
//   regex:  structured_outputs regex / guided_regex: a text the pattern fully matches (Python's re
//           syntax, the subset src/engine/regex_dfa.h describes);
//   grammar: structured_outputs grammar / guided_grammar: a text of a context-free grammar (xgrammar's
//           EBNF / llama.cpp's GBNF, src/engine/grammar.h).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llmserve {

class Tokenizer;
struct SamplingParams;

struct JsonSchema;
class RegexDfa;
class Grammar;
struct GrammarState;
constexpr int kGuideMaxLevels = 24;  // how deep a JSON schema's values may nest (json_schema.h)

// A recognizer's position in the output: plain data, copied per candidate token.
struct GuideState {
  bool dead = false;  // a byte was rejected
  // json
  uint8_t mode = 0, sub = 0, ws = 0, utf8 = 0;
  uint16_t depth = 0;
  uint64_t stack[2] = {0, 0};  // bit d: level d is an object (else an array)
  // choice: the candidates choices[lo, hi) share the first `off` bytes, all fed
  int32_t lo = 0, hi = 0, off = 0;
  // schema: the levels being produced, innermost last (a schema node, the level's phase, and the next
  // property's index or the items so far); the keys or enum texts still matching the `off` bytes fed
  // (bit i: candidate i), or a string's characters so far when it has length bounds; the generic JSON
  // fields above for a value of any shape.
  struct Frame {
    int32_t node;
    uint16_t idx;
    uint8_t phase;
  };
  Frame frames[kGuideMaxLevels] = {};
  // Guide::after_think: 1 at the answer's start (<think> matched up to think_at bytes), 2 inside the
  // reasoning (</think> matched up to think_at bytes), 0 in the guided text.
  uint8_t think = 0, think_at = 0;
  uint8_t levels = 0;
  uint64_t cand = 0;
  int32_t rx = 0;  // regex, and a schema's constrained string: the automaton's state
  std::shared_ptr<const GrammarState> gram;  // grammar: the recognizer's state (shared by copies until fed)
};

class Guide {
 public:
  static constexpr int kMaxDepth = 128;
  static constexpr int kMaxWhitespace = 16;
  enum class Kind { Json, Choice, Schema, Regex, Grammar };
  // compact: no whitespace between JSON tokens (vLLM's structured_outputs disable_any_whitespace).
  static std::shared_ptr<const Guide> json(bool compact = false);
  // Throws Error for an empty list or an empty string.
  static std::shared_ptr<const Guide> choice(std::vector<std::string> choices);
  // A JSON schema's text. Throws Error for text that is not JSON or a schema json_schema.h refuses.
  static std::shared_ptr<const Guide> schema(const std::string& schema_json, bool compact = false);
  // A regular expression (regex_dfa.h). Throws Error for a pattern it cannot take.
  static std::shared_ptr<const Guide> regex(const std::string& pattern);
  // A context-free grammar (grammar.h). Throws Error for a grammar it cannot take.
  static std::shared_ptr<const Guide> grammar(const std::string& text);
  // g applied after a reasoning (reasoning_parser, as vLLM's structured outputs): any text up to the
  // first </think>, then g's text. `opened`: the prompt opened the reasoning; else the answer may begin
  // with <think> (no byte before it) or be g's text from the start. Until g's text is whole, the end
  // of sequence is not allowed. (The same guide for the same g and `opened`.)
  static std::shared_ptr<const Guide> after_think(const std::shared_ptr<const Guide>& g, bool opened);

  Kind kind() const { return kind_; }
  // Distinct for every guide made (never reused, unlike an address): with a state, what a cache of the
  // tokens a state allows is keyed on. The JSON guide is one, shared by every request.
  uint64_t id() const { return id_; }
  // A state's bytes as a cache key (equal keys: the state takes exactly the same texts).
  std::string key(const GuideState& s) const;
  GuideState start() const;
  // Feeds the bytes; false (and s.dead) when they leave the accepted texts.
  bool feed(GuideState& s, std::string_view bytes) const;
  // Whether the text fed so far is a whole accepted output (end of sequence allowed).
  bool complete(const GuideState& s) const;
  // Whether no byte continues s (a JSON schema's values nested deeper than kGuideMaxLevels): the
  // sampler then allows the end of sequence rather than no token at all.
  bool stuck(const GuideState& s) const;
  // When s is inside a JSON string between characters, how many characters of plain_string_bytes()
  // text it takes (INT64_MAX: any; such a text is accepted, and leaves s in the same string: the
  // sampler's fast path); else -1.
  int64_t plain_string_room(const GuideState& s) const;
  bool in_plain_string(const GuideState& s) const { return plain_string_room(s) >= 0; }

 private:
  explicit Guide(Kind k);
  bool json_byte(GuideState& s, unsigned char c) const;
  bool choice_byte(GuideState& s, unsigned char c) const;
  bool schema_byte(GuideState& s, unsigned char c) const;
  bool schema_could_end(const GuideState& s) const;
  Kind kind_;
  uint64_t id_;
  uint8_t max_ws_ = kMaxWhitespace;  // whitespace bytes in a row between JSON tokens
  uint8_t think_ = 0;                // after_think: a state's `think` at the start (1 or 2), else 0
  std::vector<std::string> choices_;  // sorted, distinct
  std::shared_ptr<const JsonSchema> schema_;
  std::shared_ptr<const RegexDfa> regex_;
  std::shared_ptr<const Grammar> grammar_;
  std::shared_ptr<const GrammarState> grammar_start_;  // made once
};

// Whether `bytes` may sit inside a JSON string as they are: printable ASCII but '"' and '\', and whole
// well-formed UTF-8 sequences.
bool plain_string_bytes(std::string_view bytes);

// Each token's bytes as the recognizers see them, by id (empty for special tokens: never allowed; the
// end of sequence is allowed by the rule above), whether they are plain_string_bytes, and how many
// characters those hold.
struct GuidedTokens {
  std::vector<std::string> bytes;
  std::vector<char> plain;
  std::vector<int32_t> chars;  // a plain token's characters (code points)
};
std::shared_ptr<const GuidedTokens> guided_tokens(const Tokenizer& tok);
std::shared_ptr<const GuidedTokens> guided_tokens(std::vector<std::string> bytes);
// The request's recognizer (null without guided decoding).
std::shared_ptr<const Guide> make_guide(const SamplingParams& p);

}  // namespace llmserve
