// Every CUDA op against the CPU reference through the Backend interface, on random inputs, in
// float32 (tight) and bfloat16/float16 (relative L2 under 1e-2). Skipped where no GPU is visible.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <tuple>

#include "backend/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.cuh"
#include "kernels/fp8.h"
#include "kv/kv_cache.h"

using namespace llmserve;

namespace {

std::vector<float> randn(size_t n, std::mt19937& g, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

int64_t rows_of_t(const Tensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (a[i] - b[i]) * static_cast<double>(a[i] - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

class CudaOps : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
    gpu = std::make_unique<CudaBackend>(0, GetParam());
  }
  double tol() const { return GetParam() == DType::F32 ? 1e-5 : 1e-2; }
  // The few-token kernel choices the projection tests run through: 16-bit weights on the GEMVs only
  // (from 5), on the skinny kernels only (from 1) with the input norm forced inside their launches (the
  // backend puts it there only for rows of kSkinnyNormMinCols or more), and those with it forced out
  // (rmsnorm first, as for narrower rows).
  struct FewTokenMode {
    int64_t from;
    bool norm_inside;
  };
  static constexpr FewTokenMode kFewTokenModes[] = {{5, true}, {1, true}, {1, false}};
  void set_few_token_mode(const FewTokenMode& mode) {
    gpu->set_skinny_min_tokens(mode.from);
    gpu->set_skinny_norm_inside(mode.norm_inside);
  }
  // Runs `op` on both backends with the same float inputs; compares output `out_index`.
  std::unique_ptr<CudaBackend> gpu;
  CpuBackend cpu;
  std::vector<float> get(Backend& b, const Tensor& t) {
    std::vector<float> v(static_cast<size_t>(t.numel()));
    b.download(t, v.data());
    return v;
  }
  // The same values on both backends: float32 on the CPU, type `t` on the GPU.
  std::pair<Tensor, Tensor> both(const std::vector<float>& v, std::vector<int64_t> shape, DType t) {
    return {cpu.upload(v.data(), shape, DType::F32), gpu->upload(v.data(), shape, t)};
  }
  void expect_close(const Tensor& a, const Tensor& b, const char* what, double tolerance) {
    EXPECT_LT(rel_l2(get(*gpu, b), get(cpu, a)), tolerance) << what << " (" << dtype_name(GetParam()) << ")";
  }
  // kv_cache_dtype fp8: caches of E4M3 codes, the same bytes on both backends.
  std::pair<Tensor, Tensor> both_codes(const std::vector<uint8_t>& c, std::vector<int64_t> shape) {
    Tensor a = cpu.empty(shape, DType::F8E4M3), b = gpu->empty(shape, DType::F8E4M3);
    std::memcpy(a.data, c.data(), c.size());
    gpu->synchronize();
    EXPECT_EQ(cudaMemcpy(b.data, c.data(), c.size(), cudaMemcpyHostToDevice), cudaSuccess);
    return {a, b};
  }
  std::vector<uint8_t> codes_of(const Tensor& t, bool device) {
    std::vector<uint8_t> c(static_cast<size_t>(t.numel()));
    if (!device) {
      std::memcpy(c.data(), t.data, c.size());
    } else {
      gpu->synchronize();
      EXPECT_EQ(cudaMemcpy(c.data(), t.data, c.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return c;
  }
  // The GPU's codes against the CPU's where their inputs differ by rounding (the activation type, RoPE's
  // sines): each code's value within one E4M3 step (at the larger magnitude) plus `slack` of the CPU's,
  // slack bounding the inputs' own absolute difference, and at most max_differing of the written
  // (non-zero) codes not the CPU's; some written.
  void expect_codes_close(const Tensor& c, const Tensor& g, const std::string& what, double max_differing, double slack) {
    const auto a = codes_of(c, false), b = codes_of(g, true);
    size_t differ = 0, nonzero = 0, far = 0;
    double worst = 0;  // the largest difference past one step
    for (size_t i = 0; i < a.size(); ++i) {
      nonzero += (a[i] & 0x7f) != 0;
      if (a[i] == b[i]) continue;
      ++differ;
      const double x = e4m3_to_f32(a[i]), y = e4m3_to_f32(b[i]), big = std::max(std::fabs(x), std::fabs(y));
      const double step = std::max(std::ldexp(1.0, -9), std::ldexp(1.0, std::ilogb(big) - 3));
      far += !(std::fabs(x - y) <= step + slack);
      worst = std::max(worst, std::fabs(x - y) - step);
    }
    EXPECT_GT(nonzero, 0u) << what;
    EXPECT_EQ(far, 0u) << what << ": codes more than one step + " << slack << " from the CPU's (worst by " << worst << ")";
    EXPECT_LE(static_cast<double>(differ), max_differing * static_cast<double>(nonzero))
        << what << ": " << differ << " of " << nonzero << " written codes differ (" << dtype_name(GetParam()) << ")";
  }
};

// A batch of 3 sequences: a 7-token prefill, a decode at position 20 and a 5-token chunk after 9
// cached tokens, over scrambled blocks.
StepMeta make_meta(int64_t bs, const std::vector<int32_t>& lens = {7, 1, 5}, const std::vector<int32_t>& cached = {0, 20, 9},
                   int64_t max_blocks = 4) {
  StepMeta m;
  std::vector<int32_t> perm(static_cast<size_t>(max_blocks * lens.size()));
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937 g(5);
  std::shuffle(perm.begin(), perm.end(), g);
  m.q_start = {0};
  m.max_blocks = static_cast<int32_t>(max_blocks);
  int next = 0;
  for (size_t s = 0; s < lens.size(); ++s) {
    std::vector<int32_t> table(max_blocks, 0);
    for (int64_t b = 0; b < (cached[s] + lens[s] + bs - 1) / bs; ++b) table[b] = perm[next++];
    m.block_tables.insert(m.block_tables.end(), table.begin(), table.end());
    for (int32_t i = 0; i < lens[s]; ++i) {
      const int32_t p = cached[s] + i;
      m.token_ids.push_back(11 + p);
      m.positions.push_back(p);
      m.slot_mapping.push_back(table[p / bs] * static_cast<int32_t>(bs) + p % static_cast<int32_t>(bs));
    }
    m.q_start.push_back(m.q_start.back() + lens[s]);
    m.logits_indices.push_back(m.q_start.back() - 1);
  }
  return m;
}

// Steps over long contexts (blocks of bs positions, tables of max_blocks entries). mixed: many blocks,
// one chunk each (a decode at position 700, a 45-token chunk after 260 cached tokens, a 97-token
// prefill). decode: few blocks, so the contexts are split over several blocks and merged (a
// 2500-token context next to a 300-token one). decode8: enough decoding sequences (8 x 2 KV heads) for
// the grouped kernel to split its contexts too. graph: as a recorded decode graph launches it, splits
// sized for the longest possible context (max_blocks x bs), each token cutting its own context into that
// many chunks (trailing chunks empty).
// mixed_tail: the same with the decodes (one more, of 3 new tokens) last; mixed_middle: a decode on each
// side of the chunk (two runs of decode rows).
struct LongContextSteps {
  StepMeta mixed, mixed_tail, mixed_middle, decode, decode8, graph;
};
LongContextSteps long_context_steps(int64_t bs, int64_t max_blocks) {
  LongContextSteps s;
  s.mixed = make_meta(bs, {1, 45, 97}, {700, 260, 0}, max_blocks);
  s.mixed_tail = make_meta(bs, {45, 97, 1, 3}, {260, 0, 700, 50}, max_blocks);
  s.mixed_middle = make_meta(bs, {1, 45, 2, 97}, {700, 260, 90, 0}, max_blocks);
  s.decode = make_meta(bs, {1, 1}, {2500, 300}, max_blocks);
  s.decode8 = make_meta(bs, {1, 1, 1, 1, 1, 1, 1, 1}, {2500, 300, 40, 700, 1, 129, 1000, 333}, max_blocks);
  s.graph = make_meta(bs, {1, 1, 1}, {1500, 7, 129}, max_blocks);
  s.graph.max_context = static_cast<int32_t>(max_blocks * bs);
  return s;
}

// Whether a step runs the prefill attention kernel (a sequence of 16 or more new tokens, not graph-shaped).
bool is_prefill(const StepMeta& m) {
  int32_t most = 0;
  for (int64_t s = 0; s < m.num_seqs(); ++s) most = std::max(most, m.q_start[s + 1] - m.q_start[s]);
  return m.max_context == 0 && most >= 16;
}

}  // namespace

TEST_P(CudaOps, EveryOpMatchesTheCpuReference) {
  std::mt19937 g(42);
  const DType dt = GetParam();
  const int64_t bs = 8, Hq = 4, Hk = 2, D = 64, H = 96, V = 300, I = 160, blocks = 16;
  const StepMeta m = make_meta(bs);
  const int64_t T = m.num_tokens();
  cpu.begin_step(m);
  gpu->begin_step(m);
  // Embedding (rows 100..399 of the vocabulary on this "shard").
  auto table = both(randn(V * H, g), {V, H}, dt);
  Tensor ec = cpu.empty({T, H}, DType::F32), eg = gpu->empty({T, H}, dt);
  cpu.embedding(table.first, 0, ec);
  gpu->embedding(table.second, 0, eg);
  expect_close(ec, eg, "embedding", tol());
  // RMSNorm, add, SiLU-and-multiply.
  auto x = both(randn(T * H, g), {T, H}, dt), w = both(randn(H, g), {H}, dt);
  Tensor nc = cpu.empty({T, H}, DType::F32), ng = gpu->empty({T, H}, dt);
  cpu.rmsnorm(x.first, w.first, 1e-6f, nc);
  gpu->rmsnorm(x.second, w.second, 1e-6f, ng);
  expect_close(nc, ng, "rmsnorm", tol());
  cpu.add(nc, x.first);
  gpu->add(ng, x.second);
  expect_close(nc, ng, "add", tol());
  {  // Qwen2-MoE's gated shared expert: float32 rows of H, its gate's dot product with h (the type's) per row.
    std::mt19937 g2(5);  // (its own draws: the checks below keep theirs)
    auto xs = both(randn(T * H, g2), {T, H}, DType::F32), ys = both(randn(T * H, g2), {T, H}, DType::F32);
    auto hs = both(randn(T * 2 * H, g2), {T, 2 * H}, dt), gw = both(randn(2 * H, g2, 0.1f), {1, 2 * H}, dt);
    cpu.add_sigmoid_gated(xs.first, ys.first, hs.first, gw.first);
    gpu->add_sigmoid_gated(xs.second, ys.second, hs.second, gw.second);
    expect_close(xs.first, xs.second, "add_sigmoid_gated", tol());
  }
  auto ga = both(randn(T * I, g), {T, I}, dt), up = both(randn(T * I, g), {T, I}, dt);
  Tensor sc = cpu.empty({T, I}, DType::F32), sg = gpu->empty({T, I}, dt);
  cpu.silu_mul(ga.first, up.first, sc);
  gpu->silu_mul(ga.second, up.second, sg);
  expect_close(sc, sg, "silu_mul", tol());
  {  // Sizes the vector paths do not take (rows of 90, 91 elements).
    auto xo = both(randn(T * 90, g), {T, 90}, dt), wo = both(randn(90, g), {90}, dt);
    Tensor oc = cpu.empty({T, 90}, DType::F32), og = gpu->empty({T, 90}, dt);
    cpu.rmsnorm(xo.first, wo.first, 1e-6f, oc);
    gpu->rmsnorm(xo.second, wo.second, 1e-6f, og);
    expect_close(oc, og, "rmsnorm, odd row", tol());
    auto a = both(randn(7 * 13, g), {7, 13}, dt), b = both(randn(7 * 13, g), {7, 13}, dt);
    Tensor ac = cpu.empty({7, 13}, DType::F32), ag = gpu->empty({7, 13}, dt);
    cpu.silu_mul(a.first, b.first, ac);
    gpu->silu_mul(a.second, b.second, ag);
    expect_close(ac, ag, "silu_mul, odd size", tol());
  }
  // Linear with and without bias (cuBLASLt).
  auto wl = both(randn(I * H, g, 0.1f), {I, H}, dt), bl = both(randn(I, g), {I}, dt);
  Tensor lc = cpu.empty({T, I}, DType::F32), lg = gpu->empty({T, I}, dt);
  cpu.linear(x.first, wl.first, &bl.first, lc);
  gpu->linear(x.second, wl.second, &bl.second, lg);
  expect_close(lc, lg, "linear+bias", tol());
  cpu.linear(x.first, wl.first, nullptr, lc);
  gpu->linear(x.second, wl.second, nullptr, lg);
  expect_close(lc, lg, "linear", tol());
  // RoPE, KV write, paged attention.
  std::vector<float> inv(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) inv[i] = 1.f / std::pow(10000.f, 2.f * i / D);
  Tensor invc = cpu.upload(inv.data(), {D / 2}, DType::F32), invg = gpu->upload(inv.data(), {D / 2}, DType::F32);
  auto q = both(randn(T * Hq * D, g), {T, Hq * D}, dt), k = both(randn(T * Hk * D, g), {T, Hk * D}, dt);
  auto v = both(randn(T * Hk * D, g), {T, Hk * D}, dt);
  cpu.rope(q.first, k.first, invc, D);
  gpu->rope(q.second, k.second, invg, D);
  expect_close(q.first, q.second, "rope q", tol());
  expect_close(k.first, k.second, "rope k", tol());
  // Caches pre-filled with random history (positions not written this step are cached context).
  auto kc = both(randn(blocks * bs * Hk * D, g), {blocks, bs, Hk, D}, dt);
  auto vc = both(randn(blocks * bs * Hk * D, g), {blocks, bs, Hk, D}, dt);
  cpu.kv_write(k.first, v.first, kc.first, vc.first);
  gpu->kv_write(k.second, v.second, kc.second, vc.second);
  expect_close(kc.first, kc.second, "kv_write", tol());
  Tensor ac = cpu.empty({T, Hq * D}, DType::F32), ag = gpu->empty({T, Hq * D}, dt);
  cpu.attention(q.first, kc.first, vc.first, D, bs, 0.125f, ac);
  gpu->attention(q.second, kc.second, vc.second, D, bs, 0.125f, ag);
  expect_close(ac, ag, "paged_attention", tol());
  Tensor rc = cpu.empty({3, Hq * D}, DType::F32), rg = gpu->empty({3, Hq * D}, dt);
  cpu.gather_rows(ac, rc);
  gpu->gather_rows(ag, rg);
  expect_close(rc, rg, "gather_rows", tol());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaOps, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// LoRA's shrink and expand (punica's, the adapters stacked): a step with rows of two adapters and rows of
// none (a 7-token prompt of adapter 2, a base decode, a 5-token chunk of adapter 1, a 12-token prompt of
// adapter 2: blocks of 8 rows that mix adapters; with a 60-token prompt instead, more rows than the
// expand takes one to a block), then the same step with no adapter at all; inputs of a width the vector
// loads take (96) and one they do not (90); three outputs of one expand (q/k/v) and one alone. Rows
// without an adapter keep their values exactly.
TEST_P(CudaOps, LoraShrinkAndExpandMatchTheCpu) {
  std::mt19937 g(17);
  const DType dt = GetParam(), f32 = DType::F32;
  const int64_t S = 2, R = 4, N0 = 300, N1 = 40;
  for (const int32_t last : {12, 60})
  for (const bool adapters : {true, false})
    for (const int64_t K : {96, 90, 8968, 4099}) {  // (widths of one and of several runs of the block's threads, vector loads and not)
      StepMeta m = make_meta(8, {7, 1, 5, last}, {0, 20, 9, 0}, 8);
      if (adapters) m.lora = {2, 0, 1, 2};
      const int64_t T = m.num_tokens();
      cpu.begin_step(m);
      gpu->begin_step(m);
      auto in = both(randn(T * K, g), {T, K}, dt);
      auto a = both(randn(S * 3 * R * K, g, 0.2f), {S, 3 * R, K}, dt);
      Tensor tc = cpu.empty({T, 3 * R}, f32), tg = gpu->empty({T, 3 * R}, f32);
      cpu.lora_shrink(in.first, a.first, tc);
      gpu->lora_shrink(in.second, a.second, tg);
      expect_close(tc, tg, "lora_shrink", tol());
      auto b0 = both(randn(S * R * N0, g), {S, R, N0}, dt), b1 = both(randn(S * R * N1, g), {S, R, N1}, dt);
      auto b2 = both(randn(S * R * N1, g), {S, R, N1}, dt);
      const std::vector<float> before = randn(T * N0, g);
      auto o0 = both(before, {T, N0}, f32), o1 = both(randn(T * N1, g), {T, N1}, f32);
      auto o2 = both(randn(T * N1, g), {T, N1}, f32), o3 = both(randn(T * N0, g), {T, N0}, f32);
      const Backend::LoraExpand ec[3] = {{&b0.first, 0, &o0.first}, {&b1.first, R, &o1.first}, {&b2.first, 2 * R, &o2.first}};
      const Backend::LoraExpand eg[3] = {{&b0.second, 0, &o0.second}, {&b1.second, R, &o1.second}, {&b2.second, 2 * R, &o2.second}};
      cpu.lora_expand(tc, ec, 3);
      gpu->lora_expand(tg, eg, 3);
      const Backend::LoraExpand one_c{&b0.first, R, &o3.first}, one_g{&b0.second, R, &o3.second};
      cpu.lora_expand(tc, &one_c, 1);
      gpu->lora_expand(tg, &one_g, 1);
      for (auto* o : {&o0, &o1, &o2, &o3}) expect_close(o->first, o->second, "lora_expand", tol());
      const std::vector<float> after = get(*gpu, o0.second);
      for (int64_t r = 0; r < T; ++r) {
        const bool base = !adapters || r == 7;  // (row 7: the base decode)
        const bool same = std::equal(before.begin() + r * N0, before.begin() + (r + 1) * N0, after.begin() + r * N0);
        EXPECT_EQ(same, base) << "row " << r << (adapters ? "" : " of the step without adapters") << " (" << dtype_name(dt) << ")";
      }
    }
}

// A mixture-of-experts block (Backend::moe) against the CPU backend's: on the device (kernels/cuda/moe.cu)
// for 1 and 2 tokens token-major, 3 and 40 grouped by expert, with 2, 3, 4 and 8 experts a token; through the host
// routing past cuda::kMoeMaxPairs pairs (1,100 tokens of 4 experts);
// rows of a width that is not a whole number of the warp's vector loads (H 136). The inputs are rounded to
// the GPU's type first so both route the same values.
TEST_P(CudaOps, MixtureOfExpertsMatchesTheCpu) {
  std::mt19937 g(23);
  const DType dt = GetParam(), f32 = DType::F32;
  const int64_t E = 16, H = 136, M = 40;
  auto same = [&](const std::vector<float>& v, std::vector<int64_t> shape) {
    Tensor d = gpu->upload(v.data(), shape, dt);
    const std::vector<float> r = get(*gpu, d);
    return std::make_pair(cpu.upload(r.data(), shape, f32), d);
  };
  auto router = same(randn(E * H, g, 0.5f), {E, H});
  auto gate_up = same(randn(E * 2 * M * H, g, 0.2f), {E * 2 * M, H});
  auto down = same(randn(E * H * M, g, 0.2f), {E * H, M});
  // k 4 (two warps of a token-major block a choice), 2 (Mixtral's: four), 8 (Qwen3-MoE's: one) and 3 (two
  // of the block's warps idle).
  for (const int k : {4, 2, 8, 3})
    for (const int64_t T : {1, 2, 3, 40, 1100}) {
      if (T == 1100 && k != 4) continue;
      ASSERT_EQ(T * k > cuda::kMoeMaxPairs, T == 1100);
      ASSERT_EQ(cuda::moe_token_major(T, k), T <= 2);  // (1 and 2 tokens token-major, 3 and 40 grouped by expert)
      auto h = same(randn(T * H, g), {T, H});
      for (const bool renormalize : {true, false})
        for (const bool accumulate : {false, true}) {
          auto o = both(randn(T * H, g), {T, H}, f32);  // (what an accumulating block adds to)
          cpu.moe(h.first, {router.first, gate_up.first, down.first, k, renormalize}, o.first, accumulate);
          gpu->moe(h.second, {router.second, gate_up.second, down.second, k, renormalize}, o.second, accumulate);
          const std::string what = std::string(T == 1100 ? "moe (host routing)" : "moe (on the device)") + ", k " +
                                   std::to_string(k) + ", " + std::to_string(T) + " tokens";
          expect_close(o.first, o.second, what.c_str(), tol());
        }
    }
  EXPECT_TRUE(gpu->moe_in_graphs(256, 128, 8, 2048, 768));
  EXPECT_FALSE(gpu->moe_in_graphs(1024, 128, 8, 2048, 768));
}

// The fused ops with a LoRA update (Backend::LoraDelta) against the CPU backend's composition of them:
// decodes of 1-2 tokens at ranks up to kMaxFusedLoraRank, where the GPU runs the shrink (with the norm
// inside) and adds the update inside the op's one launch (two launches, counted), and of 3 tokens or rank
// 40, where it runs one GEMM over stacked matrices with the shrink and the expand into its columns
// (launches counted) or composes; the shrinks' outputs too; sequences of two adapters and of none; q and v
// adapted but not k (with biases, as Qwen2's); gate and up; an output projection with its residual add.
TEST_P(CudaOps, FusedOpsAddTheirLoraUpdatesAsTheCpuComposesThem) {
  std::mt19937 g(23);
  const DType dt = GetParam(), f32 = DType::F32;
  // Random values as the activation type holds them, so that the CPU computes on the GPU's inputs and
  // only the roundings inside the ops differ (a decode's few outputs: bf16 norm weights alone moved 8
  // shrink outputs 1.1e-2 from the CPU's on unrounded ones, as exact arithmetic with the same roundings
  // does).
  auto rounded = [&](const std::vector<float>& v) {
    const Tensor t = gpu->upload(v.data(), {static_cast<int64_t>(v.size())}, dt);
    return get(*gpu, t);
  };
  auto randr = [&](int64_t n, float scale) { return rounded(randn(static_cast<size_t>(n), g, scale)); };
  const int64_t S = 2, H = 128, Hq = 4, Hk = 2, D = 32, I = 96, bs = 8, blocks = 16;
  std::vector<float> freq(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) freq[i] = std::pow(10000.f, -2.f * i / D);
  const Tensor fc = cpu.upload(freq.data(), {D / 2}, f32), fg = gpu->upload(freq.data(), {D / 2}, f32);
  std::vector<float> nwv = randn(H, g, 0.2f);
  for (float& v : nwv) v += 1.f;
  const auto nw = both(rounded(nwv), {H}, dt);
  // Matrices the GPU holds as their own tensors, or stacked as the model loads them (q/k/v; gate/up).
  auto on_gpu = [&](const std::vector<std::vector<float>*>& parts, int64_t cols, bool stacked, DType type) {
    std::vector<Tensor> out;
    if (!stacked) {
      for (const auto* p : parts) out.push_back(gpu->upload(p->data(), {static_cast<int64_t>(p->size()) / cols, cols}, type));
      return out;
    }
    std::vector<float> all;
    for (const auto* p : parts) all.insert(all.end(), p->begin(), p->end());
    const Tensor one = gpu->upload(all.data(), {static_cast<int64_t>(all.size()) / cols, cols}, type);
    int64_t row = 0;
    for (const auto* p : parts) {
      out.push_back(rows_view(one, row, static_cast<int64_t>(p->size()) / cols));
      row += out.back().shape[0];
    }
    return out;
  };
  for (const int64_t T : {1, 2, 3})
    for (const int64_t R : {4, 16, 40})
    for (const bool stacked : {false, true}) {
      const bool fused = T <= 2 && R <= cuda::kMaxFusedLoraRank;
      const std::string what = std::to_string(T) + " tokens, rank " + std::to_string(R) + (stacked ? ", stacked" : "") + " (" +
                                dtype_name(dt) + ")";
      std::vector<int32_t> cached = {20, 5, 9};
      cached.resize(static_cast<size_t>(T));
      StepMeta m = make_meta(bs, std::vector<int32_t>(static_cast<size_t>(T), 1), cached, 4);
      m.lora = T == 1 ? std::vector<int32_t>{2} : T == 2 ? std::vector<int32_t>{2, 0} : std::vector<int32_t>{1, 0, 2};
      cpu.begin_step(m);
      gpu->begin_step(m);
      auto x = both(randn(T * H, g), {T, H}, f32);  // (the residual stream)
      Tensor hc = cpu.empty({T, H}, f32), hg = gpu->empty({T, H}, dt);
      const Backend::InputNorm nc{nw.first, 1e-6f, hc}, ng{nw.second, 1e-6f, hg};
      auto count = [](const std::function<void()>& op) {
        const uint64_t before = cuda::launch_count;
        op();
        return cuda::launch_count - before;
      };
      // q/k/v: the shrink of the normalized input for q and v, and the projections with their updates.
      std::vector<float> wqv = randr(Hq * D * H, 0.1f), wkv = randr(Hk * D * H, 0.1f), wvv = randr(Hk * D * H, 0.1f);
      std::vector<float> bqv = randn(Hq * D, g), bkv = randn(Hk * D, g), bvv = randn(Hk * D, g);
      const std::vector<Tensor> wg3 = on_gpu({&wqv, &wkv, &wvv}, H, stacked, dt);
      std::vector<Tensor> bg3;  // (biases stacked with the matrices, as the model loads them)
      for (const Tensor& b : on_gpu({&bqv, &bkv, &bvv}, 1, stacked, f32)) {
        bg3.push_back(b);
        bg3.back().shape = {b.shape[0]};
      }
      if (stacked) {
        ASSERT_TRUE(stacked_rows({&wg3[0], &wg3[1], &wg3[2]}));
      }
      const Tensor wqc = cpu.upload(wqv.data(), {Hq * D, H}, f32), wkc = cpu.upload(wkv.data(), {Hk * D, H}, f32);
      const Tensor wvc = cpu.upload(wvv.data(), {Hk * D, H}, f32), bqc = cpu.upload(bqv.data(), {Hq * D}, f32);
      const Tensor bkc = cpu.upload(bkv.data(), {Hk * D}, f32), bvc = cpu.upload(bvv.data(), {Hk * D}, f32);
      auto a_qv = both(randr(S * 2 * R * H, 0.2f), {S, 2 * R, H}, dt);
      auto bt_q = both(randr(S * R * Hq * D, 1.f), {S, R, Hq * D}, dt), bt_v = both(randr(S * R * Hk * D, 1.f), {S, R, Hk * D}, dt);
      Tensor tc = cpu.empty({T, 2 * R}, f32), tg = gpu->empty({T, 2 * R}, f32);
      Backend::LoraDelta qkv_c, qkv_g;
      qkv_c.a = &a_qv.first, qkv_c.t = &tc, qkv_c.bt[0] = &bt_q.first, qkv_c.bt[2] = &bt_v.first, qkv_c.col[2] = R;
      qkv_g.a = &a_qv.second, qkv_g.t = &tg, qkv_g.bt[0] = &bt_q.second, qkv_g.bt[2] = &bt_v.second, qkv_g.col[2] = R;
      const std::vector<int64_t> cshape{blocks, bs, Hk, D};
      auto kcache = both(std::vector<float>(blocks * bs * Hk * D, 0.f), cshape, dt);
      auto vcache = both(std::vector<float>(blocks * bs * Hk * D, 0.f), cshape, dt);
      Tensor qc = cpu.empty({T, Hq * D}, f32), kc = cpu.empty({T, Hk * D}, f32), vc = cpu.empty({T, Hk * D}, f32);
      Tensor qg = gpu->empty({T, Hq * D}, f32), kg = gpu->empty({T, Hk * D}, f32), vg = gpu->empty({T, Hk * D}, f32);
      cpu.norm_qkv_rope_kv_write(x.first, nc, wqc, &bqc, qc, wkc, &bkc, kc, wvc, &bvc, vc, nullptr, fc, D, kcache.first,
                                 vcache.first, &qkv_c);
      const uint64_t qkv_launches = count([&] {
        gpu->norm_qkv_rope_kv_write(x.second, ng, wg3[0], &bg3[0], qg, wg3[1], &bg3[1], kg, wg3[2], &bg3[2], vg, nullptr, fg, D,
                                    kcache.second, vcache.second, &qkv_g);
      });
      // The launches of a norm op with its update. Fused: the normalizing shrink (or rmsnorm and the plain
      // shrink), then the op. Stacked, not fused: the normalizing shrink writing h (or rmsnorm and the plain
      // shrink), one GEMM, the expand, then RoPE (or SiLU); the composition's separate GEMMs make seven (six).
      auto expect_norm_op_launches = [&](uint64_t launches, const char* op) {
        const uint64_t shrink = CudaBackend::lora_shrink_norm_inside() ? 1u : 2u;
        if (fused) {
          EXPECT_EQ(launches, shrink + 1) << op << ", " << what;
        }
        if (!fused && stacked) {
          EXPECT_LE(launches, shrink + 3) << op << ", " << what;
        }
      };
      expect_norm_op_launches(qkv_launches, "norm_qkv_rope_kv_write");
      expect_close(tc, tg, ("norm_qkv_rope_kv_write with LoRA: the shrink, " + what).c_str(), tol());
      expect_close(qc, qg, ("norm_qkv_rope_kv_write with LoRA: queries, " + what).c_str(), tol());
      expect_close(kcache.first, kcache.second, ("norm_qkv_rope_kv_write with LoRA: key cache, " + what).c_str(), tol());
      expect_close(vcache.first, vcache.second, ("norm_qkv_rope_kv_write with LoRA: value cache, " + what).c_str(), tol());
      // The output projection: the shrink of its input, the projection, its update and the residual add.
      auto attn = both(randr(T * Hq * D, 1.f), {T, Hq * D}, dt), wo = both(randr(H * Hq * D, 0.1f), {H, Hq * D}, dt);
      auto a_o = both(randr(S * R * Hq * D, 0.2f), {S, R, Hq * D}, dt), bt_o = both(randr(S * R * H, 1.f), {S, R, H}, dt);
      Tensor toc = cpu.empty({T, R}, f32), tog = gpu->empty({T, R}, f32);
      Backend::LoraDelta o_c, o_g;
      o_c.a = &a_o.first, o_c.t = &toc, o_c.bt[0] = &bt_o.first;
      o_g.a = &a_o.second, o_g.t = &tog, o_g.bt[0] = &bt_o.second;
      Tensor yc = cpu.empty({T, H}, f32), yg = gpu->empty({T, H}, f32);
      cpu.linear_residual(attn.first, wo.first, yc, x.first, &o_c);
      const uint64_t o_launches = count([&] { gpu->linear_residual(attn.second, wo.second, yg, x.second, &o_g); });
      if (fused) {
        EXPECT_EQ(o_launches, 2u) << "linear_residual, " << what;  // (the shrink and the GEMV)
      }
      expect_close(toc, tog, ("linear_residual with LoRA: the shrink, " + what).c_str(), tol());
      expect_close(x.first, x.second, ("linear_residual with LoRA, " + what).c_str(), tol());
      // Gate and up: the shrink of the normalized input, and both projections with their updates and SiLU.
      std::vector<float> wgv = randr(I * H, 0.1f), wuv = randr(I * H, 0.1f);
      const std::vector<Tensor> wgu = on_gpu({&wgv, &wuv}, H, stacked, dt);
      const Tensor wgc = cpu.upload(wgv.data(), {I, H}, f32), wuc = cpu.upload(wuv.data(), {I, H}, f32);
      auto a_gu = both(randr(S * 2 * R * H, 0.2f), {S, 2 * R, H}, dt);
      auto bt_g = both(randr(S * R * I, 1.f), {S, R, I}, dt), bt_u = both(randr(S * R * I, 1.f), {S, R, I}, dt);
      Backend::LoraDelta gu_c, gu_g;
      gu_c.a = &a_gu.first, gu_c.t = &tc, gu_c.bt[0] = &bt_g.first, gu_c.bt[1] = &bt_u.first, gu_c.col[1] = R;
      gu_g.a = &a_gu.second, gu_g.t = &tg, gu_g.bt[0] = &bt_g.second, gu_g.bt[1] = &bt_u.second, gu_g.col[1] = R;
      Tensor guc = cpu.empty({T, 2 * I}, f32), gug = gpu->empty({T, 2 * I}, f32);
      Tensor actc = cpu.empty({T, I}, f32), actg = gpu->empty({T, I}, dt);
      cpu.norm_gate_up_silu(x.first, nc, wgc, wuc, guc, actc, &gu_c);
      const uint64_t gu_launches = count([&] { gpu->norm_gate_up_silu(x.second, ng, wgu[0], wgu[1], gug, actg, &gu_g); });
      expect_norm_op_launches(gu_launches, "norm_gate_up_silu");
      expect_close(tc, tg, ("norm_gate_up_silu with LoRA: the shrink, " + what).c_str(), tol());
      expect_close(actc, actg, ("norm_gate_up_silu with LoRA, " + what).c_str(), tol());
    }
}

// The mixed-type paths the transformer uses with bf16/fp16 activations: float32 GEMM outputs (with
// a float32 bias) feeding RoPE, the KV-cache write, attention and SiLU, and the float32 residual
// stream feeding RMSNorm.
TEST_P(CudaOps, Float32IntermediatesIntoLowPrecision) {
  const DType dt = GetParam();
  if (dt == DType::F32) GTEST_SKIP() << "nothing mixed in float32";
  std::mt19937 g(7);
  const int64_t bs = 8, Hq = 4, Hk = 2, D = 64, H = 96, I = 160, blocks = 16;
  const StepMeta m = make_meta(bs);
  const int64_t T = m.num_tokens();
  cpu.begin_step(m);
  gpu->begin_step(m);
  auto x = both(randn(T * H, g), {T, H}, DType::F32), w = both(randn(H, g), {H}, dt);
  Tensor nc = cpu.empty({T, H}, DType::F32), ng = gpu->empty({T, H}, dt);
  cpu.rmsnorm(x.first, w.first, 1e-6f, nc);
  gpu->rmsnorm(x.second, w.second, 1e-6f, ng);
  expect_close(nc, ng, "rmsnorm float32 -> low precision", 1e-2);
  {  // Qwen3's per-head norm: float32 rows of heads in place, weights in the activation type (heads of
     // 128 and of 80: lanes with different element counts).
    for (const int64_t hd : {int64_t{128}, int64_t{80}}) {
      auto qh = both(randn(T * 3 * hd, g), {T, 3 * hd}, DType::F32), wh = both(randn(hd, g), {hd}, dt);
      cpu.head_rmsnorm(qh.first, wh.first, 1e-6f, hd);
      gpu->head_rmsnorm(qh.second, wh.second, 1e-6f, hd);
      expect_close(qh.first, qh.second, ("head_rmsnorm, head_dim " + std::to_string(hd)).c_str(), 1e-2);
    }
  }
  auto wl = both(randn(I * H, g, 0.1f), {I, H}, dt), bl = both(randn(I, g), {I}, DType::F32);
  Tensor lc = cpu.empty({T, I}, DType::F32), lg = gpu->empty({T, I}, DType::F32);
  cpu.linear(nc, wl.first, &bl.first, lc);
  gpu->linear(ng, wl.second, &bl.second, lg);
  expect_close(lc, lg, "linear into float32 with bias", 1e-2);
  Tensor sc = cpu.empty({T, I}, DType::F32), sg = gpu->empty({T, I}, dt);
  cpu.silu_mul(lc, lc, sc);
  gpu->silu_mul(lg, lg, sg);
  expect_close(sc, sg, "silu_mul float32 -> low precision", 1e-2);
  auto q = both(randn(T * Hq * D, g), {T, Hq * D}, DType::F32), k = both(randn(T * Hk * D, g), {T, Hk * D}, DType::F32);
  auto v = both(randn(T * Hk * D, g), {T, Hk * D}, DType::F32);
  auto kc = both(randn(blocks * bs * Hk * D, g), {blocks, bs, Hk, D}, dt);
  auto vc = both(randn(blocks * bs * Hk * D, g), {blocks, bs, Hk, D}, dt);
  cpu.kv_write(k.first, v.first, kc.first, vc.first);
  gpu->kv_write(k.second, v.second, kc.second, vc.second);
  expect_close(kc.first, kc.second, "kv_write float32 -> cache", 1e-2);
  Tensor ac = cpu.empty({T, Hq * D}, DType::F32), ag = gpu->empty({T, Hq * D}, dt);
  cpu.attention(q.first, kc.first, vc.first, D, bs, 0.125f, ac);
  gpu->attention(q.second, kc.second, vc.second, D, bs, 0.125f, ag);
  expect_close(ac, ag, "paged_attention float32 queries", 1e-2);
}

// Tensor-core prefill tiles: every query token in exactly one tile of up to 128 tokens of one sequence,
// the tiles whose last row sees the most keys first (a 45-token chunk after 260 cached tokens, a
// 140-token prefill, a decode at 700).
TEST(FlashPrefillTiles, CoverEverySequenceHeaviestFirst) {
  const std::vector<int32_t> q_start = {0, 45, 185, 186};
  std::vector<int32_t> positions;
  for (int32_t p = 260; p < 305; ++p) positions.push_back(p);
  for (int32_t p = 0; p < 140; ++p) positions.push_back(p);
  positions.push_back(700);
  const std::vector<int32_t> tiles = cuda::flash_prefill_tiles(q_start, positions);
  // Keys seen by each tile's last row: 185 -> 701, 0 -> 305, 173 (45 + 128) -> 140, 45 -> 128.
  EXPECT_EQ(tiles, (std::vector<int32_t>{185, 0, 173, 45}));
}

// The decode GEMVs keep their row cursors in 32-bit integers (row_stream): their launchers refuse 2^31
// rows or a row of 2^31 elements with an error before anything runs (no device needed to check it).
TEST(GemvLaunch, RowsOrRowLengthsPast32BitsAreRefused) {
  using B = __nv_bfloat16;
  const int64_t big = int64_t(1) << 31;
  // The refusal itself, by its message (without a device a launch would fail too, with another one).
  auto refused = [](auto launch) {
    try {
      launch();
    } catch (const std::runtime_error& e) {
      return std::string(e.what()).find("2^31 rows or row length") != std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(refused([&] { cuda::gemv<B, float>(nullptr, nullptr, nullptr, 1, big, 8, nullptr, nullptr); }));
  EXPECT_TRUE(refused([&] { cuda::gemv<B, float>(nullptr, nullptr, nullptr, 1, 8, big, nullptr, nullptr); }));
  EXPECT_TRUE(refused([&] {
    cuda::gemv_gate_up_silu<B, B>(nullptr, nullptr, nullptr, nullptr, nullptr, 1, big, 8, nullptr, nullptr);
  }));
  EXPECT_TRUE(refused([&] {
    cuda::gemv_gate_up_silu<B, B>(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 8, big, nullptr, nullptr);
  }));
}

// Long contexts: many 32-key tiles per warp, every warp of the block busy, partial last tiles (a decode
// at position 700, a 45-token chunk after 260 cached tokens, a 97-token prefill). Prefill steps (16-bit
// outputs: the prefill kernel) with their decode rows on the split-KV kernel (runs at the step's start,
// at its end, and on both sides of a chunk), and with every row on the prefill kernel.
TEST_P(CudaOps, AttentionOverLongContexts) {
  std::mt19937 g(9);
  const DType dt = GetParam();
  const int64_t bs = 16, max_blocks = 160;
  // (long_context_steps; grouped queries, 6 per KV head, one block per KV head, and plain multi-head
  // attention, one block per head.)
  const LongContextSteps steps = long_context_steps(bs, max_blocks);
  const StepMeta &mixed = steps.mixed, &decode = steps.decode, &decode8 = steps.decode8, &graph = steps.graph;
  // The same as a padded graph step holds it: rows of the 94 entries its longest context needs, read
  // max_blocks apart; the entries between them keep what an earlier step wrote (`poisoned`: block ids
  // far past the cache, so that a kernel reading one fails the test).
  const StepMeta graph_compact = [&] {
    StepMeta m = graph;
    const int64_t width = (1500 + bs) / bs;
    m.block_tables.clear();
    for (int64_t s = 0; s < m.num_seqs(); ++s)
      m.block_tables.insert(m.block_tables.end(), graph.block_tables.begin() + s * max_blocks,
                            graph.block_tables.begin() + s * max_blocks + width);
    m.table_width = static_cast<int32_t>(width);
    return m;
  }();
  StepMeta poisoned = graph;
  std::fill(poisoned.block_tables.begin(), poisoned.block_tables.end(), 1 << 28);
  // Random queries and caches for the current step (begun on both backends), attention on each: the CPU
  // result in ac, the GPU's in ag (q, kc and vc kept for a second GPU run).
  struct Case {
    std::pair<Tensor, Tensor> q, kc, vc;
    Tensor ac, ag;
  };
  auto attend = [&](int64_t T, int64_t Hq, int64_t Hk, int64_t D, int64_t blocks) {
    Case c{both(randn(T * Hq * D, g), {T, Hq * D}, DType::F32), both(randn(blocks * bs * Hk * D, g), {blocks, bs, Hk, D}, dt),
           both(randn(blocks * bs * Hk * D, g), {blocks, bs, Hk, D}, dt), cpu.empty({T, Hq * D}, DType::F32),
           gpu->empty({T, Hq * D}, dt)};
    cpu.attention(c.q.first, c.kc.first, c.vc.first, D, bs, 0.09f, c.ac);
    gpu->attention(c.q.second, c.kc.second, c.vc.second, D, bs, 0.09f, c.ag);
    return c;
  };
  // Group sizes 3 (Qwen2.5-1.5B), 8 (the largest the grouped kernels take, as Llama 3 70B) and 1.
  // Head sizes: 128 (Qwen2.5, Llama 3), 80 (tensor-core prefill) and 16 (the fixtures'; split-KV prefill).
  // The tensor-core decode kernel with blocks of 8 warps and of 4 (the backend picks by batch size), and
  // with splits of at least 128 keys (more of them to merge) and 4,096 (none) besides the default 256.
  for (const auto& [warps, chunk] : {std::pair<int, int>{8, 0}, {4, 0}, {8, 128}, {8, 4096}})
  for (const int64_t D : {128, 80, 16})
  for (const auto& [Hq, Hk] : {std::pair<int64_t, int64_t>{6, 2}, {8, 1}, {2, 2}}) {
    cuda::set_decode_attention_warps(warps);
    cuda::set_decode_attention_min_chunk(chunk);
    for (const StepMeta* m : {&mixed, &steps.mixed_tail, &steps.mixed_middle, &decode, &decode8, &graph, &graph_compact}) {
      const int64_t T = m->num_tokens(), blocks = max_blocks * static_cast<int64_t>(m->num_seqs());
      cpu.begin_step(*m);
      if (m == &graph_compact) gpu->begin_step(poisoned);
      gpu->begin_step(*m);
      // (mixed: row 0; mixed_tail: the last four, of sequences 2 and 3; mixed_middle: row 0 and rows 46-47,
      // two runs on either side of the chunk; decode steps: none, no prefill kernel.)
      using Runs = std::vector<std::pair<int64_t, int64_t>>;
      const Runs split = m == &mixed ? Runs{{0, 1}} : m == &steps.mixed_tail ? Runs{{142, 4}}
                         : m == &steps.mixed_middle ? Runs{{0, 1}, {46, 2}} : Runs{};
      EXPECT_EQ(gpu->split_decode_rows(), split);
      Case c = attend(T, Hq, Hk, D, blocks);
      const std::string what = std::string(Hq == Hk ? "multi-head" : "grouped") +
                               (is_prefill(*m) ? " attention, long contexts, steps of " + std::to_string(m->num_seqs()) +
                                                     " sequences"
                                : m == &graph_compact ? " attention, split decode, compact block tables"
                                                      : " attention, split decode") +
                               ", head_dim " + std::to_string(D) + ", " + std::to_string(warps) + "-warp decode blocks" +
                               (chunk ? ", splits of >= " + std::to_string(chunk) + " keys" : "");
      expect_close(c.ac, c.ag, what.c_str(), tol());
      if (is_prefill(*m)) {
        gpu->set_split_decode_rows(false);
        gpu->begin_step(*m);
        EXPECT_TRUE(gpu->split_decode_rows().empty());
        gpu->attention(c.q.second, c.kc.second, c.vc.second, D, bs, 0.09f, c.ag);
        expect_close(c.ac, c.ag, (what + ", decode rows on the prefill kernel").c_str(), tol());
        gpu->set_split_decode_rows(true);
      }
    }
  }
  cuda::set_decode_attention_warps(0);
  cuda::set_decode_attention_min_chunk(0);
  // Decodes between 16-token chunks: up to kMaxDecodeRuns runs take the split-KV kernel, a launch each;
  // past that every row stays on the prefill kernel.
  for (const int64_t runs : {int64_t(CudaBackend::kMaxDecodeRuns), int64_t(CudaBackend::kMaxDecodeRuns) + 1}) {
    std::vector<int32_t> lens, cached;
    for (int64_t r = 0; r < runs; ++r) {
      lens.insert(lens.end(), {1, 16});
      cached.insert(cached.end(), {static_cast<int32_t>(30 + r), static_cast<int32_t>(r)});
    }
    const StepMeta m = make_meta(bs, lens, cached, 4);
    const int64_t Hq = 6, Hk = 2, D = 128, T = m.num_tokens(), blocks = 4 * m.num_seqs();
    cpu.begin_step(m);
    gpu->begin_step(m);
    EXPECT_EQ(gpu->split_decode_rows().size(), runs <= int64_t(CudaBackend::kMaxDecodeRuns) ? size_t(runs) : 0u) << runs;
    const Case c = attend(T, Hq, Hk, D, blocks);
    expect_close(c.ac, c.ag, ("attention, " + std::to_string(runs) + " decodes between chunks").c_str(), tol());
  }
  EXPECT_THROW(cuda::set_decode_attention_warps(5), std::exception);       // only 0, 4 and 8
  EXPECT_THROW(cuda::set_decode_attention_min_chunk(100), std::exception);  // multiples of 32
}

// Prefill attention's tensor-core kernels (warpgroup MMA for head sizes 64 and 128 where the build's
// sm_90a code runs, with 64- and 128-key tiles, the 128-key tiles copied by the threads or by TMA;
// mma.sync otherwise) against the CPU kernel:
// prompts of several 128-row tiles with a partial last one (both warpgroups of a block busy, and a
// warpgroup whose rows all precede the last key tile), a chunk after cached context (many key tiles: a
// form whose queries' registers were clobbered was wrong from the second tile on), a short prompt and a
// decode in the same step; grouped and plain heads; blocks of 8, 16 and 32 positions (blocks of 8 keep
// the threads' copies: a 16-row box would span two blocks). Invalid tile sizes throw.
TEST_P(CudaOps, PrefillAttentionKernelsMatchTheCpu) {
  const DType dt = GetParam();
  if (dt == DType::F32) GTEST_SKIP() << "float32 caches take the split-KV kernel";
  int dev = 0, major = 0, minor = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  // This project builds sm_90a by default (Makefile.inc): on a Hopper GPU the warpgroup kernel must be
  // the one that runs, so that this test covers it.
  if (major == 9 && minor == 0) {
    EXPECT_TRUE(cuda::prefill_attention_wgmma(128));
    EXPECT_TRUE(cuda::prefill_attention_wgmma(64));
  }
  EXPECT_FALSE(cuda::prefill_attention_wgmma(80));
  std::mt19937 g(21);
  for (const int64_t bs : {8, 16, 32}) {
    const int64_t max_blocks = 1280 / bs;
    const StepMeta m = make_meta(bs, {300, 200, 1, 37}, {0, 900, 50, 0}, max_blocks);
    const int64_t T = m.num_tokens(), blocks = max_blocks * static_cast<int64_t>(m.num_seqs());
    for (const int64_t D : {128, 64})
      for (const auto& [Hq, Hk] : {std::pair<int64_t, int64_t>{6, 2}, {2, 2}}) {
        cpu.begin_step(m);
        gpu->begin_step(m);
        auto q = both(randn(T * Hq * D, g), {T, Hq * D}, DType::F32);
        auto kc = both(randn(blocks * bs * Hk * D, g), {blocks, bs, Hk, D}, dt);
        auto vc = both(randn(blocks * bs * Hk * D, g), {blocks, bs, Hk, D}, dt);
        Tensor ac = cpu.empty({T, Hq * D}, DType::F32);
        cpu.attention(q.first, kc.first, vc.first, D, bs, 0.09f, ac);
        // mma.sync; wgmma with 64-key tiles, with 128-key tiles copied by the threads, by TMA.
        const char* kinds[] = {"", " (64 keys)", " (128 keys)", " (128 keys by TMA)"};
        std::vector<float> rows[4];  // each kernel's output, compared row by row below
        for (const int kernel : {0, 1, 2, 3}) {
          cuda::set_prefill_attention_wgmma(kernel > 0);
          cuda::set_prefill_wgmma_keys(kernel >= 2 ? 128 : 64);
          cuda::set_prefill_attention_tma(kernel == 3);
          Tensor ag = gpu->empty({T, Hq * D}, dt);
          gpu->attention(q.second, kc.second, vc.second, D, bs, 0.09f, ag);
          rows[kernel] = get(*gpu, ag);
          const std::string what = std::string(kernel > 0 && cuda::prefill_attention_wgmma(D) ? "wgmma" : "mma.sync") +
                                   kinds[kernel] + " prefill attention, head_dim " + std::to_string(D) + ", " +
                                   (Hq == Hk ? "multi-head" : "grouped") + ", blocks of " + std::to_string(bs);
          expect_close(ac, ag, what.c_str(), tol());
        }
        // The kernels round the same values (queries, probabilities) to the cache type, so every row
        // agrees closely; a row that missed or repeated a key tile would not.
        // The TMA kernel brings the same tiles into the same layout as the threads' copies and runs the
        // same products on them: bit for bit the same output.
        EXPECT_TRUE(rows[3] == rows[2]) << "TMA against the threads' copies, head_dim " << D << ", blocks of " << bs;
        for (const int kernel : {1, 2, 3}) {
          double worst = 0;
          for (int64_t r = 0; r < T * Hq; ++r) {
            double dd = 0, nn = 0;
            for (int64_t d = 0; d < D; ++d) {
              const double a = rows[kernel][r * D + d], b = rows[0][r * D + d];
              dd += (a - b) * (a - b);
              nn += b * b;
            }
            worst = std::max(worst, std::sqrt(dd / std::max(nn, 1e-30)));
          }
          EXPECT_LT(worst, 2e-2) << "wgmma prefill kernel" << kinds[kernel]
                                 << " against mma.sync, worst row, head_dim " << D << ", blocks of " << bs;
        }
      }
  }
  cuda::set_prefill_attention_wgmma(true);
  cuda::set_prefill_attention_tma(true);
  // The size chosen when none is set: 64-key tiles only at head size 64 on a grid that fills two
  // blocks an SM with sequences of at most 2,048 tokens, and a set size always.
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cuda::set_prefill_wgmma_keys(0);
  EXPECT_EQ(cuda::prefill_wgmma_keys(128, 100 * sms, 512), 128);
  EXPECT_EQ(cuda::prefill_wgmma_keys(64, 2 * sms - 1, 512), 128);
  EXPECT_EQ(cuda::prefill_wgmma_keys(64, 2 * sms, 2048), 64);
  EXPECT_EQ(cuda::prefill_wgmma_keys(64, 2 * sms, 2049), 128);
  cuda::set_prefill_wgmma_keys(64);
  EXPECT_EQ(cuda::prefill_wgmma_keys(128, 1, 100000), 64);
  cuda::set_prefill_wgmma_keys(128);
  EXPECT_EQ(cuda::prefill_wgmma_keys(64, 100 * sms, 512), 128);
  EXPECT_THROW(cuda::set_prefill_wgmma_keys(96), std::exception);  // 64 or 128, or 0
  cuda::set_prefill_wgmma_keys(0);
}

// The fused decoder-layer ops against the CPU backend's compositions of the plain ops.
TEST_P(CudaOps, FusedOpsMatchTheCpuComposition) {
  std::mt19937 g(13);
  const DType dt = GetParam();
  const int64_t bs = 8, Hq = 4, Hk = 2, D = 64, H = 96, I = 160, blocks = 16;
  const StepMeta m = make_meta(bs);
  const int64_t T = m.num_tokens();
  cpu.begin_step(m);
  gpu->begin_step(m);
  {  // RoPE + KV-cache write
    auto q = both(randn(T * Hq * D, g), {T, Hq * D}, DType::F32), k = both(randn(T * Hk * D, g), {T, Hk * D}, DType::F32);
    auto v = both(randn(T * Hk * D, g), {T, Hk * D}, DType::F32);
    auto kc = both(std::vector<float>(blocks * bs * Hk * D, 0.f), {blocks, bs, Hk, D}, dt);
    auto vc = both(std::vector<float>(blocks * bs * Hk * D, 0.f), {blocks, bs, Hk, D}, dt);
    std::vector<float> freq(D / 2);
    for (int64_t i = 0; i < D / 2; ++i) freq[i] = std::pow(10000.f, -2.f * i / D);
    Tensor fc = cpu.upload(freq.data(), {D / 2}, DType::F32), fg = gpu->upload(freq.data(), {D / 2}, DType::F32);
    cpu.rope_kv_write(q.first, k.first, v.first, fc, D, kc.first, vc.first);
    gpu->rope_kv_write(q.second, k.second, v.second, fg, D, kc.second, vc.second);
    expect_close(q.first, q.second, "rope_kv_write queries", 1e-5);
    expect_close(kc.first, kc.second, "rope_kv_write key cache", tol());
    expect_close(vc.first, vc.second, "rope_kv_write value cache", tol());
  }
  for (const FewTokenMode& mode : kFewTokenModes) {
    set_few_token_mode(mode);
    for (int64_t rows : {1, 3, 6, 13}) {  // projections: fused for up to 4 rows, the skinny or plain ops above that
      auto x = both(randn(rows * H, g), {rows, H}, dt);
      auto wq = both(randn(Hq * D * H, g, 0.1f), {Hq * D, H}, dt), wk = both(randn(Hk * D * H, g, 0.1f), {Hk * D, H}, dt);
      auto wv = both(randn(Hk * D * H, g, 0.1f), {Hk * D, H}, dt);
      auto bq = both(randn(Hq * D, g), {Hq * D}, DType::F32), bk = both(randn(Hk * D, g), {Hk * D}, DType::F32);
      Tensor qc = cpu.empty({rows, Hq * D}, DType::F32), kc = cpu.empty({rows, Hk * D}, DType::F32), vc = cpu.empty({rows, Hk * D}, DType::F32);
      Tensor qg = gpu->empty({rows, Hq * D}, DType::F32), kg = gpu->empty({rows, Hk * D}, DType::F32), vg = gpu->empty({rows, Hk * D}, DType::F32);
      cpu.linear_qkv(x.first, wq.first, &bq.first, qc, wk.first, &bk.first, kc, wv.first, nullptr, vc);
      gpu->linear_qkv(x.second, wq.second, &bq.second, qg, wk.second, &bk.second, kg, wv.second, nullptr, vg);
      const double t = dt == DType::F32 ? 1e-5 : 1e-2;
      expect_close(qc, qg, "linear_qkv q", t);
      expect_close(kc, kg, "linear_qkv k", t);
      expect_close(vc, vg, "linear_qkv v", t);
      const auto wgv = randn(I * H, g, 0.1f), wuv = randn(I * H, g, 0.1f);
      auto wg = both(wgv, {I, H}, dt), wu = both(wuv, {I, H}, dt);
      // The same weights stacked in one allocation, as the model loads them (one GEMM above 4 rows).
      std::vector<float> guv(wgv);
      guv.insert(guv.end(), wuv.begin(), wuv.end());
      const Tensor stack = gpu->upload(guv.data(), {2 * I, H}, dt);
      const Tensor wgs = rows_view(stack, 0, I), wus = rows_view(stack, I, I);
      ASSERT_TRUE(stacked_rows({&wgs, &wus}));
      Tensor guc = cpu.empty({rows, 2 * I}, DType::F32), ac = cpu.empty({rows, I}, DType::F32);
      Tensor gug = gpu->empty({rows, 2 * I}, DType::F32), ag = gpu->empty({rows, I}, dt);
      cpu.gate_up_silu(x.first, wg.first, wu.first, guc, ac);
      gpu->gate_up_silu(x.second, wg.second, wu.second, gug, ag);
      expect_close(ac, ag, "gate_up_silu", tol());
      gpu->gate_up_silu(x.second, wgs, wus, gug, ag);
      expect_close(ac, ag, "gate_up_silu, stacked weights", tol());
      // The MLP's input norm fused in front (float32 residual stream in).
      auto res = both(randn(rows * H, g), {rows, H}, DType::F32), nw = both(randn(H, g), {H}, dt);
      if (rows <= 4) {
        EXPECT_EQ(gpu->skinny_norm_inside(res.second, dt), mode.norm_inside) << rows << " rows";
      }
      Tensor hc = cpu.empty({rows, H}, DType::F32), hg = gpu->empty({rows, H}, dt);
      cpu.norm_gate_up_silu(res.first, {nw.first, 1e-6f, hc}, wg.first, wu.first, guc, ac);
      gpu->norm_gate_up_silu(res.second, {nw.second, 1e-6f, hg}, wgs, wus, gug, ag);
      expect_close(ac, ag, "norm_gate_up_silu, stacked weights", tol());
      gpu->norm_gate_up_silu(res.second, {nw.second, 1e-6f, hg}, wg.second, wu.second, gug, ag);
      expect_close(ac, ag, "norm_gate_up_silu", tol());
      // An output projection adding into the residual stream (GEMV for a few rows, GEMM with C = D above).
      auto wo = both(randn(H * I, g, 0.1f), {H, I}, dt);
      Tensor yc = cpu.empty({rows, H}, DType::F32), yg = gpu->empty({rows, H}, DType::F32);
      cpu.linear_residual(ac, wo.first, yc, res.first);
      gpu->linear_residual(ag, wo.second, yg, res.second);
      expect_close(res.first, res.second, "linear_residual", tol());
    }
  }
}

// A launch that normalizes its rows in shared memory has the block's 48 KB (without opting in) for the
// rows, the norm's weights and the kernel's own static shared memory together. The Llama-3.1-8B shape's
// 4-row skinny gate/up (4,096 columns: 40 KB of rows and weights next to 9.25 KB of its own) once
// failed to launch, and 2 rows of 8,192 (48 KB exactly) leave no room in any kernel; those take rmsnorm
// first. The Qwen2.5-7B shape (3,584 columns) keeps the norm inside. Every few-token mode matches the CPU.
TEST_P(CudaOps, NormInsideLeavesRoomForStaticSharedMemory) {
  const DType dt = GetParam();
  if (dt != DType::F32) {
    EXPECT_TRUE(cuda::gemv_norm_fits(4, 4096, 2));
    EXPECT_TRUE(cuda::gemv_norm_fits(1, 8192, 2));
    EXPECT_FALSE(cuda::gemv_norm_fits(2, 8192, 2));
    EXPECT_FALSE(cuda::gemv_norm_fits(5, 64, 2));
    EXPECT_TRUE(cuda::skinny_norm_fits(4, 3584, 2));
    EXPECT_TRUE(cuda::skinny_norm_fits(3, 4096, 2));
    EXPECT_FALSE(cuda::skinny_norm_fits(4, 4096, 2));
    EXPECT_FALSE(cuda::skinny_norm_fits(2, 8192, 2));
  }
  std::mt19937 g(31);
  const int64_t I = 48;
  for (const FewTokenMode& mode : kFewTokenModes) {
    set_few_token_mode(mode);
    for (const auto& [rows, K] : {std::pair<int64_t, int64_t>{4, 4096}, {3, 4096}, {2, 8192}}) {
      const std::string at = std::to_string(rows) + " rows of " + std::to_string(K) + ", skinny from " +
                             std::to_string(mode.from) + (mode.norm_inside ? ", norm inside" : ", rmsnorm first");
      auto res = both(randn(rows * K, g), {rows, K}, DType::F32), nw = both(randn(K, g), {K}, dt);
      auto wg = both(randn(I * K, g, 0.1f), {I, K}, dt), wu = both(randn(I * K, g, 0.1f), {I, K}, dt);
      Tensor hc = cpu.empty({rows, K}, DType::F32), hg = gpu->empty({rows, K}, dt);
      Tensor guc = cpu.empty({rows, 2 * I}, DType::F32), ac = cpu.empty({rows, I}, DType::F32);
      Tensor gug = gpu->empty({rows, 2 * I}, DType::F32), ag = gpu->empty({rows, I}, dt);
      cpu.norm_gate_up_silu(res.first, {nw.first, 1e-6f, hc}, wg.first, wu.first, guc, ac);
      gpu->norm_gate_up_silu(res.second, {nw.second, 1e-6f, hg}, wg.second, wu.second, gug, ag);
      expect_close(ac, ag, ("norm_gate_up_silu, " + at).c_str(), tol());
    }
  }
}

// The attention block's input norm, q/k/v projections, RoPE and cache write: one fused launch for
// decode steps of 1-4 tokens (with and without q/k biases), one skinny launch for 5-16 tokens on stacked
// weights (the 6- and 16-sequence steps and the 13-token one), the composition otherwise; with per-head
// norms (Qwen3), one GEMM over stacked weights and one launch for the norms, RoPE and the cache write;
// the queries and both caches as the CPU backend's rmsnorm + linear_qkv (+ head_rmsnorm) + rope_kv_write
// leave them.
TEST_P(CudaOps, ProjectionsRopeAndCacheWrite) {
  std::mt19937 g(21);
  const DType dt = GetParam();
  const int64_t bs = 8, H = 96, blocks = 64;  // (make_meta deals block ids below 4 x its sequences)
  // Head sizes 64 and 128: with per-head norms, one token takes the fused launch in clusters of 4 and
  // 8 blocks (one a head).
  int dev = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), cudaSuccess);
  EXPECT_EQ(cuda::qkv_head_norm_fits(64) && cuda::qkv_head_norm_fits(128), major >= 9);
  EXPECT_FALSE(cuda::qkv_head_norm_fits(80) || cuda::qkv_head_norm_fits(96) || cuda::qkv_head_norm_fits(256));
  for (const int64_t D : {int64_t{64}, int64_t{128}})
  for (const auto& [Hq, Hk] : {std::pair<int64_t, int64_t>{6, 2}, {2, 2}}) {
    for (const FewTokenMode& mode : kFewTokenModes) {
      set_few_token_mode(mode);
      for (const StepMeta& m : {make_meta(bs, {1}, {30}), make_meta(bs, {1, 1, 1, 1}, {20, 0, 9, 31}), make_meta(bs, {3}, {12}),
                                make_meta(bs), make_meta(bs, {1, 1, 1, 1, 1, 1}, {4, 27, 0, 13, 8, 30}),
                                make_meta(bs, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
                                                         {3, 9, 17, 30, 0, 5, 11, 22, 7, 2, 29, 14, 19, 25, 1, 8}, 4)}) {
        const int64_t T = m.num_tokens();
        cpu.begin_step(m);
        gpu->begin_step(m);
        auto x = both(randn(T * H, g), {T, H}, DType::F32), nw = both(randn(H, g), {H}, dt);
        Tensor hc = cpu.empty({T, H}, DType::F32), hg = gpu->empty({T, H}, dt);
        const auto wqv = randn(Hq * D * H, g, 0.1f), wkv = randn(Hk * D * H, g, 0.1f), wvv = randn(Hk * D * H, g, 0.1f);
        const auto bqv = randn(Hq * D, g), bkv = randn(Hk * D, g), bvv = randn(Hk * D, g);
        auto wq = both(wqv, {Hq * D, H}, dt), wk = both(wkv, {Hk * D, H}, dt), wv = both(wvv, {Hk * D, H}, dt);
        auto bq = both(bqv, {Hq * D}, DType::F32), bk = both(bkv, {Hk * D}, DType::F32), bv = both(bvv, {Hk * D}, DType::F32);
        // The same weights and biases stacked, as the model loads them (one GEMM above 4 tokens).
        auto stack = [&](std::vector<const std::vector<float>*> parts, std::vector<int64_t> shape, DType t) {
          std::vector<float> all;
          for (const auto* p : parts) all.insert(all.end(), p->begin(), p->end());
          const Tensor one = gpu->upload(all.data(), shape, t);
          return std::vector<Tensor>{rows_view(one, 0, Hq * D), rows_view(one, Hq * D, Hk * D), rows_view(one, (Hq + Hk) * D, Hk * D)};
        };
        const auto ws = stack({&wqv, &wkv, &wvv}, {(Hq + 2 * Hk) * D, H}, dt);
        const auto bs3 = stack({&bqv, &bkv, &bvv}, {(Hq + 2 * Hk) * D}, DType::F32);
        ASSERT_TRUE(stacked_rows({&ws[0], &ws[1], &ws[2]}));
        // (So the stacked modes below reach the skinny launch at 5-16 tokens, not the composition.)
        const Tensor wstack = stacked_view({&ws[0], &ws[1], &ws[2]});
        if (dt != DType::F32 && T >= 5 && T <= 16) {
          EXPECT_TRUE(gpu->skinny(T, {&hg, &wstack})) << T << " tokens";
        }
        std::vector<float> freq(D / 2);
        for (int64_t i = 0; i < D / 2; ++i) freq[i] = std::pow(10000.f, -2.f * i / D);
        Tensor fc = cpu.upload(freq.data(), {D / 2}, DType::F32), fg = gpu->upload(freq.data(), {D / 2}, DType::F32);
        // Per-head norm weights (Qwen3's q_norm / k_norm), about 1.
        std::vector<float> qnv(D), knv(D);
        for (int64_t i = 0; i < D; ++i) qnv[i] = 1.f + 0.3f * std::sin(0.7f * i), knv[i] = 1.f - 0.25f * std::cos(1.3f * i);
        auto qn = both(qnv, {D}, dt), kn = both(knv, {D}, dt);
        const Backend::HeadNorm hnc{qn.first, kn.first, 1e-6f}, hng{qn.second, kn.second, 1e-6f};
        // q and k biases (v none), none; then stacked weights with all three biases, none; each without
        // and with per-head norms. Caches in the activation type, then of E4M3 codes (kv_cache_dtype fp8;
        // the CPU backend's are the reference).
        for (const bool fp8_kv : {false, true})
        for (const bool head_norm : {false, true})
        for (int mode : {0, 1, 2, 3}) {
          if (D == 128 && !head_norm) continue;  // (head size 128: for the head norms' clusters of 8)
          const bool bias = mode == 0 || mode == 2, stacked = mode >= 2;
          // Empty caches: only the step's rows hold values, so an error in any of them shows.
          const std::vector<int64_t> cshape{blocks, bs, Hk, D};
          auto kc = fp8_kv ? both_codes(std::vector<uint8_t>(blocks * bs * Hk * D, 0), cshape)
                           : both(std::vector<float>(blocks * bs * Hk * D, 0.f), cshape, dt);
          auto vc = fp8_kv ? both_codes(std::vector<uint8_t>(blocks * bs * Hk * D, 0), cshape)
                           : both(std::vector<float>(blocks * bs * Hk * D, 0.f), cshape, dt);
          Tensor qc = cpu.empty({T, Hq * D}, DType::F32), kc32 = cpu.empty({T, Hk * D}, DType::F32);
          Tensor vc32 = cpu.empty({T, Hk * D}, DType::F32);
          Tensor qg = gpu->empty({T, Hq * D}, DType::F32), kg32 = gpu->empty({T, Hk * D}, DType::F32);
          Tensor vg32 = gpu->empty({T, Hk * D}, DType::F32);
          const Tensor* cb[3] = {bias ? &bq.first : nullptr, bias ? &bk.first : nullptr, bias && stacked ? &bv.first : nullptr};
          cpu.norm_qkv_rope_kv_write(x.first, {nw.first, 1e-6f, hc}, wq.first, cb[0], qc, wk.first, cb[1], kc32, wv.first,
                                     cb[2], vc32, head_norm ? &hnc : nullptr, fc, D, kc.first, vc.first);
          if (stacked)
            gpu->norm_qkv_rope_kv_write(x.second, {nw.second, 1e-6f, hg}, ws[0], bias ? &bs3[0] : nullptr, qg, ws[1],
                                        bias ? &bs3[1] : nullptr, kg32, ws[2], bias ? &bs3[2] : nullptr, vg32,
                                        head_norm ? &hng : nullptr, fg, D, kc.second, vc.second);
          else
            gpu->norm_qkv_rope_kv_write(x.second, {nw.second, 1e-6f, hg}, wq.second, bias ? &bq.second : nullptr, qg,
                                        wk.second, bias ? &bk.second : nullptr, kg32, wv.second, nullptr, vg32,
                                        head_norm ? &hng : nullptr, fg, D, kc.second, vc.second);
          const std::string what = "norm_qkv_rope_kv_write, " + std::to_string(T) + " tokens, D " + std::to_string(D) +
                                   ", Hq " + std::to_string(Hq) +
                                   (bias ? ", bias" : "") + (stacked ? ", stacked weights" : "") +
                                   (head_norm ? ", head norms" : "") + (fp8_kv ? ", fp8 KV cache" : "");
          expect_close(qc, qg, (what + ": queries").c_str(), dt == DType::F32 ? 1e-5 : 1e-2);
          if (fp8_kv) {
            // float32: the same values up to RoPE's sines, so all but a few codes equal. 16-bit: the
            // normalized input and the weights are rounded (relative 2^-9 bf16, 2^-11 fp16 each), which
            // over 96 products of about 0.1 leaves the keys and values (of about 1) some 1.6e-3 (bf16)
            // apart, absolute: more than an E4M3 step near zero (2^-9 below 2^-5). Slack of 2^-5 (bf16)
            // and 2^-7 (fp16): 2^-7 for bf16 was passed by 2 of some 100,000 codes on an H200. (A wrong
            // slot, head or rotation moves values by about 1.)
            const double differing = dt == DType::F32 ? 0.01 : 0.2;
            const double slack = dt == DType::F32 ? 0.0 : std::ldexp(1.0, dt == DType::BF16 ? -5 : -7);
            expect_codes_close(kc.first, kc.second, what + ": key cache", differing, slack);
            expect_codes_close(vc.first, vc.second, what + ": value cache", differing, slack);
          } else {
            expect_close(kc.first, kc.second, (what + ": key cache").c_str(), tol());
            expect_close(vc.first, vc.second, (what + ": value cache").c_str(), tol());
          }
          // Attention right behind the write (the rows it just wrote are the step's own: read after it).
          // With E4M3 caches the CPU reads the GPU's codes (checked against its own just above): a code a
          // step off moves a score, and with one token over otherwise empty caches the whole softmax, by
          // more than the attention's own rounding (0.04-0.06 relative at 1 token and 2 heads in bf16,
          // H200 run194), so the attention is compared over the same codes, to the 16-bit bound.
          if (fp8_kv)
            for (auto* c : {&kc, &vc}) {
              const auto g = codes_of(c->second, true);
              std::memcpy(c->first.data, g.data(), g.size());
            }
          Tensor ac = cpu.empty({T, Hq * D}, DType::F32), ag = gpu->empty({T, Hq * D}, dt);
          // (The model's scale, 1 / sqrt(D): scores of the same size at either head size.)
          const float scale = 1.f / std::sqrt(static_cast<float>(D));
          cpu.attention(qc, kc.first, vc.first, D, bs, scale, ac);
          gpu->attention(qg, kc.second, vc.second, D, bs, scale, ag);
          expect_close(ac, ag, (what + ": attention after the write").c_str(), tol());
        }
      }
    }
  }
}

// How an fp8 prefill step reaches its attention in the tests below: its blocks widened once into
// reserve_kv_widening's buffers, tile by tile with the widening off, or with room for a few blocks only:
// the sequences that fit widened once, the others' tiles tile by tile (a second launch).
enum class WidenMode { kOnce, kOff, kPartly };
std::string widen_name(WidenMode m) {
  return m == WidenMode::kOnce ? "" : m == WidenMode::kOff ? ", widened tile by tile" : ", partly widened first";
}
// Reserves room for `tokens` positions (kPartly: `few` blocks), switches the widening and begins step m.
// Returns the backend's widenings so far, and whether the step's attention (16-bit output `dt`) is to
// widen blocks (some sequences fit; gather_step_blocks has unit tests of its own).
std::pair<int64_t, bool> widen_for(CudaBackend& gpu, WidenMode mode, int64_t tokens, int64_t few, int64_t bs, int64_t Hk,
                                   int64_t D, DType dt, const StepMeta& m) {
  const int64_t cap = mode == WidenMode::kPartly ? few : (tokens + bs - 1) / bs;
  gpu.reserve_kv_widening(cap * bs, bs, Hk, D);
  gpu.set_kv_widening(mode != WidenMode::kOff);
  gpu.begin_step(m);
  std::vector<int32_t> blocks, tables;
  std::vector<char> taken, only(static_cast<size_t>(m.num_seqs()), 1);  // (not the decode rows the split-KV kernel takes)
  for (const auto& [first, rows] : gpu.split_decode_rows())
    for (int64_t s = 0; s < m.num_seqs(); ++s)
      if (m.q_start[s] >= first && m.q_start[s] < first + rows) only[static_cast<size_t>(s)] = 0;
  const bool widens = mode != WidenMode::kOff && dt != DType::F32 && is_prefill(m) &&
                      gather_step_blocks(m, bs, cap, 16, blocks, tables, taken, &only) > 0;
  return {gpu.kv_widenings(), widens};
}

// kv_cache_dtype fp8: kv_write stores the CPU backend's codes (the host's rounding, saturating at
// +-448; other slots untouched), and attention over caches of codes (the tensor-core kernel widening
// them to the 16-bit type as it stages them; the CUDA-core kernels for a float32 output) matches the
// CPU backend's over the same codes: long contexts, a mixed step, split decodes (graph-shaped too),
// grouped and plain heads, head sizes 128, 64 and 80, decode blocks of 8 and 4 warps. Prefill steps with a
// 16-bit output three ways: their blocks widened once (reserve_kv_widening), tile by tile by the kernel
// (widening off), and partly: room for a few blocks, the sequences that fit widened once, the others'
// tiles widened tile by tile.
TEST_P(CudaOps, Fp8KvCacheMatchesTheCpuBackend) {
  std::mt19937 g(33);
  const DType dt = GetParam();
  const int64_t bs = 16, max_blocks = 160;
  const LongContextSteps steps = long_context_steps(bs, max_blocks);
  // A chunk of 300 queries over 1,500 positions: the prefill kernel's tiles of 128 keys go round its
  // stages several times.
  const StepMeta long_chunk = make_meta(bs, {300, 1}, {1200, 40}, max_blocks);
  auto random_codes = [&](int64_t n, float scale) {
    const auto v = randn(static_cast<size_t>(n), g, scale);
    std::vector<uint8_t> c(v.size());
    for (size_t i = 0; i < v.size(); ++i) c[i] = f32_to_e4m3(v[i]);
    return c;
  };
  for (const int warps : {8, 4})
  for (const int64_t D : {128, 64, 80})
  for (const auto& [Hq, Hk] : {std::pair<int64_t, int64_t>{6, 2}, {8, 1}, {2, 2}}) {
    cuda::set_decode_attention_warps(warps);
    for (const StepMeta* m : {&steps.mixed, &steps.mixed_tail, &steps.mixed_middle, &steps.decode, &steps.decode8, &steps.graph,
                              &long_chunk}) {
      const int64_t T = m->num_tokens(), blocks = max_blocks * static_cast<int64_t>(m->num_seqs());
      gpu->set_kv_widening(true);
      cpu.begin_step(*m);
      gpu->begin_step(*m);
      const std::vector<int64_t> cshape{blocks, bs, Hk, D};
      auto kc = both_codes(random_codes(blocks * bs * Hk * D, 2.f), cshape);
      auto vc = both_codes(random_codes(blocks * bs * Hk * D, 2.f), cshape);
      // The step's own keys and values through kv_write (float32, as the model's projections give them):
      // first some past +-448 (saturating), then all moderate, which attention reads (keys of 448 would
      // turn the 16-bit queries' rounding into errors of several percent in the scores).
      const std::string shape = "head_dim " + std::to_string(D) + ", Hq " + std::to_string(Hq) + ", Hk " +
                                std::to_string(Hk) + ", " + std::to_string(T) + " tokens, " + std::to_string(warps) +
                                "-warp decode blocks";
      for (const bool outliers : {true, false}) {
        auto kv_in = [&] {
          auto v = randn(static_cast<size_t>(T * Hk * D), g, 2.f);
          if (outliers)
            for (size_t i = 0; i < v.size(); i += 97) v[i] = (i % 2 ? 1.f : -1.f) * (400.f + static_cast<float>(i % 300));
          return both(v, {T, Hk * D}, DType::F32);
        };
        auto k = kv_in(), v = kv_in();
        cpu.kv_write(k.first, v.first, kc.first, vc.first);
        gpu->kv_write(k.second, v.second, kc.second, vc.second);
        const std::string w = outliers ? ", values past 448" : "";
        EXPECT_TRUE(codes_of(kc.first, false) == codes_of(kc.second, true)) << "fp8 kv_write, key cache, " << shape << w;
        EXPECT_TRUE(codes_of(vc.first, false) == codes_of(vc.second, true)) << "fp8 kv_write, value cache, " << shape << w;
      }
      auto q = both(randn(T * Hq * D, g), {T, Hq * D}, DType::F32);
      Tensor ac = cpu.empty({T, Hq * D}, DType::F32), ag = gpu->empty({T, Hq * D}, dt);
      cpu.attention(q.first, kc.first, vc.first, D, bs, 0.09f, ac);
      // (Room for 10 blocks: of the mixed steps the 97-token prefill, not the chunk after 260 positions
      // or the decodes; of the long chunk nothing, its 1-token sequence being on the split-KV kernel.)
      for (const WidenMode mode : {WidenMode::kOnce, WidenMode::kOff, WidenMode::kPartly}) {
        const auto [widened, widens] = widen_for(*gpu, mode, blocks * bs, 10, bs, Hk, D, dt, *m);
        gpu->attention(q.second, kc.second, vc.second, D, bs, 0.09f, ag);
        expect_close(ac, ag, ("attention over an fp8 KV cache, " + shape + widen_name(mode)).c_str(), tol());
        EXPECT_EQ(gpu->kv_widenings() - widened, widens ? 1 : 0) << shape << widen_name(mode);
        if (mode == WidenMode::kOnce) {
          EXPECT_EQ(widens, dt != DType::F32 && is_prefill(*m)) << shape << widen_name(mode);
        }
      }
    }
  }
  cuda::set_decode_attention_warps(0);
  gpu->set_kv_widening(true);
}

// Sliding-window attention (Backend::attention's window: a position p sees keys p - window + 1 .. p)
// against the CPU backend, on every kernel: windows of 1 key, 37 (inside a tile), 300 and 1,000 (across
// tiles, splits and cache blocks) over the long-context steps (split decodes, graph-shaped too, mixed
// steps with their decode rows on the split-KV kernel) and prefills of several 128-row tiles after cached
// context; head sizes 128, 64 (the prefill kernels: mma.sync, wgmma with 64- and 128-key tiles, by TMA)
// and 16 (the split-KV kernel throughout), grouped and plain heads; 16-bit caches and fp8 ones (blocks
// widened once, or tile by tile by the warp-specialized kernel). Each window's result must differ from
// full attention's where the window cuts keys (the CPU backend's own check that it was applied).
TEST_P(CudaOps, SlidingWindowAttentionMatchesTheCpu) {
  std::mt19937 g(41);
  const DType dt = GetParam();
  const int64_t bs = 16, max_blocks = 160;
  const LongContextSteps steps = long_context_steps(bs, max_blocks);
  const StepMeta prefill = make_meta(bs, {300, 200, 1, 37}, {0, 900, 50, 0}, max_blocks);
  const StepMeta long_chunk = make_meta(bs, {300, 1}, {1200, 40}, max_blocks);
  const bool hopper = cuda::prefill_attention_wgmma(128);
  for (const bool fp8 : {false, true})
  for (const int64_t D : {128, 64, 16})
  for (const auto& [Hq, Hk] : {std::pair<int64_t, int64_t>{6, 2}, {2, 2}})
  for (const StepMeta* m : {&steps.mixed, &steps.mixed_tail, &steps.mixed_middle, &steps.decode, &steps.decode8, &steps.graph,
                            &prefill, &long_chunk}) {
    if (fp8 && D == 16) continue;  // (the fp8 cache's kernels take head sizes of 64 and up)
    const int64_t T = m->num_tokens(), blocks = max_blocks * static_cast<int64_t>(m->num_seqs());
    const std::vector<int64_t> cshape{blocks, bs, Hk, D};
    std::pair<Tensor, Tensor> kc, vc;
    if (fp8) {
      auto codes = [&] {
        const auto v = randn(static_cast<size_t>(blocks * bs * Hk * D), g, 2.f);
        std::vector<uint8_t> c(v.size());
        for (size_t i = 0; i < v.size(); ++i) c[i] = f32_to_e4m3(v[i]);
        return c;
      };
      kc = both_codes(codes(), cshape);
      vc = both_codes(codes(), cshape);
    } else {
      kc = both(randn(blocks * bs * Hk * D, g), cshape, dt);
      vc = both(randn(blocks * bs * Hk * D, g), cshape, dt);
    }
    auto q = both(randn(T * Hq * D, g), {T, Hq * D}, DType::F32);
    cpu.begin_step(*m);
    Tensor full = cpu.empty({T, Hq * D}, DType::F32);
    cpu.attention(q.first, kc.first, vc.first, D, bs, 0.09f, full);
    for (const int64_t window : {1, 37, 300, 1000}) {
      Tensor ac = cpu.empty({T, Hq * D}, DType::F32);
      cpu.begin_step(*m);
      cpu.attention(q.first, kc.first, vc.first, D, bs, 0.09f, ac, window);
      const std::string shape = std::string(fp8 ? "fp8 cache, " : "") + "window " + std::to_string(window) +
                                ", head_dim " + std::to_string(D) + ", " + (Hq == Hk ? "multi-head" : "grouped") + ", " +
                                std::to_string(m->num_seqs()) + " sequences of " + std::to_string(T) + " tokens";
      int32_t longest = 0;
      for (int32_t p : m->positions) longest = std::max(longest, p + 1);
      if (window < longest) EXPECT_FALSE(get(cpu, ac) == get(cpu, full)) << shape << ": the CPU's window cut nothing";
      // The kernels that may take the step: the prefill kernels in turn for a 16-bit output, each with the
      // fp8 cache's two ways; the split-KV kernels otherwise.
      const bool prefill_kernels = dt != DType::F32 && is_prefill(*m) && (D == 128 || D == 64);
      const int kernels = prefill_kernels && hopper ? 4 : 1;
      for (int kernel = 0; kernel < kernels; ++kernel) {
        cuda::set_prefill_attention_wgmma(kernels == 1 || kernel > 0);
        cuda::set_prefill_wgmma_keys(kernel >= 2 ? 128 : kernel == 1 ? 64 : 0);
        cuda::set_prefill_attention_tma(kernel != 2);
        for (const WidenMode mode : {WidenMode::kOnce, WidenMode::kOff}) {
          if (!fp8 && mode == WidenMode::kOff) continue;
          if (fp8) widen_for(*gpu, mode, blocks * bs, 10, bs, Hk, D, dt, *m);
          else gpu->begin_step(*m);
          Tensor ag = gpu->empty({T, Hq * D}, dt);
          gpu->attention(q.second, kc.second, vc.second, D, bs, 0.09f, ag, window);
          const char* names[] = {"", ", wgmma 64-key tiles", ", wgmma 128-key tiles", ", TMA"};
          expect_close(ac, ag, ("sliding-window attention, " + shape + (kernels > 1 ? names[kernel] : "") +
                                (fp8 ? widen_name(mode) : "")).c_str(), tol());
        }
      }
    }
  }
  cuda::set_prefill_attention_wgmma(true);
  cuda::set_prefill_attention_tma(true);
  cuda::set_prefill_wgmma_keys(0);
  gpu->set_kv_widening(true);
}

// Every E4M3 code reads as exactly its value: a token at position 0 attends to itself alone, so its
// attention output is its value row (probability 1), which holds the codes 0-255 in turn (the NaN codes
// 0x7f and 0xff as zeros) and is representable in every output type. Steps of single tokens (the paged
// decode kernels, 8- and 4-warp blocks) and a prefill step (the tensor-core prefill kernel for 16-bit
// outputs: its blocks widened once, and tile by tile); query groups of one and two heads, head sizes 128
// and 64.
TEST_P(CudaOps, Fp8KvCacheCodesReadExactly) {
  std::mt19937 g(34);
  const DType dt = GetParam();
  const int64_t bs = 16, max_blocks = 4;
  const StepMeta singles = make_meta(bs, {1, 1, 1, 1}, {0, 0, 0, 0}, max_blocks);
  const StepMeta prefill = make_meta(bs, {1, 40}, {0, 0}, max_blocks);
  for (const int warps : {8, 4})
  for (const auto& [Hq, Hk, D] : {std::tuple<int64_t, int64_t, int64_t>{2, 2, 128}, {4, 2, 128}, {4, 4, 64}, {8, 4, 64}}) {
    cuda::set_decode_attention_warps(warps);
    for (const StepMeta* m : {&singles, &prefill}) {
      const int64_t T = m->num_tokens(), blocks = max_blocks * static_cast<int64_t>(m->num_seqs());
      const std::vector<int64_t> cshape{blocks, bs, Hk, D};
      std::vector<uint8_t> codes(static_cast<size_t>(blocks * bs * Hk * D)), keys(codes.size());
      for (size_t i = 0; i < codes.size(); ++i) {
        codes[i] = (i & 0x7f) == 0x7f ? 0 : static_cast<uint8_t>(i & 0xff);  // a slot's Hk x D = 256 codes
        keys[i] = f32_to_e4m3(std::normal_distribution<float>(0.f, 1.f)(g));
      }
      auto kc = both_codes(keys, cshape), vc = both_codes(codes, cshape);
      auto q = both(randn(T * Hq * D, g), {T, Hq * D}, DType::F32);
      Tensor ag = gpu->empty({T, Hq * D}, dt);
      // (Room for 3 blocks: the 40-token prefill's, not the 1-token sequence's.)
      for (const WidenMode mode : {WidenMode::kOnce, WidenMode::kOff, WidenMode::kPartly}) {
        const auto [widened, widens] = widen_for(*gpu, mode, blocks * bs, 3, bs, Hk, D, dt, *m);
        gpu->attention(q.second, kc.second, vc.second, D, bs, 0.09f, ag);
        EXPECT_EQ(gpu->kv_widenings() - widened, widens ? 1 : 0);
        EXPECT_EQ(widens, mode != WidenMode::kOff && dt != DType::F32 && m == &prefill);
        const std::vector<float> out = get(*gpu, ag);
        int64_t checked = 0, wrong = 0;
        for (int64_t t = 0; t < T; ++t) {
          if (m->positions[t] != 0) continue;
          const int64_t slot = m->slot_mapping[t];
          for (int64_t h = 0; h < Hq; ++h)
            for (int64_t d = 0; d < D; ++d, ++checked) {
              const float want = e4m3_to_f32(codes[static_cast<size_t>((slot * Hk + h / (Hq / Hk)) * D + d)]);
              wrong += out[static_cast<size_t>((t * Hq + h) * D + d)] != want;
            }
        }
        EXPECT_EQ(checked, (m == &singles ? 4 : 2) * Hq * D);
        EXPECT_EQ(wrong, 0) << "codes read inexactly, head_dim " << D << ", Hq " << Hq << ", Hk " << Hk << ", "
                            << (m == &singles ? "single tokens, " : "prefill, ") << warps << "-warp decode blocks"
                            << widen_name(mode);
      }
    }
  }
  cuda::set_decode_attention_warps(0);
  gpu->set_kv_widening(true);
}

// reserve_kv_widening where the device has no room (far more positions than any GPU holds): no bytes
// taken (a warning), and prefill steps widened tile by tile, as right against the CPU backend as with
// room (then, in 16 bits, widened once).
TEST_P(CudaOps, Fp8KvWideningWithoutRoomWidensTileByTile) {
  std::mt19937 g(35);
  const DType dt = GetParam();
  const int64_t bs = 16, Hq = 4, Hk = 2, D = 128, max_blocks = 8;
  const StepMeta m = make_meta(bs, {40, 1}, {30, 60}, max_blocks);
  const int64_t T = m.num_tokens(), blocks = max_blocks * static_cast<int64_t>(m.num_seqs());
  const std::vector<int64_t> cshape{blocks, bs, Hk, D};
  auto random_codes = [&] {
    const auto v = randn(static_cast<size_t>(blocks * bs * Hk * D), g, 2.f);
    std::vector<uint8_t> c(v.size());
    for (size_t i = 0; i < v.size(); ++i) c[i] = f32_to_e4m3(v[i]);
    return c;
  };
  auto kc = both_codes(random_codes(), cshape), vc = both_codes(random_codes(), cshape);
  auto q = both(randn(T * Hq * D, g), {T, Hq * D}, DType::F32);
  Tensor ac = cpu.empty({T, Hq * D}, DType::F32), ag = gpu->empty({T, Hq * D}, dt);
  cpu.begin_step(m);
  cpu.attention(q.first, kc.first, vc.first, D, bs, 0.09f, ac);
  gpu->set_kv_widening(true);
  for (const bool room : {false, true}) {
    const size_t bytes = gpu->reserve_kv_widening(room ? blocks * bs : int64_t{1} << 40, bs, Hk, D);
    EXPECT_EQ(bytes > 0, room && dt != DType::F32);
    gpu->begin_step(m);
    const int64_t before = gpu->kv_widenings();
    gpu->attention(q.second, kc.second, vc.second, D, bs, 0.09f, ag);
    EXPECT_EQ(gpu->kv_widenings() - before, bytes > 0 ? 1 : 0);
    expect_close(ac, ag, room ? "fp8 prefill, widened once" : "fp8 prefill, no room to widen once", tol());
  }
}

// Which kernels take a linear layer of 1-4 tokens: the skinny ones from 3 tokens, and from 2 where the
// matrices hold kSkinnyBigWeights elements or more together (the 7B down projection, gate/up, lm_head;
// one such FP8 matrix from 1, FP8 gate/up from 3); each boundary set on its own. Then whether the skinny
// q/k/v and gate/up launches normalize their rows themselves, by the rows' width. Operands are shapes over
// an aligned address (nothing is launched).
TEST_P(CudaOps, FewTokenKernelChoiceBySize) {
  const DType dt = GetParam();
  if (dt == DType::F32) GTEST_SKIP() << "the skinny kernels take 16-bit activations";
  void* const at = reinterpret_cast<void*>(uintptr_t(1) << 12);
  auto shape = [&](std::vector<int64_t> s, DType t) {
    Tensor x;
    x.data = at, x.dtype = t, x.shape = std::move(s);
    if (t == DType::F8E4M3) x.scale = static_cast<const float*>(at);
    return x;
  };
  const int64_t K = 1024, big_rows = CudaBackend::kSkinnyBigWeights / K;
  for (const DType wt : {dt, DType::F8E4M3}) {
    const bool fp8 = wt == DType::F8E4M3;
    const Tensor small = shape({4096, K}, wt), big = shape({big_rows, K}, wt), below = shape({big_rows - 1, K}, wt);
    const Tensor half = shape({big_rows / 2, K}, wt);
    auto takes = [&](int64_t T, const Tensor& w, const Tensor* w2) {  // (skinny_few: the input, then the matrices)
      const Tensor x = shape({T, K}, dt);
      if (fp8) return w2 ? gpu->skinny_fp8(T, x, {&w, w2}) : gpu->skinny_fp8(T, x, {&w});
      return w2 ? gpu->skinny_few(T, {&x, &w, w2}) : gpu->skinny_few(T, {&x, &w});
    };
    const std::string kind = fp8 ? "fp8" : "16-bit";
    for (int64_t T = 1; T <= 4; ++T) {
      EXPECT_EQ(takes(T, small, nullptr), T >= 3) << kind << ", " << T << " tokens, small";
      EXPECT_EQ(takes(T, below, nullptr), T >= 3) << kind << ", " << T << " tokens, one row short of big";
      // (One big FP8 matrix from 1 token, a 16-bit one from 2.)
      EXPECT_EQ(takes(T, big, nullptr), T >= (fp8 ? 1 : 2)) << kind << ", " << T << " tokens, big";
      // (Two FP8 matrices, gate/up, keep the general boundary.)
      EXPECT_EQ(takes(T, half, &half), T >= (fp8 ? 3 : 2)) << kind << ", " << T << " tokens, two halves";
      EXPECT_EQ(takes(T, big, &big), T >= (fp8 ? 3 : 2)) << kind << ", " << T << " tokens, two big ones";
    }
    auto set_boundary = [&](int64_t t) { fp8 ? gpu->set_skinny_fp8_min_tokens(t) : gpu->set_skinny_min_tokens(t); };
    auto set_big = [&](int64_t t) { fp8 ? gpu->set_skinny_fp8_big_min_tokens(t) : gpu->set_skinny_big_min_tokens(t); };
    // The GEMVs for up to 4 tokens (5), big matrices still from 2; then big ones from 5 too: none.
    set_boundary(5);
    set_big(2);
    EXPECT_FALSE(takes(4, small, nullptr)) << kind;
    EXPECT_FALSE(takes(1, big, nullptr)) << kind;
    EXPECT_TRUE(takes(2, big, nullptr)) << kind;
    set_big(5);
    EXPECT_FALSE(takes(4, big, nullptr)) << kind;
    // Big ones from 1, the others from 3.
    set_big(1);
    set_boundary(3);
    EXPECT_TRUE(takes(1, big, nullptr)) << kind;
    EXPECT_FALSE(takes(2, small, nullptr)) << kind;
    set_big(fp8 ? 1 : 2);
  }
  // Above 4 tokens skinny_few declines (skinny and cuBLASLt take those), whatever the size.
  const Tensor x5 = shape({5, K}, dt), big16 = shape({big_rows, K}, dt);
  EXPECT_FALSE(gpu->skinny_few(5, {&x5, &big16}));
  // The norm inside the skinny q/k/v and gate/up launches by the rows' width (1.5B: rmsnorm first; 7B:
  // inside), unless forced; never for 5 rows.
  const int64_t narrow = CudaBackend::kSkinnyNormMinCols - 512, wide = CudaBackend::kSkinnyNormMinCols + 1536;
  for (int64_t T = 1; T <= 4; ++T) {
    EXPECT_FALSE(gpu->skinny_norm_inside(shape({T, narrow}, DType::F32), dt)) << T << " rows of " << narrow;
    EXPECT_TRUE(gpu->skinny_norm_inside(shape({T, wide}, DType::F32), dt)) << T << " rows of " << wide;
  }
  EXPECT_FALSE(gpu->skinny_norm_inside(shape({5, wide}, DType::F32), dt));
  // Rows too wide for the block's shared memory (4 of 8,192 with the norm's weights: 80 KB): rmsnorm first.
  EXPECT_FALSE(gpu->skinny_norm_inside(shape({4, 8192}, DType::F32), dt));
  gpu->set_skinny_norm_inside(true);
  EXPECT_TRUE(gpu->skinny_norm_inside(shape({4, narrow}, DType::F32), dt));
  gpu->set_skinny_norm_inside(false);
  EXPECT_FALSE(gpu->skinny_norm_inside(shape({4, wide}, DType::F32), dt));
}

// Linear layers of 1-4 tokens (the CUDA-core GEMVs; with set_skinny_min_tokens(1), the tensor-core skinny
// kernels) and of 5-32 (the skinny GEMMs for 16-bit operands; cuBLASLt where K is not a multiple of 8),
// into float32 with a bias, into the operands' type, and adding into a float32 residual; gate/up with
// SiLU-and-multiply. 333 rows, a GEMV warp each; 20,000 short rows, more than the resident warps (a warp
// streams several, one after the other); rows of 4,104 elements, several groups of loads per row with a
// partial last group; row counts that are not multiples of 16 and inner sizes that are not multiples of
// 32 (the tiles' ragged edges).
TEST_P(CudaOps, FewTokenLinearMatchesTheCpuReference) {
  std::mt19937 g(7);
  const DType dt = GetParam();
  const std::pair<int64_t, int64_t> shapes[] = {{96, 333}, {100, 333}, {96, 20000}, {4104, 70}};
  for (int64_t from : {int64_t(5), int64_t(1)}) {  // 16-bit weights on the GEMVs only (5), the skinny kernels only (1)
    gpu->set_skinny_min_tokens(from);
    for (int64_t T : {1, 2, 3, 4, 5, 8, 13, 16, 17, 24, 32}) {
      for (const auto& [K, N] : shapes) {
        const std::string at = "T = " + std::to_string(T) + ", K = " + std::to_string(K) + ", N = " + std::to_string(N) +
                             ", skinny from " + std::to_string(from);
        auto x = both(randn(T * K, g), {T, K}, dt), w = both(randn(N * K, g, 0.1f), {N, K}, dt);
        auto b = both(randn(N, g), {N}, DType::F32);
        Tensor c = cpu.empty({T, N}, DType::F32), y32 = gpu->empty({T, N}, DType::F32), y = gpu->empty({T, N}, dt);
        cpu.linear(x.first, w.first, &b.first, c);
        gpu->linear(x.second, w.second, &b.second, y32);
        expect_close(c, y32, ("few-token linear with bias into float32, " + at).c_str(), dt == DType::F32 ? 1e-5 : 1e-2);
        cpu.linear(x.first, w.first, nullptr, c);
        gpu->linear(x.second, w.second, nullptr, y);
        expect_close(c, y, ("few-token linear, " + at).c_str(), tol());
        auto res = both(randn(T * N, g), {T, N}, DType::F32);
        cpu.linear_residual(x.first, w.first, c, res.first);
        gpu->linear_residual(x.second, w.second, y32, res.second);
        expect_close(res.first, res.second, ("few-token linear_residual, " + at).c_str(), dt == DType::F32 ? 1e-5 : 1e-2);
        if (N > 10000) continue;
        auto wu = both(randn(N * K, g, 0.1f), {N, K}, dt);
        Tensor gu = cpu.empty({T, 2 * N}, DType::F32), act = cpu.empty({T, N}, DType::F32);
        Tensor gug = gpu->empty({T, 2 * N}, DType::F32), actg = gpu->empty({T, N}, dt);
        cpu.gate_up_silu(x.first, w.first, wu.first, gu, act);
        gpu->gate_up_silu(x.second, w.second, wu.second, gug, actg);
        expect_close(act, actg, ("few-token gate_up_silu, " + at).c_str(), tol());
      }
    }
  }
}

// Which linear layers the skinny GEMMs take: 5-16 tokens of 16-bit operands with inner sizes in whole
// 16-byte units and up to kSkinnyMaxWeights weights together; not float32, not 4 or 17 tokens, not a
// larger matrix, and none with LLMSERVE_SKINNY_GEMM's switch off.
TEST_P(CudaOps, SkinnyGemmsTakeSmallMatricesOfFewTokens) {
  const DType dt = GetParam();
  const bool half = dt != DType::F32;
  Tensor x8 = gpu->empty({8, 1536}, dt), x4 = gpu->empty({4, 1536}, dt), x17 = gpu->empty({17, 1536}, dt);
  Tensor x5 = gpu->empty({5, 1536}, dt), x16 = gpu->empty({16, 1536}, dt), odd = gpu->empty({8, 1532}, dt);
  Tensor qkv = gpu->empty({2048, 1536}, dt), gate = gpu->empty({1365, 1536}, dt), up = gpu->empty({1366, 1536}, dt);
  Tensor big = gpu->empty({8960, 1536}, dt), w_odd = gpu->empty({64, 1532}, dt);
  EXPECT_EQ(gpu->skinny(8, {&x8, &qkv}), half);
  EXPECT_EQ(gpu->skinny(5, {&x5, &qkv}), half);
  EXPECT_EQ(gpu->skinny(16, {&x16, &qkv}), half);
  EXPECT_EQ(gpu->skinny(8, {&x8, &gate, &gate}), half);  // 2 x 1365 x 1536 <= 4M
  EXPECT_FALSE(gpu->skinny(8, {&x8, &gate, &up}));        // 2731 x 1536 > 4M
  EXPECT_FALSE(gpu->skinny(8, {&x8, &big}));
  EXPECT_FALSE(gpu->skinny(4, {&x4, &qkv}));
  EXPECT_FALSE(gpu->skinny(17, {&x17, &qkv}));
  EXPECT_FALSE(gpu->skinny(8, {&odd, &w_odd}));
  gpu->set_skinny_gemms(false);
  EXPECT_FALSE(gpu->skinny(8, {&x8, &qkv}));
}

// GEMMs (5 tokens and more) at token counts that share a bucket's algorithm (cuBLASLt's heuristic is
// asked at the bucket's top, the multiple of 64 at or above a count over 256, and its answer checked
// against each exact count): counts inside, at the top of and just past a bucket, with and without
// bias, into float32 and into the operands' type, and the residual form; the same with the heuristic
// asked at every count. Each against the CPU reference.
TEST_P(CudaOps, GemmsAtManyTokenCountsMatchTheCpuReference) {
  std::mt19937 g(9);
  const DType dt = GetParam();
  const int64_t K = 136, N = 520;
  EXPECT_EQ(CudaBackend::gemm_token_bucket(5), 5);
  EXPECT_EQ(CudaBackend::gemm_token_bucket(256), 256);
  EXPECT_EQ(CudaBackend::gemm_token_bucket(257), 320);
  EXPECT_EQ(CudaBackend::gemm_token_bucket(1001), 1024);
  EXPECT_EQ(CudaBackend::gemm_token_bucket(1025), 1088);
  auto w = both(randn(N * K, g, 0.1f), {N, K}, dt);
  auto b = both(randn(N, g), {N}, DType::F32), bt = both(randn(N, g), {N}, dt);
  for (bool exact : {false, true}) {
    gpu->set_gemm_heuristic_per_token_count(exact);
    for (int64_t T : {5, 7, 64, 256, 257, 300, 320, 1000, 1001, 1024, 1025}) {
      const std::string at = std::string(exact ? "heuristic per count" : "bucket") + ", T = " + std::to_string(T);
      auto x = both(randn(T * K, g), {T, K}, dt);
      Tensor c = cpu.empty({T, N}, DType::F32), y32 = gpu->empty({T, N}, DType::F32), y = gpu->empty({T, N}, dt);
      cpu.linear(x.first, w.first, &b.first, c);
      gpu->linear(x.second, w.second, &b.second, y32);
      expect_close(c, y32, ("linear with bias into float32, " + at).c_str(), dt == DType::F32 ? 1e-5 : 1e-2);
      cpu.linear(x.first, w.first, &bt.first, c);
      gpu->linear(x.second, w.second, &bt.second, y);
      expect_close(c, y, ("linear with bias, " + at).c_str(), tol());
      auto a = both(randn(T * N, g), {T, N}, dt), res = both(randn(T * K, g), {T, K}, DType::F32);
      auto wo = both(randn(K * N, g, 0.1f), {K, N}, dt);
      Tensor yc = cpu.empty({T, K}, DType::F32), yg = gpu->empty({T, K}, DType::F32);
      cpu.linear_residual(a.first, wo.first, yc, res.first);
      gpu->linear_residual(a.second, wo.second, yg, res.second);
      expect_close(res.first, res.second, ("linear_residual, " + at).c_str(), dt == DType::F32 ? 1e-5 : 1e-2);
    }
  }
}

// cpu_offload_gb: a matrix in mapped host memory (upload_to_host_memory) gives the same bits as the
// same matrix on the device, in every path: GEMV (a few tokens), skinny GEMM, and cuBLASLt GEMMs, which
// read a device copy of it (gemm_weight: one copy per GEMM past 16 tokens, none for the GEMVs of 1-4
// tokens or for a matrix on the device); a row range of it (a stacked view) too.
TEST_P(CudaOps, OffloadedMatricesGiveTheSameBits) {
  std::mt19937 g(12);
  const DType dt = GetParam();
  const int64_t K = 136, N = 520;
  const auto wv = randn(N * K, g, 0.1f), ov = randn(K * N, g, 0.1f);
  const Tensor w = gpu->upload(wv.data(), {N, K}, dt), wh = gpu->upload_to_host_memory(wv.data(), {N, K}, dt);
  const Tensor o = gpu->upload(ov.data(), {K, N}, dt), oh = gpu->upload_to_host_memory(ov.data(), {K, N}, dt);
  for (int64_t T : {1, 3, 8, 16, 64, 300, 1030}) {
    const std::string at = "T = " + std::to_string(T);
    const auto xv = randn(T * K, g), av = randn(T * N, g), rv = randn(T * K, g);
    const Tensor x = gpu->upload(xv.data(), {T, K}, dt), a = gpu->upload(av.data(), {T, N}, dt);
    // How many copies of an offloaded matrix one GEMM of T tokens makes (5-16 tokens: the skinny
    // kernels' or cuBLASLt's, by type; not asserted).
    const int64_t copies = T <= 4 ? 0 : T > 16 ? 1 : -1;
    auto expect_copies = [&](int64_t before, int64_t n, const char* what) {
      if (copies >= 0) {
        EXPECT_EQ(gpu->offloaded_gemm_copies() - before, n * copies) << what << ", " << at;
      }
    };
    for (DType out : {DType::F32, dt}) {
      Tensor y = gpu->empty({T, N}, out), yh = gpu->empty({T, N}, out);
      int64_t before = gpu->offloaded_gemm_copies();
      gpu->linear(x, w, nullptr, y);
      EXPECT_EQ(gpu->offloaded_gemm_copies(), before) << "linear over a device matrix, " << at;
      gpu->linear(x, wh, nullptr, yh);
      expect_copies(before, 1, "linear");
      EXPECT_EQ(get(*gpu, y), get(*gpu, yh)) << "linear, " << at;
      // Rows 100..399 of each: a view into the allocation, at an offset.
      Tensor z = gpu->empty({T, 300}, out), zh = gpu->empty({T, 300}, out);
      gpu->linear(x, rows_view(w, 100, 300), nullptr, z);
      before = gpu->offloaded_gemm_copies();
      gpu->linear(x, rows_view(wh, 100, 300), nullptr, zh);
      expect_copies(before, 1, "linear over a row range");
      EXPECT_EQ(get(*gpu, z), get(*gpu, zh)) << "linear over a row range, " << at;
    }
    Tensor r = gpu->upload(rv.data(), {T, K}, DType::F32), rh = gpu->upload(rv.data(), {T, K}, DType::F32);
    Tensor unused;
    gpu->linear_residual(a, o, unused, r);
    const int64_t before = gpu->offloaded_gemm_copies();
    gpu->linear_residual(a, oh, unused, rh);
    expect_copies(before, 1, "linear_residual");
    EXPECT_EQ(get(*gpu, r), get(*gpu, rh)) << "linear_residual, " << at;
  }
}

// quantization fp8: the GPU quantizes a matrix to the same codes and scales as the host (the CPU
// backend's values, bit for bit, with ties and rows of every magnitude); its GEMVs of 1-4 tokens over
// the codes and its skinny GEMMs of 5-16 tokens (the codes widened in registers) match the CPU
// reference over those values (linear with and without bias, the residual form, gate/up + SiLU with
// and without the input norm, the attention block's input with RoPE and the cache write), and give the
// same bits as the 16-bit kernels over the same values from 5 tokens on (a power-of-two scale commutes
// with every rounding); more tokens expand the matrix once per op (stacked q/k/v and gate/up: one
// expansion) into the activation type for cuBLASLt, as do 5-16 tokens where the skinny launch does not
// apply (q/k/v with biases on q and k only).
TEST_P(CudaOps, Fp8MatricesMatchTheCpuReference) {
  const DType dt = GetParam();
  if (dt == DType::F32) {
    std::vector<float> w(64, 1.f);
    EXPECT_THROW(gpu->upload_fp8(w.data(), {4, 16}, dt, false), std::exception);  // 16-bit activations only
    return;
  }
  std::mt19937 g(17);
  gpu->set_fp8_gemm(false);  // (many tokens: the expansion here; FP8 GEMMs in Fp8GemmsMatchQuantizedActivations)
  const int64_t bs = 8, Hq = 6, Hk = 2, D = 64, H = 96, I = 160, blocks = 64;
  // Quantization: rows scaled from 2^-20 to 2^20, with exact ties (half-way between codes) in them.
  {
    const int64_t rows = 41, cols = 777;
    auto v = randn(rows * cols, g);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) v[r * cols + c] *= std::ldexp(1.f, static_cast<int>(r) - 20);
    for (int64_t r = 0; r < rows; ++r) {
      v[r * cols] = 448.f * std::ldexp(1.f, static_cast<int>(r) - 20);  // the row's max: scale 2^(r-20)
      v[r * cols + 1] = 1.0625f * std::ldexp(1.f, static_cast<int>(r) - 20);   // a tie: rounds to 1.0 (even)
      v[r * cols + 2] = -1.1875f * std::ldexp(1.f, static_cast<int>(r) - 20);  // a tie: rounds to -1.25 (even)
    }
    const Tensor c = cpu.upload_fp8(v.data(), {rows, cols}, DType::F32, false);
    const Tensor q = gpu->upload_fp8(v.data(), {rows, cols}, dt, false), qh = gpu->upload_fp8(v.data(), {rows, cols}, dt, true);
    ASSERT_EQ(q.dtype, DType::F8E4M3);
    ASSERT_NE(q.scale, nullptr);
    const auto cv = get(cpu, c);
    EXPECT_EQ(get(*gpu, q), cv) << "GPU codes and scales against the host's quantization";
    EXPECT_EQ(get(*gpu, qh), cv) << "the same in host memory (cpu_offload_gb)";
    EXPECT_EQ(cv[1], std::ldexp(1.f, -20));
    EXPECT_EQ(cv[2], -1.25f * std::ldexp(1.f, -20));
    EXPECT_EQ(get(*gpu, rows_view(q, 5, 3)), std::vector<float>(cv.begin() + 5 * cols, cv.begin() + 8 * cols)) << "a row range";
    // Read from host memory (in place by the GEMVs and the skinny GEMMs, expanded for more tokens): the
    // same bits. (Rows 5-20: their values within float16's range; 768 columns besides 777: the vector
    // loads and the skinny GEMMs.)
    const auto v2 = randn(40 * 768, g, 0.1f);
    const Tensor q2 = gpu->upload_fp8(v2.data(), {40, 768}, dt, false), q2h = gpu->upload_fp8(v2.data(), {40, 768}, dt, true);
    for (int64_t T : {1, 3, 8, 16, 64}) {
      for (const auto& [w, wh, k] : {std::tuple<Tensor, Tensor, int64_t>{rows_view(q, 5, 16), rows_view(qh, 5, 16), cols},
                                     {q2, q2h, 768}}) {
        const auto xv = randn(T * k, g);
        const Tensor x = gpu->upload(xv.data(), {T, k}, dt);
        Tensor y = gpu->empty({T, rows_of_t(w)}, DType::F32), yh = gpu->empty({T, rows_of_t(w)}, DType::F32);
        gpu->linear(x, w, nullptr, y);
        gpu->linear(x, wh, nullptr, yh);
        EXPECT_EQ(get(*gpu, y), get(*gpu, yh)) << "an fp8 matrix in host memory, T = " << T << ", K = " << k;
      }
    }
  }
  // The same values as 16-bit weights on the GPU (exact: a code times a power of two is a bf16, and at
  // these magnitudes an fp16) and as float32 on the CPU.
  struct Mat {
    Tensor cpu, gpu16, fp8;
  };
  auto mat = [&](const std::vector<float>& v, int64_t rows, int64_t cols) {
    Mat m;
    m.cpu = cpu.upload_fp8(v.data(), {rows, cols}, DType::F32, false);
    const auto q = get(cpu, m.cpu);
    m.gpu16 = gpu->upload(q.data(), {rows, cols}, dt);
    m.fp8 = gpu->upload_fp8(v.data(), {rows, cols}, dt, false);
    EXPECT_EQ(get(*gpu, m.gpu16), q) << "quantized values exact in " << dtype_name(dt);
    return m;
  };
  const auto gate_up = randn(2 * I * H, g, 0.1f), qkv = randn((Hq + 2 * Hk) * D * H, g, 0.1f);
  const Mat gu = mat(gate_up, 2 * I, H), wqkv = mat(qkv, (Hq + 2 * Hk) * D, H), wo = mat(randn(H * I, g, 0.1f), H, I);
  auto split = [](const Tensor& t, std::vector<int64_t> rows) {
    std::vector<Tensor> parts;
    int64_t at = 0;
    for (int64_t n : rows) parts.push_back(rows_view(t, at, n)), at += n;
    return parts;
  };
  std::vector<float> freq(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) freq[i] = std::pow(10000.f, -2.f * i / D);
  Tensor fc = cpu.upload(freq.data(), {D / 2}, DType::F32), fg = gpu->upload(freq.data(), {D / 2}, DType::F32);
  auto bias = both(randn(I, g), {I}, DType::F32);
  // FP8 matrices of 1-16 tokens go to the skinny kernels from skinny_fp8_min_tokens (the backend's default,
  // then every count from 1) and to the CUDA-core GEMVs below it.
  const int64_t default_min = gpu->skinny_fp8_min_tokens();
  for (int64_t min_tokens : {default_min, int64_t(1)}) {
    gpu->set_skinny_fp8_min_tokens(min_tokens);
    for (const StepMeta& m : {make_meta(bs, {1}, {30}), make_meta(bs, {1, 1, 1}, {20, 0, 9}), make_meta(bs, {1, 1, 1, 1}, {3, 7, 11, 2}),
                              make_meta(bs, {1, 1, 1, 1, 1, 1}, {4, 27, 0, 13, 8, 30}), make_meta(bs),
                              make_meta(bs, {20, 1}, {3, 12})}) {
      const int64_t T = m.num_tokens();
      const std::string at = std::to_string(T) + " tokens (skinny from " + std::to_string(min_tokens) + ")";
      const int64_t expansions = T <= 16 ? 0 : 1, qkv_expansions = T <= 4 ? 0 : 1;  // per op
      cpu.begin_step(m);
      gpu->begin_step(m);
      auto x = both(randn(T * H, g), {T, H}, dt);
      // linear (gate rows), with a bias into float32 and into the activation type.
      {
        const Tensor wc = rows_view(gu.cpu, 0, I), w8 = rows_view(gu.fp8, 0, I), w16 = rows_view(gu.gpu16, 0, I);
        Tensor c = cpu.empty({T, I}, DType::F32), y8 = gpu->empty({T, I}, DType::F32), y16 = gpu->empty({T, I}, DType::F32);
        cpu.linear(x.first, wc, &bias.first, c);
        int64_t before = gpu->dequantized_matrices();
        gpu->linear(x.second, w8, &bias.second, y8);
        EXPECT_EQ(gpu->dequantized_matrices() - before, expansions) << "linear, " << at;
        gpu->linear(x.second, w16, &bias.second, y16);
        expect_close(c, y8, ("fp8 linear with bias, " + at).c_str(), tol());
        if (T > 4) {
          EXPECT_EQ(get(*gpu, y8), get(*gpu, y16)) << "fp8 linear, " << at;
        }
        Tensor z8 = gpu->empty({T, I}, dt), z16 = gpu->empty({T, I}, dt);
        gpu->linear(x.second, w8, nullptr, z8);
        gpu->linear(x.second, w16, nullptr, z16);
        cpu.linear(x.first, wc, nullptr, c);
        expect_close(c, z8, ("fp8 linear, " + at).c_str(), tol());
        if (T > 4) {
          EXPECT_EQ(get(*gpu, z8), get(*gpu, z16)) << "fp8 linear into " << dtype_name(dt) << ", " << at;
        }
      }
      // gate/up + SiLU (stacked, as loaded), with and without the input norm, then down with its residual add.
      {
        const auto pc = split(gu.cpu, {I, I}), p8 = split(gu.fp8, {I, I}), p16 = split(gu.gpu16, {I, I});
        Tensor s32 = cpu.empty({T, 2 * I}, DType::F32), ac = cpu.empty({T, I}, DType::F32);
        Tensor sg = gpu->empty({T, 2 * I}, DType::F32), a8 = gpu->empty({T, I}, dt), a16 = gpu->empty({T, I}, dt);
        cpu.gate_up_silu(x.first, pc[0], pc[1], s32, ac);
        int64_t before = gpu->dequantized_matrices();
        gpu->gate_up_silu(x.second, p8[0], p8[1], sg, a8);
        EXPECT_EQ(gpu->dequantized_matrices() - before, expansions) << "gate_up_silu, " << at;
        gpu->gate_up_silu(x.second, p16[0], p16[1], sg, a16);
        expect_close(ac, a8, ("fp8 gate_up_silu, " + at).c_str(), tol());
        if (T > 4) {
          EXPECT_EQ(get(*gpu, a8), get(*gpu, a16)) << "fp8 gate_up_silu, " << at;
        }
        auto res = both(randn(T * H, g), {T, H}, DType::F32), nw = both(randn(H, g), {H}, dt);
        Tensor hc = cpu.empty({T, H}, DType::F32), hg = gpu->empty({T, H}, dt);
        cpu.norm_gate_up_silu(res.first, {nw.first, 1e-6f, hc}, pc[0], pc[1], s32, ac);
        before = gpu->dequantized_matrices();
        gpu->norm_gate_up_silu(res.second, {nw.second, 1e-6f, hg}, p8[0], p8[1], sg, a8);
        EXPECT_EQ(gpu->dequantized_matrices() - before, expansions) << "norm_gate_up_silu, " << at;
        gpu->norm_gate_up_silu(res.second, {nw.second, 1e-6f, hg}, p16[0], p16[1], sg, a16);
        expect_close(ac, a8, ("fp8 norm_gate_up_silu, " + at).c_str(), tol());
        if (T > 4) {
          EXPECT_EQ(get(*gpu, a8), get(*gpu, a16)) << "fp8 norm_gate_up_silu, " << at;
        }
        Tensor r16 = gpu->upload(get(*gpu, res.second).data(), {T, H}, DType::F32), unused;
        cpu.linear_residual(ac, wo.cpu, hc, res.first);
        before = gpu->dequantized_matrices();
        gpu->linear_residual(a16, wo.fp8, unused, res.second);
        EXPECT_EQ(gpu->dequantized_matrices() - before, expansions) << "linear_residual, " << at;
        gpu->linear_residual(a16, wo.gpu16, unused, r16);
        expect_close(res.first, res.second, ("fp8 linear_residual, " + at).c_str(), tol());
        if (T > 4) {
          EXPECT_EQ(get(*gpu, res.second), get(*gpu, r16)) << "fp8 linear_residual, " << at;
        }
      }
      // The attention block's input: norm, stacked q/k/v (q and k biases), RoPE, the cache write.
      {
        const auto pc = split(wqkv.cpu, {Hq * D, Hk * D, Hk * D}), p8 = split(wqkv.fp8, {Hq * D, Hk * D, Hk * D});
        const auto p16 = split(wqkv.gpu16, {Hq * D, Hk * D, Hk * D});
        auto res = both(randn(T * H, g), {T, H}, DType::F32), nw = both(randn(H, g), {H}, dt);
        auto bq = both(randn(Hq * D, g), {Hq * D}, DType::F32), bk = both(randn(Hk * D, g), {Hk * D}, DType::F32);
        Tensor hc = cpu.empty({T, H}, DType::F32), hg = gpu->empty({T, H}, dt);
        auto kc = both(std::vector<float>(blocks * bs * Hk * D, 0.f), {blocks, bs, Hk, D}, dt);
        auto vc = both(std::vector<float>(blocks * bs * Hk * D, 0.f), {blocks, bs, Hk, D}, dt);
        Tensor k16c = gpu->upload(std::vector<float>(blocks * bs * Hk * D, 0.f).data(), {blocks, bs, Hk, D}, dt);
        Tensor v16c = gpu->upload(std::vector<float>(blocks * bs * Hk * D, 0.f).data(), {blocks, bs, Hk, D}, dt);
        Tensor qc = cpu.empty({T, Hq * D}, DType::F32), kc32 = cpu.empty({T, Hk * D}, DType::F32), vc32 = cpu.empty({T, Hk * D}, DType::F32);
        Tensor q8 = gpu->empty({T, Hq * D}, DType::F32), q16 = gpu->empty({T, Hq * D}, DType::F32);
        Tensor kg = gpu->empty({T, Hk * D}, DType::F32), vg = gpu->empty({T, Hk * D}, DType::F32);
        cpu.norm_qkv_rope_kv_write(res.first, {nw.first, 1e-6f, hc}, pc[0], &bq.first, qc, pc[1], &bk.first, kc32, pc[2],
                                   nullptr, vc32, nullptr, fc, D, kc.first, vc.first);
        const int64_t before = gpu->dequantized_matrices();
        gpu->norm_qkv_rope_kv_write(res.second, {nw.second, 1e-6f, hg}, p8[0], &bq.second, q8, p8[1], &bk.second, kg, p8[2],
                                    nullptr, vg, nullptr, fg, D, kc.second, vc.second);
        EXPECT_EQ(gpu->dequantized_matrices() - before, qkv_expansions) << "norm_qkv_rope_kv_write, " << at;
        gpu->norm_qkv_rope_kv_write(res.second, {nw.second, 1e-6f, hg}, p16[0], &bq.second, q16, p16[1], &bk.second, kg,
                                    p16[2], nullptr, vg, nullptr, fg, D, k16c, v16c);
        const std::string what = "fp8 norm_qkv_rope_kv_write, " + at;
        expect_close(qc, q8, (what + ": queries").c_str(), tol());
        expect_close(kc.first, kc.second, (what + ": key cache").c_str(), tol());
        expect_close(vc.first, vc.second, (what + ": value cache").c_str(), tol());
        if (T > 4) {
          EXPECT_EQ(get(*gpu, q8), get(*gpu, q16)) << what;
          EXPECT_EQ(get(*gpu, kc.second), get(*gpu, k16c)) << what;
          EXPECT_EQ(get(*gpu, vc.second), get(*gpu, v16c)) << what;
        }
        // Without biases (Llama's projections): the skinny launch over the stacked codes from
        // skinny_fp8_min_tokens to 16 tokens (the norm inside it for up to 4), the fused GEMV below that.
        auto kn = both(std::vector<float>(blocks * bs * Hk * D, 0.f), {blocks, bs, Hk, D}, dt);
        auto vn = both(std::vector<float>(blocks * bs * Hk * D, 0.f), {blocks, bs, Hk, D}, dt);
        cpu.norm_qkv_rope_kv_write(res.first, {nw.first, 1e-6f, hc}, pc[0], nullptr, qc, pc[1], nullptr, kc32, pc[2],
                                   nullptr, vc32, nullptr, fc, D, kn.first, vn.first);
        const int64_t before_nb = gpu->dequantized_matrices();
        gpu->norm_qkv_rope_kv_write(res.second, {nw.second, 1e-6f, hg}, p8[0], nullptr, q8, p8[1], nullptr, kg, p8[2],
                                    nullptr, vg, nullptr, fg, D, kn.second, vn.second);
        EXPECT_EQ(gpu->dequantized_matrices() - before_nb, T <= 16 ? 0 : 1) << "norm_qkv_rope_kv_write without biases, " << at;
        const std::string what_nb = "fp8 norm_qkv_rope_kv_write without biases, " + at;
        expect_close(qc, q8, (what_nb + ": queries").c_str(), tol());
        expect_close(kn.first, kn.second, (what_nb + ": key cache").c_str(), tol());
        expect_close(vn.first, vn.second, (what_nb + ": value cache").c_str(), tol());
      }
    }
    gpu->set_skinny_fp8_min_tokens(default_min);
  }
  // q/k/v of 3 and 4 tokens whose rows are too long for the fused kernel's shared memory (a hidden size of
  // 5,120: (4 + 1) x 5,120 16-bit values are past its 48 KB): rmsnorm, then the GEMVs or the skinny launch
  // over the codes, at every boundary; no expansion of the matrix (a whole 16-bit copy every step).
  {
    const int64_t HL = 5120, hq = 2, hk = 1, rows = (hq + 2 * hk) * D;
    const Mat wl = mat(randn(rows * HL, g, 0.02f), rows, HL);
    const auto pc = split(wl.cpu, {hq * D, hk * D, hk * D}), p8 = split(wl.fp8, {hq * D, hk * D, hk * D});
    for (int64_t min_tokens : {int64_t(5), default_min, int64_t(1)}) {
      gpu->set_skinny_fp8_min_tokens(min_tokens);
      for (const StepMeta& m : {make_meta(bs, {1, 1, 1}, {20, 0, 9}), make_meta(bs, {1, 1, 1, 1}, {3, 7, 11, 2})}) {
        const int64_t T = m.num_tokens();
        const std::string at = std::to_string(T) + " tokens of 5,120 (skinny from " + std::to_string(min_tokens) + ")";
        cpu.begin_step(m);
        gpu->begin_step(m);
        auto res = both(randn(T * HL, g), {T, HL}, DType::F32), nw = both(randn(HL, g), {HL}, dt);
        Tensor hc = cpu.empty({T, HL}, DType::F32), hg = gpu->empty({T, HL}, dt);
        auto kc = both(std::vector<float>(blocks * bs * hk * D, 0.f), {blocks, bs, hk, D}, dt);
        auto vc = both(std::vector<float>(blocks * bs * hk * D, 0.f), {blocks, bs, hk, D}, dt);
        Tensor qc = cpu.empty({T, hq * D}, DType::F32), kc32 = cpu.empty({T, hk * D}, DType::F32), vc32 = cpu.empty({T, hk * D}, DType::F32);
        Tensor q8 = gpu->empty({T, hq * D}, DType::F32), kg = gpu->empty({T, hk * D}, DType::F32), vg = gpu->empty({T, hk * D}, DType::F32);
        cpu.norm_qkv_rope_kv_write(res.first, {nw.first, 1e-6f, hc}, pc[0], nullptr, qc, pc[1], nullptr, kc32, pc[2], nullptr,
                                   vc32, nullptr, fc, D, kc.first, vc.first);
        const int64_t before = gpu->dequantized_matrices();
        gpu->norm_qkv_rope_kv_write(res.second, {nw.second, 1e-6f, hg}, p8[0], nullptr, q8, p8[1], nullptr, kg, p8[2], nullptr,
                                    vg, nullptr, fg, D, kc.second, vc.second);
        EXPECT_EQ(gpu->dequantized_matrices() - before, 0) << "norm_qkv_rope_kv_write, " << at;
        expect_close(qc, q8, ("fp8 norm_qkv_rope_kv_write, queries, " + at).c_str(), tol());
        expect_close(kc.first, kc.second, ("fp8 norm_qkv_rope_kv_write, key cache, " + at).c_str(), tol());
        expect_close(vc.first, vc.second, ("fp8 norm_qkv_rope_kv_write, value cache, " + at).c_str(), tol());
      }
    }
    gpu->set_skinny_fp8_min_tokens(default_min);
  }
}

// The FP8 GEMVs deal their rows to the blocks round-robin (gemv_rows): more rows than resident warps
// (several rows a warp: 7,000 and 9,000 against about 3,200 warps at three blocks an SM) and fewer (1,000:
// the block-major grid rounded up to a whole wave of SMs, the last warps without a row), 1-4 tokens,
// against the CPU on the same quantized values.
TEST_P(CudaOps, Fp8GemvRowsDealtRoundRobinMatchTheCpu) {
  const DType dt = GetParam();
  if (dt == DType::F32) GTEST_SKIP() << "FP8 weights need 16-bit activations";
  std::mt19937 g(29);
  const int64_t default_min = gpu->skinny_fp8_min_tokens();
  gpu->set_skinny_fp8_min_tokens(5);  // (1-4 tokens on the GEMVs)
  const int64_t K = 160;
  for (int64_t N : {int64_t(1000), int64_t(7000), int64_t(9000)}) {
    const auto wv = randn(2 * N * K, g, 0.1f);
    const Tensor wc = cpu.upload_fp8(wv.data(), {2 * N, K}, DType::F32, false);
    const Tensor w8 = gpu->upload_fp8(wv.data(), {2 * N, K}, dt, false);
    const Tensor gc = rows_view(wc, 0, N), uc = rows_view(wc, N, N), g8 = rows_view(w8, 0, N), u8 = rows_view(w8, N, N);
    auto bias = both(randn(N, g), {N}, DType::F32);
    for (int64_t T = 1; T <= 4; ++T) {
      const std::string at = "N = " + std::to_string(N) + ", T = " + std::to_string(T);
      auto x = both(randn(T * K, g), {T, K}, dt);
      Tensor c = cpu.empty({T, N}, DType::F32), y = gpu->empty({T, N}, DType::F32);
      cpu.linear(x.first, gc, &bias.first, c);
      gpu->linear(x.second, g8, &bias.second, y);
      expect_close(c, y, ("fp8 linear with bias, " + at).c_str(), tol());
      auto res = both(randn(T * N, g), {T, N}, DType::F32);
      cpu.linear_residual(x.first, gc, c, res.first);
      gpu->linear_residual(x.second, g8, y, res.second);
      expect_close(res.first, res.second, ("fp8 linear_residual, " + at).c_str(), tol());
      Tensor gu = cpu.empty({T, 2 * N}, DType::F32), act = cpu.empty({T, N}, DType::F32);
      Tensor gug = gpu->empty({T, 2 * N}, DType::F32), actg = gpu->empty({T, N}, dt);
      cpu.gate_up_silu(x.first, gc, uc, gu, act);
      gpu->gate_up_silu(x.second, g8, u8, gug, actg);
      expect_close(act, actg, ("fp8 gate_up_silu, " + at).c_str(), tol());
    }
  }
  gpu->set_skinny_fp8_min_tokens(default_min);
}

// FP8 GEMMs (more than 16 tokens over FP8 matrices): the activations quantized per token (the weights'
// rule: a power-of-two scale per row) and cuBLASLt's E4M3 x E4M3 with both scale vectors give the CPU
// reference over the quantized weights and quantized activations within 2e-4 (float32 sums in another
// order, and the tensor cores' own accumulation) (into the activation type; adding into a float32
// residual; stacked gate/up with SiLU), one FP8 GEMM per op and no expansion; a float32 bias (which
// cuBLASLt's FP8 GEMMs do not take) expands the matrix instead, activations unquantized; prepare_gemms
// readies them too.
TEST_P(CudaOps, Fp8GemmsMatchQuantizedActivations) {
  const DType dt = GetParam();
  if (dt == DType::F32) GTEST_SKIP() << "FP8 weights need 16-bit activations";
  std::mt19937 g(23);
  gpu->set_fp8_gemm(true);
  const int64_t K = 256, N = 320, I = 160;
  const auto wv = randn(N * K, g, 0.1f), guv = randn(2 * I * K, g, 0.1f), ov = randn(K * N, g, 0.1f);
  const Tensor wc = cpu.upload_fp8(wv.data(), {N, K}, DType::F32, false), w8 = gpu->upload_fp8(wv.data(), {N, K}, dt, false);
  const Tensor guc = cpu.upload_fp8(guv.data(), {2 * I, K}, DType::F32, false), gu8 = gpu->upload_fp8(guv.data(), {2 * I, K}, dt, false);
  const Tensor oc = cpu.upload_fp8(ov.data(), {K, N}, DType::F32, false), o8 = gpu->upload_fp8(ov.data(), {K, N}, dt, false);
  auto b = both(randn(N, g), {N}, DType::F32);
  // The activations as the GPU quantizes them, on the host: x's 16-bit values, each row's scale, E4M3.
  auto quantized = [&](const Tensor& xg, int64_t rows, int64_t cols) {
    auto v = get(*gpu, xg);
    for (int64_t r = 0; r < rows; ++r) {
      float amax = 0.f;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(v[r * cols + c]));
      const int e = fp8_scale_exponent(amax);
      for (int64_t c = 0; c < cols; ++c) v[r * cols + c] = e4m3_to_f32(fp8_quantize(v[r * cols + c], e)) * fp8_pow2(e);
    }
    return cpu.upload(v.data(), {rows, cols}, DType::F32);
  };
  for (int64_t T : {17, 21, 64, 300}) {
    const std::string at = std::to_string(T) + " tokens";
    const auto xv = randn(T * K, g);
    const Tensor xg = gpu->upload(xv.data(), {T, K}, dt), xq = quantized(xg, T, K);
    Tensor c = cpu.empty({T, N}, DType::F32), y = gpu->empty({T, N}, DType::F32), z = gpu->empty({T, N}, dt);
    const int64_t before = gpu->fp8_gemms(), expanded = gpu->dequantized_matrices();
    const auto xr = get(*gpu, xg);  // (the activations as the GPU holds them: 16-bit values)
    cpu.linear(cpu.upload(xr.data(), {T, K}, DType::F32), wc, &b.first, c);
    gpu->linear(xg, w8, &b.second, y);
    expect_close(c, y, ("expanded FP8 matrix with a float32 bias, " + at).c_str(), 2e-4);
    EXPECT_EQ(gpu->fp8_gemms() - before, 0) << at;
    EXPECT_EQ(gpu->dequantized_matrices() - expanded, 1) << at;
    cpu.linear(xq, wc, nullptr, c);
    gpu->linear(xg, w8, nullptr, z);
    expect_close(c, z, ("FP8 GEMM into the activation type, " + at).c_str(), 1e-2);
    // The residual form: x += a . o^T (beta 1 into float32).
    const auto av = randn(T * N, g);
    const Tensor ag = gpu->upload(av.data(), {T, N}, dt), aq = quantized(ag, T, N);
    auto res = both(randn(T * K, g), {T, K}, DType::F32);
    Tensor unused = cpu.empty({T, K}, DType::F32), ug;
    cpu.linear_residual(aq, oc, unused, res.first);
    gpu->linear_residual(ag, o8, ug, res.second);
    expect_close(res.first, res.second, ("FP8 GEMM adding into the residual stream, " + at).c_str(), 2e-4);
    // Stacked gate/up with SiLU-and-multiply.
    Tensor s32 = cpu.empty({T, 2 * I}, DType::F32), actc = cpu.empty({T, I}, DType::F32);
    Tensor sg = gpu->empty({T, 2 * I}, DType::F32), actg = gpu->empty({T, I}, dt);
    cpu.gate_up_silu(xq, rows_view(guc, 0, I), rows_view(guc, I, I), s32, actc);
    gpu->gate_up_silu(xg, rows_view(gu8, 0, I), rows_view(gu8, I, I), sg, actg);
    expect_close(actc, actg, ("FP8 GEMM gate/up + SiLU, " + at).c_str(), 1e-2);
    EXPECT_EQ(gpu->fp8_gemms() - before, 3) << at;
    EXPECT_EQ(gpu->dequantized_matrices() - expanded, 1) << at;
  }
  // prepare_gemms runs the FP8 shapes too (their scratch scales included), then they need no heuristic.
  EXPECT_GT(gpu->prepare_gemms(), 0);
  const int64_t asked = gpu->gemm_heuristic_calls();
  const auto xv = randn(40 * K, g);
  const Tensor xg = gpu->upload(xv.data(), {40, K}, dt);
  Tensor y = gpu->empty({40, N}, DType::F32), z = gpu->empty({40, N}, dt);
  const int64_t ran = gpu->fp8_gemms();
  gpu->linear(xg, w8, nullptr, z);
  gpu->linear(xg, w8, &b.second, y);
  EXPECT_EQ(gpu->fp8_gemms() - ran, 1);
  EXPECT_EQ(gpu->gemm_heuristic_calls(), asked);
}

// prepare_gemms readies every bucket of each weight shape seen up to its largest count: later GEMMs at
// new counts up to there ask cuBLASLt's heuristic no more (and still match the CPU reference); a count
// past it does.
TEST_P(CudaOps, PreparedGemmsNeedNoHeuristic) {
  std::mt19937 g(10);
  const DType dt = GetParam();
  const int64_t K = 72, N = 200;
  auto w = both(randn(N * K, g, 0.1f), {N, K}, dt), b = both(randn(N, g), {N}, DType::F32);
  auto run = [&](int64_t T) {
    auto x = both(randn(T * K, g), {T, K}, dt);
    Tensor c = cpu.empty({T, N}, DType::F32), y = gpu->empty({T, N}, DType::F32);
    cpu.linear(x.first, w.first, &b.first, c);
    gpu->linear(x.second, w.second, &b.second, y);
    expect_close(c, y, ("linear at T = " + std::to_string(T)).c_str(), dt == DType::F32 ? 1e-5 : 1e-2);
  };
  run(700);  // bucket 704
  EXPECT_EQ(gpu->prepare_gemms(), (256 - 5 + 1) + (704 - 256) / 64);
  const int64_t asked = gpu->gemm_heuristic_calls();
  for (int64_t T : {5, 6, 100, 256, 257, 300, 650, 704}) run(T);
  EXPECT_EQ(gpu->gemm_heuristic_calls(), asked);
  run(705);
  EXPECT_EQ(gpu->gemm_heuristic_calls(), asked + 1);
}

// The sampler's draw on the GPU picks exactly the CPU kernel's tokens, greedy and with Gumbel noise,
// with penalty edits and top-k / top-p / min-p filters, on a vocabulary shard (token offset) with
// padded rows. Many short rows (a block each) and a few vocabulary-sized rows (each split over blocks
// and merged, with a tie across parts and a row where every token is filtered out).
// Parameters (rows n, vocabulary shard L, row stride); both backends, and random logits per test.
class CudaDraw : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
    gpu_ = std::make_unique<CudaBackend>(0, DType::BF16);
  }
  std::vector<float> random_logits(uint32_t seed) const {
    std::mt19937 g(seed);
    return randn(n * stride, g, 3.f);
  }
  const int64_t n = std::get<0>(GetParam()), L = std::get<1>(GetParam()), stride = std::get<2>(GetParam());
  const int64_t offset = 20000;  // the shard's first token
  std::unique_ptr<CudaBackend> gpu_;
  CpuBackend cpu;
};

TEST_P(CudaDraw, SameTokensAsTheCpuKernel) {
  CudaBackend& gpu = *gpu_;
  std::vector<float> logits = random_logits(11);
  const int64_t tie_row = n > 5 ? 5 : 0;
  for (int64_t k = 0; k < 40; ++k) logits[tie_row * stride + k] = 30.f;  // ties: the smaller token wins
  if (n <= 5) {
    logits[tie_row * stride + L - 1] = 30.f;  // the same score in the row's last part
    for (int64_t k = 0; k < L; ++k) logits[(n - 1) * stride + k] = -INFINITY;
    // A flat row whose filters keep more values than shared memory holds (top-k 20,000 and top-p 0.95
    // below), so the GPU's filter bisects over the whole row and draw_rows_k draws it.
    for (int64_t k = 0; k < L; ++k) logits[1 * stride + k] *= 0.02f;
    // A row whose largest value stands apart (31 at temperature 0.5, the rest of spread 6): with top-k
    // 2,000 the power-of-two rungs below it go from under 1,000 values (31 - 16) to some 86,000
    // (31 - 32), more than the GPU's candidate slots, so its filter takes a finer ladder in between.
    logits[2 * stride + 7] = 15.5f;
  }
  std::vector<RowDraw> rows(n);
  std::vector<LogitEdit> edits;
  for (int64_t i = 0; i < n; ++i) {
    RowDraw& r = rows[i];
    r.greedy = (i % 3 == 0 || i == tie_row) && !(n <= 5 && i == n - 1);  // the all -inf row is filtered
    r.inv_temperature = 1.f / (0.3f + 0.1f * static_cast<float>(i % 7));
    r.seed = 1000 + i;
    r.position = 17 + i;
    if (!r.greedy) {
      if (i % 4 == 1) r.top_k = static_cast<int32_t>(3 + i);
      if (i % 4 == 2) r.top_p = 0.5 + 0.05 * static_cast<double>(i % 7);
      if (i % 4 == 3) r.top_k = 100, r.top_p = 0.9, r.log_min_p = std::log(0.05f);
      if (i % 4 == 0) r.log_min_p = std::log(0.2f);
      if (n <= 5 && i == 1) r.top_k = 20000, r.top_p = 0.95;
      if (n <= 5 && i == 2) r.top_k = 2000, r.top_p = 1.0;  // the outlier row above
    }
    for (int e = 0; e < 3; ++e) {  // penalties away from the tie columns
      LogitEdit le;
      le.row = static_cast<int32_t>(i);
      le.col = static_cast<int32_t>(100 + (i * 131 + e * 977) % (L - 200));
      if (e == 0) le.rep = 1.3f, le.bias = 0.5f;  // logit_bias first, then the repetition penalty
      if (e == 1) le.sub = 0.75f, le.bias = -1.25f;
      if (e == 2) le.mask = 1;
      edits.push_back(le);
    }
  }
  // The filters are live: each filtered row keeps fewer tokens than all of its finite ones.
  for (int64_t i = 0; i + (n <= 5 ? 1 : 0) < n; ++i)
    if (rows[i].filtered()) {
      EXPECT_GT(cpu::draw_keep_threshold(&logits[i * stride], L, rows[i]), -INFINITY) << "row " << i;
    }
  Tensor lc = cpu.upload(logits.data(), {n, stride}, DType::F32), lg = gpu.upload(logits.data(), {n, stride}, DType::F32);
  std::vector<float> bc(n), bg(n), kc(n), kg(n);
  std::vector<int32_t> ic(n), ig(n);
  cpu.draw_rows(lc, L, offset, rows, edits, {}, bc.data(), ic.data(), kc.data());
  gpu.draw_rows(lg, L, offset, rows, edits, {}, bg.data(), ig.data(), kg.data());
  EXPECT_EQ(ic, ig);
  // The keep thresholds (processed log-probabilities) are the host's, those drawn inside the filter
  // kernel included; -inf for greedy rows.
  EXPECT_EQ(kc, kg);
  for (int64_t i = 0; i < n; ++i)
    if (!rows[i].filtered()) {
      EXPECT_EQ(kg[i], -INFINITY) << "row " << i;
    }
  EXPECT_EQ(ic[tie_row], offset);
  if (n <= 5) {
    EXPECT_EQ(ig[n - 1], INT32_MAX);
  }
  for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(bc[i], bg[i]) << "row " << i;
  // The edits were applied on the device as on the host.
  std::vector<float> ec(n * stride), eg(n * stride);
  cpu.download(lc, ec.data());
  gpu.download(lg, eg.data());
  EXPECT_EQ(ec, eg);
}

// Guided decoding's allowed-token bitmaps (kernels/draw.h RowMasks) on some rows, after an edit: the
// masked logits and the tokens drawn are the CPU kernel's, and every drawn token of a masked row is one
// its bitmap allows.
TEST_P(CudaDraw, MasksAsTheCpuKernel) {
  CudaBackend& gpu = *gpu_;
  std::vector<float> logits = random_logits(23);
  std::vector<RowDraw> rows(n);
  std::vector<LogitEdit> edits;
  RowMasks masks;
  const int64_t words = mask_words(L);
  std::mt19937_64 g(5);
  for (int64_t i = 0; i < n; ++i) {
    rows[i].greedy = i % 2 == 0;
    rows[i].inv_temperature = 1.25f, rows[i].seed = 7 + i, rows[i].position = 3;
    if (i % 4 == 1) rows[i].top_k = 40;
    LogitEdit e;
    e.row = static_cast<int32_t>(i), e.col = static_cast<int32_t>((i * 37) % L), e.bias = 2.f;
    edits.push_back(e);
    if (i % 3 == 2) continue;  // (unmasked rows between masked ones)
    masks.rows.push_back(static_cast<int32_t>(i));
    for (int64_t w = 0; w < words; ++w) masks.bits.push_back(g() & g());  // about a quarter allowed
  }
  Tensor lc = cpu.upload(logits.data(), {n, stride}, DType::F32), lg = gpu.upload(logits.data(), {n, stride}, DType::F32);
  std::vector<float> bc(n), bg(n);
  std::vector<int32_t> ic(n), ig(n);
  cpu.draw_rows(lc, L, offset, rows, edits, masks, bc.data(), ic.data(), nullptr);
  gpu.draw_rows(lg, L, offset, rows, edits, masks, bg.data(), ig.data(), nullptr);
  EXPECT_EQ(ic, ig);
  for (size_t j = 0; j < masks.rows.size(); ++j)
    EXPECT_TRUE(mask_allows(masks.bits.data() + j * words, ig[masks.rows[j]] - offset)) << "row " << masks.rows[j];
  std::vector<float> ec(n * stride), eg(n * stride);
  cpu.download(lc, ec.data());
  gpu.download(lg, eg.data());
  EXPECT_EQ(ec, eg);
  int64_t masked = 0;
  for (float x : eg) masked += x == -INFINITY;
  EXPECT_GT(masked, L / 2);  // (the masks were applied)
}

// Log-probability statistics of a subset of rows in another order: maxima, chosen logits and the top
// lists (ties to the smaller token, -inf padding on an all -inf row) exactly the CPU kernel's, sums
// within float rounding of a different summation order.
TEST_P(CudaDraw, LogprobStatisticsAsTheCpuKernel) {
  CudaBackend& gpu = *gpu_;
  std::vector<float> logits = random_logits(12);
  for (int64_t k = 0; k < 40; ++k) logits[1 * stride + 3 * k] = 30.f;  // ties in row 1
  if (n <= 5)
    for (int64_t k = 0; k < L; ++k) logits[(n - 1) * stride + k] = -INFINITY;
  std::vector<int32_t> rows, chosen;
  for (int64_t i = n - 1; i >= 0; i -= 2) {
    rows.push_back(static_cast<int32_t>(i));
    chosen.push_back(static_cast<int32_t>(rows.size() % 3 == 0 ? offset - 1 : offset + (i * 977) % L));
  }
  rows.push_back(1);
  chosen.push_back(static_cast<int32_t>(offset + 3));
  const auto m = rows.size();
  // The same over views too (processed log-probabilities): scaled, cut at a value of the row, one row
  // down to a single token.
  std::vector<LogprobView> views(m);
  for (size_t j = 0; j < m; ++j) {
    const float* row = &logits[rows[j] * stride];
    views[j].scale = 1.f / (0.5f + 0.25f * static_cast<float>(j % 4));
    if (j % 3 != 2) views[j].floor = row[(j * 389) % L] * views[j].scale;
    if (j == 1) views[j].only = chosen[j];
  }
  for (const LogprobView* v : std::initializer_list<const LogprobView*>{nullptr, views.data()})
    for (int K : {0, 1, 5, kMaxTopLogprobs}) {
      const char* what = v ? "viewed" : "logits";
      Tensor lc = cpu.upload(logits.data(), {n, stride}, DType::F32), lg = gpu.upload(logits.data(), {n, stride}, DType::F32);
      std::vector<float> sc(3 * m), sg(3 * m), vc(m * K), vg(m * K);
      std::vector<int32_t> ic(m * K), ig(m * K);
      cpu.row_logprobs(lc, L, offset, rows, chosen, K, sc.data(), vc.data(), ic.data(), v);
      gpu.row_logprobs(lg, L, offset, rows, chosen, K, sg.data(), vg.data(), ig.data(), v);
      for (size_t j = 0; j < m; ++j) {
        EXPECT_EQ(sc[3 * j], sg[3 * j]) << what << " max, row " << rows[j] << " K " << K;
        EXPECT_NEAR(sc[3 * j + 1], sg[3 * j + 1], 1e-5 * sc[3 * j + 1]) << what << " sum, row " << rows[j] << " K " << K;
        EXPECT_EQ(sc[3 * j + 2], sg[3 * j + 2]) << what << " chosen, row " << rows[j] << " K " << K;
      }
      EXPECT_EQ(vc, vg) << what << " K " << K;
      EXPECT_EQ(ic, ig) << what << " K " << K;
      if (!v && K > 1) {  // row 1 (the last entry): its tied 30s, smallest tokens first
        EXPECT_EQ(ig[(m - 1) * K], offset);
        EXPECT_EQ(ig[(m - 1) * K + 1], offset + 3);
      }
    }
}

// Ranks (prompt_logprobs): the counts of logits at or above a threshold per row, exactly the CPU
// kernel's, with thresholds at a row's own values (ties at 30 in row 1, -inf on the all -inf row) and
// past its largest.
TEST_P(CudaDraw, CountsAtLeastAsTheCpuKernel) {
  CudaBackend& gpu = *gpu_;
  std::vector<float> logits = random_logits(13);
  for (int64_t k = 0; k < 40; ++k) logits[1 * stride + 3 * k] = 30.f;
  if (n <= 5)
    for (int64_t k = 0; k < L; ++k) logits[(n - 1) * stride + k] = -INFINITY;
  std::vector<int32_t> rows;
  std::vector<float> thresholds;
  for (int64_t i = n - 1; i >= 0; --i) {
    rows.push_back(static_cast<int32_t>(i));
    thresholds.push_back(logits[i * stride + (i * 977) % L]);
  }
  rows.push_back(1), thresholds.push_back(30.f);
  rows.push_back(0), thresholds.push_back(1e9f);
  Tensor lc = cpu.upload(logits.data(), {n, stride}, DType::F32), lg = gpu.upload(logits.data(), {n, stride}, DType::F32);
  std::vector<int32_t> cc(rows.size()), cg(rows.size());
  cpu.count_at_least(lc, L, rows, thresholds, cc.data());
  gpu.count_at_least(lg, L, rows, thresholds, cg.data());
  EXPECT_EQ(cc, cg);
  EXPECT_EQ(cg[rows.size() - 2], 40);
  EXPECT_EQ(cg.back(), 0);
  if (n <= 5) {
    EXPECT_EQ(cg[0], L);  // -inf >= -inf everywhere
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDraw,
                         ::testing::Values(std::make_tuple(int64_t{37}, int64_t{5003}, int64_t{5008}),
                                           std::make_tuple(int64_t{4}, int64_t{151936}, int64_t{151936}),
                                           // a row to a block over many chunks (row_logprobs' floor)
                                           std::make_tuple(int64_t{300}, int64_t{151936}, int64_t{151936})));
