#include "tokenizer/bpe.h"

#include <nlohmann/json.hpp>
#include <algorithm>
#include <cstdio>
#include <queue>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace llmserve {

const std::array<std::string, 256>& byte_to_unicode() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      unicode::append_utf8(t[b], cp);
    }
    return t;
  }();
  return table;
}

int unicode_to_byte(char32_t c) {
  static const std::unordered_map<char32_t, int> rev = [] {
    std::unordered_map<char32_t, int> m;
    for (int b = 0; b < 256; ++b) m[unicode::decode_utf8(byte_to_unicode()[b])[0]] = b;
    return m;
  }();
  auto it = rev.find(c);
  return it == rev.end() ? -1 : it->second;
}

BpeModel::BpeModel(const nlohmann::json& model, bool byte_level) : byte_level_(byte_level) {
  if (model.value("type", "BPE") != "BPE") throw Error(cat("tokenizer: model type ", model.value("type", ""), " is not supported (BPE only)"));
  ignore_merges_ = model.value("ignore_merges", false);
  byte_fallback_ = !byte_level && model.value("byte_fallback", false);
  fuse_unk_ = model.value("fuse_unk", false);
  if (byte_level && model.value("byte_fallback", false))
    throw Error("tokenizer: byte_fallback with a byte-level pre-tokenizer is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty())
      throw Error(cat("tokenizer: BPE ", key, " is not supported"));
  const auto& vocab = model.at("vocab");
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) max_id = std::max(max_id, it.value().get<int32_t>());
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  vocab_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = it.value().get<int32_t>();
    vocab_.emplace(it.key(), id);
    id_to_token_[id] = it.key();
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(byte_to_unicode()[b]);
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto fb = vocab_.find(name);
    fallback_id_[b] = fb == vocab_.end() ? -1 : fb->second;
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) unk_id_ = find(model["unk_token"].get<std::string>());
  const auto& merges = model.at("merges");
  merges_.reserve(merges.size());
  uint64_t rank = 0;
  for (const auto& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const auto sp = s.find(' ', 1);
      if (sp == std::string::npos) throw Error(cat("tokenizer: bad merge '", s, "'"));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      a = m.at(0).get<std::string>();
      b = m.at(1).get<std::string>();
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b), im = vocab_.find(a + b);
    if (ia != vocab_.end() && ib != vocab_.end() && im != vocab_.end()) {
      const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) | static_cast<uint32_t>(ib->second);
      merges_.emplace(key, (rank << 32) | static_cast<uint32_t>(im->second));  // first (lowest) rank wins
    }
    ++rank;
  }
}

int32_t BpeModel::find(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

void BpeModel::char_symbols(std::string_view piece, std::vector<int32_t>& sym) const {
  // As HF tokenizers' BPE::merge_word: a character in the vocabulary is its token; else its bytes'
  // <0xXX> tokens (byte_fallback, when all of them exist); else the unknown token, a run of them one
  // with fuse_unk; a character without any of these is dropped.
  bool unk_pending = false;
  auto flush_unk = [&] {
    if (unk_pending) sym.push_back(unk_id_), unk_pending = false;
  };
  for (size_t i = 0; i < piece.size();) {
    size_t len = 1;
    unicode::utf8_at(piece, i, len);
    const std::string ch(piece.substr(i, len));
    i += len;
    auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      flush_unk();
      sym.push_back(it->second);
      continue;
    }
    if (byte_fallback_ &&
        std::all_of(ch.begin(), ch.end(), [&](char b) { return fallback_id_[static_cast<unsigned char>(b)] >= 0; })) {
      flush_unk();
      for (char b : ch) sym.push_back(fallback_id_[static_cast<unsigned char>(b)]);
      continue;
    }
    if (unk_id_ < 0) continue;
    if (!fuse_unk_) flush_unk();
    unk_pending = true;
  }
  flush_unk();
}

void BpeModel::encode(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (piece.size() <= 64) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(piece, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (piece.size() <= 64) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() > 200000) cache_.clear();
    cache_.emplace(std::string(piece), std::move(ids));
  }
}

void BpeModel::merge_word(std::string_view piece, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    std::string mapped;
    if (byte_level_) {
      for (unsigned char c : piece) mapped += byte_to_unicode()[c];
    } else {
      mapped = piece;
    }
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> sym;
  if (byte_level_) {
    sym.resize(piece.size());
    for (size_t i = 0; i < piece.size(); ++i) {
      sym[i] = byte_id_[static_cast<unsigned char>(piece[i])];
      if (sym[i] < 0) throw Error("tokenizer: the vocabulary lacks a byte-level token");
    }
  } else {
    char_symbols(piece, sym);
  }
  const int n = static_cast<int>(sym.size());
  if (n == 0) return;
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  auto lookup = [&](int i, uint64_t& val) {
    const int j = next[i];
    if (j < 0) return false;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(sym[i])) << 32) | static_cast<uint32_t>(sym[j]);
    auto it = merges_.find(key);
    if (it == merges_.end()) return false;
    val = it->second;
    return true;
  };
  // (rank, position, left id, right id): stale entries are skipped when popped.
  struct Cand {
    uint32_t rank;
    int pos;
    int32_t left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> pq;
  for (int i = 0; i < n; ++i) {
    uint64_t v;
    if (lookup(i, v)) pq.push({static_cast<uint32_t>(v >> 32), i, sym[i], sym[next[i]]});
  }
  while (!pq.empty()) {
    const Cand c = pq.top();
    pq.pop();
    const int i = c.pos;
    if (sym[i] != c.left || next[i] < 0 || sym[next[i]] != c.right) continue;  // stale
    uint64_t v;
    if (!lookup(i, v) || static_cast<uint32_t>(v >> 32) != c.rank) continue;
    const int j = next[i];
    sym[i] = static_cast<int32_t>(v & 0xffffffffu);
    sym[j] = -1;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    if (prev[i] >= 0 && lookup(prev[i], v)) pq.push({static_cast<uint32_t>(v >> 32), prev[i], sym[prev[i]], sym[i]});
    if (lookup(i, v)) pq.push({static_cast<uint32_t>(v >> 32), i, sym[i], sym[next[i]]});
  }
  for (int i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
}

}  // namespace llmserve
