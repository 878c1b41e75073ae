#include "dist/topology.h"

#include <algorithm>
#include <cstdint>

#include "common/error.h"

namespace llmserve {

std::string Topology::describe() const {
  return cat("rank ", world_rank, "/", world_size, " stage ", stage(), "/", pp, " tp_rank ", tp_rank(), "/", tp);
}

StagePairColors stage_pair_colors(const Topology& t) {
  // Within a tensor rank's column, stage / 2 and (stage + 1) / 2 number the pairs; both are < pp.
  return {t.tp_rank() * t.pp + t.stage() / 2, t.tp_rank() * t.pp + (t.stage() + 1) / 2};
}

Topology make_topology(int world_rank, int world_size, int tp, int pp) {
  LLMSERVE_CHECK(tp >= 1 && pp >= 1, "config: tensor_parallel_size and pipeline_parallel_size must be >= 1");
  if (static_cast<int64_t>(tp) * pp != world_size)
    throw Error(cat("config: tensor_parallel_size (", tp, ") x pipeline_parallel_size (", pp, ") = ",
                    static_cast<int64_t>(tp) * pp, " but the MPI world has ", world_size,
                    " ranks; start llmserve with mpirun -np ", static_cast<int64_t>(tp) * pp,
                    " or change the layout"));
  Topology t;
  t.world_rank = world_rank;
  t.world_size = world_size;
  t.tp = tp;
  t.pp = pp;
  return t;
}

LayerRange stage_layers(int num_layers, int pp, int stage) {
  if (pp > num_layers)
    throw Error(cat("config: pipeline_parallel_size (", pp, ") is larger than the model's ", num_layers,
                    " layers"));
  const int base = num_layers / pp, extra = num_layers % pp;
  LayerRange r;
  r.begin = stage * base + std::min(stage, extra);
  r.end = r.begin + base + (stage < extra ? 1 : 0);
  return r;
}

Range shard_range(int64_t n, int parts, int rank) {
  const int64_t per = (n + parts - 1) / parts;
  Range r;
  r.begin = std::min<int64_t>(n, per * rank);
  r.end = std::min<int64_t>(n, r.begin + per);
  return r;
}

}  // namespace llmserve
