// Per-request sampling and stopping parameters (OpenAI names plus vLLM's extensions).
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace llmserve {

struct SamplingParams {
  int n = 1;
  double temperature = 1.0;  // 0: greedy
  double top_p = 1.0;
  int top_k = 0;             // 0 or -1: off
  double min_p = 0.0;
  double repetition_penalty = 1.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  std::optional<int64_t> seed;
  int max_tokens = 16;
  int min_tokens = 0;
  bool ignore_eos = false;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool include_stop_str_in_output = false;
  int logprobs = -1;  // -1: none; k >= 0: chosen token's logprob plus the top k
  // OpenAI's logit_bias: added to the raw logits of these tokens before the penalties (as vLLM);
  // token ids ascending, values in [-100, 100].
  std::vector<int32_t> logit_bias_ids;
  std::vector<float> logit_bias;
  bool skip_special_tokens = true;

  bool greedy() const { return temperature < 1e-5 || top_k == 1; }
};

// Reads the fields present in `j` (OpenAI/vLLM names; max_completion_tokens is accepted for
// max_tokens, top_logprobs with logprobs) over `p`. Throws Error naming the field for a wrong type or
// an out-of-range value.
void sampling_params_from_json(const nlohmann::json& j, SamplingParams& p);
void sampling_params_validate(const SamplingParams& p, int64_t vocab_size);

}  // namespace llmserve
