#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace llmserve {
using json = nlohmann::json;

namespace {

const char* kGpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// Splits a piece at the regex's matches; matches and the gaps between them become pieces
// (behavior Isolated), or only the gaps (Removed).
class RegexSplit : public PreTokenizer {
 public:
  RegexSplit(const std::string& pattern, bool removed, bool invert) : re_(pattern), removed_(removed), invert_(invert) {}
  void split(std::vector<std::string>& pieces, bool at_start) const override {
    std::vector<std::string> out;
    out.reserve(pieces.size() * 2);
    std::vector<size_t> offs;
    for (const auto& p : pieces) {
      const std::u32string u = unicode::decode_utf8(p);
      // Byte offset of every code point (decode_utf8 keeps one code point per sequence).
      offs.assign(u.size() + 1, 0);
      size_t b = 0;
      for (size_t k = 0; k < u.size(); ++k) {
        offs[k] = b;
        b += unicode::utf8_length(u[k]);
      }
      offs[u.size()] = b;
      const bool exact = b == p.size();
      const std::string text = exact ? p : unicode::encode_utf8(u);
      size_t pos = 0, mb, me;
      auto emit = [&](size_t from, size_t to, bool is_match) {
        if (from >= to) return;
        const bool keep = invert_ ? is_match == removed_ : (!removed_ || !is_match);
        if (keep) out.push_back(text.substr(offs[from], offs[to] - offs[from]));
      };
      while (pos < u.size() && re_.search(u, pos, mb, me)) {
        if (me == mb) {  // empty match: step over one character
          emit(pos, mb + 1, false);
          pos = mb + 1;
          continue;
        }
        emit(pos, mb, false);
        emit(mb, me, true);
        pos = me;
      }
      emit(pos, u.size(), false);
    }
    pieces.swap(out);
  }

 private:
  Regex re_;
  bool removed_, invert_;
};

class DigitsSplit : public PreTokenizer {
 public:
  explicit DigitsSplit(bool individual) : individual_(individual) {}
  void split(std::vector<std::string>& pieces, bool at_start) const override {
    std::vector<std::string> out;
    for (const auto& p : pieces) {
      const std::u32string u = unicode::decode_utf8(p);
      std::u32string cur;
      bool cur_digits = false;
      for (char32_t c : u) {
        const bool d = unicode::is_number(c);
        if (!cur.empty() && (d != cur_digits || (d && individual_))) {
          out.push_back(unicode::encode_utf8(cur));
          cur.clear();
        }
        cur.push_back(c);
        cur_digits = d;
      }
      if (!cur.empty()) out.push_back(unicode::encode_utf8(cur));
    }
    pieces.swap(out);
  }

 private:
  bool individual_;
};

class ByteLevelSplit : public PreTokenizer {
 public:
  ByteLevelSplit(bool add_prefix_space, bool use_regex)
      : prefix_(add_prefix_space), regex_(use_regex ? std::make_unique<RegexSplit>(kGpt2Pattern, false, false) : nullptr) {}
  void split(std::vector<std::string>& pieces, bool at_start) const override {
    if (prefix_)
      for (auto& p : pieces)
        if (p.empty() || p[0] != ' ') p.insert(p.begin(), ' ');
    if (regex_) regex_->split(pieces, at_start);
  }

 private:
  bool prefix_;
  std::unique_ptr<RegexSplit> regex_;
};

// SentencePiece's word marker: spaces become the replacement ("▁"), which is prepended to a piece that
// does not begin with it (every piece with prepend_scheme always, the text's first only with first), and
// with split each marker begins a new piece (HF's MergedWithNext).
class MetaspaceSplit : public PreTokenizer {
 public:
  MetaspaceSplit(std::string replacement, std::string scheme, bool split)
      : rep_(std::move(replacement)), scheme_(std::move(scheme)), split_(split) {}
  void split(std::vector<std::string>& pieces, bool at_start) const override {
    std::vector<std::string> out;
    for (size_t k = 0; k < pieces.size(); ++k) {
      std::string p = unicode::replace_all(pieces[k], " ", rep_);
      const bool prepend = scheme_ == "always" || (scheme_ == "first" && at_start && k == 0);
      if (prepend && p.compare(0, rep_.size(), rep_) != 0) p.insert(0, rep_);
      if (!split_) {
        out.push_back(std::move(p));
        continue;
      }
      size_t from = 0;
      for (size_t at = p.find(rep_, 1); at != std::string::npos; at = p.find(rep_, at + rep_.size())) {
        out.push_back(p.substr(from, at - from));
        from = at;
      }
      if (from < p.size()) out.push_back(p.substr(from));
    }
    pieces.swap(out);
  }

 private:
  std::string rep_, scheme_;
  bool split_;
};

class SequenceSplit : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void split(std::vector<std::string>& pieces, bool at_start) const override {
    for (const auto& s : steps) s->split(pieces, at_start);
  }
};

}  // namespace

Normalizer::Normalizer(const json& spec) {
  if (!spec.is_null()) add(spec);
}

void Normalizer::add(const json& spec) {
  const std::string type = spec.value("type", "");
  if (type == "NFC") {
    steps_.push_back({Step::Kind::Nfc, "", ""});
  } else if (type == "Prepend") {
    steps_.push_back({Step::Kind::Prepend, spec.at("prepend").get<std::string>(), ""});
  } else if (type == "Replace") {
    const json& pat = spec.at("pattern");
    if (!pat.contains("String")) throw Error("tokenizer: a Replace normalizer with a regex pattern is not supported (a string only)");
    const std::string from = pat["String"].get<std::string>();
    if (from.empty()) throw Error("tokenizer: a Replace normalizer with an empty pattern");
    steps_.push_back({Step::Kind::Replace, from, spec.at("content").get<std::string>()});
  } else if (type == "Sequence") {
    for (const auto& n : spec.at("normalizers")) add(n);
  } else {
    throw Error(cat("tokenizer: normalizer '", type, "' is not supported (supported: NFC, Prepend, Replace, Sequence)"));
  }
}

std::string Normalizer::apply(std::string_view text) const {
  std::string s(text);
  for (const Step& st : steps_) {
    switch (st.kind) {
      case Step::Kind::Nfc:
        s = unicode::nfc_utf8(s);
        break;
      case Step::Kind::Prepend:  // (HF's: an empty text stays empty)
        if (!s.empty()) s.insert(0, st.a);
        break;
      case Step::Kind::Replace:
        s = unicode::replace_all(s, st.a, st.b);
        break;
    }
  }
  return s;
}

std::unique_ptr<PreTokenizer> PreTokenizer::from_json(const json& spec, bool* byte_level) {
  if (spec.is_null()) return std::make_unique<SequenceSplit>();
  const std::string type = spec.value("type", "");
  if (type == "Sequence") {
    auto seq = std::make_unique<SequenceSplit>();
    for (const auto& s : spec.at("pretokenizers")) seq->steps.push_back(from_json(s, byte_level));
    return seq;
  }
  if (type == "ByteLevel") {
    *byte_level = true;
    return std::make_unique<ByteLevelSplit>(spec.value("add_prefix_space", false), spec.value("use_regex", true));
  }
  if (type == "Digits") return std::make_unique<DigitsSplit>(spec.value("individual_digits", false));
  if (type == "Metaspace") {
    // (tokenizers before 0.19 wrote add_prefix_space instead of prepend_scheme)
    const std::string scheme = spec.value("prepend_scheme", spec.value("add_prefix_space", true) ? "always" : "never");
    if (scheme != "always" && scheme != "first" && scheme != "never")
      throw Error(cat("tokenizer: Metaspace prepend_scheme '", scheme, "' is not supported"));
    return std::make_unique<MetaspaceSplit>(spec.value("replacement", std::string("\u2581")), scheme, spec.value("split", true));
  }
  if (type == "Split") {
    const std::string behavior = spec.value("behavior", "Isolated");
    if (behavior != "Isolated" && behavior != "Removed")
      throw Error(cat("tokenizer: Split behavior '", behavior, "' is not supported (Isolated, Removed)"));
    const json& pat = spec.at("pattern");
    std::string re;
    if (pat.contains("Regex")) {
      re = pat["Regex"].get<std::string>();
    } else {
      // A literal string: escape every character.
      for (char32_t c : unicode::decode_utf8(pat.at("String").get<std::string>())) {
        if (c < 128 && !std::isalnum(static_cast<int>(c))) re.push_back('\\');
        unicode::append_utf8(re, c);
      }
    }
    return std::make_unique<RegexSplit>(re, behavior == "Removed", spec.value("invert", false));
  }
  throw Error(cat("tokenizer: pre-tokenizer '", type, "' is not supported (Sequence, Split, ByteLevel, Digits, Metaspace)"));
}

}  // namespace llmserve
