// Normalizers and pre-tokenizers of tokenizer.json that byte-level BPE models use:
// normalizers NFC (and Sequence of it); pre-tokenizers Split (regex or string, Isolated or Removed),
// ByteLevel (optionally with GPT-2's regex and a prefix space), Digits, Sequence.
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
  bool nfc_ = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece further (pieces are UTF-8 strings).
  virtual void split(std::vector<std::string>& pieces) const = 0;
  // Builds the tree from tokenizer.json's pre_tokenizer (null: no splitting). Sets *byte_level when
  // a ByteLevel pre-tokenizer is present.
  static std::unique_ptr<PreTokenizer> from_json(const nlohmann::json& spec, bool* byte_level);
};

}  // namespace llmserve
