// Normalizers and pre-tokenizers of tokenizer.json that BPE models use: normalizers NFC, Prepend and
// Replace (a string; SentencePiece-style models' "▁" word marker) and Sequence of them; pre-tokenizers
// Split (regex or string, Isolated or Removed), ByteLevel (optionally with GPT-2's regex and a prefix
// space), Digits, Metaspace (the "▁" marker: prepend_scheme always / first / never, split), Sequence.
// Anything else is rejected at load with an Error naming it.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace llmserve {

class Normalizer {
 public:
  explicit Normalizer(const nlohmann::json& spec);  // null: identity
  std::string apply(std::string_view text) const;

 private:
  struct Step {
    enum class Kind { Nfc, Prepend, Replace } kind;
    std::string a, b;  // Prepend: a; Replace: a -> b
  };
  void add(const nlohmann::json& spec);
  std::vector<Step> steps_;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece further (pieces are UTF-8 strings). `at_start`: the pieces are the text's first
  // segment (no added token before them), which Metaspace's prepend_scheme first marks alone.
  virtual void split(std::vector<std::string>& pieces, bool at_start) const = 0;
  // Builds the tree from tokenizer.json's pre_tokenizer (null: no splitting). Sets *byte_level when
  // a ByteLevel pre-tokenizer is present.
  static std::unique_ptr<PreTokenizer> from_json(const nlohmann::json& spec, bool* byte_level);
};

}  // namespace llmserve
