#include "backend/host_block_cache.h"

#include <cstdlib>

namespace llmserve {

HostBlockCache::~HostBlockCache() {
  for (auto& [bytes, p] : free_) std::free(p);
}

HostBlockCache::Block HostBlockCache::get(size_t bytes) {
  bytes = (bytes + 63) / 64 * 64;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.lower_bound(bytes);
    if (it != free_.end() && it->first / 2 <= bytes) {
      Block b{it->second, it->first};
      cached_ -= it->first;
      free_.erase(it);
      return b;
    }
  }
  return Block{std::aligned_alloc(64, bytes), bytes};
}

void HostBlockCache::put(Block b) {
  if (!b.ptr) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_ + b.bytes <= max_cached_) {
      free_.emplace(b.bytes, b.ptr);
      cached_ += b.bytes;
      return;
    }
  }
  std::free(b.ptr);
}

void HostBlockCache::trim() {
  std::multimap<size_t, void*> kept;
  {
    std::lock_guard<std::mutex> lock(mu_);
    kept.swap(free_);
    cached_ = 0;
  }
  for (auto& [bytes, p] : kept) std::free(p);
}

size_t HostBlockCache::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_;
}

}  // namespace llmserve
