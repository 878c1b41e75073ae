#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "common/dtype.h"
#include "convert/int_quant.h"
#include "common/error.h"
#include "common/file_util.h"
#include "common/h5.h"
#include "convert/converter.h"
#include "convert/gguf.h"
#include "convert/model_writer.h"
#include "convert/safetensors.h"
#include "model/model_file.h"
#include "model/weight_names.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace llmserve;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// An empty scratch directory of this test process.
fs::path tmpdir(const std::string& name) {
  fs::path p = llmserve::testing::temp_dir(name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

void write_bytes(const fs::path& p, const std::string& bytes) { std::ofstream(p, std::ios::binary) << bytes; }

std::string read_bytes(const fs::path& p) { return read_file(p.string()); }

std::string safetensors_bytes(const json& header, const std::string& data) {
  std::string h = header.dump();
  std::string out(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + h + data;
}

const std::string kFixtures = LLMSERVE_FIXTURES;

}  // namespace

TEST(Safetensors, ReadsTensorsAndRejectsCorruptFiles) {
  auto dir = tmpdir("st");
  std::string data(8, '\0');
  float vals[2] = {1.5f, -2.0f};
  std::memcpy(data.data(), vals, 8);
  json h = {{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}}, {"__metadata__", {{"format", "pt"}}}};
  write_bytes(dir / "ok.safetensors", safetensors_bytes(h, data));
  SafetensorsFile f((dir / "ok.safetensors").string());
  auto raw = f.read("a");
  ASSERT_EQ(raw.size(), 8u);
  EXPECT_EQ(std::memcmp(raw.data(), vals, 8), 0);

  write_bytes(dir / "trunc.safetensors", safetensors_bytes(h, data.substr(0, 4)));
  try {
    SafetensorsFile t((dir / "trunc.safetensors").string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();  // names the tensor
    EXPECT_NE(std::string(e.what()).find("trunc.safetensors"), std::string::npos) << e.what();
  }
  json wrong = {{"a", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 8}}}}};
  write_bytes(dir / "shape.safetensors", safetensors_bytes(wrong, data));
  EXPECT_THROW(SafetensorsFile((dir / "shape.safetensors").string()), Error);
  write_bytes(dir / "json.safetensors", std::string("\x05\0\0\0\0\0\0\0{nope", 13));
  EXPECT_THROW(SafetensorsFile((dir / "json.safetensors").string()), Error);
  write_bytes(dir / "len.safetensors", std::string("\xff\xff\xff\xff\0\0\0\0{}", 10));
  EXPECT_THROW(SafetensorsFile((dir / "len.safetensors").string()), Error);
  write_bytes(dir / "empty.safetensors", "");
  EXPECT_THROW(SafetensorsFile((dir / "empty.safetensors").string()), Error);
}

TEST(ModelWriter, ChunksAlignWithTensorParallelSlices) {
  auto c = chunk_shape({1536, 8960}, 2);
  for (int tp : {1, 2, 4, 8}) {
    EXPECT_EQ((1536 / tp) % c[0], 0u) << tp;
    EXPECT_EQ((8960 / tp) % c[1], 0u) << tp;
  }
  EXPECT_LE(c[0] * c[1] * 2, 2u << 20);
  auto small = chunk_shape({64}, 4);
  EXPECT_EQ(small[0], 64u);
}

TEST(ModelWriter, NothingIsLeftWithoutCommit) {
  auto dir = tmpdir("writer");
  ModelSpec s;
  s.architecture = "LlamaForCausalLM";
  s.model_type = "llama";
  s.hidden_size = s.intermediate_size = 8;
  s.num_layers = s.num_heads = s.num_kv_heads = 1;
  s.head_dim = 8;
  s.vocab_size = 4;
  s.max_position_embeddings = 16;
  std::string tmp;
  {
    ModelWriter w((dir / "m.h5").string(), s, "test");
    tmp = w.temp_path();
    float x[4] = {1, 2, 3, 4};
    w.add_tensor("t", DType::F32, {4}, x);
    EXPECT_TRUE(fs::exists(tmp));
  }
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_FALSE(fs::exists(dir / "m.h5"));
}

// commit() closes everything it opened before it renames: no HDF5 object of the writer stays open
// (one left open would keep the file, and HDF5's lock on it, alive under the final name). Counted
// against what the process had open before, so other tests in the same binary do not matter.
TEST(ModelWriter, CommitLeavesNoFileOpen) {
  auto dir = tmpdir("writer-closed");
  const ssize_t files = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_FILE), objects = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  ModelWriter w((dir / "m.h5").string(), llmserve::testing::small_spec(2, 1, 16, 1, 8, 4, 10), "test");
  w.add_text("tokenizer", "chat_template", "{{ messages }}");
  float x[4] = {1, 2, 3, 4};
  w.add_tensor("t", DType::F32, {4}, x);
  EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_FILE), files + 1);  // the count sees the writer's file
  w.commit();
  EXPECT_EQ(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), objects);
  EXPECT_TRUE(fs::exists(dir / "m.h5"));
}

class FixtureRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureRoundTrip, EveryTensorAndDocumentSurvives) {
  const fs::path src = fs::path(kFixtures) / "models" / GetParam();
  auto dir = tmpdir("rt-" + GetParam());
  ConvertOptions opt;
  opt.input = src.string();
  opt.output = (dir / "m.h5").string();
  convert_model(opt);
  ModelFile mf(opt.output);
  const json cfg = json::parse(read_bytes(src / "config.json"));
  EXPECT_EQ(mf.spec().architecture, cfg["architectures"][0].get<std::string>());
  EXPECT_EQ(mf.spec().hidden_size, cfg["hidden_size"].get<int64_t>());
  EXPECT_EQ(mf.spec().num_kv_heads, cfg["num_key_value_heads"].get<int>());
  EXPECT_EQ(mf.spec().tie_word_embeddings, cfg["tie_word_embeddings"].get<bool>());
  EXPECT_EQ(*mf.text("tokenizer", "tokenizer.json"), read_bytes(src / "tokenizer.json"));
  EXPECT_EQ(*mf.text("config", "hf_config.json"), read_bytes(src / "config.json"));
  const json tc = json::parse(read_bytes(src / "tokenizer_config.json"));
  EXPECT_EQ(*mf.text("tokenizer", "chat_template"), tc["chat_template"].get<std::string>());
  // Every tensor equals the checkpoint's bf16 values, bit for bit.
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().extension() == ".safetensors") shards.push_back(std::make_unique<SafetensorsFile>(e.path().string()));
  int checked = 0;
  for (const auto& w : expected_weights(mf.spec())) {
    for (auto& sh : shards) {
      if (!sh->entries().count(w.name)) continue;
      EXPECT_EQ(mf.weight_dtype(w.name), DType::BF16);
      auto raw = sh->read(w.name);
      std::vector<float> want(raw.size() / 2);
      to_f32(DType::BF16, raw.data(), want.data(), want.size());
      EXPECT_EQ(mf.read_all_f32(w.name), want) << w.name;
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int>(expected_weights(mf.spec()).size()));
  // A tensor-parallel slice reads the same values as the whole tensor.
  const std::string o = "model.layers.1.self_attn.o_proj.weight";
  auto whole = mf.read_all_f32(o);
  auto shape = mf.weight_shape(o);
  auto slice = mf.read_f32(o, 0, shape[0], shape[1] / 2, shape[1] / 2);
  EXPECT_EQ(slice[0], whole[shape[1] / 2]);
  EXPECT_EQ(slice.back(), whole.back());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureRoundTrip, ::testing::Values("tiny-qwen2", "tiny-llama3"));

TEST(Converter, BadInputsGiveClearErrorsAndNoOutput) {
  const fs::path src = fs::path(kFixtures) / "models" / "tiny-qwen2";
  auto dir = tmpdir("bad");
  auto expect_error = [&](const fs::path& in, const std::string& needle) {
    ConvertOptions opt;
    opt.input = in.string();
    opt.output = (dir / "out.h5").string();
    try {
      convert_model(opt);
      ADD_FAILURE() << "no error for " << in;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "out.h5"));
    for (const auto& e : fs::directory_iterator(dir))  // no temporary left either
      EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  };
  expect_error(dir / "missing", "does not exist");
  // A checkpoint whose safetensors is truncated.
  fs::create_directories(dir / "trunc");
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) fs::copy(src / f, dir / "trunc" / f);
  std::string st = read_bytes(src / "model.safetensors");
  write_bytes(dir / "trunc" / "model.safetensors", st.substr(0, st.size() / 2));
  expect_error(dir / "trunc", "beyond the end of the file");
  // Unsupported architecture.
  fs::create_directories(dir / "arch");
  json cfg = json::parse(read_bytes(src / "config.json"));
  cfg["architectures"] = {"BertModel"};
  write_bytes(dir / "arch" / "config.json", cfg.dump());
  expect_error(dir / "arch", "unsupported architecture BertModel");
  // config.json that does not match the weights.
  fs::create_directories(dir / "shape");
  cfg = json::parse(read_bytes(src / "config.json"));
  cfg["intermediate_size"] = 256;
  write_bytes(dir / "shape" / "config.json", cfg.dump());
  fs::copy(src / "model.safetensors", dir / "shape" / "model.safetensors");
  expect_error(dir / "shape", "mlp.gate_proj.weight' has shape");
  // A mixture of experts' config over a dense checkpoint: the router is named both ways it may be.
  fs::create_directories(dir / "moe");
  cfg = json::parse(read_bytes(src / "config.json"));
  cfg["architectures"] = {"MixtralForCausalLM"};
  cfg["num_local_experts"] = 2;
  write_bytes(dir / "moe" / "config.json", cfg.dump());
  fs::copy(src / "model.safetensors", dir / "moe" / "model.safetensors");
  expect_error(dir / "moe", "tensor 'model.layers.0.mlp.gate.weight' (or Mixtral's 'model.layers.0.block_sparse_moe.gate.weight') missing");
  // No weights at all.
  fs::create_directories(dir / "noweights");
  fs::copy(src / "config.json", dir / "noweights" / "config.json");
  expect_error(dir / "noweights", "no *.safetensors");
  // Not a checkpoint.
  write_bytes(dir / "file.bin", "x");
  expect_error(dir / "file.bin", "neither");
  // A tokenizer.json the tokenizer cannot load, and a chat template that does not parse: refused at
  // conversion instead of producing a file that fails when served.
  for (const char* d : {"badtok", "badtmpl"}) {
    fs::create_directories(dir / d);
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
      fs::copy(src / f, dir / d / f);
  }
  write_bytes(dir / "badtok" / "tokenizer.json", R"({"model": 5})");
  expect_error(dir / "badtok", "tokenizer.json': tokenizer: malformed tokenizer.json");
  json tc = json::parse(read_bytes(src / "tokenizer_config.json"));
  tc["chat_template"] = "{% for m in messages %}{{ m.content }}";
  write_bytes(dir / "badtmpl" / "tokenizer_config.json", tc.dump());
  expect_error(dir / "badtmpl", "the chat template does not parse: chat template line 1: missing 'endfor'");
  // Existing output without --force.
  write_bytes(dir / "out.h5", "keep me");
  ConvertOptions opt;
  opt.input = src.string();
  opt.output = (dir / "out.h5").string();
  EXPECT_THROW(convert_model(opt), Error);
  EXPECT_EQ(read_bytes(dir / "out.h5"), "keep me");
}

// ---- GGUF -----------------------------------------------------------------

namespace {

struct GgufBuilder {
  std::string meta, infos, data;
  uint64_t n_kv = 0, n_t = 0;
  template <typename T> static void put(std::string& s, T v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); }
  static void str(std::string& s, const std::string& v) {
    put<uint64_t>(s, v.size());
    s += v;
  }
  void kv_u32(const std::string& k, uint32_t v) { str(meta, k), put<uint32_t>(meta, 4), put(meta, v), ++n_kv; }
  void kv_f32(const std::string& k, float v) { str(meta, k), put<uint32_t>(meta, 6), put(meta, v), ++n_kv; }
  void kv_str(const std::string& k, const std::string& v) { str(meta, k), put<uint32_t>(meta, 8), str(meta, v), ++n_kv; }
  template <typename T>
  void kv_array(const std::string& k, uint32_t type, const std::vector<T>& v) {
    str(meta, k), put<uint32_t>(meta, 9), put<uint32_t>(meta, type), put<uint64_t>(meta, v.size());
    for (const T& x : v) put(meta, x);
    ++n_kv;
  }
  void kv_strs(const std::string& k, const std::vector<std::string>& v) {
    str(meta, k), put<uint32_t>(meta, 9), put<uint32_t>(meta, 8), put<uint64_t>(meta, v.size());
    for (auto& x : v) str(meta, x);
    ++n_kv;
  }
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, const std::string& bytes) {
    while (data.size() % 32) data.push_back('\0');
    str(infos, name), put<uint32_t>(infos, static_cast<uint32_t>(ne.size()));
    for (auto d : ne) put(infos, d);
    put(infos, type), put<uint64_t>(infos, data.size());
    data += bytes;
    ++n_t;
  }
  std::string build() {
    std::string s = "GGUF";
    put<uint32_t>(s, 3), put(s, n_t), put(s, n_kv);
    s += meta + infos;
    while (s.size() % 32) s.push_back('\0');
    return s + data;
  }
};

std::string f16bytes(float v) {
  uint16_t h = f32_to_f16(v);
  return std::string(reinterpret_cast<char*>(&h), 2);
}

}  // namespace

TEST(Gguf, DequantizesEveryBlockType) {
  auto dir = tmpdir("gguf");
  GgufBuilder b;
  b.kv_str("general.architecture", "llama");
  // Q4_1: d=0.5, m=-1; nibbles j and j+16 from byte j.
  std::string q41 = f16bytes(0.5f) + f16bytes(-1.0f);
  for (int j = 0; j < 16; ++j) q41.push_back(static_cast<char>((j & 0xf) | ((15 - j) << 4)));
  b.tensor("q41", {32}, 3, q41);
  std::string q40 = f16bytes(2.0f);
  for (int j = 0; j < 16; ++j) q40.push_back(static_cast<char>((j & 0xf) | ((15 - j) << 4)));
  b.tensor("q40", {32}, 2, q40);
  std::string q80 = f16bytes(0.25f);
  for (int j = 0; j < 32; ++j) q80.push_back(static_cast<char>(j - 16));
  b.tensor("q80", {32}, 8, q80);
  b.tensor("f16", {2}, 1, f16bytes(1.5f) + f16bytes(-3.0f));
  write_bytes(dir / "t.gguf", b.build());
  GgufFile g((dir / "t.gguf").string());
  EXPECT_EQ(g.metadata()["general.architecture"].get<std::string>(), "llama");
  auto a = g.read_f32("q41");
  for (int j = 0; j < 16; ++j) {
    EXPECT_FLOAT_EQ(a[j], 0.5f * j - 1.0f);
    EXPECT_FLOAT_EQ(a[j + 16], 0.5f * (15 - j) - 1.0f);
  }
  auto c = g.read_f32("q40");
  EXPECT_FLOAT_EQ(c[3], 2.0f * (3 - 8));
  EXPECT_FLOAT_EQ(c[16 + 3], 2.0f * (12 - 8));
  auto d = g.read_f32("q80");
  EXPECT_FLOAT_EQ(d[0], 0.25f * -16);
  EXPECT_FLOAT_EQ(d[31], 0.25f * 15);
  EXPECT_EQ(g.read_f32("f16"), (std::vector<float>{1.5f, -3.0f}));

  std::string whole = read_bytes(dir / "t.gguf");
  write_bytes(dir / "trunc.gguf", whole.substr(0, whole.size() - 10));
  EXPECT_THROW(GgufFile((dir / "trunc.gguf").string()), Error);
  write_bytes(dir / "notgguf.gguf", "GGML....");
  EXPECT_THROW(GgufFile((dir / "notgguf.gguf").string()), Error);
}

// A Qwen3 GGUF (llama.cpp's qwen3 architecture: per-head attn_q_norm / attn_k_norm, key_length the head
// size, q/k not permuted): the model file holds Qwen3ForCausalLM with qk_norm and every tensor as written.
TEST(Gguf, Qwen3ConvertsWithItsHeadNorms) {
  auto dir = tmpdir("gguf_qwen3");
  const uint64_t H = 16, D = 16, Q = 2 * D, KV = D, I = 24, V = 8;
  GgufBuilder b;
  b.kv_str("general.architecture", "qwen3");
  b.kv_u32("qwen3.embedding_length", H), b.kv_u32("qwen3.feed_forward_length", I), b.kv_u32("qwen3.block_count", 1);
  b.kv_u32("qwen3.attention.head_count", 2), b.kv_u32("qwen3.attention.head_count_kv", 1);
  b.kv_u32("qwen3.attention.key_length", D), b.kv_u32("qwen3.context_length", 4096);
  b.kv_f32("qwen3.attention.layer_norm_rms_epsilon", 1e-6f), b.kv_f32("qwen3.rope.freq_base", 1e6f);
  b.kv_str("tokenizer.ggml.model", "gpt2"), b.kv_str("tokenizer.ggml.pre", "qwen2");
  b.kv_strs("tokenizer.ggml.tokens", {"a", "b", "c", "d", "e", "f", "g", "h"});
  b.kv_strs("tokenizer.ggml.merges", {});
  std::mt19937 rng(3);
  std::map<std::string, std::vector<float>> written;
  auto tensor = [&](const std::string& name, uint64_t rows, uint64_t cols) {  // (GGUF lists the columns first)
    std::vector<float> v(rows * cols);
    for (auto& x : v) x = std::normal_distribution<float>(0.f, 1.f)(rng);
    b.tensor(name, cols > 1 ? std::vector<uint64_t>{cols, rows} : std::vector<uint64_t>{rows}, 0,
             std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
    written[name] = v;
  };
  tensor("token_embd.weight", V, H), tensor("output_norm.weight", H, 1), tensor("blk.0.attn_norm.weight", H, 1);
  tensor("blk.0.attn_q.weight", Q, H), tensor("blk.0.attn_k.weight", KV, H), tensor("blk.0.attn_v.weight", KV, H);
  tensor("blk.0.attn_q_norm.weight", D, 1), tensor("blk.0.attn_k_norm.weight", D, 1), tensor("blk.0.attn_output.weight", H, Q);
  tensor("blk.0.ffn_norm.weight", H, 1), tensor("blk.0.ffn_gate.weight", I, H), tensor("blk.0.ffn_up.weight", I, H);
  tensor("blk.0.ffn_down.weight", H, I);
  b.kv_str("qwen3.rope.scaling.type", "yarn"), b.kv_f32("qwen3.rope.scaling.factor", 4.f);
  b.kv_u32("qwen3.rope.scaling.original_context_length", 1024);
  GgufBuilder odd = b;  // (with a key of llama.cpp's YaRN at a value that is not taken)
  odd.kv_f32("qwen3.rope.scaling.attn_factor", 0.5f);
  // Its ramp's ends are read; its other keys at their defaults change nothing.
  b.kv_f32("qwen3.rope.scaling.yarn_beta_fast", 16.f), b.kv_f32("qwen3.rope.scaling.yarn_beta_slow", 2.f);
  b.kv_f32("qwen3.rope.scaling.attn_factor", 1.f), b.kv_f32("qwen3.rope.scaling.yarn_ext_factor", -1.f);
  b.kv_f32("qwen3.rope.scaling.yarn_log_multiplier", 0.f);
  write_bytes(dir / "odd.gguf", odd.build());
  write_bytes(dir / "q3.gguf", b.build());
  ConvertOptions opt;
  opt.input = (dir / "q3.gguf").string();
  opt.output = (dir / "q3.h5").string();
  convert_model(opt);
  ModelFile mf(opt.output);
  EXPECT_EQ(mf.spec().architecture, "Qwen3ForCausalLM");
  EXPECT_TRUE(mf.spec().qk_norm);
  EXPECT_FALSE(mf.spec().attention_bias);
  EXPECT_EQ(mf.spec().head_dim, static_cast<int>(D));  // (not hidden / heads = 8)
  EXPECT_TRUE(mf.spec().tie_word_embeddings);
  EXPECT_EQ(mf.read_all_f32("model.layers.0.self_attn.q_proj.weight"), written["blk.0.attn_q.weight"]);  // not permuted
  EXPECT_EQ(mf.read_all_f32("model.layers.0.self_attn.k_proj.weight"), written["blk.0.attn_k.weight"]);
  EXPECT_EQ(mf.read_all_f32("model.layers.0.self_attn.q_norm.weight"), written["blk.0.attn_q_norm.weight"]);
  EXPECT_EQ(mf.read_all_f32("model.layers.0.self_attn.k_norm.weight"), written["blk.0.attn_k_norm.weight"]);
  EXPECT_EQ(mf.read_all_f32("model.layers.0.self_attn.o_proj.weight"), written["blk.0.attn_output.weight"]);
  EXPECT_EQ(mf.spec().rope_scaling.type, "yarn");
  EXPECT_EQ(mf.spec().rope_scaling.factor, 4.0);
  EXPECT_EQ(mf.spec().rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_EQ(model_context_length(mf.spec()), 4096);
  EXPECT_EQ(mf.spec().rope_scaling.beta_fast, 16.0);
  EXPECT_EQ(mf.spec().rope_scaling.beta_slow, 2.0);
  opt.input = (dir / "odd.gguf").string();
  opt.output = (dir / "odd.h5").string();
  try {
    convert_model(opt);
    ADD_FAILURE() << "converted a YaRN attn_factor it does not apply";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("qwen3.rope.scaling.attn_factor' = 0.5 is not supported"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(opt.output));  // (no partial output file)
}

// A GGUF file's SentencePiece vocabulary (tokenizer model "llama": pieces, scores and types, no merges)
// converts to the tokenizer transformers' LlamaConverter makes of it: the ids and text HF tokenizers gives
// with the merges derived from the scores (tests/tokenizer/make_spm_cases.py), BOS added by default.
TEST(Gguf, SentencePieceVocabularyConvertsAsTransformersDoes) {
  const json d = json::parse(read_bytes(std::string(LLMSERVE_SOURCE_DIR) + "/tests/tokenizer/spm/gguf.json"));
  const auto tokens = d["tokens"].get<std::vector<std::string>>();
  std::vector<float> scores;
  for (double x : d["scores"].get<std::vector<double>>()) scores.push_back(static_cast<float>(x));
  const auto types = d["types"].get<std::vector<int32_t>>();
  auto dir = tmpdir("gguf_spm");
  const uint64_t H = 16, I = 24, V = tokens.size();
  GgufBuilder b;
  b.kv_str("general.architecture", "llama");
  b.kv_u32("llama.embedding_length", H), b.kv_u32("llama.feed_forward_length", I), b.kv_u32("llama.block_count", 1);
  b.kv_u32("llama.attention.head_count", 2), b.kv_u32("llama.attention.head_count_kv", 2), b.kv_u32("llama.context_length", 512);
  b.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  b.kv_str("tokenizer.ggml.model", "llama");
  b.kv_strs("tokenizer.ggml.tokens", tokens);
  b.kv_array<float>("tokenizer.ggml.scores", 6, scores);
  b.kv_array<int32_t>("tokenizer.ggml.token_type", 5, types);
  b.kv_u32("tokenizer.ggml.bos_token_id", 1), b.kv_u32("tokenizer.ggml.eos_token_id", 2);
  b.kv_u32("tokenizer.ggml.unknown_token_id", 0);
  auto tensor = [&](const std::string& name, uint64_t rows, uint64_t cols) {
    std::vector<float> v(rows * cols, 0.01f);
    b.tensor(name, cols > 1 ? std::vector<uint64_t>{cols, rows} : std::vector<uint64_t>{rows}, 0,
             std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
  };
  tensor("token_embd.weight", V, H), tensor("output_norm.weight", H, 1), tensor("blk.0.attn_norm.weight", H, 1);
  tensor("blk.0.attn_q.weight", H, H), tensor("blk.0.attn_k.weight", H, H), tensor("blk.0.attn_v.weight", H, H);
  tensor("blk.0.attn_output.weight", H, H), tensor("blk.0.ffn_norm.weight", H, 1), tensor("blk.0.ffn_gate.weight", I, H);
  tensor("blk.0.ffn_up.weight", I, H), tensor("blk.0.ffn_down.weight", H, I);
  write_bytes(dir / "spm.gguf", b.build());
  ConvertOptions opt;
  opt.input = (dir / "spm.gguf").string();
  opt.output = (dir / "spm.h5").string();
  convert_model(opt);
  const auto tok = Tokenizer::from_model_file(ModelFile(opt.output));
  for (const auto& c : d["cases"]) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(text);
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->encode(text, false), ids);
    std::vector<int32_t> with_bos = {1};
    with_bos.insert(with_bos.end(), ids.begin(), ids.end());
    EXPECT_EQ(tok->encode(text, true), with_bos);  // (llama.cpp's default for these vocabularies)
    EXPECT_EQ(tok->decode(with_bos, true), c["decoded"].get<std::string>());
  }
}

TEST(Gguf, AStringThatIsNotUtf8IsACorruptFile) {
  // GGUF strings are UTF-8. A corrupt vocabulary entry used to pass the reader and fail later, in
  // the JSON writer, with a message that named neither the file nor the problem.
  auto dir = tmpdir("gguf_utf8");
  GgufBuilder b;
  b.kv_str("general.architecture", "llama");
  b.kv_strs("tokenizer.ggml.tokens", {"a", "\x80" "b"});
  write_bytes(dir / "t.gguf", b.build());
  try {
    GgufFile g((dir / "t.gguf").string());
    ADD_FAILURE() << "read a GGUF string that is not UTF-8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not UTF-8"), std::string::npos) << e.what();
  }
}

TEST(Gguf, UnpermuteInvertsLlamaCppPermutation) {
  // llama.cpp: w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).reshape(rows, cols)
  const int heads = 3, hd = 4, cols = 2, rows = heads * hd;
  std::vector<float> hf(rows * cols), gg(rows * cols);
  for (int i = 0; i < rows * cols; ++i) hf[i] = static_cast<float>(i);
  for (int h = 0; h < heads; ++h)
    for (int two = 0; two < 2; ++two)
      for (int i = 0; i < hd / 2; ++i)
        for (int c = 0; c < cols; ++c)
          gg[((h * hd) + i * 2 + two) * cols + c] = hf[((h * hd) + two * (hd / 2) + i) * cols + c];
  EXPECT_EQ(gguf_unpermute_rows(gg, rows, cols, heads), hf);
}


// The quantization_config llmserve-convert dequantizes, and what it refuses.
TEST(Convert, IntQuantConfig) {
  using nlohmann::json;
  EXPECT_EQ(int_quant_config(json::object()).method, IntQuantConfig::Method::None);
  const IntQuantConfig awq = int_quant_config(json::parse(
      R"({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": true}})"));
  EXPECT_EQ(awq.method, IntQuantConfig::Method::Awq);
  EXPECT_EQ(awq.group_size, 128);
  const IntQuantConfig autoawq = int_quant_config(json::parse(R"({"quantization_config": {"quant_method": "awq", "w_bit": 4, "q_group_size": 64}})"));
  EXPECT_EQ(autoawq.group_size, 64);  // (AutoAWQ's own key names)
  const IntQuantConfig v2 = int_quant_config(json::parse(
      R"({"quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": -1, "checkpoint_format": "gptq_v2"}})"));
  EXPECT_EQ(v2.method, IntQuantConfig::Method::Gptq);
  EXPECT_EQ(v2.bits, 8);
  EXPECT_EQ(v2.group_size, -1);
  EXPECT_FALSE(v2.gptq_v1);
  EXPECT_TRUE(int_quant_config(json::parse(R"({"quantization_config": {"quant_method": "gptq"}})")).gptq_v1);
  for (const char* bad : {R"({"quant_method": "fp8"})", R"({"quant_method": "awq", "zero_point": false})",
                          R"({"quant_method": "awq", "bits": 8})", R"({"quant_method": "gptq", "bits": 3})",
                          R"({"quant_method": "gptq", "group_size": 0})", R"({"quant_method": "gptq", "checkpoint_format": "marlin"})"})
    EXPECT_THROW(int_quant_config(json{{"quantization_config", json::parse(bad)}}), Error) << bad;
}

// One AWQ word and one GPTQ word, by hand: AWQ's nibble i holds output 0, 2, 4, 6, 1, 3, 5, 7; GPTQ's
// nibble i holds input i, and its zero points are stored less one.
TEST(Convert, DequantizeOneWord) {
  // AWQ: K = 1, N = 8, one group; q of output n = n + 1 (nibble i holds output ORDER[i]), zero 2, scale 0.5.
  const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  uint32_t qw = 0, qz = 0;
  for (int i = 0; i < 8; ++i) qw |= static_cast<uint32_t>(order[i] + 1) << (4 * i), qz |= 2u << (4 * i);
  const int32_t q = static_cast<int32_t>(qw), z = static_cast<int32_t>(qz);
  std::vector<float> scales(8, 0.5f);
  const auto a = dequantize_awq(&q, &z, scales.data(), 1, 8, 1);
  for (int n = 0; n < 8; ++n) EXPECT_EQ(a[n], (n + 1 - 2) * 0.5f) << n;  // [N, K] with K = 1
  // GPTQ: K = 8, N = 1 (a zero word covers 8 outputs: N = 8, the other 7 unused), v1 zero stored as 3 -> 4.
  uint32_t gw = 0;
  for (int i = 0; i < 8; ++i) gw |= static_cast<uint32_t>(15 - i) << (4 * i);
  std::vector<int32_t> gq(8, static_cast<int32_t>(gw));  // [K / 8 = 1, N = 8]: every output the same inputs
  const int32_t gz = static_cast<int32_t>(3u * 0x11111111u);
  std::vector<float> gs(8, 2.0f);
  const auto g = dequantize_gptq(gq.data(), &gz, gs.data(), nullptr, 8, 8, 8, 4, true, 1);
  for (int n = 0; n < 8; ++n)
    for (int k = 0; k < 8; ++k) EXPECT_EQ(g[n * 8 + k], (15 - k - 4) * 2.0f) << n << "," << k;
}
