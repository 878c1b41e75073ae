// CPU kernels against direct formulas: paged attention through scrambled block tables must equal
// plain causal attention over contiguous K/V.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/fp8.h"

using namespace llmserve;

namespace {
std::vector<float> randn(size_t n, std::mt19937& g) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
}  // namespace

TEST(Kernels, LinearMatchesNaive) {
  std::mt19937 g(1);
  for (const int64_t K : {37, 301}) {  // (from 256 on, AVX-512 machines take tiles of 4 rows)
    const int64_t T = 7, N = 131;
    auto x = randn(T * K, g), w = randn(N * K, g), b = randn(N, g);
    std::vector<float> out(T * N);
    cpu::linear(x.data(), w.data(), b.data(), T, K, N, out.data());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n) {
        double acc = b[n];
        for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(x[t * K + k]) * w[n * K + k];
        ASSERT_NEAR(out[t * N + n], acc, 1e-4 * std::sqrt(static_cast<double>(K) / 37)) << "K=" << K;
      }
  }
}

// A token's row does not depend on the batch it is computed in (the engine compares steps of
// different shapes): every token count from 1 to 9 (whole tiles of 4 and each remainder), rows in
// pairs and alone (and in fours, from an inner size of 256 on AVX-512 machines), inner sizes that are
// not a multiple of the 8 partial sums.
TEST(Kernels, LinearRowsDoNotDependOnTheBatch) {
  std::mt19937 g(2);
  for (const int64_t K : {77, 263}) {
    const int64_t N = 67;
    auto x = randn(9 * K, g), w = randn(N * K, g), b = randn(N, g);
    std::vector<std::vector<float>> alone(9, std::vector<float>(N));
    for (int64_t t = 0; t < 9; ++t) cpu::linear(x.data() + t * K, w.data(), b.data(), 1, K, N, alone[t].data());
    for (int64_t T = 1; T <= 9; ++T) {
      std::vector<float> out(T * N);
      cpu::linear(x.data(), w.data(), b.data(), T, K, N, out.data());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) ASSERT_EQ(out[t * N + n], alone[t][n]) << "K=" << K << " T=" << T << " t=" << t << " n=" << n;
    }
  }
}

TEST(Kernels, RmsNorm) {
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 2, 2}, out(4);
  cpu::rmsnorm(x.data(), w.data(), 1, 4, 0.0f, out.data());
  const float r = std::sqrt((1 + 4 + 9 + 16) / 4.0f);
  EXPECT_FLOAT_EQ(out[0], 1 / r);
  EXPECT_FLOAT_EQ(out[3], 2 * 4 / r);
}

TEST(Kernels, RopeRotatesHalves) {
  // One head of dim 4 at position 3: pairs (0,2) and (1,3) rotate by 3*inv_freq[i].
  std::vector<float> q = {1, 2, 3, 4}, k = {0.5f, -1, 2, 1}, inv = {1.0f, 0.1f};
  std::vector<float> q0 = q, k0 = k;
  int32_t pos = 3;
  cpu::rope(q.data(), k.data(), &pos, inv.data(), 1, 1, 1, 4);
  for (int i = 0; i < 2; ++i) {
    const float a = 3 * inv[i], c = std::cos(a), s = std::sin(a);
    EXPECT_NEAR(q[i], q0[i] * c - q0[i + 2] * s, 1e-6);
    EXPECT_NEAR(q[i + 2], q0[i + 2] * c + q0[i] * s, 1e-6);
    EXPECT_NEAR(k[i], k0[i] * c - k0[i + 2] * s, 1e-6);
  }
}

// Causal attention through scrambled block tables against a float64 reference over each sequence's
// contiguous keys, for full attention and for sliding windows of 5 and 1 keys (a position p then sees
// positions p - window + 1 .. p; sequences of 9-17 positions, cached prefixes included).
TEST(Kernels, PagedAttentionEqualsContiguousCausalAttention) {
  std::mt19937 g(7);
  const int64_t Hq = 4, Hk = 2, D = 8, bs = 4, num_blocks = 32;
  const std::vector<int32_t> lens = {9, 1, 14};      // tokens per sequence in this step
  const std::vector<int32_t> cached = {0, 12, 3};    // tokens already in the cache before the step
  const int64_t S = 3, max_blocks = 5;
  // Scrambled physical blocks.
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g);
  std::vector<int32_t> tables(S * max_blocks, -1);
  int next = 0;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t b = 0; b < (cached[s] + lens[s] + bs - 1) / bs; ++b) tables[s * max_blocks + b] = perm[next++];

  std::vector<float> kc(num_blocks * bs * Hk * D, NAN), vc(kc.size(), NAN);
  // Full K/V history per sequence (contiguous reference).
  std::vector<std::vector<float>> K(S), Vv(S);
  std::vector<int32_t> q_start = {0}, positions, slots;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t n = cached[s] + lens[s];
    K[s] = randn(n * Hk * D, g);
    Vv[s] = randn(n * Hk * D, g);
    auto slot = [&](int64_t p) { return tables[s * max_blocks + p / bs] * bs + p % bs; };
    for (int64_t p = 0; p < cached[s]; ++p) {  // earlier steps' keys already in the cache
      std::copy_n(&K[s][p * Hk * D], Hk * D, &kc[slot(p) * Hk * D]);
      std::copy_n(&Vv[s][p * Hk * D], Hk * D, &vc[slot(p) * Hk * D]);
    }
    for (int64_t i = 0; i < lens[s]; ++i) {
      positions.push_back(static_cast<int32_t>(cached[s] + i));
      slots.push_back(static_cast<int32_t>(slot(cached[s] + i)));
    }
    q_start.push_back(q_start.back() + lens[s]);
  }
  const int64_t T = q_start.back();
  std::vector<float> newk(T * Hk * D), newv(T * Hk * D);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t i = 0; i < lens[s]; ++i) {
      std::copy_n(&K[s][(cached[s] + i) * Hk * D], Hk * D, &newk[(q_start[s] + i) * Hk * D]);
      std::copy_n(&Vv[s][(cached[s] + i) * Hk * D], Hk * D, &newv[(q_start[s] + i) * Hk * D]);
    }
  cpu::kv_write(newk.data(), newv.data(), slots.data(), T, Hk, D, kc.data(), vc.data());
  auto q = randn(T * Hq * D, g);
  const float scale = 1 / std::sqrt(static_cast<float>(D));
  std::vector<float> full;
  for (int64_t window : {0, 5, 1}) {
    std::vector<float> out(T * Hq * D);
    cpu::paged_attention(q.data(), kc.data(), vc.data(), tables.data(), max_blocks, q_start.data(), positions.data(), S,
                         Hq, Hk, D, bs, scale, window, out.data());
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < lens[s]; ++i) {
        const int64_t t = q_start[s] + i, p = cached[s] + i, j0 = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
        for (int64_t h = 0; h < Hq; ++h) {
          const int64_t kh = h / (Hq / Hk);
          std::vector<double> w(p + 1);
          double mx = -1e30, sum = 0;
          for (int64_t j = j0; j <= p; ++j) {
            double acc = 0;
            for (int64_t d = 0; d < D; ++d) acc += q[(t * Hq + h) * D + d] * K[s][(j * Hk + kh) * D + d];
            w[j] = acc * scale;
            mx = std::max(mx, w[j]);
          }
          for (int64_t j = j0; j <= p; ++j) sum += (w[j] = std::exp(w[j] - mx));
          for (int64_t d = 0; d < D; ++d) {
            double o = 0;
            for (int64_t j = j0; j <= p; ++j) o += w[j] / sum * Vv[s][(j * Hk + kh) * D + d];
            ASSERT_NEAR(out[(t * Hq + h) * D + d], o, 1e-5)
                << "window " << window << " seq " << s << " token " << i << " head " << h;
          }
        }
      }
    if (window == 0) full = out;
    else EXPECT_NE(out, full) << "window " << window << ": as full attention";  // (the windows cut keys here)
  }
}

// kv_cache_dtype fp8: kv_write stores each value's E4M3 code (scale 1; saturating; padding tokens'
// slots untouched), and attention over the codes gives, bit for bit, what the float32 kernel gives over
// the decoded values (one step of three sequences through scrambled block tables, GQA), in one group
// of decoded copies or in groups of at most two blocks' worth (each sequence then alone).
TEST(Kernels, Fp8KvCacheIsTheFloatKernelOverDecodedValues) {
  std::mt19937 g(11);
  const int64_t Hq = 6, Hk = 2, D = 16, bs = 4, blocks = 12, S = 3, max_blocks = 4, T = 2 + 5 + 9;
  const std::vector<int32_t> q_start = {0, 2, 7, 16};
  std::vector<int32_t> perm(blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g);
  std::vector<int32_t> tables(S * max_blocks, -1), positions, slots;
  for (int64_t s = 0, next = 0; s < S; ++s)
    for (int32_t i = 0; i < q_start[s + 1] - q_start[s]; ++i) {
      if (i % bs == 0) tables[s * max_blocks + i / bs] = perm[next++];
      positions.push_back(i);
      slots.push_back(tables[s * max_blocks + i / bs] * bs + i % bs);
    }
  slots[3] = -1;  // a padding token: written nowhere (attention still reads its position: keep it defined)
  auto k = randn(T * Hk * D, g), v = randn(T * Hk * D, g);
  for (auto& x : k) x *= 40.f;  // (past 448 here and there: saturated)
  k[5] = 1000.f, v[7] = -3000.f;
  std::vector<uint8_t> kc(blocks * bs * Hk * D, 0x55), vc(kc.size(), 0x55);
  cpu::kv_write(k.data(), v.data(), slots.data(), T, Hk, D, kc.data(), vc.data());
  // (float32 copies 64-byte aligned, as the backend's caches and the kernel's own copies are: a row's
  // alignment decides how its dot products vectorize, hence their rounding)
  std::unique_ptr<float, decltype(&std::free)> kfa(static_cast<float*>(std::aligned_alloc(64, kc.size() * 4)), std::free),
      vfa(static_cast<float*>(std::aligned_alloc(64, vc.size() * 4)), std::free);
  float *kf = kfa.get(), *vf = vfa.get();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < Hk * D; ++i) {
      if (slots[t] < 0) continue;
      ASSERT_EQ(kc[slots[t] * Hk * D + i], f32_to_e4m3(k[t * Hk * D + i])) << t << " " << i;
      ASSERT_EQ(vc[slots[t] * Hk * D + i], f32_to_e4m3(v[t * Hk * D + i])) << t << " " << i;
    }
  EXPECT_EQ(e4m3_to_f32(kc[slots[0] * Hk * D + 5]), 448.f);
  EXPECT_EQ(e4m3_to_f32(vc[slots[0] * Hk * D + 7]), -448.f);
  const int32_t pad = tables[1 * max_blocks + 1] * bs + 1;  // the padding token's slot: untouched
  EXPECT_EQ(kc[pad * Hk * D], 0x55);
  for (size_t i = 0; i < kc.size(); ++i) kf[i] = e4m3_to_f32(kc[i]), vf[i] = e4m3_to_f32(vc[i]);
  const auto q = randn(T * Hq * D, g);
  std::vector<float> o8(T * Hq * D), o32(T * Hq * D);
  const float scale = 1 / std::sqrt(static_cast<float>(D));
  cpu::paged_attention(q.data(), kc.data(), vc.data(), tables.data(), max_blocks, q_start.data(), positions.data(), S, Hq,
                       Hk, D, bs, scale, 0, o8.data());
  cpu::paged_attention(q.data(), kf, vf, tables.data(), max_blocks, q_start.data(), positions.data(), S, Hq,
                       Hk, D, bs, scale, 0, o32.data());
  EXPECT_EQ(o8, o32);
  std::vector<float> grouped(T * Hq * D);
  cpu::paged_attention(q.data(), kc.data(), vc.data(), tables.data(), max_blocks, q_start.data(), positions.data(), S, Hq,
                       Hk, D, bs, scale, 0, grouped.data(), 2 * bs * Hk * D);
  EXPECT_EQ(grouped, o32);
  // With a sliding window of 3 keys, in groups too.
  cpu::paged_attention(q.data(), kf, vf, tables.data(), max_blocks, q_start.data(), positions.data(), S, Hq,
                       Hk, D, bs, scale, 3, o32.data());
  cpu::paged_attention(q.data(), kc.data(), vc.data(), tables.data(), max_blocks, q_start.data(), positions.data(), S, Hq,
                       Hk, D, bs, scale, 3, grouped.data(), 2 * bs * Hk * D);
  EXPECT_EQ(grouped, o32);
  EXPECT_NE(grouped, o8);
}

TEST(Kernels, EmbeddingShardZeroesForeignRows) {
  std::vector<float> table = {1, 1, 2, 2, 3, 3};  // rows 10..12 of the vocabulary
  std::vector<int32_t> ids = {11, 5, 12};
  std::vector<float> out(6, -1);
  cpu::embedding(table.data(), 10, 3, ids.data(), 3, 2, out.data());
  EXPECT_EQ(out, (std::vector<float>{2, 2, 0, 0, 3, 3}));
}

TEST(Kernels, SiluMul) {
  std::vector<float> g = {0, 1, -2}, u = {5, 2, 1}, out(3);
  cpu::silu_mul(g.data(), u.data(), 3, out.data());
  EXPECT_FLOAT_EQ(out[0], 0);
  EXPECT_NEAR(out[1], 2 * 1 / (1 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(out[2], -2 / (1 + std::exp(2.0)), 1e-6);
}

// The k-th largest value, on both of its paths (a min-heap pass for small k against n, selection
// otherwise), with ties and -inf entries, against a full sort; the input is left as it was.
TEST(Kernels, KthLargestMatchesSort) {
  std::mt19937 g(5);
  std::uniform_int_distribution<int> d(-40, 40);  // few distinct values: ties
  for (int64_t n : {1, 7, 64, 1000, 20000}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = d(g) == 0 ? -INFINITY : static_cast<float>(d(g)) * 0.25f;
    std::vector<float> sorted = v;
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    const std::vector<float> before = v;
    for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{50}, n / 2 + 1, n}) {
      if (k < 1 || k > n) continue;
      EXPECT_EQ(llmserve::cpu::kth_largest(v.data(), n, k), sorted[static_cast<size_t>(k - 1)]) << "n " << n << " k " << k;
    }
    EXPECT_EQ(v, before);
  }
}

// Rows for the log-probability and greedy-draw checks: logits of spread sizes (e^(x - max) from 1
// down past float's range), -inf entries, ties at the top, an all -inf row.
std::vector<float> logit_rows(int64_t n, int64_t L, std::mt19937& g) {
  std::normal_distribution<float> d(0.f, 8.f);
  std::uniform_int_distribution<int> u(0, 9);
  std::vector<float> v(static_cast<size_t>(n * L));
  for (auto& x : v) x = u(g) == 0 ? -INFINITY : d(g);
  for (int64_t k = 0; k < L; k += 37) v[static_cast<size_t>(1 * L + k)] = 60.f;  // row 1: ties at the top
  for (int64_t k = 0; k < L; ++k) v[static_cast<size_t>(2 * L + k)] = -INFINITY;  // row 2: nothing
  for (int64_t k = 0; k < L; ++k) v[static_cast<size_t>(3 * L + k)] = k % 2 ? -120.f + 0.01f * k : 0.f;  // row 3: underflow
  return v;
}

// The log-probability statistics against double arithmetic: the row's largest value and the chosen
// token's logit exactly, the sum of e^(x - max) within 1e-6, the K largest (ties to the smaller token,
// -inf / -1 padding) exactly as a sort gives them. The same with views (processed log-probabilities:
// scaled, cut at a floor, one row down to one token) against the values the views make.
TEST(Kernels, RowLogprobsMatchDoubleArithmetic) {
  std::mt19937 g(31);
  const int64_t n = 5, L = 151936 / 8 + 3, offset = 1000;
  const std::vector<float> v = logit_rows(n, L, g);
  std::vector<int32_t> rows = {4, 0, 1, 2, 3}, chosen = {1000 + 17, 999, 1000 + 37, 1000, 1000 + L - 1};
  std::vector<LogprobView> views(n);
  std::vector<float> seen(v.size());  // row rows[j] as views[j] makes it
  for (int64_t j = 0; j < n; ++j) {
    views[j].scale = 1.f / (0.5f + 0.3f * static_cast<float>(j));
    views[j].floor = j == 1 ? -INFINITY : 2.f;
    if (j == 4) views[j].only = chosen[j], views[j].floor = -INFINITY;  // (row 3's last token)
    for (int64_t k = 0; k < L; ++k) {
      const float x = v[rows[j] * L + k] * views[j].scale;
      const bool dropped = x < views[j].floor || (views[j].only >= 0 && offset + k != views[j].only);
      seen[rows[j] * L + k] = dropped ? -INFINITY : x;
    }
  }
  for (const bool viewed : {false, true})
  for (int K : {0, 1, 5, 20}) {
    std::vector<float> stats(3 * n), top_v(n * K);
    std::vector<int32_t> top_i(n * K);
    cpu::row_logprobs(v.data(), L, L, offset, rows.data(), chosen.data(), n, K, stats.data(), top_v.data(), top_i.data(),
                      viewed ? views.data() : nullptr);
    for (int64_t j = 0; j < n; ++j) {
      const float* row = (viewed ? seen : v).data() + rows[j] * L;
      const float mx = *std::max_element(row, row + L);
      double sum = 0;
      if (mx != -INFINITY)
        for (int64_t k = 0; k < L; ++k) sum += std::exp(static_cast<double>(row[k]) - mx);
      const int64_t c = chosen[j] - offset;
      EXPECT_EQ(stats[3 * j], mx) << "row " << rows[j];
      EXPECT_NEAR(stats[3 * j + 1], sum, 1e-6 * sum) << "row " << rows[j] << " K " << K;
      EXPECT_EQ(stats[3 * j + 2], c >= 0 && c < L ? row[c] : 0.f) << "row " << rows[j];
      std::vector<int64_t> order(static_cast<size_t>(L));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return row[a] > row[b]; });
      for (int k = 0; k < K; ++k) {
        const int64_t o = order[static_cast<size_t>(k)];
        const bool real = row[o] != -INFINITY;
        EXPECT_EQ(top_v[j * K + k], real ? row[o] : -INFINITY) << "row " << rows[j] << " rank " << k;
        EXPECT_EQ(top_i[j * K + k], real ? static_cast<int32_t>(offset + o) : -1) << "row " << rows[j] << " rank " << k;
      }
    }
  }
}

// Greedy draws: the first of each row's largest values (no token for an all -inf row), as a plain scan.
TEST(Kernels, GreedyDrawTakesTheFirstLargest) {
  std::mt19937 g(32);
  const int64_t n = 5, L = 5003, offset = 7;
  std::vector<float> v = logit_rows(n, L, g);
  v[static_cast<size_t>(4 * L + L - 1)] = 1e30f;  // the last value alone on top
  std::vector<RowDraw> draws(n);
  for (auto& r : draws) r.greedy = true;
  std::vector<float> best(n);
  std::vector<int32_t> idx(n);
  cpu::draw_rows(v.data(), n, L, L, offset, draws.data(), nullptr, 0, best.data(), idx.data());
  for (int64_t i = 0; i < n; ++i) {
    const float* row = v.data() + i * L;
    int64_t bi = -1;
    for (int64_t k = 0; k < L; ++k)
      if (row[k] != -INFINITY && (bi < 0 || row[k] > row[bi])) bi = k;
    EXPECT_EQ(idx[i], bi < 0 ? INT32_MAX : static_cast<int32_t>(offset + bi)) << "row " << i;
    EXPECT_EQ(best[i], bi < 0 ? -INFINITY : row[bi]) << "row " << i;
  }
}
