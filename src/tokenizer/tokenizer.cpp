#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "model/model_file.h"
#include "tokenizer/tokenizer_docs.h"
#include "tokenizer/unicode.h"

namespace llmserve {
using json = nlohmann::json;

namespace {

json parse(const std::string& text, const char* what) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(cat("tokenizer: ", what, " is not valid JSON: ", e.what()));
  }
}

// The content of a special-token entry of tokenizer_config.json (a string or {"content": ...}).
std::optional<std::string> token_text(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
  return std::nullopt;
}

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

bool is_word_char(std::string_view s, size_t at_byte_before_or_after, bool before) {
  // Looks at the code point just before (or at) a byte position.
  if (before) {
    if (at_byte_before_or_after == 0) return false;
    const size_t i = unicode::utf8_char_start(s, at_byte_before_or_after - 1);
    const auto u = unicode::decode_utf8(s.substr(i, at_byte_before_or_after - i));
    return !u.empty() && (unicode::is_letter(u[0]) || unicode::is_number(u[0]) || u[0] == '_');
  }
  if (at_byte_before_or_after >= s.size()) return false;
  const auto u = unicode::decode_utf8(s.substr(at_byte_before_or_after, 4));
  return !u.empty() && (unicode::is_letter(u[0]) || unicode::is_number(u[0]) || u[0] == '_');
}

}  // namespace

Tokenizer::Tokenizer(const std::string& tokenizer_json, const std::string& tokenizer_config_json) {
  const json tj = parse(tokenizer_json, "tokenizer.json");
  const json cfg = tokenizer_config_json.empty() ? json::object() : parse(tokenizer_config_json, "tokenizer_config.json");
  try {
    normalizer_ = Normalizer(tj.value("normalizer", json(nullptr)));
    bool byte_level = false;
    pre_ = PreTokenizer::from_json(tj.value("pre_tokenizer", json(nullptr)), &byte_level);
    const json dec = tj.value("decoder", json(nullptr));
    byte_level_decoder_ = dec.is_object() && dec.value("type", "") == "ByteLevel";
    bpe_ = std::make_unique<BpeModel>(tj.at("model"), byte_level);
    if (byte_level != byte_level_decoder_)
      throw Error("a ByteLevel pre-tokenizer and decoder go together (byte-level BPE); one without the other is not supported");
    if (!byte_level) decoder_ = std::make_unique<TokenDecoder>(dec);  // character-level (SentencePiece style)
    vocab_size_ = bpe_->size();
    if (tj.contains("added_tokens")) {
      for (const auto& a : tj["added_tokens"]) {
        AddedToken t;
        t.id = a.at("id").get<int32_t>();
        t.content = a.at("content").get<std::string>();
        t.special = a.value("special", false);
        t.lstrip = a.value("lstrip", false);
        t.rstrip = a.value("rstrip", false);
        t.single_word = a.value("single_word", false);
        if (t.content.empty()) continue;
        vocab_size_ = std::max(vocab_size_, t.id + 1);
        added_.push_back(t);
      }
    }
    std::stable_sort(added_.begin(), added_.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    for (size_t i = 0; i < added_.size(); ++i) {
      added_by_id_[added_[i].id] = i;
      added_by_first_byte_[static_cast<unsigned char>(added_[i].content[0])].push_back(static_cast<uint32_t>(i));
    }

    bos_token_ = token_text(cfg, "bos_token");
    eos_token_ = token_text(cfg, "eos_token");
    if (bos_token_) bos_id_ = token_to_id(*bos_token_);
    // Special tokens added by encode(add_special_tokens=True): the post-processor's template, or the
    // tokenizer_config's add_bos_token / add_eos_token.
    const json post = tj.value("post_processor", json(nullptr));
    auto special = [&](const json& item) {
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      auto id = token_to_id(name);
      if (!id) throw Error(cat("post-processor token '", name, "' is not in the vocabulary"));
      return *id;
    };
    auto take_template = [&](const json& tp) {
      bool seen_a = false;
      for (const auto& item : tp.at("single")) {
        if (item.contains("SpecialToken")) {
          (seen_a ? suffix_ids_ : prefix_ids_).push_back(special(item));
        } else if (item.contains("Sequence")) {
          seen_a = true;
        }
      }
      if (!tp.contains("pair")) return;
      for (const auto& item : tp.at("pair")) {
        if (item.contains("SpecialToken"))
          pair_template_.push_back(special(item));
        else if (item.contains("Sequence"))
          pair_template_.push_back(item["Sequence"].at("id").get<std::string>() == "B" ? kPairB : kPairA);
      }
    };
    if (post.is_object() && post.value("type", "") == "TemplateProcessing") {
      take_template(post);
    } else if (post.is_object() && post.value("type", "") == "Sequence") {
      for (const auto& p : post.at("processors"))
        if (p.value("type", "") == "TemplateProcessing") take_template(p);
    } else {
      if (cfg.value("add_bos_token", false) && bos_id_) prefix_ids_.push_back(*bos_id_);
      if (cfg.value("add_eos_token", false) && eos_token_ && token_to_id(*eos_token_))
        suffix_ids_.push_back(*token_to_id(*eos_token_));
    }
  } catch (const json::exception& e) {
    throw Error(cat("tokenizer: malformed tokenizer.json: ", e.what()));
  } catch (const Error& e) {
    const std::string m = e.what();
    throw Error(m.rfind("tokenizer", 0) == 0 ? m : "tokenizer: " + m);
  }
}

std::unique_ptr<Tokenizer> Tokenizer::from_model_file(const ModelFile& file) { return from_docs(TokenizerDocs::of_model_file(file)); }

std::unique_ptr<Tokenizer> Tokenizer::from_docs(const TokenizerDocs& d) {
  if (!d.tokenizer_json) throw Error(cat(d.origin, " has no tokenizer (convert a checkpoint that has tokenizer.json)"));
  return std::make_unique<Tokenizer>(*d.tokenizer_json, d.tokenizer_config_json.value_or(""));
}

std::optional<int32_t> Tokenizer::token_to_id(const std::string& token) const {
  for (const auto& a : added_)
    if (a.content == token) return a.id;
  const int32_t id = bpe_->find(token);
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  auto it = added_by_id_.find(id);
  if (it != added_by_id_.end()) return added_[it->second].content;
  if (id >= 0 && id < bpe_->size()) return bpe_->token(id);
  return {};
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_[it->second].special;
}

void Tokenizer::encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<std::string> pieces{normalizer_.apply(text)};
  pre_->split(pieces, at_start);
  for (const auto& p : pieces) bpe_->encode(p, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> out;
  if (add_special_tokens) out = prefix_ids_;
  // Split on added tokens: at each position the longest added token that matches wins.
  size_t seg = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (uint32_t k : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& a = added_[k];
      if (a.content.size() > text.size() - i || text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word && (is_word_char(text, i, true) || is_word_char(text, i + a.content.size(), false))) continue;
      hit = &a;
      break;
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t seg_end = i, next = i + hit->content.size();
    if (hit->lstrip)
      while (seg_end > seg && is_ws(text[seg_end - 1])) --seg_end;
    if (hit->rstrip)
      while (next < text.size() && is_ws(text[next])) ++next;
    encode_segment(text.substr(seg, seg_end - seg), seg == 0, out);
    out.push_back(hit->id);
    seg = i = next;
  }
  encode_segment(text.substr(seg), seg == 0, out);
  if (add_special_tokens) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  return out;
}

std::vector<int32_t> Tokenizer::encode_pair(std::string_view a, std::string_view b, bool add_special_tokens) const {
  const std::vector<int32_t> ta = encode(a, false), tb = encode(b, false);
  std::vector<int32_t> out;
  if (add_special_tokens && !pair_template_.empty()) {
    for (int32_t t : pair_template_) {
      if (t == kPairA || t == kPairB)
        out.insert(out.end(), (t == kPairA ? ta : tb).begin(), (t == kPairA ? ta : tb).end());
      else
        out.push_back(t);
    }
    return out;
  }
  for (const auto* t : {&ta, &tb}) {
    if (add_special_tokens) out.insert(out.end(), prefix_ids_.begin(), prefix_ids_.end());
    out.insert(out.end(), t->begin(), t->end());
    if (add_special_tokens) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id, bool skip_special_tokens) const {
  if (skip_special_tokens && is_special(id)) return {};
  const std::string tok = id_to_token(id);
  if (decoder_) return decoder_->continuation(tok);
  // ByteLevel decoder: a token whose every character is a byte-level character becomes those bytes;
  // any other token stays as its own UTF-8 text.
  std::string bytes;
  for (char32_t c : unicode::decode_utf8(tok)) {
    const int b = unicode_to_byte(c);
    if (b < 0) return tok;
    bytes.push_back(static_cast<char>(b));
  }
  return bytes;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  if (decoder_) {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids)
      if (!(skip_special_tokens && is_special(id))) tokens.push_back(id_to_token(id));
    return unicode::utf8_lossy(decoder_->decode(std::move(tokens)));
  }
  std::string bytes;
  for (int32_t id : ids) bytes += token_bytes(id, skip_special_tokens);
  return unicode::utf8_lossy(bytes);
}

const std::string& Tokenizer::token_string(int32_t id) const {
  std::call_once(texts_once_, [&] {
    texts_.resize(static_cast<size_t>(vocab_size_));
    for (int32_t t = 0; t < vocab_size_; ++t) texts_[t] = decode({t}, false);
  });
  LLMSERVE_CHECK(id >= 0 && id < vocab_size_, "token_string: id out of range");
  return texts_[static_cast<size_t>(id)];
}

std::string IncrementalDecoder::add(int32_t id) {
  pending_ += tok_.token_bytes(id, skip_);
  const size_t n = unicode::utf8_stable_prefix(pending_);
  std::string out = unicode::utf8_lossy(std::string_view(pending_).substr(0, n));
  pending_.erase(0, n);
  return out;
}

std::string IncrementalDecoder::finish() {
  std::string out = unicode::utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace llmserve
