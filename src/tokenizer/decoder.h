// The decoders of tokenizer.json that character-level (SentencePiece-style) BPE models use, applied as
// Hugging Face tokenizers' decode_chain applies them: Replace (a string), ByteFallback (runs of <0xXX>
// tokens become their bytes when those are UTF-8, else one U+FFFD each), Fuse, Strip, Metaspace (the
// "▁" marker becomes a space, and is dropped from the first token unless prepend_scheme is never) and
// Sequence. Anything else is rejected at load with an Error naming it.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace llmserve {

class TokenDecoder {
 public:
  explicit TokenDecoder(const nlohmann::json& spec);
  // The text of the tokens' strings (special tokens already left out by the caller).
  std::string decode(std::vector<std::string> tokens) const;
  // The bytes a token adds in the middle of a text (a continuation: not the text's first token, so
  // nothing is stripped): the marker as a space, a <0xXX> token as its byte.
  std::string continuation(const std::string& token) const;
  // The byte of a <0xXX> token, else -1.
  static int fallback_byte(const std::string& token);

 private:
  struct Step {
    enum class Kind { Replace, ByteFallback, Fuse, Strip, Metaspace } kind;
    std::string a, b;  // Replace: a -> b; Strip: a the character; Metaspace: a the replacement
    int start = 0, stop = 0;  // Strip
    bool drop_first = false;  // Metaspace: prepend_scheme is not never
  };
  void add(const nlohmann::json& spec);
  std::vector<Step> steps_;
};

}  // namespace llmserve
