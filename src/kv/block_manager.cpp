#include "kv/block_manager.h"

#include <algorithm>

#include "common/error.h"

namespace llmserve {

BlockManager::BlockManager(int64_t num_blocks, int64_t num_host_blocks, int block_size, bool prefix_caching)
    : num_blocks_(num_blocks), block_size_(block_size), caching_(prefix_caching), ref_(num_blocks, 0),
      hash_of_(num_blocks, 0), lru_pos_(num_blocks), in_lru_(num_blocks, false) {
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

void BlockManager::take(int32_t b) {
  if (in_lru_[b]) {
    lru_.erase(lru_pos_[b]);
    in_lru_[b] = false;
  }
  ++ref_[b];
}

uint64_t BlockManager::salt_hash(const std::string& salt) {
  if (salt.empty()) return 0;
  std::vector<int32_t> bytes(salt.begin(), salt.end());
  // (a "block" of the salt's bytes after a parent no token block has: a salted chain never meets an unsalted one)
  return block_hash(0x5a17ull, bytes.data(), static_cast<int>(bytes.size()));
}

std::vector<int32_t> BlockManager::match_prefix(const std::vector<int32_t>& tokens, int64_t max_blocks,
                                                std::vector<uint64_t>& hashes, uint64_t seed) {
  std::vector<int32_t> out;
  hashes.clear();
  if (!caching_) return out;
  queries_ += static_cast<int64_t>(tokens.size());
  uint64_t parent = seed;
  for (int64_t b = 0; b < max_blocks && (b + 1) * block_size_ <= static_cast<int64_t>(tokens.size()); ++b) {
    const int32_t* t = tokens.data() + b * block_size_;
    const uint64_t h = block_hash(parent, t, block_size_);
    auto it = cached_.find(h);
    if (it == cached_.end()) break;
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
      cached_.erase(hash_of_[b]);
      tokens_.erase(b);
      hash_of_[b] = 0;
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
    if (hash_of_[b] != 0) {
      make_evictable(b);
    } else {
      free_.push_back(b);
    }
  }
}

void BlockManager::register_full(int32_t block, uint64_t hash, const int32_t* tokens) {
  if (!caching_ || hash_of_[block] != 0) return;
  if (cached_.count(hash)) return;  // another block already holds these tokens
  cached_[hash] = block;
  hash_of_[block] = hash;
  tokens_[block].assign(tokens, tokens + block_size_);
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
