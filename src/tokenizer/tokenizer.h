// Hugging Face-compatible BPE tokenizer, built from the tokenizer.json (and tokenizer_config.json)
// stored in the model file: byte-level (GPT-2 style: Qwen, Llama 3, SmolLM2) or character-level with
// byte fallback (SentencePiece style: Llama 2, Mistral, TinyLlama; the "▁" word marker from Prepend /
// Replace normalizers or a Metaspace pre-tokenizer). encode() gives the ids transformers'
// `encode(text, add_special_tokens=...)` gives; added and special tokens written in the text are
// matched as tokens (longest match first, as HF does with split_special_tokens=False). decode()
// gives `decode(ids, skip_special_tokens=...)`.
#pragma once
#include <array>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/pre_tokenizer.h"

namespace llmserve {

class ModelFile;
struct TokenizerDocs;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false, rstrip = false, single_word = false;
};

class Tokenizer {
 public:
  // tokenizer_config_json may be empty.
  Tokenizer(const std::string& tokenizer_json, const std::string& tokenizer_config_json);
  // From the /tokenizer documents of a model file; throws Error when it has none.
  static std::unique_ptr<Tokenizer> from_model_file(const ModelFile& file);
  // From tokenizer documents (tokenizer/tokenizer_docs.h); throws Error when they have no tokenizer.json.
  static std::unique_ptr<Tokenizer> from_docs(const TokenizerDocs& docs);

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // A pair of texts as one sequence (HF's `tokenizer(text=a, text_pair=b)`, what cross-encoders read):
  // with add_special_tokens, the post-processor's pair template, or without one each text's special
  // tokens around it (add_bos_token / add_eos_token, as HF's Llama tokenizers build their pair template);
  // else the two texts' tokens one after the other.
  std::vector<int32_t> encode_pair(std::string_view a, std::string_view b, bool add_special_tokens = true) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
  // The bytes a token contributes to decoded text (empty when skipped as special).
  std::string token_bytes(int32_t id, bool skip_special_tokens) const;
  // decode({id}) for a token id below vocab_size() (a log-probability entry's text), from a table made
  // once, on first use, for the whole vocabulary (thread-safe).
  const std::string& token_string(int32_t id) const;

  int32_t vocab_size() const { return vocab_size_; }
  std::optional<int32_t> token_to_id(const std::string& token) const;
  std::string id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  std::optional<int32_t> bos_id() const { return bos_id_; }
  const std::optional<std::string>& bos_token() const { return bos_token_; }
  const std::optional<std::string>& eos_token() const { return eos_token_; }

 private:
  // `at_start`: the segment begins the text (no added token before it).
  void encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
  std::unique_ptr<BpeModel> bpe_;
  std::unique_ptr<TokenDecoder> decoder_;  // character-level models' decoder chain (null: byte-level)
  Normalizer normalizer_{nlohmann::json()};
  std::unique_ptr<PreTokenizer> pre_;
  bool byte_level_decoder_ = false;
  std::vector<AddedToken> added_;            // sorted by content length, longest first
  std::array<std::vector<uint32_t>, 256> added_by_first_byte_;  // indices into added_, same order
  std::unordered_map<int32_t, size_t> added_by_id_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // added by add_special_tokens
  // The post-processor's pair template: token ids, kPairA / kPairB for the texts (none: no template).
  static constexpr int32_t kPairA = -1, kPairB = -2;
  std::vector<int32_t> pair_template_;
  std::optional<int32_t> bos_id_;
  std::optional<std::string> bos_token_, eos_token_;
  int32_t vocab_size_ = 0;
  mutable std::once_flag texts_once_;
  mutable std::vector<std::string> texts_;  // token_string's table
};

// Streaming decode: add() returns the text that is final once `id` is appended (never half a UTF-8
// character); finish() returns what is left. The concatenation equals decode() of all ids, except that
// a character-level model's text is a continuation (as vLLM's detokenizer, primed with the prompt, makes
// it): its first "▁" stays a space rather than being stripped.
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens) : tok_(tok), skip_(skip_special_tokens) {}
  std::string add(int32_t id);
  std::string finish();

 private:
  const Tokenizer& tok_;
  bool skip_;
  std::string pending_;
};

}  // namespace llmserve
