// The rank grid: world = tp x pp ranks, stage-major (ranks 0..tp-1 are stage 0), so a tensor group
// is a block of consecutive ranks (one node, with the usual by-slot placement) and pipeline stages
// span nodes.
#pragma once
#include <string>

namespace llmserve {

struct Topology {
  int world_rank = 0;
  int world_size = 1;
  int tp = 1;  // tensor_parallel_size
  int pp = 1;  // pipeline_parallel_size

  int stage() const { return world_rank / tp; }
  int tp_rank() const { return world_rank % tp; }
  bool first_stage() const { return stage() == 0; }
  bool last_stage() const { return stage() == pp - 1; }
  // World rank of the rank with the same tp_rank in another stage.
  int rank_of(int stage, int tp_rank) const { return stage * tp + tp_rank; }
  std::string describe() const;
};

// MPI_Comm_split colours that put each rank in a group with a neighbouring stage of its tensor rank:
// `even` groups stages (0, 1), (2, 3), ...; `odd` groups (1, 2), (3, 4), ...; a rank with no partner
// in a split is alone in its group. Split with key = stage, so the earlier stage is rank 0 of a pair.
// A stage's link to the previous one is its `odd` group when the stage is even, else its `even`
// group; to the next one the other.
struct StagePairColors {
  int even = 0;
  int odd = 0;
};
StagePairColors stage_pair_colors(const Topology& t);

// Builds the grid; throws Error when tp * pp != world_size.
Topology make_topology(int world_rank, int world_size, int tp, int pp);

// Contiguous layer range [begin, end) of a pipeline stage: layers spread as evenly as possible,
// earlier stages taking the extra layer. Throws Error when pp > num_layers.
struct LayerRange {
  int begin = 0;
  int end = 0;
};
LayerRange stage_layers(int num_layers, int pp, int stage);

// Row range [begin, end) of shard `rank` of `n` rows split `parts` ways (ceil-sized shards; the last
// may be short or empty).
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};
Range shard_range(int64_t n, int parts, int rank);

}  // namespace llmserve
