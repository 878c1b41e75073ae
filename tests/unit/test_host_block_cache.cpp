// The CPU backend's cache of large blocks: a freed block serves the next request it fits (up to twice
// its size), small tensors and oversized matches are not served from it, the cap holds, tensors of the
// backend reuse their memory step after step, and trim_memory gives the kept blocks back.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "backend/cpu_backend.h"
#include "backend/host_block_cache.h"

using namespace llmserve;

TEST(HostBlockCache, ReusesABlockThatFitsAndKeepsTheCap) {
  HostBlockCache c(size_t(7) << 20);
  const HostBlockCache::Block a = c.get(3 << 20);
  ASSERT_NE(a.ptr, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.ptr) % 64, 0u);
  EXPECT_EQ(a.bytes, size_t(3) << 20);
  std::memset(a.ptr, 1, a.bytes);
  c.put(a);
  EXPECT_EQ(c.cached_bytes(), size_t(3) << 20);
  // Smaller, but not less than half: the same block, whole.
  const HostBlockCache::Block b = c.get((2 << 20) + 100);
  EXPECT_EQ(b.ptr, a.ptr);
  EXPECT_EQ(b.bytes, a.bytes);
  EXPECT_EQ(c.cached_bytes(), 0u);
  c.put(b);
  // Less than half of it: a new block (the kept one would waste more than it serves).
  const HostBlockCache::Block s = c.get(1 << 20);
  EXPECT_NE(s.ptr, a.ptr);
  EXPECT_EQ(c.cached_bytes(), size_t(3) << 20);
  // Larger than any kept block: a new one.
  const HostBlockCache::Block l = c.get(4 << 20);
  EXPECT_NE(l.ptr, a.ptr);
  c.put(s);  // 3 + 1 MiB kept
  c.put(l);  // 7 MiB cap: the 4 MiB block is not kept
  EXPECT_EQ(c.cached_bytes(), size_t(4) << 20);
}

TEST(HostBlockCache, CpuTensorsReuseLargeBlocksOnly) {
  CpuBackend be;
  void* first = nullptr;
  const size_t bytes = size_t(64) * 151936 * 4;
  {
    Tensor t = be.empty({64, 151936}, DType::F32);  // a step's logits rows (39 MB)
    first = t.data;
    static_cast<float*>(t.data)[12345] = 7.f;
    EXPECT_EQ(be.cached_block_bytes(), 0u);
  }
  EXPECT_EQ(be.cached_block_bytes(), bytes);
  {
    Tensor t = be.empty({60, 151936}, DType::F32);  // the next step's, a little smaller
    EXPECT_EQ(be.cached_block_bytes(), 0u);
    EXPECT_EQ(t.data, first);
    EXPECT_EQ(static_cast<float*>(t.data)[12345], 7.f);  // the same memory (a fresh mapping reads zero)
  }
  // Small tensors come from malloc as before (nothing kept for them).
  Tensor small = be.empty({16, 64}, DType::F32);
  EXPECT_NE(small.data, first);
  EXPECT_EQ(be.cached_block_bytes(), bytes);
  small = Tensor();
  EXPECT_EQ(be.cached_block_bytes(), bytes);
  // The backend's trim_memory (the memory plan's hook) gives the kept blocks back.
  be.trim_memory();
  EXPECT_EQ(be.cached_block_bytes(), 0u);
}
