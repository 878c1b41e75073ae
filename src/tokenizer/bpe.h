// BPE as Hugging Face tokenizers runs it. Byte-level (GPT-2 style): a piece of text is mapped byte by
// byte to tokens. Character-level (SentencePiece style: Llama 2, Mistral): each character is its own
// token, or with byte_fallback its UTF-8 bytes' <0xXX> tokens, or the unknown token (a run of them one
// with fuse_unk). Adjacent pairs are then merged by merge rank until no ranked pair remains. Symbols are
// token ids throughout (every merge result is itself in the vocabulary), so a merge is one hash lookup.
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
  // Reads model.vocab, model.merges (either "a b" strings or ["a", "b"] pairs), ignore_merges, and for
  // character-level models byte_fallback, unk_token and fuse_unk.
  BpeModel(const nlohmann::json& model, bool byte_level);
  // Appends the ids of one pre-tokenized piece (raw bytes).
  void encode(std::string_view piece, std::vector<int32_t>& out) const;
  const std::string& token(int32_t id) const { return id_to_token_[id]; }
  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }
  // Id of a token string as written in the vocabulary, or -1.
  int32_t find(const std::string& token) const;

 private:
  void merge_word(std::string_view piece, std::vector<int32_t>& out) const;
  // The starting symbols of a character-level piece (characters, byte fallback, unknown).
  void char_symbols(std::string_view piece, std::vector<int32_t>& sym) const;
  bool byte_level_ = true, byte_fallback_ = false, fuse_unk_ = false;
  int32_t unk_id_ = -1;
  std::array<int32_t, 256> fallback_id_{};  // <0xXX> tokens (character-level), or -1
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
