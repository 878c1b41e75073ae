#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <nlohmann/json.hpp>

#include "backend/cpu_backend.h"
#include "common/dtype.h"
#include "common/error.h"
#include "dist/topology.h"
#include "model/model_spec.h"
#include "model/weight_names.h"
#include "model/transformer.h"
#include "test_util.h"

using namespace llmserve;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 is exactly between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);  // overflow -> inf
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  for (uint32_t h = 0; h < 0x7c00; ++h)  // every finite positive half survives the round trip
    ASSERT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << h;
}

TEST(Topology, StageMajorGrid) {
  Topology t = make_topology(5, 8, 4, 2);
  EXPECT_EQ(t.stage(), 1);
  EXPECT_EQ(t.tp_rank(), 1);
  EXPECT_EQ(t.rank_of(0, 1), 1);
  EXPECT_TRUE(t.last_stage());
  EXPECT_THROW(make_topology(0, 6, 4, 2), Error);
}

TEST(Topology, StagePairColorsLinkEachStageToItsNeighbours) {
  // What MPI_Comm_split would make of the colours: every group is one rank or two neighbouring stages
  // of one tensor rank, and each stage's links to the previous and the next stage are such pairs.
  for (int tp = 1; tp <= 3; ++tp)
    for (int pp = 1; pp <= 5; ++pp) {
      const int n = tp * pp;
      std::vector<Topology> ts;
      for (int r = 0; r < n; ++r) ts.push_back(make_topology(r, n, tp, pp));
      auto group = [&](int r, bool even) {
        std::vector<int> g;
        const auto colour = [&](int q) { return even ? stage_pair_colors(ts[q]).even : stage_pair_colors(ts[q]).odd; };
        for (int q = 0; q < n; ++q)
          if (colour(q) == colour(r)) g.push_back(q);
        return g;
      };
      for (int r = 0; r < n; ++r) {
        const Topology& t = ts[r];
        for (bool even : {true, false}) {
          const std::vector<int> g = group(r, even);
          ASSERT_LE(g.size(), 2u) << "tp " << tp << " pp " << pp << " rank " << r;
          if (g.size() == 2) {
            EXPECT_EQ(ts[g[0]].tp_rank(), ts[g[1]].tp_rank());
            EXPECT_EQ(ts[g[0]].stage() + 1, ts[g[1]].stage());
            EXPECT_EQ(ts[g[0]].stage() % 2, even ? 0 : 1);  // the split's pairs start at even / odd stages
          }
        }
        // The links as NcclStageLink picks them.
        const bool even_stage = t.stage() % 2 == 0;
        const std::vector<int> prev = group(r, !even_stage), next = group(r, even_stage);
        if (t.first_stage()) {
          EXPECT_EQ(prev.size(), 1u);
        } else {
          ASSERT_EQ(prev.size(), 2u);
          EXPECT_EQ(prev[0], t.rank_of(t.stage() - 1, t.tp_rank()));
          EXPECT_EQ(prev[1], r);
        }
        if (t.last_stage()) {
          EXPECT_EQ(next.size(), 1u);
        } else {
          ASSERT_EQ(next.size(), 2u);
          EXPECT_EQ(next[0], r);
          EXPECT_EQ(next[1], t.rank_of(t.stage() + 1, t.tp_rank()));
        }
      }
    }
}

TEST(Topology, LayersSplitEvenlyEarlierStagesTakeExtra) {
  int covered = 0;
  for (int s = 0; s < 3; ++s) {
    LayerRange r = stage_layers(10, 3, s);
    EXPECT_EQ(r.begin, covered);
    EXPECT_EQ(r.end - r.begin, s == 0 ? 4 : 3);
    covered = r.end;
  }
  EXPECT_EQ(covered, 10);
  EXPECT_THROW(stage_layers(4, 5, 0), Error);
}

TEST(Topology, ShardRangesCoverVocabulary) {
  const int64_t V = 151937;  // not divisible
  int64_t next = 0;
  for (int r = 0; r < 4; ++r) {
    Range x = shard_range(V, 4, r);
    EXPECT_EQ(x.begin, next);
    next = x.end;
  }
  EXPECT_EQ(next, V);
}

namespace {
ModelSpec spec(int heads, int kv, int64_t inter = 192, int layers = 4) {
  return llmserve::testing::small_spec(heads, kv, inter, layers);
}
}  // namespace

TEST(Sharding, KvHeadsSplitOrReplicated) {
  // 8 query heads, 2 kv heads: tp=2 splits kv heads, tp=8 replicates each kv head on 4 ranks.
  for (int r = 0; r < 2; ++r) {
    ShardInfo sh = make_shard_info(spec(8, 2), make_topology(r, 2, 2, 1));
    EXPECT_EQ(sh.q_heads, 4);
    EXPECT_EQ(sh.kv_heads, 1);
    EXPECT_EQ(sh.kv_head_begin, r);
  }
  for (int r = 0; r < 8; ++r) {
    ShardInfo sh = make_shard_info(spec(8, 2), make_topology(r, 8, 8, 1));
    EXPECT_EQ(sh.q_heads, 1);
    EXPECT_EQ(sh.kv_heads, 1);
    EXPECT_EQ(sh.kv_head_begin, r / 4);  // query head r belongs to kv group r / 4
  }
}

TEST(Sharding, ImpossibleLayoutsAreRejectedWithNumbers) {
  EXPECT_THROW(make_shard_info(spec(6, 2), make_topology(0, 4, 4, 1)), Error);      // heads % tp
  EXPECT_THROW(make_shard_info(spec(12, 3), make_topology(0, 2, 2, 1)), Error);     // kv 3 vs tp 2
  EXPECT_THROW(make_shard_info(spec(8, 2, 190), make_topology(0, 4, 4, 1)), Error); // intermediate
  EXPECT_THROW(make_shard_info(spec(4, 2, 192, 2), make_topology(0, 4, 1, 4)), Error);  // pp > layers
  try {
    model_spec_check_layout(spec(6, 2), 4, 1);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("6 attention heads"), std::string::npos) << e.what();
  }
}

TEST(ModelSpec, RopeLlama3ScalingMatchesFormula) {
  ModelSpec s = spec(4, 1);
  s.rope_theta = 500000;
  s.rope_scaling.type = "llama3";
  s.rope_scaling.factor = 32;
  s.rope_scaling.low_freq_factor = 1;
  s.rope_scaling.high_freq_factor = 4;
  s.rope_scaling.original_max_position_embeddings = 8192;
  auto inv = rope_inv_freq(s);
  ASSERT_EQ(inv.size(), 8u);
  EXPECT_FLOAT_EQ(inv[0], 1.0f);  // high frequency: unchanged
  // lowest frequency: wavelength 2*pi/inv > 8192 -> divided by the factor
  const float base_last = 1.0f / std::pow(500000.0f, 14.0f / 16.0f);
  EXPECT_FLOAT_EQ(inv[7], base_last / 32.0f);
  s.rope_scaling.type = "linear";
  s.rope_scaling.factor = 4;
  auto lin = rope_inv_freq(s);
  EXPECT_FLOAT_EQ(lin[1], (1.0f / std::pow(500000.0f, 2.0f / 16.0f)) / 4.0f);
}

// YaRN (Qwen3 / Qwen2.5 long contexts): frequencies below the ramp divided by the factor, above it kept,
// mixed over it; the attention factor 0.1 ln(factor) + 1 unless given (or mscale / mscale_all_dim). The
// end-to-end check is the tiny-qwen3-yarn golden test (numpy reference; transformers on the GPU machine).
TEST(ModelSpec, RopeYarnScaling) {
  using nlohmann::json;
  json cfg = {{"architectures", {"Qwen3ForCausalLM"}}, {"hidden_size", 64}, {"intermediate_size", 128},
              {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 32},
              {"vocab_size", 100}, {"rope_theta", 1000000.0}, {"max_position_embeddings", 40960},
              {"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 64}}}};
  ModelSpec s = model_spec_from_hf_config(cfg);
  EXPECT_EQ(s.rope_scaling.type, "yarn");
  EXPECT_EQ(s.rope_scaling.original_max_position_embeddings, 64);
  const std::vector<float> inv = rope_inv_freq(s);
  ModelSpec plain = s;
  plain.rope_scaling = RopeScaling{};
  const std::vector<float> base = rope_inv_freq(plain);
  ASSERT_EQ(inv.size(), 16u);
  // The ramp: 32 * ln(64 / (2 pi r)) / (2 ln 1e6) for r = 32, 1 is -1.33 and 2.69, rounded out to [0, 3].
  EXPECT_FLOAT_EQ(inv[0], base[0]);
  EXPECT_NEAR(inv[1], base[1] * (2.f / 3) + base[1] / 4 * (1.f / 3), 1e-6f * base[1]);
  EXPECT_NEAR(inv[2], base[2] * (1.f / 3) + base[2] / 4 * (2.f / 3), 1e-6f * base[2]);
  for (int i = 3; i < 16; ++i) EXPECT_NEAR(inv[i], base[i] / 4, 1e-6f * base[i]) << i;
  EXPECT_NEAR(rope_attention_factor(s), 0.1 * std::log(4.0) + 1.0, 1e-12);
  EXPECT_EQ(rope_attention_factor(plain), 1.0);
  cfg["rope_scaling"]["attention_factor"] = 1.5;
  EXPECT_EQ(rope_attention_factor(model_spec_from_hf_config(cfg)), 1.5);
  cfg["rope_scaling"].erase("attention_factor");
  cfg["rope_scaling"]["mscale"] = 0.707;
  cfg["rope_scaling"]["mscale_all_dim"] = 0.707;  // (DeepSeek's: the two cancel)
  EXPECT_NEAR(rope_attention_factor(model_spec_from_hf_config(cfg)), 1.0, 1e-12);
  // The context served (vLLM's derived max_model_len): yarn's original context times its factor.
  EXPECT_EQ(model_context_length(s), 256);
  EXPECT_EQ(model_context_length(plain), 40960);
  cfg["rope_scaling"].erase("original_max_position_embeddings");  // the model's own then
  EXPECT_EQ(model_spec_from_hf_config(cfg).rope_scaling.original_max_position_embeddings, 40960);
  EXPECT_EQ(model_context_length(model_spec_from_hf_config(cfg)), 163840);
}

TEST(ModelSpec, HfConfigErrors) {
  using nlohmann::json;
  json ok = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 64}, {"intermediate_size", 128},
             {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 100}};
  EXPECT_NO_THROW(model_spec_from_hf_config(ok));
  json bad = ok;
  bad["architectures"] = {"GPTNeoXForCausalLM"};
  try {
    model_spec_from_hf_config(bad);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported architecture GPTNeoXForCausalLM"), std::string::npos);
  }
  bad = ok;
  bad.erase("hidden_size");
  EXPECT_THROW(model_spec_from_hf_config(bad), Error);
  bad = ok;
  bad["num_key_value_heads"] = 3;
  EXPECT_THROW(model_spec_from_hf_config(bad), Error);
  bad = ok;
  bad["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 4}};
  EXPECT_THROW(model_spec_from_hf_config(bad), Error);
  bad["rope_scaling"] = {{"rope_type", "yarn"}};  // (no factor)
  EXPECT_THROW(model_spec_from_hf_config(bad), Error);
  bad["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}, {"beta_fast", -1}};
  EXPECT_THROW(model_spec_from_hf_config(bad), Error);
  bad["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}};
  bad["rope_theta"] = 1.0;  // (its ramp divides by ln rope_theta)
  EXPECT_THROW(model_spec_from_hf_config(bad), Error);
  bad.erase("rope_theta");
  EXPECT_NO_THROW(model_spec_from_hf_config(bad));
  bad = ok;
  bad["hidden_size"] = "sixty-four";
  EXPECT_THROW(model_spec_from_hf_config(bad), Error);
}

// copy_columns lays shards out side by side (the sampler's whole rows of a split vocabulary) and
// rejects copies out of range instead of writing past a row.
TEST(Backend, StackedRowsAreConsecutiveRowsOfOneMatrix) {
  CpuBackend be;
  std::vector<float> v(10 * 4);
  std::iota(v.begin(), v.end(), 0.f);
  const Tensor m = be.upload(v.data(), {10, 4}, DType::F32);
  const Tensor a = rows_view(m, 0, 6), b = rows_view(m, 6, 2), c = rows_view(m, 8, 2);
  EXPECT_TRUE(stacked_rows({&a, &b, &c}));
  EXPECT_TRUE(stacked_rows({&b, &c}));
  EXPECT_FALSE(stacked_rows({&a, &c}));      // a gap
  EXPECT_FALSE(stacked_rows({&b, &a}));      // out of order
  const Tensor other = be.upload(v.data(), {2, 4}, DType::F32);
  EXPECT_FALSE(stacked_rows({&c, &other}));  // another allocation (not right after c: c ends m)
  Tensor wide = c;
  wide.shape = {1, 8};
  EXPECT_FALSE(stacked_rows({&b, &wide}));   // other columns
  EXPECT_FALSE(stacked_rows({&a, nullptr}));
  const Tensor all = stacked_view({&a, &b, &c});
  EXPECT_EQ(all.data, m.data);
  EXPECT_EQ(all.shape, (std::vector<int64_t>{10, 4}));
  EXPECT_THROW(stacked_view({&a, &c}), std::invalid_argument);
  // Vectors (stacked biases) too.
  const Tensor vec = be.upload(v.data(), {12}, DType::F32);
  const Tensor v0 = rows_view(vec, 0, 8), v1 = rows_view(vec, 8, 4);
  EXPECT_TRUE(stacked_rows({&v0, &v1}));
  EXPECT_EQ(stacked_view({&v0, &v1}).shape, std::vector<int64_t>{12});
}

TEST(Backend, CopyColumnsPlacesShardsAndChecksRanges) {
  CpuBackend cpu;
  const std::vector<float> a = {1, 2, 3, 9, 4, 5, 6, 9}, b = {7, 8, 0, 10, 11, 0};  // [2, 4] and [2, 3], padded
  Tensor ta = cpu.upload(a.data(), {2, 4}, DType::F32), tb = cpu.upload(b.data(), {2, 3}, DType::F32);
  Tensor whole = cpu.empty({2, 5}, DType::F32);
  cpu.copy_columns(ta, 3, whole, 0);
  cpu.copy_columns(tb, 2, whole, 3);
  std::vector<float> got(10);
  cpu.download(whole, got.data());
  EXPECT_EQ(got, (std::vector<float>{1, 2, 3, 7, 8, 4, 5, 6, 10, 11}));
  EXPECT_THROW(cpu.copy_columns(ta, 3, whole, 3), std::invalid_argument);  // past the row's end
  EXPECT_THROW(cpu.copy_columns(ta, 5, whole, 0), std::invalid_argument);  // wider than the source
  Tensor narrow = cpu.empty({1, 5}, DType::F32);
  EXPECT_THROW(cpu.copy_columns(ta, 3, narrow, 0), std::invalid_argument);  // fewer rows
}

// Mixtures of experts: Qwen3-MoE's and Mixtral's config keys, the sparse-layer rule, the layout check on
// the experts' intermediate size, and the refusals. (The forward itself: the tiny-qwen3-moe and
// tiny-mixtral golden tests.)
TEST(ModelSpec, MixtureOfExperts) {
  using nlohmann::json;
  json cfg = {{"architectures", {"Qwen3MoeForCausalLM"}}, {"hidden_size", 64}, {"intermediate_size", 128},
              {"num_hidden_layers", 4}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"head_dim", 32},
              {"vocab_size", 100}, {"num_experts", 8}, {"num_experts_per_tok", 2}, {"moe_intermediate_size", 48},
              {"norm_topk_prob", true}, {"decoder_sparse_step", 2}, {"mlp_only_layers", {3}}};
  ModelSpec s = model_spec_from_hf_config(cfg);
  EXPECT_EQ(s.model_type, "qwen3_moe");
  EXPECT_TRUE(s.qk_norm);
  EXPECT_EQ(s.num_experts, 8);
  EXPECT_EQ(s.num_experts_per_tok, 2);
  EXPECT_EQ(s.moe_intermediate_size, 48);
  EXPECT_TRUE(s.norm_topk_prob);
  // sparse where (l + 1) % 2 == 0, unless in mlp_only_layers
  EXPECT_FALSE(moe_layer(s, 0));
  EXPECT_TRUE(moe_layer(s, 1));
  EXPECT_FALSE(moe_layer(s, 2));
  EXPECT_FALSE(moe_layer(s, 3));
  cfg.erase("norm_topk_prob");  // (transformers' default: off)
  EXPECT_FALSE(model_spec_from_hf_config(cfg).norm_topk_prob);
  EXPECT_NO_THROW(model_spec_check_layout(s, 2, 1));
  s.moe_intermediate_size = 50;
  EXPECT_THROW(model_spec_check_layout(s, 4, 1), Error);
  cfg["num_experts_per_tok"] = 9;
  EXPECT_THROW(model_spec_from_hf_config(cfg), Error);

  json mix = {{"architectures", {"MixtralForCausalLM"}}, {"hidden_size", 64}, {"intermediate_size", 96},
              {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 100},
              {"num_local_experts", 4}, {"num_experts_per_tok", 2}, {"sliding_window", nullptr}};
  const ModelSpec m = model_spec_from_hf_config(mix);
  EXPECT_EQ(m.model_type, "mixtral");
  EXPECT_FALSE(m.qk_norm);
  EXPECT_EQ(m.num_experts, 4);
  EXPECT_EQ(m.moe_intermediate_size, 96);  // (Mixtral's experts are intermediate_size wide)
  EXPECT_TRUE(m.norm_topk_prob);
  EXPECT_EQ(m.sliding_window, 0);
  EXPECT_TRUE(moe_layer(m, 0) && moe_layer(m, 1));
  try {
    check_moe_options(m, true, false, false);
    ADD_FAILURE() << "fp8 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quantization fp8: not supported with a mixture-of-experts model"), std::string::npos);
  }
  EXPECT_THROW(check_moe_options(m, false, true, false), Error);
  EXPECT_THROW(check_moe_options(m, false, false, true), Error);
  EXPECT_NO_THROW(check_moe_options(m, false, false, false));
  ModelSpec dense = m;
  dense.num_experts = 0;
  EXPECT_NO_THROW(check_moe_options(dense, true, true, true));

  // Weights: the router and every expert's matrices, as many bytes as shard_weight_bytes counts (one
  // expert's intermediate split two ways here).
  const ShardInfo sh = make_shard_info(m, make_topology(0, 2, 2, 1));
  EXPECT_EQ(sh.moe_intermediate, 48);
  const double e = 2, H = 64, q = 2 * 16, kv = 1 * 16;
  const double layer = e * 2 * H + e * ((q + 2 * kv) * H + H * q) + e * 4 * H + 4 * e * 2 * 48 * H + 4 * e * H * 48;
  EXPECT_DOUBLE_EQ(shard_weight_bytes(m, sh, false, false, DType::BF16, DType::BF16), 2 * layer);

  // Qwen2-MoE: q/k/v biases by qkv_bias (default on), no q/k norms, its defaults, a shared expert split over
  // the tensor group as a dense MLP.
  json q2 = {{"architectures", {"Qwen2MoeForCausalLM"}}, {"hidden_size", 64}, {"intermediate_size", 96},
             {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 100},
             {"shared_expert_intermediate_size", 40}};
  ModelSpec qm = model_spec_from_hf_config(q2);
  EXPECT_EQ(qm.model_type, "qwen2_moe");
  EXPECT_TRUE(qm.attention_bias);
  EXPECT_FALSE(qm.qk_norm);
  EXPECT_EQ(qm.num_experts, 60);  // (transformers' Qwen2MoeConfig defaults)
  EXPECT_EQ(qm.num_experts_per_tok, 4);
  EXPECT_EQ(qm.moe_intermediate_size, 1408);
  EXPECT_FALSE(qm.norm_topk_prob);
  EXPECT_EQ(qm.shared_expert_intermediate_size, 40);
  q2["qkv_bias"] = false;
  EXPECT_FALSE(model_spec_from_hf_config(q2).attention_bias);
  qm.moe_intermediate_size = 64;
  EXPECT_NO_THROW(model_spec_check_layout(qm, 4, 1));
  EXPECT_THROW(model_spec_check_layout(qm, 8, 1), Error);  // (40 over 8 ranks)
  EXPECT_EQ(make_shard_info(qm, make_topology(1, 4, 4, 1)).shared_intermediate, 10);
  // Its tensors: the experts', then the shared expert's and its gate (converter and loader expect them).
  std::vector<std::string> names;
  for (const auto& w : expected_weights(qm)) names.push_back(w.name);
  for (const char* n : {"model.layers.1.mlp.shared_expert.gate_proj.weight", "model.layers.1.mlp.shared_expert.down_proj.weight",
                        "model.layers.1.mlp.shared_expert_gate.weight", "model.layers.1.self_attn.q_proj.bias"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  EXPECT_EQ(std::find(names.begin(), names.end(), "model.layers.1.mlp.gate_proj.weight"), names.end());
}
