// Mixtures of experts: the routing (moe_route / moe_rows), Backend::moe on the CPU backend against the
// block written out token by token, and Mixtral's tensor names.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu_backend.h"
#include "backend/moe_route.h"
#include "model/weight_names.h"

using namespace llmserve;

TEST(Moe, RouteTakesTheMostProbableExperts) {
  // token 0: logits 0, 2, 1, 2 -> experts 1 and 3 tie at the top (the lower index first), then 2
  const std::vector<float> logits = {0, 2, 1, 2, /* token 1 */ 3, -1, 0, 0};
  const auto c = moe_route(logits.data(), 2, 4, 3, false);
  ASSERT_EQ(c.size(), 6u);
  EXPECT_EQ(c[0].expert, 1);
  EXPECT_EQ(c[1].expert, 3);
  EXPECT_EQ(c[2].expert, 2);
  const double z = 1 + 2 * std::exp(2.0) + std::exp(1.0);
  EXPECT_NEAR(c[0].weight, std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(c[2].weight, std::exp(1.0) / z, 1e-6);
  EXPECT_EQ(c[3].expert, 0);
  EXPECT_EQ(c[4].expert, 2);  // (2 and 3 tie: the lower first)
  EXPECT_EQ(c[5].expert, 3);
  // renormalized: the chosen weights sum to 1, in the same ratios
  const auto r = moe_route(logits.data(), 2, 4, 2, true);
  EXPECT_NEAR(r[0].weight + r[1].weight, 1.0, 1e-6);
  EXPECT_NEAR(r[0].weight, 0.5, 1e-6);
  EXPECT_NEAR(r[2].weight / r[3].weight, std::exp(3.0), 1e-3);
  EXPECT_THROW(moe_route(logits.data(), 2, 4, 5, true), std::invalid_argument);
  // the rows each expert serves, in token order
  const MoeRows rows = moe_rows(r, 2, 4, 2);
  ASSERT_EQ(rows.rows.size(), 4u);
  EXPECT_EQ(rows.rows[0].size(), 1u);
  EXPECT_EQ(rows.rows[1].size(), 1u);
  EXPECT_EQ(rows.rows[2].size(), 1u);
  EXPECT_EQ(rows.rows[3].size(), 1u);
  EXPECT_EQ(rows.rows[0][0].first, 1);
  EXPECT_EQ(rows.rows[3][0].first, 0);
}

TEST(Moe, CpuBlockEqualsTheSumOverChosenExperts) {
  const int64_t T = 5, H = 8, E = 4, M = 6;
  const int k = 2;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 0.5f);
  auto draw = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = nd(rng);
    return v;
  };
  const auto h = draw(T * H), router = draw(E * H), gate_up = draw(E * 2 * M * H), down = draw(E * H * M);
  CpuBackend be;
  const Tensor th = be.upload(h.data(), {T, H}, DType::F32), tr = be.upload(router.data(), {E, H}, DType::F32);
  const Tensor tg = be.upload(gate_up.data(), {E * 2 * M, H}, DType::F32), td = be.upload(down.data(), {E * H, M}, DType::F32);
  std::vector<float> base(static_cast<size_t>(T * H));
  for (size_t i = 0; i < base.size(); ++i) base[i] = static_cast<float>(i % 7) - 3.f;
  Tensor out = be.empty({T, H}, DType::F32), sum = be.upload(base.data(), {T, H}, DType::F32);
  be.moe(th, {tr, tg, td, k, true}, out, false);
  be.moe(th, {tr, tg, td, k, true}, sum, true);  // (added to what it held)
  std::vector<float> got(static_cast<size_t>(T * H)), added(got.size());
  be.download(out, got.data());
  be.download(sum, added.data());
  for (int64_t t = 0; t < T; ++t) {
    // the block by hand, in double: router softmax, top 2, renormalized, each expert's SwiGLU
    std::vector<double> p(static_cast<size_t>(E));
    double z = 0;
    for (int64_t e = 0; e < E; ++e) {
      double l = 0;
      for (int64_t c = 0; c < H; ++c) l += double(h[t * H + c]) * router[e * H + c];
      z += p[e] = std::exp(l);
    }
    int a = 0, b = -1;
    for (int64_t e = 1; e < E; ++e) if (p[e] > p[a]) a = static_cast<int>(e);
    for (int64_t e = 0; e < E; ++e) if (e != a && (b < 0 || p[e] > p[b])) b = static_cast<int>(e);
    for (int64_t c = 0; c < H; ++c) {
      double want = 0;
      for (int ex : {a, b}) {
        double y = 0;
        for (int64_t i = 0; i < M; ++i) {
          double g = 0, u = 0;
          for (int64_t j = 0; j < H; ++j) {
            g += double(h[t * H + j]) * gate_up[(ex * 2 * M + i) * H + j];
            u += double(h[t * H + j]) * gate_up[(ex * 2 * M + M + i) * H + j];
          }
          y += g / (1 + std::exp(-g)) * u * down[(ex * H + c) * M + i];
        }
        want += p[ex] / (p[a] + p[b]) * y;
      }
      EXPECT_NEAR(got[t * H + c], want, 1e-5) << "token " << t << " column " << c;
      EXPECT_NEAR(added[t * H + c], base[t * H + c] + want, 1e-5) << "token " << t << " column " << c;
    }
  }
}

TEST(Moe, MixtralNames) {
  EXPECT_EQ(mixtral_weight_name("model.layers.3.mlp.gate.weight"), "model.layers.3.block_sparse_moe.gate.weight");
  EXPECT_EQ(mixtral_weight_name(expert_prefix(3, 7) + "gate_proj.weight"), "model.layers.3.block_sparse_moe.experts.7.w1.weight");
  EXPECT_EQ(mixtral_weight_name(expert_prefix(0, 0) + "up_proj.weight"), "model.layers.0.block_sparse_moe.experts.0.w3.weight");
  EXPECT_EQ(mixtral_weight_name(expert_prefix(0, 1) + "down_proj.weight"), "model.layers.0.block_sparse_moe.experts.1.w2.weight");
  EXPECT_EQ(mixtral_weight_name("model.layers.0.mlp.gate_proj.weight"), "model.layers.0.mlp.gate_proj.weight");  // (dense)
  EXPECT_EQ(mixtral_weight_name("model.norm.weight"), "model.norm.weight");
}
