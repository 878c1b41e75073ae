// A small regular-expression engine over Unicode code points, for the pre-tokenizer patterns of
// tokenizer.json (GPT-2, Llama 3, Qwen2 and similar). Compiled to a backtracking VM with
// leftmost-first (Perl/Oniguruma) semantics. Supports literals and escapes, '.', classes [...] with
// ranges, negation and \p{..}/\P{..} (general categories), \s \S \d \D \w \W (Unicode), groups
// (...), (?:...), (?i:...), lookahead (?=...) and (?!...), alternation, and the quantifiers ? * +
// {m} {m,} {m,n} (greedy or lazy). Anything else is rejected with an Error when compiled.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmserve {

class Regex {
 public:
  explicit Regex(const std::string& pattern);
  // Leftmost match at or after `from`: sets [begin, end) and returns true, or returns false.
  bool search(const std::u32string& text, size_t from, size_t& begin, size_t& end) const;
  const std::string& pattern() const { return pattern_; }

  struct ClassItem {
    enum Kind : uint8_t { Range, Category, Major, Space, Digit, Word } kind;
    bool negated = false;
    char32_t lo = 0, hi = 0;  // Range; Category uses lo as the category; Major uses lo as the letter
  };
  struct CharClass {
    std::vector<ClassItem> items;
    bool negated = false;
    bool icase = false;
    bool matches(char32_t c) const;
  };
  enum class Op : uint8_t { Char, Class, Any, Split, Jmp, Look, Match };
  struct Inst {
    Op op;
    bool icase = false;
    bool negative = false;  // Look: (?!...)
    char32_t c = 0;
    int x = 0, y = 0;  // Split: preferred x, other y; Jmp: x; Class/Look: index
  };

 private:
  bool run(int prog, const std::u32string& text, size_t start, size_t& end) const;
  std::string pattern_;
  std::vector<std::vector<Inst>> progs_;  // progs_[0] is the pattern, others are lookaheads
  std::vector<CharClass> classes_;
  friend class RegexCompiler;
};

}  // namespace llmserve
