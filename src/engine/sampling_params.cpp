#include "engine/sampling_params.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "engine/guided.h"
#include "common/log.h"
#include "kernels/draw.h"
#include "model/model_file.h"
#include "tokenizer/tokenizer.h"

namespace llmserve {
using json = nlohmann::json;

namespace {
// An integer of JSON value v (key names it in the error) that fits T: out-of-range values are refused,
// not wrapped (a max_tokens of 10^12 read as an int was negative).
template <typename T>
T int_of(const json& v, const char* key) {
  // (The parser reads a whole number past 64 bits, 2^70 say, as a float: too large, not fractional.)
  if (v.is_number_float() && std::isfinite(v.get<double>()) && std::fabs(v.get<double>()) >= 0x1p63 &&
      v.get<double>() == std::floor(v.get<double>()))
    throw Error(cat("'", key, "' is out of range"));
  if (!v.is_number_integer()) throw Error(cat("'", key, "' must be an integer"));
  const bool fits = v.is_number_unsigned()
                        ? v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<T>::max())
                        : v.get<int64_t>() >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
                              v.get<int64_t>() <= static_cast<int64_t>(std::numeric_limits<T>::max());
  if (!fits) throw Error(cat("'", key, "' is out of range"));
  return v.get<T>();
}

template <typename T>
void take(const json& j, const char* key, T& out) {
  if (!j.contains(key) || j[key].is_null()) return;
  const json& v = j[key];
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw Error(cat("'", key, "' must be a boolean"));
  } else if constexpr (std::is_integral_v<T>) {
    out = int_of<T>(v, key);
    return;
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) throw Error(cat("'", key, "' must be a number"));
  }
  out = v.get<T>();
}
}  // namespace

void sampling_params_from_json(const json& j, SamplingParams& p) {
  if (!j.is_object()) throw Error("sampling parameters must be an object");
  take(j, "n", p.n);
  take(j, "temperature", p.temperature);
  take(j, "top_p", p.top_p);
  take(j, "top_k", p.top_k);
  take(j, "min_p", p.min_p);
  take(j, "repetition_penalty", p.repetition_penalty);
  take(j, "presence_penalty", p.presence_penalty);
  take(j, "frequency_penalty", p.frequency_penalty);
  if (j.contains("seed") && !j["seed"].is_null()) p.seed = int_of<int64_t>(j["seed"], "seed");
  take(j, "max_tokens", p.max_tokens);
  take(j, "max_completion_tokens", p.max_tokens);
  take(j, "min_tokens", p.min_tokens);
  take(j, "ignore_eos", p.ignore_eos);
  take(j, "include_stop_str_in_output", p.include_stop_str_in_output);
  take(j, "skip_special_tokens", p.skip_special_tokens);
  take(j, "priority", p.priority);
  take(j, "use_beam_search", p.beam_search);
  take(j, "length_penalty", p.length_penalty);
  if (j.contains("early_stopping") && !j["early_stopping"].is_null() && j["early_stopping"] != false)
    throw Error("'early_stopping' is not supported (beam search runs to max_tokens or until every beam has ended)");
  // vLLM's and OpenAI's other options that change what is generated, refused when set to anything but
  // their no-op value (false, empty, null): an answer that silently did not do what was asked is worse
  // than an error.
  if (j.contains("best_of") && !j["best_of"].is_null() && (!j["best_of"].is_number_integer() || j["best_of"] != p.n))
    throw Error("'best_of' other than n is not supported");
  for (const char* key : {"suffix", "logits_processors"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const json& v = j[key];
    const bool noop = v == false || (v.is_array() && v.empty()) || (v.is_string() && v.get<std::string>().empty());
    if (!noop) throw Error(cat("'", key, "' is not supported by llmserve yet"));
  }
  if (j.contains("stop") && !j["stop"].is_null()) {
    const json& s = j["stop"];
    p.stop.clear();
    if (s.is_string()) {
      p.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      for (const auto& x : s) {
        if (!x.is_string()) throw Error("'stop' must be a string or a list of strings");
        p.stop.push_back(x.get<std::string>());
      }
    } else {
      throw Error("'stop' must be a string or a list of strings");
    }
  }
  if (j.contains("stop_token_ids") && !j["stop_token_ids"].is_null()) {
    if (!j["stop_token_ids"].is_array()) throw Error("'stop_token_ids' must be a list of integers");
    p.stop_token_ids.clear();
    for (const auto& x : j["stop_token_ids"]) {
      if (!x.is_number_integer()) throw Error("'stop_token_ids' must be a list of integers");
      p.stop_token_ids.push_back(int_of<int32_t>(x, "stop_token_ids"));
    }
  }
  // logit_bias: {"token id": bias}, biases clamped to [-100, 100] as vLLM does. (A token named twice,
  // as "5" and "05", takes the bias of the key that sorts last.)
  if (j.contains("logit_bias") && !j["logit_bias"].is_null()) {
    const json& b = j["logit_bias"];
    if (!b.is_object()) throw Error("'logit_bias' must be an object mapping token ids to biases");
    std::map<int32_t, float> bias;
    for (const auto& [key, v] : b.items()) {
      int64_t id = 0;
      const char* end = key.data() + key.size();
      const auto [ptr, ec] = std::from_chars(key.data(), end, id);
      if (key.empty() || ec != std::errc() || ptr != end || id < 0 || id > std::numeric_limits<int32_t>::max())
        throw Error(cat("'logit_bias' keys must be token ids, got '", key, "'"));
      if (!v.is_number() || !std::isfinite(v.get<double>()))
        throw Error(cat("'logit_bias' values must be numbers, got ", v.dump(), " for token ", id));
      bias[static_cast<int32_t>(id)] = static_cast<float>(std::clamp(v.get<double>(), -100.0, 100.0));
    }
    p.logit_bias_ids.clear(), p.logit_bias.clear();
    for (const auto& [id, x] : bias) p.logit_bias_ids.push_back(id), p.logit_bias.push_back(x);
  }
  if (j.contains("bad_words") && !j["bad_words"].is_null()) {
    const json& b = j["bad_words"];
    if (!b.is_array()) throw Error("'bad_words' must be a list of strings");
    p.bad_words.clear();
    for (const auto& x : b) {
      if (!x.is_string()) throw Error("'bad_words' must be a list of strings");
      p.bad_words.push_back(x.get<std::string>());
    }
  }
  if (j.contains("allowed_token_ids") && !j["allowed_token_ids"].is_null()) {
    const json& a = j["allowed_token_ids"];
    if (!a.is_array()) throw Error("'allowed_token_ids' must be a list of integers");
    if (a.empty()) throw Error("'allowed_token_ids' must not be empty");  // as vLLM
    p.allowed_token_ids.clear();
    for (const auto& x : a) {
      if (!x.is_number_integer()) throw Error("'allowed_token_ids' must be a list of integers");
      p.allowed_token_ids.push_back(int_of<int32_t>(x, "allowed_token_ids"));
    }
    std::sort(p.allowed_token_ids.begin(), p.allowed_token_ids.end());
    p.allowed_token_ids.erase(std::unique(p.allowed_token_ids.begin(), p.allowed_token_ids.end()), p.allowed_token_ids.end());
  }
  // Guided decoding: response_format json_object / json_schema (text: none), guided_choice,
  // guided_json, guided_regex and guided_grammar, and structured_outputs' forms of them.
  auto one_kind = [&](const char* kind) {
    auto what = [](const std::string& k) {
      return k == "choice" ? "a choice" : k == "regex" ? "a regex" : k == "grammar" ? "a grammar" : "a JSON format";
    };
    if (!p.guided.empty())
      throw Error(cat("only one kind of guided decoding per request (", what(p.guided), " and ", what(kind), " were both asked)"));
    p.guided = kind;
  };
  auto take_regex = [&](const json& v, const char* name) {
    if (!v.is_string()) throw Error(cat("'", name, "' must be a string (a regular expression)"));
    p.guided_schema = v.get<std::string>();
    one_kind("regex");
  };
  // A JSON schema: an object, or its JSON text.
  auto take_schema = [&](const json& v, const char* name) {
    if (v.is_string()) {
      p.guided_schema = v.get<std::string>();
    } else if (v.is_object() || v.is_boolean()) {
      p.guided_schema = v.dump();
    } else {
      throw Error(cat("'", name, "' must be a JSON schema (an object, or its JSON text)"));
    }
    one_kind("json_schema");
  };
  if (j.contains("response_format") && !j["response_format"].is_null()) {
    const json& f = j["response_format"];
    if (!f.is_object() || !f.contains("type") || !f["type"].is_string())
      throw Error("'response_format' must be an object with a 'type'");
    const std::string type = f["type"].get<std::string>();
    if (type == "json_object") {
      p.guided = "json";
    } else if (type == "json_schema") {
      p.guided.clear();
      if (!f.contains("json_schema") || !f["json_schema"].is_object() || !f["json_schema"].contains("schema"))
        throw Error("response_format 'json_schema' needs a 'json_schema' object with a 'schema'");
      take_schema(f["json_schema"]["schema"], "response_format.json_schema.schema");
    } else if (type == "text") {
      p.guided.clear();
    } else {
      throw Error(cat("response_format '", type, "' is not supported by llmserve yet (json_object, json_schema and text are)"));
    }
  }
  if (j.contains("guided_json") && !j["guided_json"].is_null()) take_schema(j["guided_json"], "guided_json");
  // A choice list: vLLM's structured_outputs.choice, or its older guided_choice.
  auto take_choice = [&](const json& c, const char* name) {
    if (!c.is_array()) throw Error(cat("'", name, "' must be a non-empty list of strings"));
    p.guided_choice.clear();
    for (const auto& x : c) {
      if (!x.is_string()) throw Error(cat("'", name, "' must be a non-empty list of strings"));
      p.guided_choice.push_back(x.get<std::string>());
    }
    one_kind("choice");
  };
  if (j.contains("guided_choice") && !j["guided_choice"].is_null()) take_choice(j["guided_choice"], "guided_choice");
  if (j.contains("guided_regex") && !j["guided_regex"].is_null()) take_regex(j["guided_regex"], "guided_regex");
  // A context-free grammar (xgrammar's EBNF / GBNF): structured_outputs.grammar, or the older guided_grammar.
  auto take_grammar = [&](const json& v, const char* name) {
    if (!v.is_string()) throw Error(cat("'", name, "' must be a string (a grammar: root ::= ...)"));
    p.guided_schema = v.get<std::string>();
    one_kind("grammar");
  };
  if (j.contains("guided_grammar") && !j["guided_grammar"].is_null()) take_grammar(j["guided_grammar"], "guided_grammar");
  // vLLM's structured_outputs (its current name for guided decoding): choice and json_object.
  if (j.contains("structured_outputs") && !j["structured_outputs"].is_null()) {
    const json& so = j["structured_outputs"];
    if (!so.is_object()) throw Error("'structured_outputs' must be an object");
    for (const auto& [key, v] : so.items()) {
      if (v.is_null()) continue;
      if (key == "choice") {
        take_choice(v, "structured_outputs.choice");
      } else if (key == "json_object") {
        if (!v.is_boolean()) throw Error("'structured_outputs.json_object' must be a boolean");
        if (!v.get<bool>()) continue;
        one_kind("json");
      } else if (key == "json") {
        take_schema(v, "structured_outputs.json");
      } else if (key == "regex") {
        take_regex(v, "structured_outputs.regex");
      } else if (key == "grammar") {
        take_grammar(v, "structured_outputs.grammar");
      } else if (key == "structural_tag") {
        throw Error("'structured_outputs.structural_tag' is not supported by llmserve yet (choice, regex, grammar, json and json_object are)");
      } else if (key == "disable_any_whitespace") {
        if (!v.is_boolean()) throw Error("'structured_outputs.disable_any_whitespace' must be a boolean");
        p.guided_compact = v.get<bool>();
      } else if (key != "disable_fallback" && key != "whitespace_pattern") {
        throw Error(cat("unknown 'structured_outputs' field '", key, "'"));
      } else if (!(v == false || (v.is_string() && v.get<std::string>().empty()))) {
        throw Error(cat("'structured_outputs.", key, "' is not supported by llmserve yet"));
      }
    }
  }
  // logprobs: an integer (completions API) or a boolean with top_logprobs (chat API).
  if (j.contains("logprobs") && !j["logprobs"].is_null()) {
    const json& l = j["logprobs"];
    if (l.is_boolean()) {
      p.logprobs = l.get<bool>() ? 0 : -1;
    } else if (l.is_number_integer()) {
      p.logprobs = int_of<int>(l, "logprobs");
      if (p.logprobs < 0) throw Error(cat("'logprobs' must not be negative, got ", p.logprobs));
    } else {
      throw Error("'logprobs' must be a boolean or an integer");
    }
  }
  if (j.contains("prompt_logprobs") && !j["prompt_logprobs"].is_null()) {
    const json& l = j["prompt_logprobs"];
    if (l.is_boolean() && !l.get<bool>()) {
      p.prompt_logprobs = -1;  // false: none (what some clients send for "off")
    } else {
      p.prompt_logprobs = int_of<int>(l, "prompt_logprobs");
      if (p.prompt_logprobs < 0)
        throw Error(cat("'prompt_logprobs' must be a non-negative integer, got ", p.prompt_logprobs,
                        " (llmserve returns at most max_logprobs alternatives, not the whole vocabulary)"));
    }
  }
  if (j.contains("top_logprobs") && !j["top_logprobs"].is_null()) {
    const int k = int_of<int>(j["top_logprobs"], "top_logprobs");
    if (k < 0) throw Error(cat("'top_logprobs' must not be negative, got ", k));
    if (p.logprobs < 0) throw Error("'top_logprobs' requires 'logprobs' to be true");
    p.logprobs = k;
  }
}

std::string guided_schema_as_sent(const nlohmann::ordered_json& body) {
  using ojson = nlohmann::ordered_json;
  auto text = [](const ojson& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
  auto has = [](const ojson& o, const char* k) { return o.is_object() && o.contains(k) && !o[k].is_null(); };
  if (has(body, "response_format") && has(body["response_format"], "json_schema") &&
      has(body["response_format"]["json_schema"], "schema"))
    return text(body["response_format"]["json_schema"]["schema"]);
  if (has(body, "guided_json")) return text(body["guided_json"]);
  if (has(body, "structured_outputs") && has(body["structured_outputs"], "json")) return text(body["structured_outputs"]["json"]);
  return {};
}

void check_priority(const SamplingParams& p, bool priority_scheduling) {
  if (p.priority != 0 && !priority_scheduling)
    throw Error(cat("Got priority ", p.priority, " but Priority scheduling is not enabled."));
}

void check_tokenizer_needs(const SamplingParams& p, bool has_tokenizer, std::string* param) {
  if (has_tokenizer) return;
  if (!p.stop.empty()) {
    if (param) *param = "stop";
    throw Error("stop strings need the model's tokenizer, which this server lacks: use stop_token_ids");
  }
  if (!p.guided.empty()) {
    if (param) *param = p.guided == "choice" ? "guided_choice" : "response_format";
    throw Error("guided decoding needs the model's tokenizer, which this server lacks");
  }
}

LogprobsMode parse_logprobs_mode(const std::string& name) {
  if (name == "raw_logprobs") return LogprobsMode::RawLogprobs;
  if (name == "raw_logits") return LogprobsMode::RawLogits;
  if (name == "processed_logprobs") return LogprobsMode::ProcessedLogprobs;
  if (name == "processed_logits") return LogprobsMode::ProcessedLogits;
  throw Error(cat("logprobs_mode must be raw_logprobs, raw_logits, processed_logprobs or processed_logits, got '", name, "'"));
}

void sampling_params_validate(const SamplingParams& p, int64_t vocab_size, int max_logprobs) {
  auto bad = [](const std::string& m) { throw Error(m); };
  if (p.n < 1 || p.n > 128) bad(cat("'n' must be between 1 and 128, got ", p.n));
  if (p.temperature < 0 || p.temperature > 100) bad(cat("'temperature' must be in [0, 100], got ", p.temperature));
  if (!(p.top_p > 0 && p.top_p <= 1)) bad(cat("'top_p' must be in (0, 1], got ", p.top_p));
  if (p.top_k < -1) bad(cat("'top_k' must be -1 (off) or positive, got ", p.top_k));
  if (p.min_p < 0 || p.min_p > 1) bad(cat("'min_p' must be in [0, 1], got ", p.min_p));
  if (!(p.repetition_penalty > 0 && p.repetition_penalty <= 10))
    bad(cat("'repetition_penalty' must be in (0, 10], got ", p.repetition_penalty));
  if (p.presence_penalty < -2 || p.presence_penalty > 2) bad(cat("'presence_penalty' must be in [-2, 2], got ", p.presence_penalty));
  if (p.frequency_penalty < -2 || p.frequency_penalty > 2)
    bad(cat("'frequency_penalty' must be in [-2, 2], got ", p.frequency_penalty));
  if (p.max_tokens < 1) bad(cat("'max_tokens' must be at least 1, got ", p.max_tokens));
  if (p.min_tokens < 0 || p.min_tokens > p.max_tokens)
    bad(cat("'min_tokens' must be in [0, max_tokens], got ", p.min_tokens));
  if (p.logprobs > std::min(max_logprobs, kMaxTopLogprobs))
    bad(cat("Requested sample logprobs of ", p.logprobs, ", which is greater than max allowed: ",
            std::min(max_logprobs, kMaxTopLogprobs), " ('logprobs' / 'top_logprobs')"));
  if (p.logprobs < -1) bad("'logprobs' must not be negative");
  if (p.prompt_logprobs > std::min(max_logprobs, kMaxTopLogprobs))
    bad(cat("Requested prompt logprobs of ", p.prompt_logprobs, ", which is greater than max allowed: ",
            std::min(max_logprobs, kMaxTopLogprobs), " ('prompt_logprobs')"));
  if (p.prompt_logprobs < -1) bad("'prompt_logprobs' must not be negative");
  if (p.guided == "choice") {
    if (p.guided_choice.empty()) bad("'guided_choice' must be a non-empty list of strings");
    for (const auto& c : p.guided_choice)
      if (c.empty()) bad("'guided_choice' strings must not be empty");
  } else if (p.guided == "json_schema" || p.guided == "regex" || p.guided == "grammar") {
    make_guide(p);  // throws Error for what it cannot guide (and keeps it for the sampler: compiled once)
  } else if (!p.guided.empty() && p.guided != "json") {
    bad(cat("unknown guided decoding kind '", p.guided, "'"));
  }
  if (p.beam_search) {
    const int most = std::min(max_logprobs, kMaxTopLogprobs) / 2;  // (each step asks for 2 x n log-probabilities)
    if (p.n > most) bad(cat("beam search takes at most ", most, " beams (n), half of max_logprobs; got ", p.n));
    const char* clash = p.prompt_logprobs >= 0 ? "prompt_logprobs"
                        : !p.stop.empty() || !p.stop_token_ids.empty() ? "stop"
                        : !p.guided.empty() ? "guided decoding"
                        : !p.bad_words.empty() || !p.allowed_token_ids.empty() || !p.logit_bias_ids.empty() ? "token masks and biases"
                        : p.min_tokens > 0 ? "min_tokens"
                        : nullptr;
    if (clash) bad(cat("beam search does not take ", clash));
  }
  for (const auto& s : p.stop)
    if (s.empty()) bad("'stop' strings must not be empty");
  if (p.stop.size() > 64) bad("at most 64 'stop' strings");
  for (int32_t t : p.stop_token_ids)
    if (t < 0 || t >= vocab_size) bad(cat("'stop_token_ids' contains ", t, ", outside the vocabulary (", vocab_size, ")"));
  if (p.logit_bias_ids.size() != p.logit_bias.size()) bad("'logit_bias': ids and values differ in number");
  for (int32_t t : p.logit_bias_ids)
    if (t < 0 || t >= vocab_size) bad(cat("'logit_bias' names token ", t, ", outside the vocabulary (", vocab_size, ")"));
  for (int32_t t : p.allowed_token_ids)
    if (t < 0 || t >= vocab_size) bad(cat("'allowed_token_ids' contains ", t, ", outside the vocabulary (", vocab_size, ")"));
  if (p.bad_words.size() > 1024) bad("at most 1024 'bad_words'");
  for (const auto& w : p.bad_words)
    if (w.find_first_not_of(" \t\n\r\f\v") == std::string::npos) bad("'bad_words' must not be empty or blank");
  for (const auto& seq : p.bad_words_ids)
    for (int32_t t : seq)
      if (t < 0 || t >= vocab_size) bad(cat("'bad_words' encode to token ", t, ", outside the vocabulary (", vocab_size, ")"));
}

std::vector<std::vector<int32_t>> bad_words_token_ids(const std::vector<std::string>& words,
                                                      const std::function<std::vector<int32_t>(const std::string&)>& encode) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& w : words) {
    const size_t start = w.find_first_not_of(" \t\n\r\f\v");
    if (start == std::string::npos) continue;
    const std::string word = w.substr(start);
    std::vector<int32_t> alone = encode(word), spaced = encode(" " + word);
    if (!alone.empty()) out.push_back(alone);
    if (!spaced.empty() && (alone.empty() || (spaced[0] != alone[0] && spaced.size() == alone.size())))
      out.push_back(spaced);
  }
  return out;
}

namespace {
// The sampling parameters vLLM takes from a generation config (max_new_tokens as max_tokens), checked as
// a request's; `what` names the source in errors. With `strict`, other keys are refused.
json sampling_defaults_of(const json& g, int64_t vocab_size, const std::string& what, bool strict) {
  static const char* const keys[] = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens"};
  if (strict)
    for (const auto& [k, v] : g.items())
      if (std::find_if(std::begin(keys), std::end(keys), [&](const char* x) { return k == x; }) == std::end(keys))
        throw Error(cat(what, ": '", k, "' is not a sampling default (temperature, top_p, top_k, min_p, repetition_penalty, "
                        "max_new_tokens)"));
  json d = json::object();
  for (const char* k : keys)
    if (g.contains(k) && !g[k].is_null()) d[std::string(k) == "max_new_tokens" ? "max_tokens" : k] = g[k];
  try {
    SamplingParams p;
    sampling_params_from_json(d, p);
    sampling_params_validate(p, vocab_size);
  } catch (const Error& e) {
    throw Error(cat(what, ": ", e.what()));
  }
  return d;
}
}  // namespace

json generation_config_defaults(const std::string& text, int64_t vocab_size) {
  json g;
  try {
    g = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(cat("generation_config.json is not valid JSON: ", e.what()));
  }
  if (!g.is_object()) throw Error("generation_config.json is not a JSON object");
  return sampling_defaults_of(g, vocab_size, "generation_config.json", false);
}

json override_generation_defaults(json defaults, const std::string& overrides, int64_t vocab_size) {
  const json o = json::parse(overrides, nullptr, false);
  if (o.is_discarded() || !o.is_object()) throw Error(cat("override_generation_config must be a JSON object, got '", overrides, "'"));
  defaults.update(sampling_defaults_of(o, vocab_size, "override_generation_config", true));
  try {  // (the merged set as a request would carry it)
    SamplingParams p;
    sampling_params_from_json(defaults, p);
    sampling_params_validate(p, vocab_size);
  } catch (const Error& e) {
    throw Error(cat("override_generation_config: ", e.what()));
  }
  log_info("default sampling parameters with override_generation_config: ", defaults.dump());
  return defaults;
}

json generation_config_defaults(const ModelFile& file, int64_t vocab_size) {
  const auto text = file.text("tokenizer", "generation_config.json");
  if (!text) return json::object();
  json d = generation_config_defaults(*text, vocab_size);
  if (!d.empty())
    log_info("default sampling parameters from the model's generation_config.json: ", d.dump(),
             " (generation_config: vllm for vLLM's own)");
  return d;
}

void set_bad_words_ids(SamplingParams& p, const Tokenizer* tok) {
  p.bad_words_ids.clear();
  if (p.bad_words.empty()) return;
  if (!tok) throw Error("'bad_words' needs the model's tokenizer, which this model file does not have");
  p.bad_words_ids = bad_words_token_ids(p.bad_words, [tok](const std::string& w) { return tok->encode(w, false); });
}

void check_some_token_allowed(const SamplingParams& p, const std::vector<int64_t>& eos_ids) {
  if (p.allowed_token_ids.empty()) return;
  std::vector<int64_t> banned;
  for (const auto& w : p.bad_words_ids)
    if (w.size() == 1) banned.push_back(w[0]);
  if (p.min_tokens > 0) {
    banned.insert(banned.end(), p.stop_token_ids.begin(), p.stop_token_ids.end());
    // (EOS is not masked under ignore_eos, nor under guided decoding, which decides the end itself)
    if (!p.ignore_eos && p.guided.empty()) banned.insert(banned.end(), eos_ids.begin(), eos_ids.end());
  }
  std::sort(banned.begin(), banned.end());
  if (std::all_of(p.allowed_token_ids.begin(), p.allowed_token_ids.end(),
                  [&](int32_t t) { return std::binary_search(banned.begin(), banned.end(), t); }))
    throw Error("every token of 'allowed_token_ids' is banned by 'bad_words' or, while 'min_tokens' holds, is a stop "
                "token: no token could be generated");
}

}  // namespace llmserve
