// Small ASCII text helpers shared by the parsers of options, headers and model output.
#pragma once
#include <cctype>
#include <cstdlib>
#include <string>
#include <string_view>

namespace llmserve {

// s with ASCII letters lowered (other bytes, UTF-8 included, unchanged).
inline std::string ascii_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// s without leading and trailing spaces, tabs and line ends.
inline std::string trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return "";
  return std::string(s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1));
}

// vLLM's reading of a boolean environment variable: "1" or "true" (any case, spaces around) is set.
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return false;
  const std::string s = ascii_lower(trim(v));
  return s == "1" || s == "true";
}

}  // namespace llmserve
