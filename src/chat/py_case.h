// Python's string case operations, which chat templates reach through Jinja2 (the lower, upper,
// title and capitalize filters and str methods, the lower and upper tests, and the case-insensitive
// sort keys): full Unicode mappings ('ß'.upper() is "SS"), Greek final sigma, and Python's own rules
// for title() and capitalize(). Tables from scripts/gen_case_tables.py (the generating Python's
// Unicode version: unicode_version()).
#pragma once
#include <string>
#include <string_view>

namespace llmserve::pycase {

std::string lower(std::string_view s);       // str.lower()
std::string upper(std::string_view s);       // str.upper()
std::string title(std::string_view s);       // str.title()
std::string capitalize(std::string_view s);  // str.capitalize()
std::string swapcase(std::string_view s);    // str.swapcase()
bool islower(std::string_view s);            // str.islower()
bool isupper(std::string_view s);            // str.isupper()
const char* unicode_version();

}  // namespace llmserve::pycase
