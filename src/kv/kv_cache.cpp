#include "kv/kv_cache.h"

#include <algorithm>
#include <cstdlib>
#include <unordered_map>

#include "common/error.h"

namespace llmserve {

KvCache::KvCache(Backend& backend, const KvCacheShape& s, int64_t num_host_blocks)
    : backend_(backend), shape_(s), num_host_blocks_(num_host_blocks) {
  LLMSERVE_CHECK(s.num_blocks > 0, "KV cache: no blocks (the KV-cache memory budget is too small)");
  for (int l = 0; l < s.num_layers; ++l) {
    k_.push_back(backend.empty({s.num_blocks, s.block_size, s.kv_heads, s.head_dim}, s.dtype));
    v_.push_back(backend.empty({s.num_blocks, s.block_size, s.kv_heads, s.head_dim}, s.dtype));
  }
}

size_t KvCache::block_bytes() const {
  return static_cast<size_t>(shape_.block_size * shape_.kv_heads * shape_.head_dim) * dtype_size(shape_.dtype);
}

char* KvCache::host_block(int layer, int kv, int32_t b) {
  LLMSERVE_CHECK(b >= 0 && b < num_host_blocks_, "KV cache: host block ", b, " out of range");
  if (!host_) {
    const size_t n = static_cast<size_t>(num_host_blocks_) * shape_.num_layers * 2 * block_bytes();
    char* p = static_cast<char*>(std::malloc(n));  // pages are touched only when used
    if (!p) throw Error("KV cache: cannot allocate swap space");
    host_ = std::shared_ptr<char>(p, std::free);
  }
  return host_.get() + ((static_cast<size_t>(b) * shape_.num_layers + layer) * 2 + kv) * block_bytes();
}

void KvCache::swap_out(int32_t device_block, int32_t host_block_id) {
  for (int l = 0; l < shape_.num_layers; ++l) {
    backend_.copy_to_host(k_[l], device_block * block_bytes(), block_bytes(), host_block(l, 0, host_block_id));
    backend_.copy_to_host(v_[l], device_block * block_bytes(), block_bytes(), host_block(l, 1, host_block_id));
  }
}

void KvCache::swap_in(int32_t host_block_id, int32_t device_block) {
  for (int l = 0; l < shape_.num_layers; ++l) {
    backend_.copy_from_host(k_[l], device_block * block_bytes(), block_bytes(), host_block(l, 0, host_block_id));
    backend_.copy_from_host(v_[l], device_block * block_bytes(), block_bytes(), host_block(l, 1, host_block_id));
  }
}

int64_t gather_step_blocks(const StepMeta& m, int64_t block_size, int64_t cap, int32_t min_new, std::vector<int32_t>& blocks,
                           std::vector<int32_t>& tables, std::vector<char>& taken, const std::vector<char>* only) {
  const int64_t S = m.num_seqs(), width = m.row_entries(), stride = m.max_blocks;
  LLMSERVE_CHECK(block_size > 0 && static_cast<int64_t>(m.block_tables.size()) >= S * width &&
                     (!only || static_cast<int64_t>(only->size()) == S),
                 "gather_step_blocks: block tables of the wrong size");
  blocks.clear();
  tables.assign(static_cast<size_t>(S * stride), 0);
  taken.assign(static_cast<size_t>(S), 0);
  std::unordered_map<int32_t, int32_t> index;  // cache block -> its place in `blocks`
  int64_t count = 0;
  for (const bool prefill : {true, false})
    for (int64_t s = 0; s < S; ++s) {
      if ((m.q_start[s + 1] - m.q_start[s] >= min_new) != prefill || (only && !(*only)[static_cast<size_t>(s)])) continue;
      int32_t last = -1;
      for (int32_t t = m.q_start[s]; t < m.q_start[s + 1]; ++t) last = std::max(last, m.positions[t]);
      const int64_t n = last < 0 ? 0 : last / block_size + 1;
      LLMSERVE_CHECK(n <= width, "gather_step_blocks: a sequence reads past its block table");
      const int32_t* row = m.block_tables.data() + s * width;
      int64_t fresh = 0;
      for (int64_t j = 0; j < n; ++j) fresh += !index.count(row[j]);  // (a row's blocks are distinct)
      if (static_cast<int64_t>(blocks.size()) + fresh > cap) continue;
      for (int64_t j = 0; j < n; ++j) {
        auto [it, added] = index.try_emplace(row[j], static_cast<int32_t>(blocks.size()));
        if (added) blocks.push_back(row[j]);
        tables[static_cast<size_t>(s * stride + j)] = it->second;
      }
      taken[static_cast<size_t>(s)] = 1;
      ++count;
    }
  return count;
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
