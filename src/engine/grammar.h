// A context-free grammar for guided decoding (vLLM's structured_outputs.grammar / guided_grammar), in
// the EBNF that vLLM's default backend (xgrammar) and llama.cpp (GBNF) read:
//   root ::= "SELECT " column " FROM " table   # a comment
//   column ::= [a-z_]+ | "*"
// Rules `name ::= alternatives` (names of letters, digits, `_` and `-`; a rule may span lines, and ends
// where the next `name ::=` begins); `root` is where the text starts. Elements: string literals "..."
// (escapes \n \r \t \\ \" \' \[ \] \- \xHH \uHHHH \UHHHHHHHH), character classes [a-z0-9_] and [^...]
// (over code points), `.` (any character), rule names, groups ( ), and the repetitions *, +, ?, {m},
// {m,} and {m,n} (up to 1,000). A rule's direct left recursion (`expr ::= expr "+" term | term`) is
// rewritten as the repetition it stands for (`term ("+" term)*`). Refused with an Error naming the place:
// other syntax (Lark's `:` rules, lookahead), an undefined or missing root rule, other left recursion (a
// rule that can reach itself through others, or a group, before consuming a character), and grammars past
// kMaxElements.
//
// Recognition is llama.cpp's: a state (GrammarState) is advanced one code point at a time; bytes of a
// code point are gathered first, and a partial one is refused as soon as no class can hold a code
// point it begins.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace llmserve {

// A recognizer state: the set of stacks of positions in the rules' alternatives that the text so far
// leaves open (each stack's top is a character class to match next; an empty stack means the text may
// end here), and a code point whose bytes are still arriving.
struct GrammarState {
  std::vector<std::vector<int32_t>> stacks;  // sorted, distinct; positions in the grammar's elements, top last
  uint32_t partial = 0;     // the code point's bits so far
  uint32_t lo = 0, hi = 0;  // and the code points it may still become
  uint8_t need = 0;         // its continuation bytes still to come
};

class Grammar {
 public:
  static constexpr size_t kMaxElements = 200000;  // elements of all rules, after repetitions are spelled out
  static constexpr size_t kMaxStacks = 1024;      // a state's stacks (ambiguity): a text needing more is refused
  static constexpr size_t kMaxDepth = 1024;       // a stack's frames (nesting), and rules entered at once

  using State = GrammarState;

  // Throws Error for text it cannot take (see above).
  explicit Grammar(const std::string& text);
  State start() const;
  // The state after one more byte; false (s unchanged) when the byte leaves the grammar's texts.
  bool feed(State& s, unsigned char byte) const;
  // Whether the text fed so far is a whole text of the grammar.
  static bool complete(const State& s) { return s.need == 0 && !s.stacks.empty() && s.stacks.front().empty(); }
  // The state's bytes as a cache key.
  static void key(const State& s, std::string& out);

 private:
  enum class Kind : uint8_t { End, Ref, Chars };
  struct Element {
    Kind kind;
    int32_t value;  // Ref: the rule; Chars: the class
  };
  struct CharClass {
    std::vector<std::pair<uint32_t, uint32_t>> ranges;  // inclusive, sorted, merged
    bool negated = false;
  };
  struct Parser;
  bool matches(int32_t cls, uint32_t cp) const;
  bool meets(int32_t cls, uint32_t lo, uint32_t hi) const;  // whether some code point in [lo, hi] matches
  // The stacks `stack` stands for with every top a character class (or empty): rule references
  // expanded, finished alternatives popped. False when kMaxStacks or kMaxDepth would be passed.
  bool expand(std::vector<int32_t>& stack, std::vector<std::vector<int32_t>>& out, size_t depth = 0) const;
  // The stacks after code point cp (false when none takes it, or when there would be too many).
  bool advance(const std::vector<std::vector<int32_t>>& stacks, uint32_t cp, std::vector<std::vector<int32_t>>& next) const;
  std::vector<Element> elems_;               // each alternative's elements, then an End
  std::vector<std::vector<int32_t>> alts_;   // per rule: where its alternatives start in elems_
  std::vector<CharClass> classes_;
  int32_t root_ = -1;
};

}  // namespace llmserve
