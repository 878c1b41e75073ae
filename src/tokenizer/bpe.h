// Byte-level BPE (GPT-2 style): a piece of text is mapped byte by byte to tokens and adjacent pairs
// are merged by merge rank until no ranked pair remains. Symbols are token ids throughout (every merge
// result is itself in the vocabulary), so a merge is one hash lookup.
#pragma once
#include <array>
#include <cstdint>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace llmserve {

// GPT-2's reversible map from bytes to printable characters (UTF-8 encoded).
const std::array<std::string, 256>& byte_to_unicode();
// The reverse: code point -> byte, or -1.
int unicode_to_byte(char32_t c);

class BpeModel {
 public:
  // Reads model.vocab, model.merges (either "a b" strings or ["a", "b"] pairs) and ignore_merges.
  explicit BpeModel(const nlohmann::json& model);
  // Appends the ids of one pre-tokenized piece (raw bytes).
  void encode(std::string_view piece, std::vector<int32_t>& out) const;
  const std::string& token(int32_t id) const { return id_to_token_[id]; }
  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }
  // Id of a token string as written in the vocabulary, or -1.
  int32_t find(const std::string& token) const;

 private:
  void merge_word(std::string_view piece, std::vector<int32_t>& out) const;
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::array<int32_t, 256> byte_id_{};
  // (left id << 32 | right id) -> (rank << 32 | merged id)
  std::unordered_map<uint64_t, uint64_t> merges_;
  bool ignore_merges_ = false;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace llmserve
