// KV block accounting on rank 0 (every rank's cache uses the same block ids). Blocks are free,
// in use (reference counted), or cached: full blocks keep a hash of their tokens chained with their
// prefix's hash, so a new sequence with the same prefix reuses them (automatic prefix caching). The
// hash is vLLM's prefix_caching_hash_algo: builtin (64 bits, fast; a found block's tokens are compared,
// its prefix only through the hash) or sha256 (SHA-256 over the prefix's digest and the tokens: a
// prefix whose digest matches is the same prefix, as far as anyone can construct).
// Cached blocks nobody uses stay evictable in LRU order and are reclaimed only when the free list
// is empty. A host pool holds blocks swapped out by preemption.
#pragma once
#include <array>
#include <cstdint>
#include <list>
#include <unordered_map>
#include <string>
#include <vector>

namespace llmserve {

// A block's chained hash: the builtin hash in w[0] (the rest 0), or a SHA-256 digest; all zero: none.
struct BlockHash {
  std::array<uint64_t, 4> w{};
  bool operator==(const BlockHash& o) const { return w == o.w; }
  bool operator!=(const BlockHash& o) const { return w != o.w; }
  bool none() const { return w == std::array<uint64_t, 4>{}; }
};

enum class PrefixHash { Builtin, Sha256 };
// vLLM's prefix_caching_hash_algo name (builtin, sha256) as a PrefixHash; throws Error for another, or
// for sha256 in a build without OpenSSL.
PrefixHash parse_prefix_hash(const std::string& name);

// The most KV blocks a sequence of `total` tokens holds at once: one per block of its positions, or with a
// sliding window of `window` positions in every layer (the blocks before a step's window given back, as the
// scheduler does) those of a window and of a step of at most `step` tokens.
int64_t peak_blocks(int64_t total, int block_size, int64_t window, int64_t step);

class BlockManager {
 public:
  BlockManager(int64_t num_blocks, int64_t num_host_blocks, int block_size, bool prefix_caching,
               PrefixHash algo = PrefixHash::Builtin);

  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  // Blocks an allocation can take now (free, or cached and unused).
  int64_t num_available() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t num_used() const { return num_blocks_ - num_available(); }

  // The builtin hash of a full block of `tokens` following a prefix whose hash is `parent` (0 for none):
  // FNV-1a, mixed; never 0.
  static uint64_t block_hash(uint64_t parent, const int32_t* tokens, int n);
  // The hash of n tokens following `parent` (none for the first block) under this manager's algorithm;
  // `domain` sets apart hashes that are not of token blocks (a cache salt's, an adapter's).
  BlockHash chain(const BlockHash& parent, const int32_t* tokens, int n, uint32_t domain = 0) const;

  // The longest run of cached full blocks matching the start of `tokens`, at most max_blocks long;
  // takes a reference on each. Returns the blocks; `hashes` gets their hashes. `seed`: the hash the
  // first block follows (none, or a cache salt's: salt_hash).
  std::vector<int32_t> match_prefix(const std::vector<int32_t>& tokens, int64_t max_blocks,
                                    std::vector<BlockHash>& hashes, const BlockHash& seed = {});
  // The prefix-hash seed of vLLM's cache_salt: a request's blocks hash under it, so only requests with
  // the same salt share them. None for no salt.
  BlockHash salt_hash(const std::string& salt) const;
  // The seed of an adapter's blocks (the sequence's seed so far, the adapter's load id): its KV differs
  // from the base model's, so its blocks chain apart.
  BlockHash adapter_hash(const BlockHash& seed, uint64_t uid) const;

  // n blocks (free first, then evicting the least recently used cached ones). Throws Error when
  // fewer are available; nothing is taken then.
  std::vector<int32_t> allocate(int64_t n);
  // Drops one reference on each block; unused cached blocks become evictable, others free.
  void release(const std::vector<int32_t>& blocks);
  // Records that `block` is full with the tokens hashed to `hash`, so later prompts can reuse it.
  void register_full(int32_t block, const BlockHash& hash, const int32_t* tokens);
  int refcount(int32_t block) const { return ref_[block]; }
  // Forgets every cached block (vLLM's reset_prefix_cache): unused ones are freed, blocks in use keep
  // their contents for their sequences but are found by no later prompt (and are freed when released).
  // Returns how many blocks were cached.
  int64_t reset_cache();

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
  PrefixHash algo_;
  std::vector<int> ref_;
  std::vector<BlockHash> hash_of_;  // none: no hash
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  // unused cached blocks, least recently used first
  std::vector<std::list<int32_t>::iterator> lru_pos_;
  std::vector<bool> in_lru_;
  std::unordered_map<uint64_t, int32_t> cached_;         // hash's first word -> block (the whole hash compared)
  std::unordered_map<int32_t, std::vector<int32_t>> tokens_;  // block -> its tokens (verifies hits)
  std::vector<int32_t> host_free_;
  int64_t queries_ = 0, hits_ = 0;
};

}  // namespace llmserve
