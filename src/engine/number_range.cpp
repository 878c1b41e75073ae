#include "engine/number_range.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/error.h"

namespace llmserve {
namespace {

constexpr int kFractionDigits = 6;

// A decimal's magnitude: integer digits (no leading zeros; "0" for none) and fraction digits (no
// trailing zeros).
struct Mag {
  std::string ip, fp;
};

// Adds one to a string of decimal digits.
std::string plus_one(std::string d) {
  int i = static_cast<int>(d.size()) - 1;
  while (i >= 0 && d[static_cast<size_t>(i)] == '9') d[static_cast<size_t>(i--)] = '0';
  if (i < 0) return "1" + d;
  ++d[static_cast<size_t>(i)];
  return d;
}

// Subtracts one from a string of decimal digits that is not "0".
std::string minus_one(std::string d) {
  int i = static_cast<int>(d.size()) - 1;
  while (d[static_cast<size_t>(i)] == '0') d[static_cast<size_t>(i--)] = '9';
  --d[static_cast<size_t>(i)];
  const size_t nz = d.find_first_not_of('0');
  return nz == std::string::npos ? "0" : d.substr(nz);
}

// |v| rounded to `digits` fraction digits, up or down (the exact decimal expansion of the double).
Mag rounded(double v, int digits, bool up) {
  std::vector<char> buf(1200);
  std::snprintf(buf.data(), buf.size(), "%.1100f", std::fabs(v));
  const std::string s(buf.data());
  const size_t dot = s.find('.');
  std::string ip = s.substr(0, dot), fp = s.substr(dot + 1);
  const bool rest = fp.find_first_not_of('0', static_cast<size_t>(digits)) != std::string::npos;
  fp.resize(static_cast<size_t>(digits));
  if (rest && up) {  // the last kept digit up by one, carried into the integer part
    std::string all = plus_one(ip + fp);
    ip = all.substr(0, all.size() - fp.size()), fp = all.substr(all.size() - fp.size());
  }
  while (!fp.empty() && fp.back() == '0') fp.pop_back();
  const size_t nz = ip.find_first_not_of('0');
  return {nz == std::string::npos ? "0" : ip.substr(nz), fp};
}

// Digit strings (no leading zeros) of equal length from a to b, a <= b.
std::string same_length(const std::string& a, const std::string& b) {
  if (a.empty()) return "";
  if (a[0] == b[0]) return std::string(1, a[0]) + same_length(a.substr(1), b.substr(1));
  const size_t n = a.size() - 1;
  const std::string any = n ? "\\d{" + std::to_string(n) + "}" : "";
  if (a.find_first_not_of('0', 1) == std::string::npos && b.find_first_not_of('9', 1) == std::string::npos)
    return std::string("[") + a[0] + "-" + b[0] + "]" + any;
  std::vector<std::string> alts = {std::string(1, a[0]) + "(?:" + same_length(a.substr(1), std::string(n, '9')) + ")"};
  if (a[0] + 1 <= b[0] - 1) alts.push_back(std::string("[") + static_cast<char>(a[0] + 1) + "-" + static_cast<char>(b[0] - 1) + "]" + any);
  alts.push_back(std::string(1, b[0]) + "(?:" + same_length(std::string(n, '0'), b.substr(1)) + ")");
  std::string r;
  for (const auto& x : alts) r += (r.empty() ? "(?:" : "|") + x;
  return r + ")";
}

// Integers (digit strings without leading zeros) from a to b, a <= b.
std::string int_range(const std::string& a, const std::string& b) {
  std::string r;
  for (size_t n = a.size(); n <= b.size(); ++n) {
    const std::string lo = n == a.size() ? a : "1" + std::string(n - 1, '0');
    const std::string hi = n == b.size() ? b : std::string(n, '9');
    r += (r.empty() ? "(?:" : "|(?:") + same_length(lo, hi) + ")";
  }
  return r;
}

// Integers from a up.
std::string int_at_least(const std::string& a) {
  return int_range(a, std::string(a.size(), '9')) + "|[1-9]\\d{" + std::to_string(a.size()) + ",}";
}

const char* const kAnyMagnitude = R"((?:0|[1-9]\d*)(?:\.\d+)?)";
const char* const kAnyFraction = R"((?:\.\d+)?)";

// ".F" (or nothing: 0) with 0.F >= 0.fp, and <= 0.fp.
std::string fraction_at_least(const std::string& fp) {
  if (fp.empty()) return kAnyFraction;
  std::string r;
  for (size_t j = 0; j < fp.size(); ++j)
    if (fp[j] < '9') r += "|\\." + fp.substr(0, j) + "[" + static_cast<char>(fp[j] + 1) + "-9]\\d*";
  return "(?:\\." + fp + "\\d*" + r + ")";
}
std::string fraction_at_most(const std::string& fp) {
  if (fp.empty()) return "(?:\\.0+)?";
  std::string r = "(?:\\." + fp + "0*";
  for (size_t j = 0; j < fp.size(); ++j) {
    if (j > 0) r += "|\\." + fp.substr(0, j);
    if (fp[j] > '0') r += "|\\." + fp.substr(0, j) + "[0-" + static_cast<char>(fp[j] - 1) + "]\\d*";
  }
  return r + ")?";
}

// Magnitudes (unsigned number texts) >= m and <= m.
std::string magnitude_at_least(const Mag& m) {
  return "(?:" + m.ip + fraction_at_least(m.fp) + "|(?:" + int_at_least(plus_one(m.ip)) + ")" + kAnyFraction + ")";
}
std::string magnitude_at_most(const Mag& m) {
  std::string r = "(?:" + m.ip + fraction_at_most(m.fp);
  if (m.ip != "0") r += "|(?:" + int_range("0", minus_one(m.ip)) + ")" + kAnyFraction;
  return r + ")";
}

bool is_zero(const Mag& m) { return m.ip == "0" && m.fp.empty(); }

}  // namespace

RegexDfa number_range_dfa(bool integer, const NumberBounds& b) {
  const int digits = integer ? 0 : kFractionDigits;
  RegexDfa dfa(integer ? R"(-?(?:0|[1-9]\d*))" : R"(-?(?:0|[1-9]\d*)(?:\.\d{1,6})?)");
  for (int side = 0; side < 2; ++side) {
    const std::optional<double>& bound = side == 0 ? b.lo : b.hi;
    if (!bound) continue;
    double v = *bound;
    if (!std::isfinite(v) || std::fabs(v) > 9007199254740992.0) throw Error("bounds past +-2^53 are not supported");
    const bool lower = side == 0;
    if (lower ? b.lo_strict : b.hi_strict) v = std::nextafter(v, lower ? INFINITY : -INFINITY);
    // Inward to what a text here can hold: a lower bound up, an upper one down (toward the inside
    // whatever the sign: a negative bound's magnitude goes the other way).
    const bool negative = v < 0;
    const Mag m = rounded(v, digits, lower != negative);
    std::string pattern;
    if (lower)
      pattern = negative || is_zero(m) ? std::string(kAnyMagnitude) + "|-" + magnitude_at_most(m) : magnitude_at_least(m);
    else
      pattern = negative && !is_zero(m) ? "-" + magnitude_at_least(m) : std::string("-") + kAnyMagnitude + "|" + magnitude_at_most(m);
    dfa = dfa.intersect(RegexDfa(pattern));
  }
  return dfa;
}

}  // namespace llmserve
