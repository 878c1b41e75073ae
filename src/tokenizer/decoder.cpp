#include "tokenizer/decoder.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace llmserve {
using json = nlohmann::json;
using unicode::replace_all;

TokenDecoder::TokenDecoder(const json& spec) {
  if (spec.is_null()) throw Error("tokenizer: a character-level BPE model needs a decoder");
  add(spec);
}

void TokenDecoder::add(const json& spec) {
  const std::string type = spec.value("type", "");
  if (type == "Sequence") {
    for (const auto& d : spec.at("decoders")) add(d);
  } else if (type == "Replace") {
    const json& pat = spec.at("pattern");
    if (!pat.contains("String")) throw Error("tokenizer: a Replace decoder with a regex pattern is not supported (a string only)");
    steps_.push_back({Step::Kind::Replace, pat["String"].get<std::string>(), spec.at("content").get<std::string>()});
  } else if (type == "ByteFallback") {
    steps_.push_back({Step::Kind::ByteFallback, "", ""});
  } else if (type == "Fuse") {
    steps_.push_back({Step::Kind::Fuse, "", ""});
  } else if (type == "Strip") {
    Step st{Step::Kind::Strip, spec.at("content").get<std::string>(), ""};
    st.start = spec.value("start", 0);
    st.stop = spec.value("stop", 0);
    steps_.push_back(st);
  } else if (type == "Metaspace") {
    Step st{Step::Kind::Metaspace, spec.value("replacement", std::string("\u2581")), " "};
    const std::string scheme = spec.value("prepend_scheme", spec.value("add_prefix_space", true) ? "always" : "never");
    st.drop_first = scheme != "never";
    steps_.push_back(st);
  } else {
    throw Error(cat("tokenizer: decoder '", type, "' is not supported (ByteLevel; or Replace, ByteFallback, Fuse, Strip, ",
                    "Metaspace and Sequence of them)"));
  }
}

int TokenDecoder::fallback_byte(const std::string& t) {
  // HF's ByteFallback: "<0x" two hexadecimal digits ">".
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = t[static_cast<size_t>(k)];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

std::string TokenDecoder::decode(std::vector<std::string> tokens) const {
  for (const Step& st : steps_) {
    switch (st.kind) {
      case Step::Kind::Replace:
        for (auto& t : tokens) t = replace_all(t, st.a, st.b);
        break;
      case Step::Kind::Metaspace:
        for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = replace_all(tokens[i], st.a, i == 0 && st.drop_first ? "" : " ");
        break;
      case Step::Kind::ByteFallback: {
        std::vector<std::string> out;
        std::string bytes;
        size_t run = 0;
        auto flush = [&] {
          if (run == 0) return;
          if (unicode::is_utf8(bytes)) {
            out.push_back(bytes);
          } else {
            for (size_t k = 0; k < run; ++k) out.push_back("\xEF\xBF\xBD");
          }
          bytes.clear();
          run = 0;
        };
        for (auto& t : tokens) {
          const int b = fallback_byte(t);
          if (b >= 0) {
            bytes.push_back(static_cast<char>(b));
            ++run;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens.swap(out);
        break;
      }
      case Step::Kind::Fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case Step::Kind::Strip:
        for (auto& t : tokens) {
          size_t from = 0, to = t.size();
          for (int k = 0; k < st.start && t.compare(from, st.a.size(), st.a) == 0; ++k) from += st.a.size();
          for (int k = 0; k < st.stop && to >= from + st.a.size() && t.compare(to - st.a.size(), st.a.size(), st.a) == 0; ++k)
            to -= st.a.size();
          t = t.substr(from, to - from);
        }
        break;
    }
  }
  std::string text;
  for (const auto& t : tokens) text += t;
  return text;
}

std::string TokenDecoder::continuation(const std::string& token) const {
  std::string t = token;
  for (const Step& st : steps_) {
    if (st.kind == Step::Kind::Replace) t = replace_all(t, st.a, st.b);
    if (st.kind == Step::Kind::Metaspace) t = replace_all(t, st.a, " ");
    if (st.kind == Step::Kind::ByteFallback) {
      const int b = fallback_byte(t);
      if (b >= 0) t = std::string(1, static_cast<char>(b));
    }
  }
  return t;
}

}  // namespace llmserve
