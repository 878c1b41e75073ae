// gather_step_blocks (kv/kv_cache.h): the cache blocks a step reads, once each in the order of first
// use, and the block tables renumbered into that list; nothing past a sequence's last new token; runs of
// new tokens first; sequences whose blocks would pass the cap, or not in `only`, left out whole.
#include <gtest/gtest.h>

#include "common/error.h"
#include "kv/kv_cache.h"

using namespace llmserve;

namespace {

// Sequences with these new-token counts after these cached counts; tables of `width` entries.
StepMeta step(const std::vector<std::vector<int32_t>>& tables, const std::vector<int32_t>& lens,
              const std::vector<int32_t>& cached, int32_t width) {
  StepMeta m;
  m.max_blocks = width;
  m.q_start = {0};
  for (size_t s = 0; s < lens.size(); ++s) {
    std::vector<int32_t> row = tables[s];
    row.resize(static_cast<size_t>(width), 77);  // entries past the context: never read
    m.block_tables.insert(m.block_tables.end(), row.begin(), row.end());
    for (int32_t i = 0; i < lens[s]; ++i) m.positions.push_back(cached[s] + i);
    m.token_ids.resize(m.positions.size(), 0);
    m.q_start.push_back(static_cast<int32_t>(m.positions.size()));
  }
  return m;
}

TEST(StepBlocks, EachBlockOnceInOrderOfFirstUse) {
  const int64_t bs = 4;
  // Sequence 0: positions 0-9 (blocks 12, 3, 40); sequence 1 shares its first two blocks (a cached
  // prefix) and brings positions 10 and 11 (blocks 12, 3, 7); sequence 2: one decode token at position 4
  // (blocks 5, 9); sequence 3: position 0 (block 40, sequence 0's third). With min_new 2 the first two
  // are taken first, then the decodes.
  const StepMeta m = step({{12, 3, 40}, {12, 3, 7}, {5, 9}, {40}}, {10, 2, 1, 1}, {0, 10, 4, 0}, 6);
  std::vector<int32_t> blocks, tables;
  std::vector<char> taken;
  ASSERT_EQ(gather_step_blocks(m, bs, 100, 2, blocks, tables, taken), 4);
  EXPECT_EQ(blocks, (std::vector<int32_t>{12, 3, 40, 7, 5, 9}));
  EXPECT_EQ(tables, (std::vector<int32_t>{0, 1, 2, 0, 0, 0,    // 12 3 40
                                          0, 1, 3, 0, 0, 0,    // 12 3 7
                                          4, 5, 0, 0, 0, 0,    // 5 9
                                          2, 0, 0, 0, 0, 0})); // 40
  EXPECT_EQ(taken, (std::vector<char>{1, 1, 1, 1}));
  // The renumbered tables give back every block a token reads.
  for (int64_t s = 0; s < m.num_seqs(); ++s)
    for (int32_t t = m.q_start[s]; t < m.q_start[s + 1]; ++t)
      for (int32_t p = 0; p <= m.positions[t]; ++p)
        EXPECT_EQ(blocks[static_cast<size_t>(tables[s * 6 + p / bs])], m.block_tables[s * 6 + p / bs]);
  // With min_new 3 only sequence 0 is a run of new tokens: it comes first, then 1 (blocks 12 and 3 known,
  // 7 new), 2 and 3, the same list.
  ASSERT_EQ(gather_step_blocks(m, bs, 100, 3, blocks, tables, taken), 4);
  EXPECT_EQ(blocks, (std::vector<int32_t>{12, 3, 40, 7, 5, 9}));
}

TEST(StepBlocks, SequencesPastTheCapAreLeftOut) {
  // Sequence 0: a decode at position 8 (blocks 1, 2, 3); 1: 12 new tokens (blocks 1, 2, 4); 2: 5 new
  // tokens at positions 4-8 (blocks 6, 7, 8).
  const StepMeta m = step({{1, 2, 3}, {1, 2, 4}, {6, 7, 8}}, {1, 12, 5}, {8, 0, 4}, 3);
  std::vector<int32_t> blocks, tables;
  std::vector<char> taken;
  // Room for 4: the 12-token run first (1 2 4), then the 5-token one would need 3 more: left out; the
  // decode needs one more (3): taken.
  ASSERT_EQ(gather_step_blocks(m, 4, 4, 5, blocks, tables, taken), 2);
  EXPECT_EQ(blocks, (std::vector<int32_t>{1, 2, 4, 3}));
  EXPECT_EQ(taken, (std::vector<char>{1, 1, 0}));
  EXPECT_EQ(tables, (std::vector<int32_t>{0, 1, 3, 0, 1, 2, 0, 0, 0}));
  // Only sequences 0 and 2 (room for 6): the 5-token run first (6 7 8), then the decode (1 2 3).
  const std::vector<char> only{1, 0, 1};
  ASSERT_EQ(gather_step_blocks(m, 4, 6, 5, blocks, tables, taken, &only), 2);
  EXPECT_EQ(blocks, (std::vector<int32_t>{6, 7, 8, 1, 2, 3}));
  EXPECT_EQ(taken, (std::vector<char>{1, 0, 1}));
  EXPECT_EQ(tables, (std::vector<int32_t>{3, 4, 5, 0, 0, 0, 0, 1, 2}));
  // Room for 2: nothing fits whole.
  EXPECT_EQ(gather_step_blocks(m, 4, 2, 5, blocks, tables, taken), 0);
  EXPECT_TRUE(blocks.empty());
  EXPECT_EQ(taken, (std::vector<char>{0, 0, 0}));
  EXPECT_EQ(tables, std::vector<int32_t>(9, 0));
  // A sequence whose context runs past its table is a caller's error, not a silent read past it.
  const StepMeta bad = step({{1}}, {6}, {0}, 1);
  EXPECT_THROW(gather_step_blocks(bad, 4, 10, 1, blocks, tables, taken), Error);
}

}  // namespace
