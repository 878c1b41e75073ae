// The step plan: what every rank does in one step, decided by the scheduler on rank 0. It travels
// from rank 0 to its tensor group, then stage to stage with the activations. Serialized as a
// compact versioned binary message.
#pragma once
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "engine/sampling_params.h"

namespace llmserve {

constexpr uint32_t kStepPlanVersion = 10;

// What the last stage needs to sample a sequence, sent when it (re)starts (num_computed == 0 or
// after a recompute). Kept out of line so that a step's entries stay small (a 256-sequence plan is
// rebuilt every step).
struct SeqStart {
  int32_t prompt_len = 0;
  int64_t seed = 0;
  SamplingParams params;
  std::vector<int32_t> eos_ids;  // suppressed before min_tokens unless ignore_eos
  std::vector<int32_t> prefix;   // tokens [0, num_computed) when they came from the prefix cache
};

// Asynchronous scheduling plans a decode before the token it feeds is known: the token that row r of
// the previous step's sampled tokens (plan order) will hold is written as pending_token(r), and the
// worker that sampled it fills it in before the step runs.
constexpr int32_t pending_token(int32_t row) { return -1 - row; }
constexpr bool is_pending_token(int32_t t) { return t < 0; }
constexpr int32_t pending_row(int32_t t) { return -1 - t; }

struct SeqStep {
  uint64_t seq_id = 0;
  int32_t num_computed = 0;          // tokens of the sequence already in the KV cache
  std::vector<int32_t> tokens;       // tokens fed this step (positions num_computed...); a pending one is
                                     // pending_token(row) (asynchronous scheduling)
  std::vector<int32_t> block_table;  // physical blocks covering num_computed + tokens.size()
  bool sample = false;               // this step's last token yields the next token
  std::shared_ptr<SeqStart> start;   // set when the sequence (re)starts
  // prompt_logprobs: the prompt tokens that this step's first prompt_targets.size() tokens predict
  // (tokens[i], at position num_computed + i, predicts prompt_targets[i], the prompt token at
  // num_computed + i + 1); their logits rows follow every sampled row in the step's logits.
  std::vector<int32_t> prompt_targets;
  // Pooling (an embedding request: it never samples): the final-norm hidden states of this step's
  // tokens [pool_from, pool_from + pool_count) are summed into the sequence's pooled vector on the last
  // stage (which starts afresh when the sequence (re)starts); with pool_done the prompt is complete
  // after this step and the vector goes back as a SampledToken of position kPooled. Their rows follow
  // the prompt_logprobs rows in the step's logits_indices.
  int32_t pool_from = 0, pool_count = 0;
  bool pool_done = false;
  // Speculative decoding (engine/speculative.h): the last num_draft of `tokens` are proposed tokens, and
  // the step samples a row after each of its last num_draft + 1 tokens (with sample set; rows in order).
  int32_t num_draft = 0;
  int32_t sampled_rows() const { return sample ? 1 + num_draft : 0; }
  // The sequence's LoRA adapter slot (SamplingParams::lora; 0: none).
  int32_t lora = 0;
};

struct BlockCopy {
  int32_t src = 0, dst = 0;
};

struct StepPlan {
  uint32_t version = kStepPlanVersion;
  uint64_t step_id = 0;
  bool shutdown = false;
  std::vector<SeqStep> seqs;
  // Block copies before the forward, swap_in first: the scheduler swaps sequences in before it preempts
  // others, so a swap-out may reuse a host block a swap-in of the same plan frees, or copy out the very
  // blocks a swap-in fills.
  std::vector<BlockCopy> swap_out;  // device block -> host block
  std::vector<BlockCopy> swap_in;   // host block -> device block
  std::vector<uint64_t> finished;   // sequences whose per-rank state can go
  // LoRA adapters loaded at run time (/v1/load_lora_adapter), each into its slot before the step's forward
  // pass (and before any later step's: plans run in order on every rank).
  struct LoraLoad {
    int32_t slot = 0;
    std::string name, path;
  };
  std::vector<LoraLoad> lora_loads;

  std::string serialize() const;
  static StepPlan deserialize(const std::string& bytes);  // throws Error on a bad message
  int64_t num_tokens() const;
};

// What the last stage sends back: one sampled token per sampling sequence (with drafts, the samples up
// to and including the first that differs from its draft), with logprobs if asked;
// then, for sequences with prompt_logprobs, one entry per prompt token predicted this step.
// A sampled token of kNoToken: the draw found no token it may draw (every token masked by the
// request's allowed_token_ids, bad_words, min_tokens and guided decoding together, or NaN logits).
// The engine ends that request with an error; an asynchronous step planned ahead feeds it as an id
// outside the vocabulary (which embeds as zeros), and its output is dropped with the sequence.
constexpr int32_t kNoToken = std::numeric_limits<int32_t>::max();

// A SampledToken of this position carries a pooling sequence's vector (SeqStep::pool_done): `pooled`
// the sum of the final-norm hidden states of its `rank` pooled positions.
constexpr int32_t kPooled = -2;

struct SampledToken {
  uint64_t seq_id = 0;
  int32_t token = 0;  // or kNoToken
  float logprob = 0;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
  int32_t position = -1;  // -1: a sampled token; >= 1: the log-probability of the prompt token there
  int32_t rank = 0;       // prompt tokens: vLLM's rank, how many tokens have a logit >= the token's (1: the best)
  std::vector<float> pooled;  // position kPooled: the pooled vector [hidden]
};

std::string serialize_results(uint64_t step_id, const std::vector<SampledToken>& r);
std::vector<SampledToken> deserialize_results(const std::string& bytes, uint64_t* step_id);

}  // namespace llmserve
