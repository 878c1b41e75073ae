// Host memory for the CPU backend's tensors. Blocks of kMinBytes and more are kept when their tensor
// goes and handed to the next request they fit (at most twice its size), so a step's large
// temporaries (logits rows: 39 MB for 64 rows of a 151,936-token vocabulary) reuse memory instead of
// being mapped, faulted in page by page, zeroed by the kernel and unmapped again every step, which is
// what glibc does above its mmap threshold (at most 32 MiB).
#pragma once
#include <cstddef>
#include <map>
#include <mutex>

namespace llmserve {

class HostBlockCache {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  // Keeps at most `max_cached` bytes of free blocks (beyond that a block goes back to the system).
  explicit HostBlockCache(size_t max_cached = size_t(4) << 30) : max_cached_(max_cached) {}
  ~HostBlockCache();
  HostBlockCache(const HostBlockCache&) = delete;
  HostBlockCache& operator=(const HostBlockCache&) = delete;

  struct Block {
    void* ptr = nullptr;
    size_t bytes = 0;  // the block's own size: at least what was asked for
  };
  // A 64-byte aligned block of at least `bytes` (a kept one of at most twice that, else a new one);
  // ptr is null when memory ran out. Not zeroed.
  Block get(size_t bytes);
  // Takes a block back (from get).
  void put(Block b);
  // Gives every kept block back to the system.
  void trim();
  size_t cached_bytes() const;

 private:
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;  // by size
  size_t cached_ = 0;
  size_t max_cached_;
};

}  // namespace llmserve
