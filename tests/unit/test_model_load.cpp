#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "backend/cpu_backend.h"
#include "chat/chat_template.h"
#include "common/error.h"
#include "config/config.h"
#include "convert/model_writer.h"
#include "dist/comm.h"
#include "model/dummy_weights.h"
#include "model/model_file.h"
#include "model/model_spec.h"
#include "model/runner.h"
#include "model/transformer.h"
#include "model/weight_names.h"
#include "test_util.h"

using namespace llmserve;
namespace fs = std::filesystem;

namespace {
using llmserve::testing::SelfComm;

ModelSpec tiny_spec() { return llmserve::testing::small_spec(2, 1, 16, 2, 8, 4, 10); }

// A model file of spec s with zero weights, tensor `skip` left out.
void write_zero_model(const std::string& path, const ModelSpec& s, const std::string& skip = "") {
  ModelWriter w(path, s, "test");
  for (const auto& t : expected_weights(s)) {
    if (t.name == skip) continue;
    std::vector<float> zeros(t.shape.size() == 2 ? t.shape[0] * t.shape[1] : t.shape[0], 0.f);
    w.add_tensor(t.name, DType::F32, t.shape, zeros.data());
  }
  w.commit();
}
}  // namespace

TEST(ModelLoad, MissingTensorIsNamed) {
  const fs::path dir = llmserve::testing::temp_dir("missing");
  const std::string path = (dir / "m.h5").string();
  const ModelSpec s = tiny_spec();
  write_zero_model(path, s, "model.layers.1.mlp.up_proj.weight");
  ModelFile mf(path);
  CpuBackend be;
  SelfComm comm;
  try {
    Transformer t(s, make_topology(0, 1, 1, 1), be, comm, mf);
    FAIL() << "loaded a model with a missing tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'model.layers.1.mlp.up_proj.weight' missing"), std::string::npos) << e.what();
  }
}

TEST(ModelLoad, EveryExampleConfigParsesAndValidates) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(fs::path(LLMSERVE_SOURCE_DIR) / "inputs")) {
    if (e.path().extension() != ".yaml") continue;
    Config c;
    EXPECT_NO_THROW({
      config_parse_args(c, {e.path().string()});
      config_validate(c);
    }) << e.path();
    ++n;
  }
  EXPECT_GE(n, 4);
}

TEST(ModelLoad, BrokenChatTemplateFailsAtLoadAndMissingOneFallsBack) {
  const fs::path dir = llmserve::testing::temp_dir("chat");
  auto make = [&](const std::string& name, const char* tmpl) {
    const std::string path = (dir / name).string();
    ModelWriter w(path, tiny_spec(), "test");
    if (tmpl) w.add_text("tokenizer", "chat_template", tmpl);
    w.commit();
    return path;
  };
  const std::string broken = make("broken.h5", "{% for m in messages %}{{ m.content }}");
  try {
    ChatTemplate::from_model_file(ModelFile(broken));
    FAIL() << "a broken template loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken.h5"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing 'endfor'"), std::string::npos) << e.what();
  }
  auto fallback = ChatTemplate::from_model_file(ModelFile(make("none.h5", nullptr)));
  EXPECT_TRUE(fallback->is_fallback());
}

namespace {
// Dummy weights that count the elements the Transformer reads (each tensor is read once, in float32).
class CountingWeights : public DummyWeights {
 public:
  using DummyWeights::DummyWeights;
  std::vector<float> read_f32(const std::string& name, int64_t r0, int64_t nr, int64_t c0, int64_t nc) const override {
    auto v = DummyWeights::read_f32(name, r0, nr, c0, nc);
    elements += v.size();
    return v;
  }
  mutable size_t elements = 0;
};
}  // namespace

// The memory check before loading (shard_weight_bytes) counts exactly what the constructor loads, on
// every rank of a tp=2 x pp=2 layout, with and without q/k/v biases and tied embeddings (the
// vocabulary divides by tp here, so the padded tables hold no extra rows); dense, and a mixture of experts
// with dense layers among the sparse ones, without and with Qwen2-MoE's shared expert.
TEST(ModelLoad, ShardWeightBytesIsWhatTheRanksLoad) {
  for (int moe : {0, 1, 2})
  for (bool bias : {false, true})
    for (bool tied : {false, true}) {
      ModelSpec s = llmserve::testing::small_spec(4, 2, 48, 3, 64, 16, 1000);
      s.attention_bias = bias;
      s.tie_word_embeddings = tied;
      if (moe > 0) {
        s.num_experts = 4, s.num_experts_per_tok = 2, s.moe_intermediate_size = 8, s.decoder_sparse_step = 2;
        s.shared_expert_intermediate_size = moe == 2 ? 12 : 0;
      }
      for (int rank = 0; rank < 4; ++rank) {
        const Topology topo = make_topology(rank, 4, 2, 2);
        CountingWeights w(s, "counted", 1);
        CpuBackend be;
        SelfComm comm;
        Transformer t(s, topo, be, comm, w);
        const double predicted = shard_weight_bytes(s, make_shard_info(s, topo), topo.first_stage(), topo.last_stage(), DType::F32, DType::F32);
        EXPECT_EQ(predicted, 4.0 * static_cast<double>(w.elements))
            << "moe " << moe << " bias " << bias << " tied " << tied << " rank " << rank;
      }
    }
}

namespace {
// A CPU backend that records what the Transformer puts in host memory (cpu_offload_gb).
class OffloadCountingBackend : public CpuBackend {
 public:
  Tensor upload_to_host_memory(const float* host, const std::vector<int64_t>& shape, DType dtype) override {
    Tensor t = CpuBackend::upload(host, shape, dtype);
    offloaded.push_back(static_cast<double>(t.bytes()));
    return t;
  }
  std::vector<double> offloaded;
};
}  // namespace

// cpu_offload_gb's rule, as vLLM's: whole matrices, layer by layer from the stage's first, while fewer
// than the budget's bytes have gone (the last may pass it). offloaded_weight_bytes (the memory check
// before loading) predicts what the constructor offloads.
TEST(ModelLoad, OffloadTakesTheFirstLayersMatricesUpToTheBudget) {
  const ModelSpec s = llmserve::testing::small_spec(4, 2, 48, 3, 64, 16, 1000);
  // tp = 2, float32: per layer q/k/v (32 + 2 x 16 rows) 16,384 bytes, o_proj 8,192, gate/up 12,288, down 6,144.
  const std::vector<double> layer = {16384, 8192, 12288, 6144};
  struct Case {
    double budget;
    size_t matrices;  // offloaded, in load order
    int layers;
  };
  for (const Case& c : {Case{0, 0, 0}, Case{1, 1, 1}, Case{16384, 1, 1}, Case{16385, 2, 1}, Case{43008, 4, 1},
                        Case{50000, 5, 2}, Case{1e12, 12, 3}})
    for (int rank = 0; rank < 2; ++rank) {
      const Topology topo = make_topology(rank, 2, 2, 1);
      DummyWeights w(s, "offload", 1);
      OffloadCountingBackend be;
      SelfComm comm;
      Transformer t(s, topo, be, comm, w, c.budget);
      ASSERT_EQ(be.offloaded.size(), c.matrices) << "budget " << c.budget;
      double sum = 0, largest = 0, predicted_largest = -1;
      for (size_t i = 0; i < be.offloaded.size(); ++i) {
        EXPECT_EQ(be.offloaded[i], layer[i % 4]) << "budget " << c.budget << " matrix " << i;
        sum += be.offloaded[i];
        largest = std::max(largest, be.offloaded[i]);
      }
      EXPECT_EQ(t.offloaded_bytes(), sum);
      EXPECT_EQ(t.offloaded_layers(), c.layers);
      EXPECT_EQ(offloaded_weight_bytes(s, make_shard_info(s, topo), DType::F32, c.budget, &predicted_largest), sum)
          << "budget " << c.budget;
      EXPECT_EQ(predicted_largest, largest) << "budget " << c.budget;  // (the device buffer of a GPU backend)
    }
  // A later pipeline stage offloads its own first layers: layers 2 of tp=1 pp=2's second stage.
  const Topology last = make_topology(1, 2, 1, 2);
  DummyWeights w(s, "offload", 1);
  OffloadCountingBackend be;
  SelfComm comm;
  Transformer t(s, last, be, comm, w, 1e12);
  EXPECT_EQ(t.offloaded_layers(), 1);
  EXPECT_EQ(t.offloaded_bytes(), 2 * 43008.0);  // tp = 1: every matrix twice the tp = 2 shard's
}

namespace {
// A CPU backend that holds quantization fp8's matrices as a GPU does (fp8_matrix_dtype F8E4M3) for the
// count: what each upload_fp8 call would take there (a byte a weight, a float32 scale a row), and which
// of them go to host memory (cpu_offload_gb). It stores the values as the CPU backend does.
class Fp8CountingBackend : public CpuBackend {
 public:
  DType fp8_matrix_dtype() const override { return DType::F8E4M3; }
  Tensor upload_fp8(const float* host, const std::vector<int64_t>& shape, DType dtype, bool host_memory) override {
    const double rows = static_cast<double>(shape.at(0)), cols = static_cast<double>(shape.at(1));
    matrix_elements += rows * cols;
    (host_memory ? offloaded : held) += rows * cols + 4 * rows;
    largest = std::max(largest, 2 * rows * cols);  // (in 16 bits: the GPU's expansion buffer)
    return CpuBackend::upload_fp8(host, shape, dtype, host_memory);
  }
  double matrix_elements = 0, held = 0, offloaded = 0, largest = 0;
};
}  // namespace

// quantization fp8: the memory check before loading (shard_weight_bytes with F8E4M3 matrices) counts
// exactly what a GPU rank holds, on every rank of a tp=2 x pp=2 layout; offloaded_weight_bytes predicts
// what cpu_offload_gb moves of those matrices; largest_matrix_bytes is the largest matrix in 16 bits.
TEST(ModelLoad, Fp8MatrixBytesAreWhatTheRanksLoad) {
  ModelSpec s = llmserve::testing::small_spec(4, 2, 48, 3, 64, 16, 1000);
  s.attention_bias = true;
  for (double budget : {0.0, 5000.0, 1e12})
    for (int rank = 0; rank < 4; ++rank) {
      const Topology topo = make_topology(rank, 4, 2, 2);
      const ShardInfo sh = make_shard_info(s, topo);
      CountingWeights w(s, "counted", 1);
      Fp8CountingBackend be;
      SelfComm comm;
      Transformer t(s, topo, be, comm, w, budget, true);
      const double others = 4.0 * (static_cast<double>(w.elements) - be.matrix_elements);  // float32 on the CPU
      EXPECT_GT(be.matrix_elements, 0);
      EXPECT_EQ(shard_weight_bytes(s, sh, topo.first_stage(), topo.last_stage(), DType::F32, DType::F8E4M3),
                others + be.held + be.offloaded)
          << "rank " << rank;
      EXPECT_EQ(offloaded_weight_bytes(s, sh, DType::F8E4M3, budget), be.offloaded) << "budget " << budget << " rank " << rank;
      EXPECT_EQ(t.offloaded_bytes(), be.offloaded);
      EXPECT_EQ(largest_matrix_bytes(s, sh, DType::BF16), be.largest) << "rank " << rank;
    }
}

// Sliding-window attention: which layers have the window follows transformers' configs (its
// Qwen2Config / Qwen2MoeConfig layer_types rules, layer_types where given, every layer of Mistral, Mixtral
// and Qwen3-MoE), only in use where use_sliding_window says (Mistral: always) and the window is shorter
// than the context. Served with the window; with disable_sliding_window (vLLM's) with full attention and
// max_model_len at most the window. The model file keeps the window and its layers.
TEST(ModelLoad, SlidingWindowLayersAsTransformersConfigs) {
  std::ifstream f(fs::path(LLMSERVE_SOURCE_DIR) / "inputs" / "models" / "qwen2.5-0.5b-instruct.json");
  nlohmann::json cfg = nlohmann::json::parse(f);  // (24 layers, max_window_layers 21)
  EXPECT_EQ(model_spec_from_hf_config(cfg).sliding_window, 0);  // (use_sliding_window false)
  cfg["use_sliding_window"] = true;
  EXPECT_EQ(model_spec_from_hf_config(cfg).sliding_window, 0);  // (the window is the whole context)
  cfg["sliding_window"] = nullptr;
  EXPECT_EQ(model_spec_from_hf_config(cfg).sliding_window, 0);
  cfg["sliding_window"] = 4096;
  const ModelSpec spec = model_spec_from_hf_config(cfg);
  EXPECT_EQ(spec.sliding_window, 4096);
  EXPECT_EQ(spec.sliding_window_layers, (std::vector<int64_t>{21, 22, 23}));  // (from max_window_layers on)
  EXPECT_EQ(attention_window(spec, 20), 0);
  EXPECT_EQ(attention_window(spec, 21), 4096);
  nlohmann::json none = cfg;
  none["max_window_layers"] = 24;  // (no layer from 24 on: no window)
  EXPECT_EQ(model_spec_from_hf_config(none).sliding_window, 0);
  EXPECT_TRUE(model_spec_from_hf_config(none).sliding_window_layers.empty());
  // layer_types where the config gives them (transformers 5 writes them), checked.
  nlohmann::json typed = cfg;
  typed["layer_types"] = nlohmann::json::array();
  for (int l = 0; l < 24; ++l) typed["layer_types"].push_back(l % 3 == 0 ? "sliding_attention" : "full_attention");
  const ModelSpec ts = model_spec_from_hf_config(typed);
  ASSERT_EQ(ts.sliding_window_layers.size(), 8u);
  EXPECT_EQ(ts.sliding_window_layers[1], 3);
  typed["layer_types"].erase(typed["layer_types"].begin());
  EXPECT_THROW(model_spec_from_hf_config(typed), Error);  // (23 entries for 24 layers)
  typed["layer_types"].push_back("chunked_attention");
  EXPECT_THROW(model_spec_from_hf_config(typed), Error);
  // Mistral: every layer, no use_sliding_window needed; a null window is none.
  nlohmann::json mistral = cfg;
  mistral.erase("use_sliding_window");
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["model_type"] = "mistral";
  EXPECT_EQ(model_spec_from_hf_config(mistral).sliding_window_layers.size(), 24u);
  mistral["sliding_window"] = nullptr;
  EXPECT_EQ(model_spec_from_hf_config(mistral).sliding_window, 0);
  std::ifstream mf(fs::path(LLMSERVE_SOURCE_DIR) / "inputs" / "models" / "mistral-7b-v0.1.json");
  const ModelSpec m7 = model_spec_from_hf_config(nlohmann::json::parse(mf));  // (the shipped shape)
  EXPECT_EQ(m7.sliding_window, 4096);
  EXPECT_EQ(m7.sliding_window_layers.size(), 32u);
  // Qwen2-MoE: layers l with l + 1 odd below max_window_layers (Qwen2MoeConfig's rule); Qwen3-MoE: every layer.
  nlohmann::json moe = cfg;
  moe["architectures"] = {"Qwen2MoeForCausalLM"};
  moe["model_type"] = "qwen2_moe";
  moe["max_window_layers"] = 5;
  EXPECT_EQ(model_spec_from_hf_config(moe).sliding_window_layers, (std::vector<int64_t>{0, 2, 4}));
  moe["architectures"] = {"Qwen3MoeForCausalLM"};
  moe["model_type"] = "qwen3_moe";
  moe["head_dim"] = 64;
  EXPECT_EQ(model_spec_from_hf_config(moe).sliding_window_layers.size(), 24u);
  moe["use_sliding_window"] = false;
  EXPECT_EQ(model_spec_from_hf_config(moe).sliding_window, 0);
  // Served with the window, the whole context; with disable_sliding_window up to the window only.
  Config plain;
  resolve_config_for_model(plain, spec);
  EXPECT_EQ(plain.max_model_len, 32768);
  Config full;
  full.disable_sliding_window = true;
  resolve_config_for_model(full, spec);
  EXPECT_EQ(full.max_model_len, 4096);
  Config longer;
  longer.disable_sliding_window = true;
  longer.max_model_len = 4097;
  EXPECT_THROW(resolve_config_for_model(longer, spec), Error);
  // The model file keeps the window and its layers (and a file without one reads none).
  const fs::path dir = llmserve::testing::temp_dir("window");
  for (const int64_t window : {int64_t{0}, int64_t{8}}) {
    ModelSpec s = tiny_spec();
    s.sliding_window = window;
    if (window) s.sliding_window_layers = {1};
    const std::string path = (dir / ("m" + std::to_string(window) + ".h5")).string();
    write_zero_model(path, s);
    EXPECT_EQ(ModelFile(path).spec().sliding_window, window);
    EXPECT_EQ(ModelFile(path).spec().sliding_window_layers, s.sliding_window_layers);
  }
  ModelSpec bad = tiny_spec();
  bad.sliding_window = 8;  // (without its layers)
  EXPECT_THROW(model_spec_validate(bad), Error);
}
