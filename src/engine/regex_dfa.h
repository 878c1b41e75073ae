// Regular expressions for guided decoding (vLLM's structured_outputs regex / guided_regex): a pattern
// compiled to a deterministic automaton over UTF-8 bytes that accepts exactly the UTF-8 texts the
// pattern fully matches: Python's re.fullmatch(pattern, text, re.ASCII) (\d is 0-9, \w [A-Za-z0-9_],
// \s [ \t\n\r\f\v], as in xgrammar, vLLM's default backend; other characters are Unicode code points).
//
// Supported: literals; '.' (any character but a newline), classes [...] with ranges, negation and
// \d \w \s inside; \d \D \w \W \s \S; escapes \n \t \r \f \v \a \0 \xhh \uhhhh \Uhhhhhhhh and escaped
// metacharacters; groups (...), (?:...), (?P<name>...) and (?<name>...); alternation; quantifiers * + ?
// {m} {m,} {,n} {m,n} (lazy forms: the same texts); '^' at the start and '$' at the end. Refused with an
// Error naming the construct: backreferences, lookaround, inline flags, \b \B \A \Z, possessive
// quantifiers, and patterns whose automaton would exceed kMaxStates states.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace llmserve {

class RegexDfa {
 public:
  static constexpr int kMaxStates = 10000;  // (1 KB each)
  // Steps of the construction a pattern may take (about a quarter second).
  static constexpr int64_t kMaxWork = 30'000'000;
  // Throws Error for a pattern it cannot take, or whose construction passes max_work steps.
  explicit RegexDfa(const std::string& pattern, int64_t max_work = kMaxWork);
  static constexpr int32_t kDead = -1;
  int32_t start() const { return 0; }
  // The state after byte c, or kDead when no accepted text continues that way.
  int32_t next(int32_t state, unsigned char c) const { return state < 0 ? kDead : next_[static_cast<size_t>(state)][c]; }
  bool accepting(int32_t state) const { return state >= 0 && accept_[static_cast<size_t>(state)]; }
  size_t num_states() const { return next_.size(); }
  int64_t work() const { return work_; }  // the construction's steps
  // The texts this automaton accepts that contain none of the `banned` bytes and are min_chars to
  // max_chars code points long (max_chars < 0: no upper bound). Throws Error when no text is left, or
  // when that automaton needs more than kMaxStates states.
  RegexDfa restricted(const std::array<bool, 256>& banned, int64_t min_chars, int64_t max_chars) const;
  // The texts both automata accept (Error as for restricted).
  RegexDfa intersect(const RegexDfa& other) const;
  // The JSON integer texts (-?(0|[1-9][0-9]*)) of the multiples of k, 1 <= k <= kMaxStates - 3.
  static RegexDfa multiples(int64_t k);

 private:
  RegexDfa() = default;
  // Turns every transition into a state that cannot reach an accepted text into kDead; throws
  // Error(when_empty) when the start state is such a state.
  void prune(const char* when_empty);
  // The automaton over pairs (a state of this one, x) reachable from (start, 0): step(x, byte) is the
  // next pair's x (-1: none), accept(x) whether a pair with an accepting state accepts.
  template <typename Step, typename Accept>
  RegexDfa product(Step step, Accept accept, const char* when_empty) const;
  std::vector<std::array<int32_t, 256>> next_;
  std::vector<char> accept_;
  int64_t work_ = 0;
};

}  // namespace llmserve
