// JSON numbers within bounds for guided decoding (a schema's minimum, maximum, exclusiveMinimum and
// exclusiveMaximum, json_schema.h): an automaton over the number's text.
#pragma once
#include <optional>

#include "engine/regex_dfa.h"

namespace llmserve {

struct NumberBounds {
  std::optional<double> lo, hi;  // none: unbounded
  bool lo_strict = false, hi_strict = false;
};

// The texts of the JSON numbers within the bounds that a validator comparing in doubles (as Python's
// jsonschema does) finds within them too: integers (integer) or numbers without an exponent and with
// at most 6 fraction digits, each compared exactly against the bounds brought inward to what such a
// text can hold (a strict bound first moved to the next double inside it). Throws Error for bounds past
// +-2^53 and for bounds that leave no such number.
RegexDfa number_range_dfa(bool integer, const NumberBounds& b);

}  // namespace llmserve
