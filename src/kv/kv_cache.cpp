#include "kv/kv_cache.h"

#include <algorithm>

#include "common/error.h"

namespace llmserve {

KvCache::KvCache(Backend& backend, const KvCacheShape& s) : shape_(s) {
  LLMSERVE_CHECK(s.num_blocks > 0, "KV cache: no blocks (the KV-cache memory budget is too small)");
  for (int l = 0; l < s.num_layers; ++l) {
    k_.push_back(backend.empty({s.num_blocks, s.block_size, s.kv_heads, s.head_dim}, s.dtype));
    v_.push_back(backend.empty({s.num_blocks, s.block_size, s.kv_heads, s.head_dim}, s.dtype));
  }
}

BlockAllocator::BlockAllocator(int64_t num_blocks) : num_blocks_(num_blocks) {
  free_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

std::vector<int32_t> BlockAllocator::allocate(int64_t n) {
  if (n > num_free())
    throw Error(cat("KV cache: ", n, " blocks needed but only ", num_free(), " of ", num_blocks_, " are free"));
  std::vector<int32_t> out(free_.end() - n, free_.end());
  std::reverse(out.begin(), out.end());
  free_.resize(free_.size() - n);
  return out;
}

void BlockAllocator::release(const std::vector<int32_t>& blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    LLMSERVE_CHECK(*it >= 0 && *it < num_blocks_, "KV cache: releasing invalid block ", *it);
    free_.push_back(*it);
  }
}

}  // namespace llmserve
