#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>

#include "common/dtype.h"
#include "convert/gguf.h"
#include "model/model_file.h"
#include "model/weight_names.h"
#include "chat/chat_template.h"
#include "tokenizer/tokenizer.h"
#include <fstream>

using namespace llmserve;
using json = nlohmann::json;

// The real SmolLM2 GGUF against its conversion (run by ctest after fetch_smollm2, which sets
// LLMSERVE_SMOLLM2_DIR): every tensor equals the dequantized GGUF tensor (Q/K rows un-permuted),
// rounded to the bf16 the conversion stores.
TEST(GgufRoundTrip, SmolLM2EveryTensor) {
  const char* dir = std::getenv("LLMSERVE_SMOLLM2_DIR");
  ASSERT_NE(dir, nullptr) << "LLMSERVE_SMOLLM2_DIR not set (ctest sets it after fetching the model)";
  GgufFile g(std::string(dir) + "/SmolLM2-135M-Instruct.Q4_1.gguf");
  ModelFile mf(std::string(dir) + "/smollm2-135m-instruct.h5");
  const ModelSpec& s = mf.spec();
  EXPECT_EQ(s.num_layers, 30);
  EXPECT_EQ(s.num_heads, 9);
  EXPECT_EQ(s.num_kv_heads, 3);
  EXPECT_TRUE(s.tie_word_embeddings);
  EXPECT_EQ(s.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_TRUE(mf.text("tokenizer", "chat_template").has_value());
  const json tok = json::parse(*mf.text("tokenizer", "tokenizer.json"));
  EXPECT_EQ(tok["model"]["vocab"].size(), 49152u);
  EXPECT_EQ(tok["added_tokens"][1]["content"].get<std::string>(), "<|im_start|>");
  auto gname = [](const std::string& hf) {
    if (hf == "model.embed_tokens.weight") return std::string("token_embd.weight");
    if (hf == "model.norm.weight") return std::string("output_norm.weight");
    const auto dot = hf.find('.', 13);
    const std::string layer = hf.substr(13, dot - 13), rest = hf.substr(dot + 1);
    static const std::map<std::string, std::string> m = {
        {"input_layernorm.weight", "attn_norm.weight"}, {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"}, {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"}, {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"}};
    return "blk." + layer + "." + m.at(rest);
  };
  int n = 0;
  for (const auto& w : expected_weights(s)) {
    auto v = g.read_f32(gname(w.name));
    if (w.name.ends_with("q_proj.weight")) v = gguf_unpermute_rows(v, w.shape[0], w.shape[1], s.num_heads);
    if (w.name.ends_with("k_proj.weight")) v = gguf_unpermute_rows(v, w.shape[0], w.shape[1], s.num_kv_heads);
    for (auto& x : v) x = bf16_to_f32(f32_to_bf16(x));
    ASSERT_EQ(mf.read_all_f32(w.name), v) << w.name;
    ++n;
  }
  EXPECT_EQ(n, 2 + 30 * 9);
}

// The GGUF's chat template and the tokenizer built from its metadata reproduce the ids Hugging Face
// tokenizers gave for the chat prompts in inputs/prompts/smollm2-chat.jsonl.
TEST(GgufRoundTrip, SmolLM2TokenizerMatchesHf) {
  const char* dir = std::getenv("LLMSERVE_SMOLLM2_DIR");
  ASSERT_NE(dir, nullptr);
  ModelFile mf(std::string(dir) + "/smollm2-135m-instruct.h5");
  auto tok = Tokenizer::from_model_file(mf);
  auto chat = ChatTemplate::from_model_file(mf);
  EXPECT_FALSE(chat->is_fallback());
  std::ifstream f(std::string(LLMSERVE_SOURCE_DIR) + "/inputs/prompts/smollm2-chat.jsonl");
  int n = 0;
  for (std::string line; std::getline(f, line);) {
    const auto j = nlohmann::ordered_json::parse(line);
    // The GGUF's chat template, rendered by llmserve, then tokenized by llmserve.
    const std::string text = chat->render(j["messages"]);
    EXPECT_EQ(tok->encode(text, false), j["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(tok->decode(j["ids"].get<std::vector<int32_t>>()), text);
    ++n;
  }
  EXPECT_EQ(n, 2);
  // Digits are split one by one (SmolLM2's Digits pre-tokenizer).
  EXPECT_EQ(tok->encode("2024", false).size(), 4u);
}
