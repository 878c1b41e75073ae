// Speculative decoding (vLLM's speculative_config): drafts by n-gram lookup (method "ngram") or from a
// smaller draft model (method "draft_model", engine/draft_model.h).
//
// n-gram lookup (prompt lookup decoding): each decode step, the scheduler looks for the longest n-gram (between
// prompt_lookup_min and prompt_lookup_max tokens) that ends the sequence and occurred earlier in it
// (prompt or output), and proposes the up to num_speculative_tokens tokens that followed its first such
// occurrence. The step feeds the last token and the drafts; the last stage samples a token after each of
// them and keeps the samples up to the first that differs from its draft (Worker), so a step yields 1 to
// num_speculative_tokens + 1 tokens. Each sampled row draws from the sequence's own distribution at its
// position (the Gumbel noise keyed by seed and position, penalties and guided decoding over the tokens
// before it), so the tokens are those decoding one at a time would give, for greedy and seeded
// sampling alike; only the logits' rounding may differ between a one-token and a several-token step.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace llmserve {

enum class SpecMethod { Ngram, DraftModel };

struct SpeculativeConfig {
  SpecMethod method = SpecMethod::Ngram;
  std::string model;               // the draft model's file (method draft_model)
  int num_speculative_tokens = 0;  // 0: speculative decoding off
  int prompt_lookup_min = 0, prompt_lookup_max = 0;
  int disable_by_batch_size = 0;   // > 0: a step with more running sequences than this feeds no drafts
  bool enabled() const { return num_speculative_tokens > 0; }
};

// vLLM's speculative_config, a JSON object: method "ngram" (or "[ngram]") or "draft_model" (the method
// when only `model` is given, as vLLM infers it), num_speculative_tokens (>= 1, required), disable_by_batch_size
// (>= 1, or null); with ngram prompt_lookup_max / prompt_lookup_min (>= 1; either defaults to the other,
// both to 5 as in vLLM); with draft_model `model` (an llmserve model file, required) and
// draft_tensor_parallel_size (1 or null: the draft runs on world rank 0 alone). Empty text: off. Throws
// Error naming the problem (EAGLE, Medusa, MTP and other methods with heads are not run).
SpeculativeConfig parse_speculative_config(const std::string& json);

// The drafts for tokens[0, n): the tokens after the first earlier occurrence of the longest n-gram
// (min_n to max_n tokens) that ends the sequence, at most k of them (fewer when the occurrence is near
// the end). Empty when no n-gram of min_n tokens recurs.
std::vector<int32_t> ngram_propose(const int32_t* tokens, size_t n, int min_n, int max_n, int k);

}  // namespace llmserve
