// Errors that reach the user. Every failure a user can cause (bad config, bad file, bad layout)
// is thrown as llmserve::Error with a message that says what is wrong and where; the CLI prints it
// and exits non-zero, the distributed start-up agrees on it across ranks (dist/collective_check.h).
#pragma once
#include <stdexcept>
#include <string>
#include <sstream>

namespace llmserve {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Builds a message from stream-able parts: throw Error(cat("tensor ", name, " has ", n, " dims")).
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

#define LLMSERVE_CHECK(cond, ...)                                   \
  do {                                                              \
    if (!(cond)) throw ::llmserve::Error(::llmserve::cat(__VA_ARGS__)); \
  } while (0)

}  // namespace llmserve
