#include "kv/block_manager.h"

#include <algorithm>
#include <cstring>

#ifdef LLMSERVE_TLS
#include <openssl/evp.h>
#endif

#include "common/error.h"

namespace llmserve {

int64_t peak_blocks(int64_t total, int block_size, int64_t window, int64_t step) {
  const int64_t all = (total + block_size - 1) / block_size;
  if (window <= 0) return all;
  // A step of c tokens from position p holds the blocks of positions p - window + 1 .. p + c - 1:
  // window + c - 1 positions, over at most (window + c - 2) / block_size + 2 blocks.
  return std::min(all, (window + std::min(step, total) - 2) / block_size + 2);
}

PrefixHash parse_prefix_hash(const std::string& name) {
  if (name == "builtin") return PrefixHash::Builtin;
  if (name == "sha256") {
#ifdef LLMSERVE_TLS
    return PrefixHash::Sha256;
#else
    throw Error("prefix_caching_hash_algo sha256 needs a build with OpenSSL (Debian: libssl-dev)");
#endif
  }
  throw Error(cat("prefix_caching_hash_algo must be builtin or sha256, got '", name, "'"));
}

BlockManager::BlockManager(int64_t num_blocks, int64_t num_host_blocks, int block_size, bool prefix_caching,
                           PrefixHash algo)
    : num_blocks_(num_blocks), block_size_(block_size), caching_(prefix_caching), algo_(algo), ref_(num_blocks, 0),
      hash_of_(num_blocks), lru_pos_(num_blocks), in_lru_(num_blocks, false) {
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
  for (int64_t b = num_host_blocks - 1; b >= 0; --b) host_free_.push_back(static_cast<int32_t>(b));
}

uint64_t BlockManager::block_hash(uint64_t parent, const int32_t* tokens, int n) {
  // FNV-1a over the parent hash and the tokens, finished with a 64-bit mix; never 0.
  uint64_t h = 0xcbf29ce484222325ull ^ parent;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  mix(parent);
  for (int i = 0; i < n; ++i) mix(static_cast<uint32_t>(tokens[i]));
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h == 0 ? 1 : h;
}

BlockHash BlockManager::chain(const BlockHash& parent, const int32_t* tokens, int n, uint32_t domain) const {
  BlockHash h;
  if (algo_ == PrefixHash::Builtin) {
    h.w[0] = block_hash(parent.w[0] ^ domain, tokens, n);
    return h;
  }
#ifdef LLMSERVE_TLS
  // SHA-256 of: the domain (4 bytes), the parent's digest (32 bytes, zeros for none), the tokens (4 bytes
  // each); all little-endian as the host stores them (every rank of a run hashes alike).
  static_assert(sizeof(h.w) == 32, "a SHA-256 digest");
  unsigned char digest[32];
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1 &&
                  EVP_DigestUpdate(ctx, &domain, sizeof domain) == 1 &&
                  EVP_DigestUpdate(ctx, parent.w.data(), sizeof(parent.w)) == 1 &&
                  EVP_DigestUpdate(ctx, tokens, sizeof(int32_t) * static_cast<size_t>(n)) == 1 &&
                  EVP_DigestFinal_ex(ctx, digest, &len) == 1 && len == sizeof digest;
  EVP_MD_CTX_free(ctx);
  if (!ok) throw Error("prefix cache: SHA-256 failed (OpenSSL)");
  std::memcpy(h.w.data(), digest, sizeof digest);
  if (h.none()) h.w[0] = 1;  // (never "none")
#else
  throw Error("prefix cache: sha256 needs a build with OpenSSL");
#endif
  return h;
}

BlockHash BlockManager::adapter_hash(const BlockHash& seed, uint64_t uid) const {
  const int32_t key[2] = {static_cast<int32_t>(uid & 0xffffffffu), static_cast<int32_t>(uid >> 32)};
  return chain(seed, key, 2, 0x10ba0000u);
}

void BlockManager::take(int32_t b) {
  if (in_lru_[b]) {
    lru_.erase(lru_pos_[b]);
    in_lru_[b] = false;
  }
  ++ref_[b];
}

BlockHash BlockManager::salt_hash(const std::string& salt) const {
  if (salt.empty()) return {};
  std::vector<int32_t> bytes(salt.begin(), salt.end());
  // (a "block" of the salt's bytes in a domain of its own: a salted chain never meets an unsalted one)
  return chain({}, bytes.data(), static_cast<int>(bytes.size()), 0x5a17u);
}

std::vector<int32_t> BlockManager::match_prefix(const std::vector<int32_t>& tokens, int64_t max_blocks,
                                                std::vector<BlockHash>& hashes, const BlockHash& seed) {
  std::vector<int32_t> out;
  hashes.clear();
  if (!caching_) return out;
  queries_ += static_cast<int64_t>(tokens.size());
  BlockHash parent = seed;
  for (int64_t b = 0; b < max_blocks && (b + 1) * block_size_ <= static_cast<int64_t>(tokens.size()); ++b) {
    const int32_t* t = tokens.data() + b * block_size_;
    const BlockHash h = chain(parent, t, block_size_);
    auto it = cached_.find(h.w[0]);
    if (it == cached_.end() || hash_of_[it->second] != h) break;
    const auto& stored = tokens_[it->second];
    if (!std::equal(stored.begin(), stored.end(), t)) break;  // hash collision: not a hit
    take(it->second);
    out.push_back(it->second);
    hashes.push_back(h);
    parent = h;
  }
  hits_ += static_cast<int64_t>(out.size()) * block_size_;
  return out;
}

std::vector<int32_t> BlockManager::allocate(int64_t n) {
  if (n > num_available())
    throw Error(cat("KV cache: ", n, " blocks needed, ", num_available(), " of ", num_blocks_, " available"));
  std::vector<int32_t> out;
  out.reserve(n);
  while (static_cast<int64_t>(out.size()) < n) {
    int32_t b;
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    } else {
      b = lru_.front();  // evict the least recently used cached block
      lru_.pop_front();
      in_lru_[b] = false;
      cached_.erase(hash_of_[b].w[0]);
      tokens_.erase(b);
      hash_of_[b] = BlockHash{};
    }
    ref_[b] = 1;
    out.push_back(b);
  }
  return out;
}

void BlockManager::make_evictable(int32_t b) {
  lru_.push_back(b);
  lru_pos_[b] = std::prev(lru_.end());
  in_lru_[b] = true;
}

void BlockManager::release(const std::vector<int32_t>& blocks) {
  // Later blocks of a sequence are evicted first: release in reverse so its prefix stays longest.
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    const int32_t b = *it;
    if (b < 0 || b >= num_blocks_ || ref_[b] <= 0) throw Error(cat("KV cache: releasing block ", b, " twice"));
    if (--ref_[b] > 0) continue;
    if (!hash_of_[b].none()) {
      make_evictable(b);
    } else {
      free_.push_back(b);
    }
  }
}

void BlockManager::register_full(int32_t block, const BlockHash& hash, const int32_t* tokens) {
  if (!caching_ || !hash_of_[block].none()) return;
  if (cached_.count(hash.w[0])) return;  // another block already holds these tokens (or the first word)
  cached_[hash.w[0]] = block;
  hash_of_[block] = hash;
  tokens_[block].assign(tokens, tokens + block_size_);
}

int64_t BlockManager::reset_cache() {
  const auto n = static_cast<int64_t>(cached_.size());
  for (int32_t b : lru_) {
    in_lru_[b] = false;
    free_.push_back(b);
  }
  lru_.clear();
  for (auto& h : hash_of_) h = BlockHash{};
  cached_.clear();
  tokens_.clear();
  return n;
}

std::vector<int32_t> BlockManager::allocate_host(int64_t n) {
  if (n > num_host_available()) throw Error("KV cache: swap space exhausted");
  std::vector<int32_t> out(host_free_.end() - n, host_free_.end());
  host_free_.resize(host_free_.size() - n);
  return out;
}

void BlockManager::release_host(const std::vector<int32_t>& blocks) {
  for (int32_t b : blocks)
    if (b >= 0) host_free_.push_back(b);
}

}  // namespace llmserve
