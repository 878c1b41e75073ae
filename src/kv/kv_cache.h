// Paged KV cache storage of one rank: for each layer of its pipeline stage, K and V tensors of shape
// [num_blocks, block_size, kv_heads_local, head_dim]. Which blocks a sequence uses is decided by the
// block allocator on rank 0 and travels in the step's block tables.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace llmserve {

struct KvCacheShape {
  int num_layers = 0;  // layers of this stage
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t kv_heads = 0;  // per rank
  int64_t head_dim = 0;
  DType dtype = DType::F32;
  // Bytes one block takes across all of this stage's layers (K and V).
  size_t bytes_per_block() const {
    return static_cast<size_t>(num_layers) * 2 * block_size * kv_heads * head_dim * dtype_size(dtype);
  }
};

class KvCache {
 public:
  // `num_host_blocks` blocks of host memory back swapped-out sequences (allocated on first use).
  KvCache(Backend& backend, const KvCacheShape& shape, int64_t num_host_blocks = 0);
  const KvCacheShape& shape() const { return shape_; }
  Tensor& k(int local_layer) { return k_[local_layer]; }
  Tensor& v(int local_layer) { return v_[local_layer]; }
  // Copies blocks device -> host (src device block, dst host block) or host -> device.
  void swap_out(int32_t device_block, int32_t host_block);
  void swap_in(int32_t host_block, int32_t device_block);

 private:
  size_t block_bytes() const;
  char* host_block(int layer, int kv, int32_t b);
  Backend& backend_;
  KvCacheShape shape_;
  std::vector<Tensor> k_, v_;
  int64_t num_host_blocks_;
  std::shared_ptr<char> host_;
};

// The cache blocks that some of a step's sequences read, each once (a prefix block that sequences share
// too), in the order of first use, and the step's block tables renumbered into that list (rows of
// m.max_blocks entries; a row's entries past what its sequence reads, and the rows of sequences not
// taken, are 0): what a kernel over copies of those blocks, packed in that order, takes (kv_cache_dtype
// fp8 on a GPU: a prefill's blocks widened to 16 bits first). A sequence reads blocks 0 .. p / block_size
// of its row, p its last new token's position. Sequences with at least `min_new` new tokens are taken
// first, then the others, each in order and whole, where its blocks keep the list within `cap`; with
// `only`, just the sequences s with (*only)[s] set. taken[s] says which were. Returns how many were.
int64_t gather_step_blocks(const StepMeta& m, int64_t block_size, int64_t cap, int32_t min_new, std::vector<int32_t>& blocks,
                           std::vector<int32_t>& tables, std::vector<char>& taken, const std::vector<char>* only = nullptr);

// Free-list allocator of block ids [0, num_blocks).
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_blocks() const { return num_blocks_; }
  // Takes n blocks; throws Error when fewer are free (nothing is taken then).
  std::vector<int32_t> allocate(int64_t n);
  void release(const std::vector<int32_t>& blocks);

 private:
  int64_t num_blocks_;
  std::vector<int32_t> free_;
};

}  // namespace llmserve
