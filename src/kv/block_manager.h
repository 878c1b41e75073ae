// KV block accounting on rank 0 (every rank's cache uses the same block ids). Blocks are free,
// in use (reference counted), or cached: full blocks keep a hash of their tokens chained with their
// prefix's hash, so a new sequence with the same prefix reuses them (automatic prefix caching).
// Cached blocks nobody uses stay evictable in LRU order and are reclaimed only when the free list
// is empty. A host pool holds blocks swapped out by preemption.
#pragma once
#include <cstdint>
#include <list>
#include <unordered_map>
#include <string>
#include <vector>

namespace llmserve {

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int64_t num_host_blocks, int block_size, bool prefix_caching);

  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  // Blocks an allocation can take now (free, or cached and unused).
  int64_t num_available() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t num_used() const { return num_blocks_ - num_available(); }

  // Hash of a full block of `tokens` following a prefix whose hash is `parent` (0 for none).
  static uint64_t block_hash(uint64_t parent, const int32_t* tokens, int n);

  // The longest run of cached full blocks matching the start of `tokens`, at most max_blocks long;
  // takes a reference on each. Returns the blocks; `hashes` gets their hashes. `seed`: the hash the
  // first block follows (0, or a cache salt's: salt_hash).
  std::vector<int32_t> match_prefix(const std::vector<int32_t>& tokens, int64_t max_blocks, std::vector<uint64_t>& hashes,
                                    uint64_t seed = 0);
  // The prefix-hash seed of vLLM's cache_salt: a request's blocks hash under it, so only requests with
  // the same salt share them. 0 for no salt.
  static uint64_t salt_hash(const std::string& salt);

  // n blocks (free first, then evicting the least recently used cached ones). Throws Error when
  // fewer are available; nothing is taken then.
  std::vector<int32_t> allocate(int64_t n);
  // Drops one reference on each block; unused cached blocks become evictable, others free.
  void release(const std::vector<int32_t>& blocks);
  // Records that `block` is full with the tokens hashed to `hash`, so later prompts can reuse it.
  void register_full(int32_t block, uint64_t hash, const int32_t* tokens);
  int refcount(int32_t block) const { return ref_[block]; }

  int64_t num_host_available() const { return static_cast<int64_t>(host_free_.size()); }
  std::vector<int32_t> allocate_host(int64_t n);
  void release_host(const std::vector<int32_t>& blocks);

  // Prefix-cache statistics, in tokens.
  int64_t queries() const { return queries_; }
  int64_t hits() const { return hits_; }

 private:
  void make_evictable(int32_t b);
  void take(int32_t b);  // from free or LRU into use
  int64_t num_blocks_;
  int block_size_;
  bool caching_;
  std::vector<int> ref_;
  std::vector<uint64_t> hash_of_;  // 0: no hash
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  // unused cached blocks, least recently used first
  std::vector<std::list<int32_t>::iterator> lru_pos_;
  std::vector<bool> in_lru_;
  std::unordered_map<uint64_t, int32_t> cached_;         // hash -> block
  std::unordered_map<int32_t, std::vector<int32_t>> tokens_;  // block -> its tokens (verifies hits)
  std::vector<int32_t> host_free_;
  int64_t queries_ = 0, hits_ = 0;
};

}  // namespace llmserve
