// vLLM's CUDA-graph options (compilation_config's cudagraph_mode, cudagraph_capture_sizes and
// max_cudagraph_capture_size, their top-level flags, the older cuda_graph_sizes, -O0..-O3) as llmserve's
// two kinds of graphs take them: decode graphs, one per batch size (model/decode_graphs.h), and mixed-step
// graphs, one per token count (model/mixed_graphs.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmserve {

struct Config;

// The graphs a run records. Without any of the options: decode graphs for 1, 2, 4, then multiples of 8
// below max_num_seqs and max_num_seqs; mixed graphs for multiples of 16 below min(256,
// max_num_batched_tokens) and that bound (the defaults of the graph classes).
struct GraphPlan {
  std::vector<int64_t> decode;  // batch sizes of decode graphs (empty: none)
  std::vector<int64_t> mixed;   // token counts of mixed-step graphs (empty: none)
};

// cudagraph_mode NONE (or enforce_eager): no graphs. FULL_DECODE_ONLY: decode graphs only. FULL,
// FULL_AND_PIECEWISE (vLLM's default) and PIECEWISE: both kinds (llmserve's graphs hold whole layers, as
// vLLM's FULL ones; it has no piecewise form). Capture sizes (a list, or the sizes of the default
// patterns up to max_cudagraph_capture_size) are batch sizes for decode graphs, up to max_num_seqs, and
// token counts for mixed graphs, up to min(256, max_num_batched_tokens): `cfg` as the runner resolved it
// (max_num_batched_tokens not 0).
GraphPlan graph_plan(const Config& cfg);

// The accepted cudagraph_mode names (vLLM's CUDAGraphMode), for messages.
extern const char* const kCudagraphModes;

// Applies vLLM's compilation_config (a JSON object, or a bare optimization level 0-3) to cfg; throws
// Error naming the key at fault. Keys of torch.compile (llmserve compiles nothing) are accepted without
// effect.
void apply_compilation_config(Config& cfg, const std::string& json_text);

// cudagraph_mode, any case (vLLM's enum names); throws Error for another name.
void set_cudagraph_mode(Config& cfg, const std::string& mode);

// vLLM's optimization level (-O0 .. -O3): 0 turns CUDA graphs off unless cudagraph_mode says otherwise;
// 1-3 keep them.
void apply_optimization_level(Config& cfg, const std::string& level);

}  // namespace llmserve
