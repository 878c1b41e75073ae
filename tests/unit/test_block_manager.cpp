// The prefix cache's block hashes (src/kv/block_manager.h): vLLM's prefix_caching_hash_algo builtin and
// sha256. SHA-256 digests are checked against Python's hashlib over the documented layout; both
// algorithms find a cached prefix and only that prefix.
#include <gtest/gtest.h>

#include <vector>

#include "common/error.h"
#include "kv/block_manager.h"

using namespace llmserve;

namespace {

// Blocks of 4 tokens: {1, 2, 3, 4} then {5, 6, 7, 8}, and a prompt one token past them.
const std::vector<int32_t> kPrompt = {1, 2, 3, 4, 5, 6, 7, 8, 9};

// Caches kPrompt's two full blocks under `seed` (as the scheduler does once they are computed).
void cache_prompt(BlockManager& bm, const BlockHash& seed) {
  const auto blocks = bm.allocate(2);
  BlockHash h = seed;
  for (int b = 0; b < 2; ++b) {
    h = bm.chain(h, kPrompt.data() + 4 * b, 4);
    bm.register_full(blocks[b], h, kPrompt.data() + 4 * b);
  }
  bm.release(blocks);
}

}  // namespace

#ifdef LLMSERVE_TLS
// SHA-256 of (domain, 4 bytes; the parent's digest, 32 bytes, zeros for none; the tokens, 4 bytes each),
// little-endian; the expected words are hashlib.sha256's digests read as four little-endian 64-bit words.
TEST(BlockManager, Sha256ChainAsHashlib) {
  BlockManager bm(8, 0, 4, true, PrefixHash::Sha256);
  const BlockHash h1 = bm.chain({}, kPrompt.data(), 4);
  EXPECT_EQ(h1.w[0], 0x08f47832d32d321cull);
  EXPECT_EQ(h1.w[1], 0x75cb393b50e6ad48ull);
  EXPECT_EQ(h1.w[2], 0xcf6e2962a217c8d1ull);
  EXPECT_EQ(h1.w[3], 0xf6684b50bfd62229ull);
  const BlockHash h2 = bm.chain(h1, kPrompt.data() + 4, 4);
  EXPECT_EQ(h2.w[0], 0x3876c1602f0befccull);
  EXPECT_EQ(h2.w[3], 0x93bfcf287ca8c99eull);
  // A salt's and an adapter's seeds are of their own domains.
  EXPECT_NE(bm.salt_hash("a"), bm.chain({}, std::vector<int32_t>{'a'}.data(), 1));
  EXPECT_NE(bm.adapter_hash({}, 7), bm.chain({}, std::vector<int32_t>{7, 0}.data(), 2));
  EXPECT_TRUE(bm.salt_hash("").none());
}
#endif

// The builtin algorithm is the 64-bit hash alone (in the first word), as before sha256 was added.
TEST(BlockManager, BuiltinChainIsTheSixtyFourBitHash) {
  BlockManager bm(8, 0, 4, true);
  const BlockHash h1 = bm.chain({}, kPrompt.data(), 4);
  EXPECT_EQ(h1.w[0], BlockManager::block_hash(0, kPrompt.data(), 4));
  EXPECT_EQ(h1.w[1] | h1.w[2] | h1.w[3], 0u);
  EXPECT_EQ(bm.chain(h1, kPrompt.data() + 4, 4).w[0], BlockManager::block_hash(h1.w[0], kPrompt.data() + 4, 4));
}

// Under either algorithm: the same prompt finds both blocks (and the same hashes), a prompt whose first
// block differs finds neither (its second block's tokens alone do not match it), another salt none.
TEST(BlockManager, PrefixFoundOnlyUnderItsOwnChain) {
  std::vector<PrefixHash> algos = {PrefixHash::Builtin};
#ifdef LLMSERVE_TLS
  algos.push_back(PrefixHash::Sha256);
#endif
  for (PrefixHash algo : algos) {
    BlockManager bm(8, 0, 4, true, algo);
    cache_prompt(bm, {});
    std::vector<BlockHash> hashes;
    auto hit = bm.match_prefix(kPrompt, 2, hashes);
    ASSERT_EQ(hit.size(), 2u);
    EXPECT_EQ(hashes[1], bm.chain(bm.chain({}, kPrompt.data(), 4), kPrompt.data() + 4, 4));
    bm.release(hit);
    std::vector<int32_t> other = kPrompt;
    other[0] = 100;
    EXPECT_TRUE(bm.match_prefix(other, 2, hashes).empty());
    EXPECT_TRUE(bm.match_prefix(kPrompt, 2, hashes, bm.salt_hash("tenant")).empty());
    cache_prompt(bm, bm.salt_hash("tenant"));
    hit = bm.match_prefix(kPrompt, 2, hashes, bm.salt_hash("tenant"));
    EXPECT_EQ(hit.size(), 2u);
    bm.release(hit);
  }
}

TEST(BlockManager, HashAlgorithmNames) {
  EXPECT_EQ(parse_prefix_hash("builtin"), PrefixHash::Builtin);
#ifdef LLMSERVE_TLS
  EXPECT_EQ(parse_prefix_hash("sha256"), PrefixHash::Sha256);
#endif
  EXPECT_THROW(parse_prefix_hash("sha256_cbor"), Error);
  EXPECT_THROW(parse_prefix_hash(""), Error);
}

// reset_cache (vLLM's reset_prefix_cache): no cached block is found afterwards; unused cached blocks are
// free at once, a block in use keeps its holder and is freed (not cached) when released.
TEST(BlockManager, ResetForgetsEveryCachedBlock) {
  BlockManager bm(8, 0, 4, true);
  cache_prompt(bm, {});
  std::vector<BlockHash> hashes;
  auto held = bm.match_prefix(kPrompt, 1, hashes);  // block 0 in use again, block 1 cached and unused
  ASSERT_EQ(held.size(), 1u);
  EXPECT_EQ(bm.num_available(), 7);
  EXPECT_EQ(bm.reset_cache(), 2);
  EXPECT_EQ(bm.num_available(), 7);
  EXPECT_EQ(bm.refcount(held[0]), 1);
  EXPECT_TRUE(bm.match_prefix(kPrompt, 2, hashes).empty());
  bm.release(held);
  EXPECT_EQ(bm.num_available(), 8);
  EXPECT_EQ(bm.allocate(8).size(), 8u);
  EXPECT_EQ(bm.reset_cache(), 0);
}
