// Small ASCII text helpers shared by the parsers of options, headers and model output.
#pragma once
#include <cctype>
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

}  // namespace llmserve
