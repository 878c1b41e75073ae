// Reasoning outputs (vLLM's --reasoning-parser qwen3 | deepseek_r1): a chat answer's thinking, between
// <think> and </think>, goes to the message's `reasoning` (and, as vLLM kept it for a while,
// `reasoning_content`) and the text after </think> is the content. Reasoning begins when the output
// begins with <think> (after any whitespace: Qwen3 writes it) or when the prompt already ends with it
// (DeepSeek-R1's template, Qwen3.5's); it ends at the first </think>. An output without either is all
// content; one cut before </think> is all reasoning, streamed or not.
#pragma once
#include <cstddef>
#include <string>

namespace llmserve {

// Whether a rendered prompt leaves the answer inside its reasoning: it ends with <think> (and whitespace).
bool prompt_opens_reasoning(const std::string& prompt);
// Whether it ends with </think> (and whitespace): the template closed an empty reasoning (Qwen3 with
// enable_thinking false), so the answer is guided from its first token.
bool prompt_closes_reasoning(const std::string& prompt);

// How the output so far divides. reasoning: text [begin, end); content: text from `content` once
// `content_ready`. While the output is not finished (`finished` false), a tail that may still become
// a tag is held back from both (a partial "<think>" at the start, a partial "</think>" in the reasoning).
// `known`: the reasoning's first bytes already known to hold no </think> (a stream's sent reasoning),
// which the search skips, so that a stream scans its reasoning once rather than once a chunk.
struct ReasoningSplit {
  bool has_reasoning = false;
  size_t begin = 0, end = 0;
  bool content_ready = false;
  size_t content = 0;
};
ReasoningSplit split_reasoning(const std::string& text, bool opened, bool finished, size_t known = 0);

}  // namespace llmserve
