// Per-request sampling and stopping parameters (OpenAI names plus vLLM's extensions).
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace llmserve {

// What each of a request's outputs holds (vLLM's RequestOutputKind): Cumulative, everything so far (the
// default); Delta, only what is new since the request's previous output (token ids, text, log-
// probabilities: the engine's cost per output no longer grows with the output's length;
// accumulate_output rebuilds the cumulative form); FinalOnly, one output when the request finishes
// (whole, as Cumulative's last).
enum class OutputKind { Cumulative, Delta, FinalOnly };

// An embedding request's pooling (vLLM's pooler_config pooling_type): the final-norm hidden states of
// the prompt that make its vector: the last position's, the mean of all, or the first's (CLS). None: a
// generation request.
enum class Pooling : uint8_t { None, Last, Mean, Cls };

// What a request's logprobs report (vLLM's engine-wide logprobs_mode): the log-softmax (Logprobs) or the
// values themselves (Logits) of the model's raw logits (Raw: before logit_bias, penalties, masks,
// temperature and filters), or of the processed ones the token is drawn from (Processed: after them; a
// greedy request's without temperature, tokens the filters drop left out of the alternatives).
// Prompt logprobs are raw log-probabilities in every mode, as vLLM's.
enum class LogprobsMode : uint8_t { RawLogprobs, RawLogits, ProcessedLogprobs, ProcessedLogits };
// The mode of vLLM's name (raw_logprobs, raw_logits, processed_logprobs, processed_logits); throws Error
// naming the four for another.
LogprobsMode parse_logprobs_mode(const std::string& name);
inline bool processed(LogprobsMode m) { return m == LogprobsMode::ProcessedLogprobs || m == LogprobsMode::ProcessedLogits; }
inline bool reports_logits(LogprobsMode m) { return m == LogprobsMode::RawLogits || m == LogprobsMode::ProcessedLogits; }

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
  // vLLM's prompt_logprobs: -1 none; k >= 0: each prompt token's logprob (after the first) given the
  // tokens before it, its rank, and the top k alternatives at its position.
  int prompt_logprobs = -1;
  // OpenAI's logit_bias: added to the raw logits of these tokens before the penalties (as vLLM);
  // token ids ascending, values in [-100, 100].
  std::vector<int32_t> logit_bias_ids;
  std::vector<float> logit_bias;
  bool skip_special_tokens = true;
  // vLLM's bad_words: the words as given, and their token sequences (bad_words_token_ids, filled by
  // the front end, which has the tokenizer). The last token of a sequence is banned where the output
  // so far ends with the tokens before it.
  std::vector<std::string> bad_words;
  std::vector<std::vector<int32_t>> bad_words_ids;
  // vLLM's allowed_token_ids: every other token's logit masked (sorted, distinct; empty: off).
  std::vector<int32_t> allowed_token_ids;
  // Guided decoding (src/engine/guided.h): "" off, "json" (response_format json_object), "choice"
  // (guided_choice: exactly one of guided_choice), "json_schema" (a value valid under the schema whose
  // JSON text is guided_schema), "regex" (a text the regular expression guided_schema fully matches).
  std::string guided;
  std::vector<std::string> guided_choice;
  std::string guided_schema;
  // JSON kinds: no whitespace between tokens (vLLM's structured_outputs.disable_any_whitespace).
  bool guided_compact = false;
  // With a reasoning parser (server/reasoning_parser.h), the guide applies after the reasoning, as
  // vLLM's: 0 from the first byte; 1 after a <think>...</think> the answer may begin with; 2 after the
  // </think> that ends the reasoning the prompt opened (Guide::after_think).
  uint8_t guided_after_think = 0;
  // vLLM's request priority (scheduling_policy priority: lower values are admitted first, and preempted
  // last). Read by rank 0's scheduler only; not sent to the workers.
  int priority = 0;
  // vLLM's cache_salt: prompt blocks are found in and added to the prefix cache under this salt only
  // (one tenant's prompts cannot be probed by another's timing). Read by rank 0's scheduler only.
  std::string cache_salt;
  // The LoRA adapter the request names as its `model` (model/lora.h): 1 + its index in lora_modules, 0 for
  // the base model. Read by rank 0's scheduler, which sends it with each step (SeqStep::lora).
  int32_t lora = 0;
  // Which load of an adapter the request meant (Engine::lora_slots' uid: runtime LoRA updating reuses a
  // slot after an unload): the engine refuses the request when the slot holds another since; 0: whatever
  // the slot serves. The engine sets it, and the prefix cache keys the adapter's blocks by it.
  uint64_t lora_uid = 0;
  // vLLM's use_beam_search: n beams scored with length_penalty, run above the engine by
  // server/beam_search.h (the engine itself refuses such a request). Not sent to the workers.
  bool beam_search = false;
  double length_penalty = 1.0;
  // An embedding request (the pooling runner): the prompt is computed and pooled, nothing is sampled
  // (the engine's RequestOutput::embedding). Read by rank 0's scheduler, which sends the workers the
  // rows to pool (SeqStep::pool_from); not sent itself.
  Pooling pooling = Pooling::None;
  // Set by the caller (the server, `generate`), not read from a request.
  OutputKind output_kind = OutputKind::Cumulative;
  // Set by the caller from the config's logprobs_mode (beam search keeps raw log-probabilities, which it
  // scores with); sent to the workers.
  LogprobsMode logprobs_mode = LogprobsMode::RawLogprobs;

  bool greedy() const { return temperature < 1e-5 || top_k == 1; }
};

// Reads the fields present in `j` (OpenAI/vLLM names; max_completion_tokens is accepted for
// max_tokens, top_logprobs with logprobs) over `p`. Throws Error naming the field for a wrong type or
// an out-of-range value.
void sampling_params_from_json(const nlohmann::json& j, SamplingParams& p);
// The JSON schema of a request's guided decoding (response_format json_schema, guided_json,
// structured_outputs json) as its text stands in the request, properties in the order given: the
// order they are produced in (nlohmann::json, which sampling_params_from_json reads, sorts them).
std::string guided_schema_as_sent(const nlohmann::ordered_json& body);
// max_logprobs: the most log-probabilities a request may ask for (vLLM's max_logprobs, at most
// kMaxTopLogprobs).
void sampling_params_validate(const SamplingParams& p, int64_t vocab_size, int max_logprobs = 20);
// Without the model's tokenizer (none in the model, or skip_tokenizer_init), stop strings (matched in
// the text) and guided decoding (each token's bytes) cannot be honoured: Error naming the field, and
// `param` set to the request field to name in an HTTP error.
void check_tokenizer_needs(const SamplingParams& p, bool has_tokenizer, std::string* param = nullptr);
// A non-zero priority without priority scheduling is refused (vLLM's message), not ignored.
void check_priority(const SamplingParams& p, bool priority_scheduling);
// The token sequences of p.bad_words as vLLM makes them: each word (leading spaces stripped) encoded
// alone, and with one leading space where that starts with another token and has as many tokens (the
// word inside text). Empty encodings are dropped.
std::vector<std::vector<int32_t>> bad_words_token_ids(const std::vector<std::string>& words,
                                                      const std::function<std::vector<int32_t>(const std::string&)>& encode);
// vLLM's generation_config "auto": the sampling defaults a model's generation_config.json recommends
// (temperature, top_p, top_k, min_p, repetition_penalty; max_new_tokens as max_tokens), as a JSON
// object of the fields present, for requests that do not set them. Throws Error for text that is not
// a JSON object or values that are not valid parameters.
nlohmann::json generation_config_defaults(const std::string& generation_config_json, int64_t vocab_size);
class ModelFile;
// vLLM's override_generation_config (a JSON object of those keys: temperature, top_p, top_k, min_p,
// repetition_penalty, max_new_tokens) over `defaults` (the model's, or none with generation_config vllm);
// other keys and values a request could not set are refused. Logged.
nlohmann::json override_generation_defaults(nlohmann::json defaults, const std::string& overrides, int64_t vocab_size);
// The same from a model file's generation_config.json (an empty object when it has none); logged.
nlohmann::json generation_config_defaults(const ModelFile& file, int64_t vocab_size);
class Tokenizer;
// p.bad_words_ids from p.bad_words with the model's tokenizer; throws Error when there are bad words
// and no tokenizer.
void set_bad_words_ids(SamplingParams& p, const Tokenizer* tok);
// Throws Error, as vLLM refuses it, when p's allowed_token_ids are all banned by the first step's
// masks (one-token bad words; the stop tokens, `eos_ids` among them, while min_tokens holds), so that
// no token could ever be drawn. (Masks that empty a later step, a longer bad word or guided decoding,
// fail the request when they do: step_plan.h's kNoToken.)
void check_some_token_allowed(const SamplingParams& p, const std::vector<int64_t>& eos_ids);

}  // namespace llmserve
