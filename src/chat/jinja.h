// A Jinja2 template engine for chat templates, configured as transformers renders them:
// trim_blocks and lstrip_blocks on, loop controls (break/continue) on, no autoescape, and the
// globals raise_exception, strftime_now and namespace. Statements: if/elif/else, for (with
// tuple targets, `if` filter, else, loop.*), set (including ns.attr and block set), macro, raw,
// generation, break, continue. Expressions: Python-like literals and operators, attribute and item
// access, slices, calls, filters and tests. A construct it does not know is an Error when the
// template is parsed; an error while rendering (including raise_exception) is an Error too.
#pragma once
#include <memory>
#include <string>

#include "chat/jinja_value.h"

namespace llmserve::jinja {

struct Node;

class Template {
 public:
  explicit Template(const std::string& source);
  ~Template();
  Template(Template&&) noexcept;
  // Renders with the given variables (a dict).
  std::string render(const Dict& variables) const;

 private:
  std::shared_ptr<Node> root_;
};

// Python's str.strip / lstrip / rstrip (Jinja's trim too): Unicode whitespace (str.isspace) or, when
// `chars` is not empty, its code points, taken off the chosen ends.
std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right);

}  // namespace llmserve::jinja
