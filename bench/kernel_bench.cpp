// Kernel benchmarks on one GPU against its roofline, timed with CUDA events (median of repeats; each
// kernel's time per call when 20 calls replay back to back in a CUDA graph, as decode steps run):
//  - the rooflines measured here: device-to-device copy bandwidth, and bf16 GEMM TFLOP/s of an
//    8192^3 cuBLASLt matmul (the best dense rate this stack reaches);
//  - GEMV-shaped GEMMs (one token; the decode step's weights, Qwen2.5-1.5B shapes) in GB/s of weights
//    read, against the copy bandwidth; the same shapes with 256 tokens in TFLOP/s;
//  - decode attention (one query per sequence over a paged bf16 KV cache) in GB/s of K/V read;
//  - prefill attention (one causal 2048-token sequence) in TFLOP/s against the GEMM peak;
//  - the host cost of a GEMM at a token count not seen before, and the GPU time of a layer's GEMMs
//    with the algorithm of the count's bucket against the heuristic's answer for the exact count;
//  - a chain of GEMVs of growing size (the fixed cost per kernel and the steady-state bandwidth), with
//    bf16 and with FP8 weights (quantization: fp8);
//  - a batch-1 decode layer (Qwen2.5-1.5B shape) op by op and whole, over 28 layers of distinct weights
//    (streaming from memory as in the model), in GB/s of weights and K/V read;
//  - the sampler's greedy draw over vocabulary-sized logits rows in GB/s.
//  - with --attention: decode attention over batch sizes and contexts, the tensor-core kernel with
//    blocks of 8 warps, of 4, and as the backend chooses, in GB/s of K/V read;
//  - with --attention-fp8: attention over an FP8 E4M3 cache (kv_cache_dtype fp8) against a bf16 one,
//    decode over batch sizes and contexts and prefill of one causal sequence (its fp8 blocks widened
//    tile by tile by the kernel, and once before it).
// Usage: kernel_bench [--quick | --layers | --layers-7b | --layers-3b | --lora | --attention | --attention-chunks | --attention-fp8 | --sampler | --boundary
//                      | --splitk | --skinny | --prefill | --fp8 | --few-tokens | --moe | --shrink-probe]
// (prints tables; exits 77 without a GPU; --layers: the rooflines and the step-layer tables alone;
// --layers-7b: the decode-layer tables at the Qwen2.5-7B shape (1-16 sequences), GEMVs of one size
// by row length, lm_head and the draw; --layers-3b: the decode-layer tables at the Qwen2.5-3B shape;
// --lora: the 1.5B decode layer of 1, 2 and 8 sequences with a rank-16 adapter on every projection, each
// op with its shrink, and the shrinks alone; --shrink-probe: the one-token q/k/v LoRA shrink with the norm
// inside and its parts, three launches each and no tables (for a profiler: ncu);
// --attention: the rooflines and the sweep; --attention-chunks: the sweep over least keys a split;
// --sampler: the rooflines and the draw and log-probability tables; --boundary: a kernel boundary's cost
// alone, bench/boundary_kernels.h; --splitk: the rooflines and cuBLASLt split-K at decode token counts;
// --skinny: the rooflines and the 5-32-token linear layers, skinny GEMMs against cuBLASLt; --prefill: the
// rooflines and prefill attention, the warpgroup-MMA kernel against the mma.sync one; --fp8: the
// rooflines, the GEMV chains and many-token linear layers with FP8 weights, expanded and as FP8 GEMMs;
// --few-tokens: the rooflines and 1-4-token linear layers over FP8 and bf16 weights, the GEMVs against the
// skinny kernels; --moe: the rooflines and a mixture-of-experts layer of 1-64 tokens at the Qwen3-30B-A3B
// shape, token-major and grouped by expert, against the floor of its distinct experts' bytes)
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iterator>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/moe_route.h"
#include "bench/boundary_kernels.h"
#include "kernels/cuda/ops.cuh"

using namespace llmserve;

namespace {

double median_ms(const std::function<void()>& fn, int reps = 20) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(a);
    fn();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Time per call of fn when `per` calls run back to back in one CUDA graph (as a decode step runs its
// kernels): median over replays. Launch latency on the host drops out; the GPU's own per-kernel cost
// stays.
double graph_ms(CudaBackend& be, const std::function<void()>& fn, int per = 20, int reps = 7) {
  fn();  // outside the capture: cuBLASLt chooses its algorithm
  be.graph_capture_begin();
  for (int i = 0; i < per; ++i) fn();
  const int id = be.graph_capture_end();
  return median_ms([&] { be.graph_replay(id); }, reps) / per;
}

Tensor random_tensor(CudaBackend& be, std::vector<int64_t> shape, DType dt, float scale = 0.05f) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  // Uniform in [-scale, scale) from a hash of the index (splitmix64), made on all cores: the 7B tables'
  // 13 GB of weights took a minute one value after another.
  std::vector<float> v(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = static_cast<uint64_t>(i) + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    v[static_cast<size_t>(i)] = scale * (static_cast<float>(z >> 40) * 0x1p-23f - 1.f);
  }
  return dt == DType::F8E4M3 ? be.upload_fp8(v.data(), shape, be.compute_dtype(), false) : be.upload(v.data(), shape, dt);
}

// A decode step's end over T rows: lm_head (w, the vocabulary's rows, through the backend's linear) and
// the greedy draw of every row, each alone and the two in turn (us, in graphs).
struct HeadTimes {
  double head_us, draw_us, both_us;
};
HeadTimes time_lm_head(CudaBackend& be, const Tensor& w, int64_t T) {
  const int64_t V = w.dim(0), H = w.dim(1);
  Tensor x = random_tensor(be, {T, H}, w.dtype), y = be.empty({T, V}, DType::F32);
  Tensor best = be.empty({T}, DType::F32), idx = be.empty({T}, DType::F32);
  std::vector<RowDraw> rows(static_cast<size_t>(T));
  for (auto& r : rows) r.greedy = true;
  void* dev_rows = nullptr;
  cudaMalloc(&dev_rows, sizeof(RowDraw) * rows.size());
  cudaMemcpy(dev_rows, rows.data(), sizeof(RowDraw) * rows.size(), cudaMemcpyHostToDevice);
  auto head = [&] { be.linear(x, w, nullptr, y); };
  auto draw = [&] {
    cuda::draw_rows(y.as<float>(), T, V, V, 0, static_cast<const RowDraw*>(dev_rows), nullptr, 0, false, best.as<float>(),
                    static_cast<int32_t*>(idx.data), be.stream());
  };
  const HeadTimes t{graph_ms(be, head) * 1e3, graph_ms(be, draw) * 1e3, graph_ms(be, [&] { head(); draw(); }) * 1e3};
  cudaFree(dev_rows);
  return t;
}

// A step of `seqs` sequences: each a run of `q_len` new tokens at the end of `ctx` cached ones.
StepMeta attention_step(int64_t seqs, int64_t q_len, int64_t ctx, int64_t bs) {
  StepMeta m;
  const int64_t blocks_per = (ctx + bs - 1) / bs;
  m.max_blocks = static_cast<int32_t>(blocks_per);
  m.q_start.push_back(0);
  for (int64_t s = 0; s < seqs; ++s) {
    for (int64_t i = 0; i < q_len; ++i) {
      const int64_t p = ctx - q_len + i;
      m.token_ids.push_back(0);
      m.positions.push_back(static_cast<int32_t>(p));
      m.slot_mapping.push_back(static_cast<int32_t>(s * blocks_per * bs + p));
    }
    m.q_start.push_back(m.q_start.back() + static_cast<int32_t>(q_len));
    for (int64_t b = 0; b < blocks_per; ++b) m.block_tables.push_back(static_cast<int32_t>(s * blocks_per + b));
  }
  return m;
}

// Decode attention (Qwen2.5-1.5B heads: 12 query, 2 KV, head_dim 128; bf16 cache in blocks of 16) for
// batch sizes and contexts, as a decode graph recorded for 4,096 positions runs it: each case over
// distinct caches (up to 28, as the layers of a step, so the rows come from memory, not the L2), with
// the kernel's blocks of 8 warps, of 4, and the backend's choice; GB/s of K/V read. With `chunks`, the
// backend's warps and splits of at least 128 / 256 (the default) / 512 / 1,024 / 4,096 keys instead.
void attention_sweep(CudaBackend& be, double copy_gbs, bool chunks) {
  const int64_t Hq = 12, Hk = 2, D = 128, bs = 16;
  const std::vector<int> variants = chunks ? std::vector<int>{128, 256, 512, 1024, 4096} : std::vector<int>{8, 4, 0};
  std::printf("%-34s", "decode attention (us, % of copy)");
  for (int v : variants) {
    char col[32];
    if (chunks) std::snprintf(col, sizeof col, "split >= %d keys", v);
    else std::snprintf(col, sizeof col, "%s", v == 8 ? "8 warps" : v == 4 ? "4 warps" : "chosen");
    std::printf(" %18s", col);
  }
  std::printf("\n");
  const std::vector<int64_t> batches = chunks ? std::vector<int64_t>{1, 8, 16, 64} : std::vector<int64_t>{1, 4, 16, 64, 128, 256};
  for (int64_t seqs : batches) {
    for (int64_t ctx : {160, 640, 2048}) {
      StepMeta m = attention_step(seqs, 1, ctx, bs);
      m.max_context = 4096;
      be.begin_step(m);
      const int64_t blocks = seqs * ((ctx + bs - 1) / bs);
      const double bytes = 2.0 * seqs * ctx * Hk * D * 2;
      const int64_t L = std::clamp<int64_t>(static_cast<int64_t>(4e9 / bytes), 2, 28);
      std::vector<Tensor> kcs, vcs;
      for (int64_t i = 0; i < L; ++i)
        for (auto* c : {&kcs, &vcs}) {
          c->push_back(be.empty({blocks, bs, Hk, D}, DType::BF16));
          cudaMemset(c->back().data, 0, c->back().bytes());
        }
      Tensor q = random_tensor(be, {seqs, Hq * D}, DType::BF16, 1.f), out = be.empty({seqs, Hq * D}, DType::BF16);
      char name[64];
      std::snprintf(name, sizeof name, "%lld seqs x %lld context", static_cast<long long>(seqs), static_cast<long long>(ctx));
      std::printf("%-34s", name);
      for (int v : variants) {
        if (chunks) cuda::set_decode_attention_min_chunk(v);
        else cuda::set_decode_attention_warps(v);
        const double ms = graph_ms(be, [&] {
          for (int64_t i = 0; i < L; ++i) be.attention(q, kcs[i], vcs[i], D, bs, 0.0884f, out);
        }, 1) / L;
        std::printf(" %9.2f (%4.0f%%)", ms * 1e3, 100 * bytes / (ms * 1e-3) / 1e9 / copy_gbs);
      }
      cuda::set_decode_attention_warps(0);
      cuda::set_decode_attention_min_chunk(0);
      std::printf("\n");
    }
  }
}

// kv_cache_dtype fp8: attention over caches of E4M3 codes (float32 queries, as the model gives them)
// against bf16 caches (the same heads and blocks as attention_sweep, the kernels the backend chooses):
// decode in us and % of the copy bandwidth for each cache's bytes (as a decode graph recorded for 4,096
// positions runs it, over distinct caches), and causal prefill of one sequence in TFLOP/s, its fp8 blocks
// widened tile by tile by the kernel's producer warps and widened once before it (reserve_kv_widening;
// decode steps never widen first, so their two fp8 columns time the same kernels).
void attention_fp8_table(CudaBackend& be, double copy_gbs, double peak_tflops) {
  const int64_t Hq = 12, Hk = 2, D = 128, bs = 16;
  std::printf("%-34s %22s %22s %22s %8s %8s\n", "attention (us, % of copy / peak)", "bf16 cache", "fp8, tile by tile",
              "fp8, widened first", "ratio", "ratio");
  be.reserve_kv_widening(256 * 2048, bs, Hk, D);
  struct Case {
    int64_t seqs, q_len, ctx;
  };
  std::vector<Case> cases;
  for (int64_t seqs : {1, 16, 64, 256})
    for (int64_t ctx : {640, 2048, 8192})
      if (seqs * ctx <= 256 * 2048) cases.push_back({seqs, 1, ctx});
  for (int64_t len : {2048, 8192}) cases.push_back({1, len, len});
  for (const Case& c : cases) {
    StepMeta m = attention_step(c.seqs, c.q_len, c.ctx, bs);
    if (c.q_len == 1) m.max_context = static_cast<int32_t>(std::max<int64_t>(4096, c.ctx));
    const int64_t T = m.num_tokens(), blocks = c.seqs * ((c.ctx + bs - 1) / bs);
    const double flops = 4.0 * Hq * D * (double(c.q_len) * (c.q_len + 1) / 2);
    char name[64];
    std::snprintf(name, sizeof name, c.q_len == 1 ? "decode: %lld seqs x %lld context" : "prefill: %lld x %lld causal tokens",
                  static_cast<long long>(c.seqs), static_cast<long long>(c.q_len == 1 ? c.ctx : c.q_len));
    std::printf("%-34s", name);
    double us[3];
    for (int v = 0; v < 3; ++v) {
      be.set_kv_widening(v == 2);
      be.begin_step(m);
      const DType ct = v ? DType::F8E4M3 : DType::BF16;
      const double bytes = 2.0 * c.seqs * c.ctx * Hk * D * dtype_size(ct);
      const int64_t L = c.q_len == 1 ? std::clamp<int64_t>(static_cast<int64_t>(4e9 / bytes), 2, 28) : 1;
      std::vector<Tensor> kcs, vcs;
      for (int64_t i = 0; i < L; ++i)
        for (auto* cc : {&kcs, &vcs}) {
          cc->push_back(be.empty({blocks, bs, Hk, D}, ct));
          cudaMemset(cc->back().data, 0x38, cc->back().bytes());  // (E4M3 1.0; a bf16 of about 4.4e-5)
        }
      Tensor q = random_tensor(be, {T, Hq * D}, v ? DType::F32 : DType::BF16, 1.f), out = be.empty({T, Hq * D}, DType::BF16);
      const double ms = graph_ms(be, [&] {
        for (int64_t i = 0; i < L; ++i) be.attention(q, kcs[i], vcs[i], D, bs, 0.0884f, out);
      }, c.q_len == 1 ? 1 : 3) / L;
      us[v] = ms * 1e3;
      const double pct = c.q_len == 1 ? 100 * bytes / (ms * 1e-3) / 1e9 / copy_gbs : 100 * flops / (ms * 1e-3) / 1e12 / peak_tflops;
      std::printf(" %13.2f (%4.0f%%)", us[v], pct);
    }
    std::printf(" %8.2f %8.2f\n", us[1] / us[0], us[2] / us[0]);
  }
  be.set_kv_widening(true);
}

// The sampler's tables: the draw and the log-probability reduction over vocabulary-sized rows.
// Split-K for the decode step's GEMMs at 64-256 tokens (few output tiles for the SMs when N is the
// hidden size): cuBLASLt's heuristic answer (its configuration printed) against the same algorithm with
// SPLITK_NUM = s and each reduction scheme it supports, and the heuristic's other answers. 28 distinct
// weights back to back in a graph (weights from memory as in the model), f32 output, beta = 0 and 1;
// us per GEMM.
void splitk_table(CudaBackend& be, double copy_gbs, double peak_tflops) {
  cublasLtHandle_t h;
  cublasLtCreate(&h);
  void* ws = nullptr;
  const size_t ws_bytes = 32u << 20;
  cudaMalloc(&ws, ws_bytes);
  struct Shape {
    const char* name;
    int64_t n, k;
  };
  const Shape shapes[] = {{"q/k/v 2048x1536", 2048, 1536}, {"o_proj 1536x1536", 1536, 1536},
                          {"gate/up 17920x1536", 17920, 1536}, {"down 1536x8960", 1536, 8960}};
  const int L = 28;
  auto cfg = [](const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoConfigAttributes_t attr) {
    uint32_t v = 0;
    size_t w = 0;
    cublasLtMatmulAlgoConfigGetAttribute(&a, attr, &v, sizeof v, &w);
    return v;
  };
  std::printf("\nsplit-K (us per GEMM, 28 distinct weights in a graph; floor = max(weights at copy, FLOPs at peak))\n");
  for (const Shape& sh : shapes) {
    std::vector<Tensor> ws_t;
    for (int i = 0; i < L; ++i) ws_t.push_back(random_tensor(be, {sh.n, sh.k}, DType::BF16));
    for (int64_t M : {64, 128, 256}) {
      Tensor x = random_tensor(be, {M, sh.k}, DType::BF16), y = be.empty({M, sh.n}, DType::F32);
      cudaMemset(y.data, 0, y.bytes());
      cublasLtMatmulDesc_t op;
      cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
      cublasLtMatrixLayout_t la, lb, lc;
      cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, sh.k, sh.n, sh.k);
      cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, sh.k, M, sh.k);
      cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, sh.n, M, sh.n);
      cublasLtMatmulPreference_t pref;
      cublasLtMatmulPreferenceCreate(&pref);
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes);
      cublasLtMatmulHeuristicResult_t res[8];
      int found = 0;
      cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, 8, res, &found);
      const double floor_us = std::max(2.0 * sh.n * sh.k / (copy_gbs * 1e9), 2.0 * M * sh.n * sh.k / (peak_tflops * 1e12)) * 1e6;
      auto time_algo = [&](const cublasLtMatmulAlgo_t& a, float beta) {
        cublasLtMatmulHeuristicResult_t chk{};
        if (cublasLtMatmulAlgoCheck(h, op, la, lb, lc, lc, &a, &chk) != CUBLAS_STATUS_SUCCESS || chk.workspaceSize > ws_bytes)
          return -1.0;
        const float alpha = 1.f;
        bool failed = false;
        const double ms = graph_ms(be, [&] {
          for (int i = 0; i < L; ++i)
            failed |= cublasLtMatmul(h, op, &alpha, ws_t[i].data, la, x.data, lb, &beta, y.data, lc, y.data, lc, &a, ws, ws_bytes,
                                     be.stream()) != CUBLAS_STATUS_SUCCESS;
        }, 1) / L;
        return failed ? -1.0 : ms * 1e3;
      };
      std::printf("%-20s M=%-4lld floor %5.1f us; heuristic #0 (algo %u tile %u stages %u cluster %u splitK %u red %u):", sh.name,
                  static_cast<long long>(M), floor_us, cfg(res[0].algo, CUBLASLT_ALGO_CONFIG_ID), cfg(res[0].algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                  cfg(res[0].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID), cfg(res[0].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
                  cfg(res[0].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM), cfg(res[0].algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME));
      std::printf(" %.2f / %.2f (beta 0 / 1)\n", time_algo(res[0].algo, 0.f), time_algo(res[0].algo, 1.f));
      std::printf("    heuristic #1-#%d:", found - 1);
      for (int r = 1; r < found; ++r)
        std::printf(" %.2f(s%u)", time_algo(res[r].algo, 0.f), cfg(res[r].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM));
      std::printf("\n");
      int32_t splitk_ok = 0;
      uint32_t schemes = 0;
      size_t w = 0;
      cublasLtMatmulAlgoCapGetAttribute(&res[0].algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitk_ok, sizeof splitk_ok, &w);
      cublasLtMatmulAlgoCapGetAttribute(&res[0].algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes, &w);
      std::printf("    #0 with split-K (support %d, schemes mask %u):", splitk_ok, schemes);
      for (uint32_t scheme : {1u, 2u, 4u}) {
        if (!(schemes & scheme)) continue;
        for (int32_t sk : {2, 3, 4, 6, 8}) {
          cublasLtMatmulAlgo_t a = res[0].algo;
          cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &sk, sizeof sk);
          cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme);
          const double t0 = time_algo(a, 0.f);
          std::printf(" r%u/s%d %.2f", scheme, sk, t0);
          if (sk == 4 && t0 > 0) std::printf(" (beta 1: %.2f)", time_algo(a, 1.f));
        }
      }
      std::printf("\n");
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
    }
  }
  cudaFree(ws);
  cublasLtDestroy(h);
}

// Linear layers at 5-16 tokens (decode steps of a few sequences): the tensor-core skinny GEMMs
// (cuda::skinny_gemm directly, whatever the backend's size rule) against cuBLASLt (with gate/up's SiLU as
// a separate pass), 28 distinct weights back to back in a graph, us per
// layer and GB/s of weights.
// The decode layer's linear layers at the Qwen2.5-1.5B shape (hidden 1,536, intermediate 8,960) and the 7B
// shape's (Qwen2.5-7B: hidden 3,584, intermediate 18,944, 28 + 2 x 4 heads of 128), for the few-token tables.
struct LinearShape {
  const char* name;
  int64_t n, k;
  int kind;  // 0 linear into float32, 1 residual add, 2 gate/up + SiLU (n rows each), 3 lm_head (fewer layers)
};
const LinearShape kLayerLinears[] = {
    {"q/k/v 2048x1536", 2048, 1536, 0},           {"o_proj + residual 1536x1536", 1536, 1536, 1},
    {"gate/up + SiLU 2x8960x1536", 8960, 1536, 2}, {"down + residual 1536x8960", 1536, 8960, 1},
    {"7B q/k/v 4608x3584", 4608, 3584, 0},        {"7B o_proj + residual 3584x3584", 3584, 3584, 1},
    {"7B gate/up + SiLU 2x18944x3584", 18944, 3584, 2}, {"7B down + residual 3584x18944", 3584, 18944, 1}};

void skinny_table(CudaBackend& be, double copy_gbs) {
  const int64_t L = 28;
  std::vector<LinearShape> shapes(std::begin(kLayerLinears), std::end(kLayerLinears));
  shapes.insert(shapes.begin() + 4, {"lm_head 151936x1536", 151936, 1536, 3});
  std::printf("\n%-30s %6s %22s %22s\n", "skinny GEMMs (us per layer)", "tokens", "tensor-core skinny", "cuBLASLt");
  for (const LinearShape& sh : shapes) {
    const int64_t layers = sh.kind == 3 ? 2 : L;
    std::vector<Tensor> w;
    for (int64_t i = 0; i < layers; ++i) w.push_back(random_tensor(be, {(sh.kind == 2 ? 2 : 1) * sh.n, sh.k}, DType::BF16));
    for (int64_t M : {5, 8, 16}) {
      Tensor x = random_tensor(be, {M, sh.k}, DType::BF16), y = be.empty({M, sh.n}, DType::F32);
      Tensor gu = be.empty({M, 2 * sh.n}, DType::F32), act = be.empty({M, sh.n}, DType::BF16);
      cudaMemset(y.data, 0, y.bytes());
      double us[2];
      using B16 = __nv_bfloat16;
      be.set_skinny_gemms(false);
      for (int way = 0; way < 2; ++way) {
        us[way] = graph_ms(be, [&] {
          for (int64_t i = 0; i < layers; ++i) {
            if (way == 0 && sh.kind == 2)
              cuda::skinny_gate_up_silu<B16>(x.as<B16>(), w[i].as<B16>(), w[i].as<B16>() + sh.n * sh.k, M, sh.k, sh.n,
                                             act.as<B16>(), be.stream());
            else if (way == 0)
              cuda::skinny_gemm<B16, float>(x.as<B16>(), w[i].as<B16>(), nullptr, M, sh.k, sh.n, y.as<float>(), be.stream(),
                                            sh.kind == 1);
            else if (sh.kind == 2) be.gate_up_silu(x, rows_view(w[i], 0, sh.n), rows_view(w[i], sh.n, sh.n), gu, act);
            else if (sh.kind == 1) be.linear_residual(x, w[i], y, y);
            else be.linear(x, w[i], nullptr, y);
          }
        }, 1) / layers * 1e3;
      }
      const double bytes = 2.0 * (sh.kind == 2 ? 2 : 1) * sh.n * sh.k;
      std::printf("%-30s %6lld %10.2f (%5.0f GB/s) %10.2f (%5.0f GB/s)\n", sh.name, static_cast<long long>(M), us[0],
                  bytes / (us[0] * 1e-6) / 1e9, us[1], bytes / (us[1] * 1e-6) / 1e9);
    }
  }
  be.set_skinny_gemms(true);
  std::printf("(copy bandwidth %.0f GB/s)\n", copy_gbs);
}

// One to four tokens over FP8 weights (quantization: fp8) and over bf16 ones, us per layer over 28 distinct
// matrices in a graph: the backend's CUDA-core GEMVs (row_stream, what decode steps of 1-4 sequences take
// below skinny_fp8_min_tokens: FP8 costs them 8 thread instructions a byte, ncu in the thirty-fifth
// session) against the tensor-core skinny kernels called directly (tile_stream: FP8 codes widened to 16
// bits exactly, one mma.m16n8k16 per 256 weights, the tokens as the n dimension). Both read the same
// weights; the largest difference of their outputs is printed against the outputs' largest magnitude.
void few_token_table(CudaBackend& be, DType wt, double copy_gbs) {
  const int64_t L = 28;
  using B16 = __nv_bfloat16;
  using F8 = __nv_fp8_e4m3;
  const bool fp8 = wt == DType::F8E4M3;
  std::printf("\n%-32s %6s %22s %22s %12s\n", fp8 ? "fp8 weights, 1-4 tokens (us/layer)" : "bf16 weights, 1-4 tokens (us/layer)",
              "tokens", "CUDA-core GEMV", "tensor-core skinny", "max diff");
  const int64_t min_fp8 = be.skinny_fp8_min_tokens(), min_16 = be.skinny_min_tokens(), min_big = be.skinny_big_min_tokens();
  const int64_t min_fp8_big = be.skinny_fp8_big_min_tokens();
  be.set_skinny_fp8_min_tokens(cuda::kSkinnyMinTokens);  // (the backend's calls: the GEMVs for 1-4 tokens,
  be.set_skinny_min_tokens(cuda::kSkinnyMinTokens);      // the big matrices too)
  be.set_skinny_big_min_tokens(cuda::kSkinnyMinTokens);
  be.set_skinny_fp8_big_min_tokens(cuda::kSkinnyMinTokens);
  for (const LinearShape& sh : kLayerLinears) {
    const int mats = sh.kind == 2 ? 2 : 1;
    std::vector<Tensor> w;  // layer i: w[mats * i + r]
    for (int64_t i = 0; i < L * mats; ++i) w.push_back(random_tensor(be, {sh.n, sh.k}, wt));
    for (int64_t M : {1, 2, 3, 4}) {
      Tensor x = random_tensor(be, {M, sh.k}, DType::BF16, 1.f);
      Tensor y[2] = {be.empty({M, sh.n}, DType::F32), be.empty({M, sh.n}, DType::F32)};
      Tensor act[2] = {be.empty({M, sh.n}, DType::BF16), be.empty({M, sh.n}, DType::BF16)};
      Tensor gu = be.empty({M, 2 * sh.n}, DType::F32);
      auto layer = [&](int way, int64_t i) {
        const Tensor& a = w[static_cast<size_t>(mats * i)];
        const Tensor& b = w[static_cast<size_t>(mats * i + mats - 1)];
        if (way == 0) {
          if (sh.kind == 2) be.gate_up_silu(x, a, b, gu, act[0]);
          else if (sh.kind == 1) be.linear_residual(x, a, y[0], y[0]);
          else be.linear(x, a, nullptr, y[0]);
        } else if (fp8 && sh.kind == 2) {
          cuda::skinny_gate_up_silu<B16, F8>(x.as<B16>(), static_cast<const F8*>(a.data), static_cast<const F8*>(b.data),
                                             a.scale, b.scale, M, sh.k, sh.n, act[1].as<B16>(), be.stream());
        } else if (fp8) {
          cuda::skinny_gemm<B16, float, F8>(x.as<B16>(), static_cast<const F8*>(a.data), a.scale, nullptr, M, sh.k, sh.n,
                                            y[1].as<float>(), be.stream(), sh.kind == 1);
        } else if (sh.kind == 2) {
          cuda::skinny_gate_up_silu<B16>(x.as<B16>(), a.as<B16>(), b.as<B16>(), M, sh.k, sh.n, act[1].as<B16>(), be.stream());
        } else {
          cuda::skinny_gemm<B16, float>(x.as<B16>(), a.as<B16>(), nullptr, M, sh.k, sh.n, y[1].as<float>(), be.stream(),
                                        sh.kind == 1);
        }
      };
      double us[2];
      for (int way = 0; way < 2; ++way)
        us[way] = graph_ms(be, [&] { for (int64_t i = 0; i < L; ++i) layer(way, i); }, 1) / L * 1e3;
      // The outputs of one layer each way (the residual forms from zero), compared.
      for (int way = 0; way < 2; ++way) {
        cudaMemsetAsync(y[way].data, 0, y[way].bytes(), be.stream());
        layer(way, 0);
      }
      cudaStreamSynchronize(be.stream());
      const size_t n = static_cast<size_t>(M * sh.n);
      std::vector<float> out[2];
      for (int way = 0; way < 2; ++way) {
        out[way].resize(n);
        if (sh.kind == 2) {
          std::vector<B16> h(n);
          cudaMemcpy(h.data(), act[way].data, n * sizeof(B16), cudaMemcpyDeviceToHost);
          for (size_t j = 0; j < n; ++j) out[way][j] = __bfloat162float(h[j]);
        } else {
          cudaMemcpy(out[way].data(), y[way].data, n * sizeof(float), cudaMemcpyDeviceToHost);
        }
      }
      double diff = 0, mag = 0;
      for (size_t j = 0; j < n; ++j) {
        diff = std::max(diff, static_cast<double>(std::fabs(out[0][j] - out[1][j])));
        mag = std::max(mag, static_cast<double>(std::fabs(out[0][j])));
      }
      const double bytes = (fp8 ? 1.0 : 2.0) * mats * sh.n * sh.k;
      std::printf("%-32s %6lld %10.2f (%5.0f GB/s) %10.2f (%5.0f GB/s) %12.2e\n", sh.name, static_cast<long long>(M), us[0],
                  bytes / (us[0] * 1e-6) / 1e9, us[1], bytes / (us[1] * 1e-6) / 1e9, mag > 0 ? diff / mag : diff);
    }
  }
  be.set_skinny_fp8_min_tokens(min_fp8);
  be.set_skinny_min_tokens(min_16);
  be.set_skinny_big_min_tokens(min_big);
  be.set_skinny_fp8_big_min_tokens(min_fp8_big);
  std::printf("(copy bandwidth %.0f GB/s)\n", copy_gbs);
}

// --moe: a mixture-of-experts MLP at the Qwen3-30B-A3B shape (128 experts of 768, 8 a token, hidden
// 2,048; bf16) over L layers of distinct weights (the chosen experts stream from memory), 1-64 tokens:
// the router GEMM alone, and the router with cuda::moe token-major and grouped by expert (us per layer),
// against the floor of the distinct experts' bytes (and the router's) at the copy rate.
void moe_table(CudaBackend& be, double copy_gbs) {
  using B16 = __nv_bfloat16;
  const int64_t L = 4, E = 128, H = 2048, M = 768, maxT = 64;
  const int k = 8;
  std::vector<Tensor> router, gate_up, down;
  for (int64_t l = 0; l < L; ++l) {
    router.push_back(random_tensor(be, {E, H}, DType::BF16, 0.05f));
    gate_up.push_back(random_tensor(be, {E * 2 * M, H}, DType::BF16));
    down.push_back(random_tensor(be, {E * H, M}, DType::BF16));
  }
  Tensor scratch = be.empty({static_cast<int64_t>(cuda::moe_scratch_bytes(maxT, E, k, H, M, 2) / 4 + 1)}, DType::F32);
  std::printf("\nmixture of experts (E %lld, k %d, H %lld, M %lld, bf16), us per layer over %lld layers; GB/s of the distinct "
              "experts' and the router's bytes\n",
              static_cast<long long>(E), k, static_cast<long long>(H), static_cast<long long>(M), static_cast<long long>(L));
  std::printf("%6s %9s %9s %9s %22s %22s %10s\n", "tokens", "experts", "floor", "router", "router + token-major",
              "router + grouped", "max diff");
  for (const int64_t T : {1, 2, 4, 8, 16, 32, 64}) {
    // (h from the hashed values 8 places on from the router's, which share their indices: otherwise token t's
    // row is router row t and picks expert t by far, and the others' probabilities underflow to ties)
    Tensor hb = random_tensor(be, {T * H + 8}, DType::BF16, 1.f), logits = be.empty({L * T, E}, DType::F32);
    Tensor h = hb;
    h.data = hb.as<B16>() + 8;
    h.shape = {T, H};
    Tensor out[2] = {be.empty({T, H}, DType::F32), be.empty({T, H}, DType::F32)};
    auto layer = [&](int way, int64_t l) {  // way -1: the router alone
      Tensor lg = rows_view(logits, l * T, T);
      be.linear(h, router[static_cast<size_t>(l)], nullptr, lg);
      if (way < 0) return;
      cuda::moe<B16>(h.as<B16>(), lg.as<float>(), gate_up[static_cast<size_t>(l)].as<B16>(), down[static_cast<size_t>(l)].as<B16>(),
                     T, E, k, true, H, M, scratch.data, out[way].as<float>(), false, be.stream(),
                     way == 0 ? cuda::MoePath::Tokens : cuda::MoePath::Grouped);
    };
    double us[3];
    for (int way = -1; way < 2; ++way)
      us[way + 1] = graph_ms(be, [&] { for (int64_t l = 0; l < L; ++l) layer(way, l); }, 1) / L * 1e3;
    // The distinct experts each layer's routing reads; the two paths' outputs of the last layer compared.
    std::vector<float> lg(static_cast<size_t>(L * T * E)), o[2];
    for (int way = 0; way < 2; ++way) layer(way, L - 1);
    be.synchronize();
    cudaMemcpy(lg.data(), logits.data, lg.size() * 4, cudaMemcpyDeviceToHost);
    for (int way = 0; way < 2; ++way) {
      o[way].resize(static_cast<size_t>(T * H));
      cudaMemcpy(o[way].data(), out[way].data, o[way].size() * 4, cudaMemcpyDeviceToHost);
    }
    double experts = 0;
    for (int64_t l = 0; l < L; ++l) {
      std::vector<bool> used(static_cast<size_t>(E));
      for (const MoeChoice& c : moe_route(lg.data() + l * T * E, T, E, k, true)) used[static_cast<size_t>(c.expert)] = true;
      experts += static_cast<double>(std::count(used.begin(), used.end(), true)) / L;
    }
    double diff = 0, mag = 0;
    for (size_t j = 0; j < o[0].size(); ++j) {
      diff = std::max(diff, static_cast<double>(std::fabs(o[0][j] - o[1][j])));
      mag = std::max(mag, static_cast<double>(std::fabs(o[1][j])));
    }
    const double bytes = 2.0 * (experts * 3 * M * H + E * H), floor_us = bytes / copy_gbs * 1e-3;
    auto pct = [&](double u) { return 100.0 * floor_us / u; };
    std::printf("%6lld %9.1f %9.2f %9.2f %10.2f (%4.0f%%)  %10.2f (%4.0f%%)  %10.2e\n", static_cast<long long>(T), experts,
                floor_us, us[0], us[1], pct(us[1]), us[2], pct(us[2]), mag > 0 ? diff / mag : diff);
  }
  std::printf("(copy bandwidth %.0f GB/s; floor: the distinct experts' and the router's bytes at it)\n", copy_gbs);
}

void sampler_tables(CudaBackend& be, double copy_gbs) {
  // The sampler's draw over vocabulary-sized float32 logits rows (uniform in [-3, 3]: flat rows, the
  // filters' hard case): greedy, and sampled with top-k 50, top-p 0.9 and 10 penalty edits per row.
  // GB/s of one read of the logits.
  std::printf("\n%-44s %10s %12s %10s\n", "sampler draw (151936 logits per row)", "time (us)", "rate", "of roofline");
  const int64_t V = 151936;
  for (bool filters : {false, true})
    for (int64_t n : {int64_t(1), int64_t(256)}) {
      Tensor logits = random_tensor(be, {n, V}, DType::F32, 3.f);
      std::vector<RowDraw> rows(static_cast<size_t>(n));
      std::vector<LogitEdit> edits;
      for (size_t i = 0; i < rows.size(); ++i) {
        RowDraw& r = rows[i];
        r.greedy = !filters;
        if (filters) {
          r.inv_temperature = 1.f / 0.8f;
          r.top_k = 50;
          r.top_p = 0.9;
          r.seed = static_cast<int64_t>(i);
          for (int e = 0; e < 10; ++e) {
            LogitEdit le;
            le.row = static_cast<int32_t>(i);
            le.col = 1000 * e + 7;
            le.rep = 1.1f;
            edits.push_back(le);
          }
        }
      }
      void *dev_rows = nullptr, *dev_edits = nullptr;
      cudaMalloc(&dev_rows, rows.size() * sizeof(RowDraw));
      cudaMemcpy(dev_rows, rows.data(), rows.size() * sizeof(RowDraw), cudaMemcpyHostToDevice);
      cudaMalloc(&dev_edits, std::max<size_t>(edits.size(), 1) * sizeof(LogitEdit));
      if (!edits.empty()) cudaMemcpy(dev_edits, edits.data(), edits.size() * sizeof(LogitEdit), cudaMemcpyHostToDevice);
      Tensor best = be.empty({n}, DType::F32), idx = be.empty({n}, DType::F32);
      const double ms = graph_ms(be, [&] {
        cuda::draw_rows(logits.as<float>(), n, V, V, 0, static_cast<const RowDraw*>(dev_rows),
                        static_cast<const LogitEdit*>(dev_edits), static_cast<int64_t>(edits.size()), filters,
                        best.as<float>(), static_cast<int32_t*>(idx.data), be.stream());
      });
      cudaFree(dev_rows);
      cudaFree(dev_edits);
      char name[96];
      std::snprintf(name, sizeof name, "draw: %lld rows%s", static_cast<long long>(n),
                    filters ? ", top-k 50, top-p 0.9, penalties" : ", greedy");
      const double gbs = 4.0 * n * V / (ms * 1e-3) / 1e9;
      std::printf("%-44s %10.1f %7.0f GB/s %9.0f%%\n", name, ms * 1e3, gbs, 100 * gbs / copy_gbs);
    }

  // Log-probabilities of a step's rows (`logprobs: K`): the reduction kernel alone (in a graph), and
  // the backend's calls as the sampler makes them, wall clock with their uploads and downloads.
  std::printf("\n%-44s %10s %12s %10s\n", "log-probabilities (151936 logits per row)", "time (us)", "rate",
              "of roofline");
  const int64_t n = 256;
  Tensor logits = random_tensor(be, {n, V}, DType::F32, 3.f);
  std::vector<int32_t> rows(n), chosen(n);
  for (int64_t i = 0; i < n; ++i) rows[i] = static_cast<int32_t>(i), chosen[i] = static_cast<int32_t>(i * 577 % V);
  void* dev_in = nullptr;
  cudaMalloc(&dev_in, 2 * n * sizeof(int32_t));
  cudaMemcpy(dev_in, rows.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice);
  cudaMemcpy(static_cast<int32_t*>(dev_in) + n, chosen.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice);
  const auto* in = static_cast<const int32_t*>(dev_in);
  auto wall_us = [&](const std::function<void()>& fn) {
    fn();
    std::vector<double> t;
    for (int r = 0; r < 20; ++r) {
      const auto a = std::chrono::steady_clock::now();
      fn();
      t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  for (int K : {0, 1, 5, 20}) {
    Tensor out = be.empty({n * (3 + 2 * K)}, DType::F32);
    float* o = out.as<float>();
    const double ms = graph_ms(be, [&] {
      cuda::row_logprobs(logits.as<float>(), V, V, 0, in, in + n, n, K, o, o + 3 * n,
                         reinterpret_cast<int32_t*>(o + (3 + K) * n), be.stream());
    });
    char name[96];
    std::snprintf(name, sizeof name, "row_logprobs kernel: %lld rows, K = %d", static_cast<long long>(n), K);
    const double gbs = 4.0 * n * V / (ms * 1e-3) / 1e9;
    std::printf("%-44s %10.1f %7.0f GB/s %9.0f%%\n", name, ms * 1e3, gbs, 100 * gbs / copy_gbs);
  }
  std::vector<float> stats(3 * n), top_v(n * 5), best(n);
  std::vector<int32_t> top_i(n * 5), idx(n);
  std::vector<RowDraw> draws(n);
  for (auto& r : draws) r.greedy = true;
  const double draw_us = wall_us([&] { be.draw_rows(logits, V, 0, draws, {}, {}, best.data(), idx.data(), nullptr); });
  const double lp_us = wall_us([&] { be.row_logprobs(logits, V, 0, rows, chosen, 5, stats.data(), top_v.data(), top_i.data(), nullptr); });
  std::printf("%-44s %10.1f\n", "backend draw_rows call, 256 greedy (wall)", draw_us);
  std::printf("%-44s %10.1f\n", "backend row_logprobs call, 256 x K = 5 (wall)", lp_us);
  cudaFree(dev_in);
}

}  // namespace

// A GEMV's fixed cost in a chain: N x 1536 weights (1 token), 28 distinct matrices back to back in a
// graph (weights from HBM, as a decode step streams its layers), for growing N; the least-squares
// line through (bytes, time) gives the steady-state bandwidth (slope) and the per-kernel cost that
// does not shrink with the bytes (intercept: launch, wait on the previous kernel, ramp and tail).
// The same with FP8 weights (quantization: fp8; a byte a weight and a scale a row).
// Microseconds per call of a one-token GEMV over N x K weights of type wt, 28 distinct matrices back to
// back in a graph (weights from HBM, as a decode step streams its layers).
double gemv_chain_us(CudaBackend& be, DType wt, int64_t N, int64_t K) {
  const int64_t chain = 28;
  std::vector<Tensor> ws;
  for (int64_t i = 0; i < chain; ++i) ws.push_back(random_tensor(be, {N, K}, wt));
  Tensor x = random_tensor(be, {1, K}, DType::BF16), y = be.empty({1, N}, DType::F32);
  return graph_ms(be, [&] { for (auto& w : ws) be.linear(x, w, nullptr, y); }, 1) / chain * 1e3;
}

void gemv_chain_table(CudaBackend& be, DType wt, double copy_gbs) {
  std::printf("\n%-44s %10s %12s %10s\n",
              wt == DType::BF16 ? "GEMV chain (28 distinct N x 1536, 1 token)" : "GEMV chain, fp8 weights", "us/call",
              "rate", "of copy");
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int pts = 0;
  // The backend sends one FP8 matrix of CudaBackend::kSkinnyBigWeights (32M) or more to the skinny kernel
  // from one token (thirty-eighth session): pinned to the GEMV here, so that the fit is the GEMV's alone.
  const int64_t min_fp8_big = be.skinny_fp8_big_min_tokens();
  be.set_skinny_fp8_big_min_tokens(cuda::kSkinnyMinTokens);
  for (int64_t N : {int64_t(1536), int64_t(4480), int64_t(8960), int64_t(17920), int64_t(35840)}) {
    const int64_t K = 1536;
    const double ms = gemv_chain_us(be, wt, N, K) * 1e-3;
    const double bytes = (wt == DType::BF16 ? 2.0 : 1.0) * N * K, gbs = bytes / (ms * 1e-3) / 1e9;
    char name[96];
    std::snprintf(name, sizeof name, "N=%lld (%.1f MB)", static_cast<long long>(N), bytes / 1e6);
    std::printf("%-44s %10.2f %7.0f GB/s %9.0f%%\n", name, ms * 1e3, gbs, 100 * gbs / copy_gbs);
    sx += bytes; sy += ms * 1e3; sxx += bytes * bytes; sxy += bytes * ms * 1e3; ++pts;
  }
  be.set_skinny_fp8_big_min_tokens(min_fp8_big);
  const double slope = (pts * sxy - sx * sy) / (pts * sxx - sx * sx), icept = (sy - slope * sx) / pts;
  std::printf("%-44s %10.2f us per kernel, steady %.0f GB/s (%.0f%% of copy)\n", "fit: time = fixed + bytes / rate", icept,
              1e-3 / slope, 100 * (1e-3 / slope) / copy_gbs);
}

// Linear layers of many tokens with FP8 weights (quantization: fp8), Qwen2.5-1.5B shapes: bf16 weights
// through cuBLASLt, FP8 weights expanded to 16 bits for the same GEMM (the default past 16 tokens), and
// FP8 GEMMs (LLMSERVE_FP8_GEMM=1: the activations quantized per token, cuBLASLt E4M3 x E4M3), in TFLOP/s
// of the product against the bf16 peak (Hopper's dense FP8 rate is twice its bf16 rate). The FP8 GEMM's
// time includes the activations' quantization; the expansion's includes writing the 16-bit matrix.
void fp8_gemm_table(CudaBackend& be, double peak_tflops) {
  std::printf("\n%-36s %12s %12s %12s %9s %9s\n", "fp8 weights, T tokens (Qwen2.5-1.5B)", "bf16 (us)", "expand (us)",
              "fp8 GEMM (us)", "fp8/bf16", "TFLOP/s");
  struct Shape {
    const char* name;
    int64_t n, k;
  };
  const Shape shapes[] = {{"qkv 2048x1536", 2048, 1536}, {"o_proj 1536x1536", 1536, 1536},
                          {"gate/up 17920x1536", 17920, 1536}, {"down 1536x8960", 1536, 8960}};
  for (int64_t T : {int64_t(32), int64_t(256), int64_t(2048)}) {
    double sum[3] = {0, 0, 0}, flops = 0;
    for (const auto& s : shapes) {
      Tensor wb = random_tensor(be, {s.n, s.k}, DType::BF16), w8 = random_tensor(be, {s.n, s.k}, DType::F8E4M3);
      Tensor x = random_tensor(be, {T, s.k}, DType::BF16, 1.f), y = be.empty({T, s.n}, DType::BF16);
      double t[3];
      t[0] = graph_ms(be, [&] { be.linear(x, wb, nullptr, y); }, 5) * 1e3;
      be.set_fp8_gemm(false);
      t[1] = graph_ms(be, [&] { be.linear(x, w8, nullptr, y); }, 5) * 1e3;
      be.set_fp8_gemm(true);
      const int64_t ran = be.fp8_gemms();
      t[2] = graph_ms(be, [&] { be.linear(x, w8, nullptr, y); }, 5) * 1e3;
      const bool took = be.fp8_gemms() > ran;
      be.set_fp8_gemm(false);
      const double f = 2.0 * T * s.n * s.k;
      char name[96];
      std::snprintf(name, sizeof name, "T=%lld %s", static_cast<long long>(T), s.name);
      std::printf("%-36s %12.1f %12.1f %12.1f%s %9.2f %9.0f\n", name, t[0], t[1], t[2], took ? "" : "*", t[2] / t[0],
                  f / (t[2] * 1e-6) / 1e12);
      for (int i = 0; i < 3; ++i) sum[i] += t[i];
      flops += f;
    }
    char name[96];
    std::snprintf(name, sizeof name, "T=%lld layer (4 GEMMs)", static_cast<long long>(T));
    std::printf("%-36s %12.1f %12.1f %12.1f %9.2f %9.0f (bf16 %.0f, %.0f%% of its peak)\n", name, sum[0], sum[1], sum[2],
                sum[2] / sum[0], flops / (sum[2] * 1e-6) / 1e12, flops / (sum[0] * 1e-6) / 1e12,
                100 * flops / (sum[0] * 1e-6) / 1e12 / peak_tflops);
  }
  std::printf("(* : cuBLASLt refused the FP8 GEMM and the matrix was expanded)\n");
}

// Prefill attention, the warpgroup-MMA kernel with 64- and 128-key tiles (cuda::set_prefill_wgmma_keys),
// the 128-key tiles copied by the threads or by TMA (cuda::set_prefill_attention_tma), against the
// mma.sync one (cuda::set_prefill_attention_wgmma; the speed-up is that of what runs when nothing is set:
// the tile size cuda::prefill_wgmma_keys chooses, 128-key tiles by TMA), in TFLOP/s of the causal
// products (4 x heads x head_dim per visible (query, key) pair) against the GEMM peak: whole prompts of
// 512 to 16,384 tokens, a 2,048-token chunk after 6,144 cached, batches of prompts (16 of 512: the
// throughput run's prefill steps), at the Qwen2.5-1.5B heads (12 of 128 over 2 KV heads) and
// SmolLM2-135M's (9 of 64 over 3).
void prefill_table(CudaBackend& be, double peak_tflops) {
  struct Case {
    const char* model;
    int64_t Hq, Hk, D, seqs, q_len, ctx;
  };
  const Case cases[] = {{"1.5B", 12, 2, 128, 1, 512, 512},     {"1.5B", 12, 2, 128, 1, 2048, 2048},
                        {"1.5B", 12, 2, 128, 1, 8192, 8192},   {"1.5B", 12, 2, 128, 1, 16384, 16384},
                        {"1.5B", 12, 2, 128, 1, 2048, 8192},   {"1.5B", 12, 2, 128, 16, 512, 512},
                        {"135M", 9, 3, 64, 1, 2048, 2048},     {"135M", 9, 3, 64, 1, 4096, 4096},
                        {"135M", 9, 3, 64, 1, 8192, 8192},     {"135M", 9, 3, 64, 16, 512, 512},
                        {"135M", 9, 3, 64, 8, 1024, 1024},     {"135M", 9, 3, 64, 4, 2048, 2048}};
  const int64_t bs = 16;
  std::printf("%-46s %20s %20s %20s %20s %14s\n", "prefill attention (causal, bf16 cache)", "mma.sync us (TF/s)",
              "wgmma 64 keys", "wgmma 128 keys", "128 keys by TMA", "speed-up");
  for (const auto& c : cases) {
    const StepMeta m = attention_step(c.seqs, c.q_len, c.ctx, bs);
    be.begin_step(m);
    const int64_t blocks = c.seqs * ((c.ctx + bs - 1) / bs), T = m.num_tokens();
    Tensor kc = random_tensor(be, {blocks, bs, c.Hk, c.D}, DType::BF16, 1.f);
    Tensor vc = random_tensor(be, {blocks, bs, c.Hk, c.D}, DType::BF16, 1.f);
    Tensor q = random_tensor(be, {T, c.Hq * c.D}, DType::BF16, 1.f), out = be.empty({T, c.Hq * c.D}, DType::BF16);
    // Visible pairs: query at position p sees p + 1 keys.
    double pairs = 0;
    for (int64_t i = 0; i < c.q_len; ++i) pairs += static_cast<double>(c.ctx - c.q_len + i + 1);
    const double flops = 4.0 * c.Hq * c.D * pairs * c.seqs;
    double us[4];
    for (int w = 0; w < 4; ++w) {
      cuda::set_prefill_attention_wgmma(w >= 1);
      cuda::set_prefill_wgmma_keys(w >= 2 ? 128 : 64);
      cuda::set_prefill_attention_tma(w == 3);
      us[w] = graph_ms(be, [&] { be.attention(q, kc, vc, c.D, bs, 0.0884f, out); }, 3) * 1e3;
    }
    cuda::set_prefill_wgmma_keys(0);
    cuda::set_prefill_attention_wgmma(true);
    cuda::set_prefill_attention_tma(true);
    const int keys = cuda::prefill_wgmma_keys(c.D, c.Hq * ((c.q_len + 127) / 128) * c.seqs, c.ctx);  // 128-row tiles
    char name[96];
    std::snprintf(name, sizeof name, "%s: %lld x %lld new tokens, context %lld", c.model, static_cast<long long>(c.seqs),
                  static_cast<long long>(c.q_len), static_cast<long long>(c.ctx));
    char cell[4][32];
    for (int w = 0; w < 4; ++w) std::snprintf(cell[w], sizeof cell[w], "%.1f (%.0f)", us[w], flops / (us[w] * 1e-6) / 1e12);
    std::printf("%-46s %20s %20s %20s %20s %5.2fx (%3d)\n", name, cell[0], cell[1], cell[2], cell[3],
                us[0] / us[keys == 128 ? 3 : 1], keys);
  }
  std::printf("(GEMM peak %.0f TFLOP/s; the speed-up is of the tile size chosen, in brackets; the wgmma columns are "
              "the mma.sync kernel again where the build's sm_90a code does not run: %s)\n",
              peak_tflops, cuda::prefill_attention_wgmma(128) ? "it runs" : "NOT RUNNING");
}

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line into a file too: a run cut short keeps its tables
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  // --layers-7b: the decode-layer tables at the Qwen2.5-7B shape (1-16 sequences), GEMVs of one
  // size by row length, and the step's lm_head GEMV and greedy draw.
  const bool shape_7b = argc > 1 && std::strcmp(argv[1], "--layers-7b") == 0;
  // --layers-3b: the same decode-layer tables at the Qwen2.5-3B shape (hidden 2,048: the narrowest rows
  // the skinny launches normalize themselves, CudaBackend::kSkinnyNormMinCols; 1-16 sequences).
  const bool shape_3b = argc > 1 && std::strcmp(argv[1], "--layers-3b") == 0;
  const bool other_shape = shape_7b || shape_3b;
  // --lora: the 1.5B decode layer of 1, 2 and 8 sequences with a rank-16 LoRA adapter on every projection
  // (each op with its group's shrink and expand), op by op.
  const bool lora_layers = argc > 1 && std::strcmp(argv[1], "--lora") == 0;
  const bool layers_only = other_shape || lora_layers || (argc > 1 && std::strcmp(argv[1], "--layers") == 0);
  const bool attention_only = argc > 1 && std::strcmp(argv[1], "--attention") == 0;
  const bool chunks_only = argc > 1 && std::strcmp(argv[1], "--attention-chunks") == 0;
  const bool sampler_only = argc > 1 && std::strcmp(argv[1], "--sampler") == 0;
  if (argc > 1 && std::strcmp(argv[1], "--boundary") == 0) {
    if (!cuda_device_available()) return 77;
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    std::printf("kernel boundary: us per kernel in a chain of 140 (each block reads another block's value of the previous kernel)\n");
    std::printf("%-28s %14s %14s %14s\n", "grid", "stream order", "PDL + wait", "PDL + counter");
    for (int per_sm : {1, 2, 4})
      for (int threads : {128, 256}) {
        char name[64];
        std::snprintf(name, sizeof name, "%d blocks x %d threads", per_sm * sms, threads);
        std::printf("%-28s", name);
        for (int mode = 0; mode < 3; ++mode) {
          bool ok = false;
          const double us = boundary_chain_us(mode, 140, per_sm * sms, threads, &ok);
          std::printf(" %11.2f%3s", us, ok ? "" : " !");
        }
        std::printf("\n");
      }
    return 0;
  }
  if (!cuda_device_available()) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  CudaBackend be(0, DType::BF16);
  if (argc > 1 && std::strcmp(argv[1], "--shrink-probe") == 0) {
    // For a profiler: the q/k/v LoRA shrink of one token at the 1.5B shape (rank 16, three projections)
    // with the norm inside, then its parts (rmsnorm, the plain shrink of h), three times each, eagerly.
    const int64_t H = 1536, C = 48;
    StepMeta m = attention_step(1, 1, 160, 16);
    m.lora = {1};
    be.begin_step(m);
    Tensor x = random_tensor(be, {1, H}, DType::F32, 1.f), w = random_tensor(be, {H}, DType::BF16, 1.f);
    Tensor h = be.empty({1, H}, DType::BF16), a = random_tensor(be, {1, C, H}, DType::BF16), t = be.empty({1, C}, DType::F32);
    for (int i = 0; i < 3; ++i) {
      be.lora_shrink_norm(x, {w, 1e-6f, h}, a, t);
      be.rmsnorm(x, w, 1e-6f, h);
      be.lora_shrink(h, a, t);
    }
    be.synchronize();
    std::printf("shrink probe: done\n");
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s\n\n", prop.name);

  // Copy bandwidth (read + write).
  const size_t copy_bytes = size_t(1) << 30;
  void *src = nullptr, *dst = nullptr;
  cudaMalloc(&src, copy_bytes);
  cudaMalloc(&dst, copy_bytes);
  const double copy_ms = median_ms([&] { cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice); });
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  cudaFree(src);
  cudaFree(dst);

  // bf16 GEMM peak.
  const int64_t G = quick ? 4096 : 8192;
  Tensor ga = random_tensor(be, {G, G}, DType::BF16), gb = random_tensor(be, {G, G}, DType::BF16);
  Tensor gc = be.empty({G, G}, DType::BF16);
  const double gemm_ms = median_ms([&] { be.linear(ga, gb, nullptr, gc); }, 10);
  const double peak_tflops = 2.0 * G * G * G / (gemm_ms * 1e-3) / 1e12;
  std::printf("rooflines: copy bandwidth %.0f GB/s (1 GiB device-to-device); bf16 GEMM %.0f TFLOP/s (%lld^3, cuBLASLt)\n\n",
              copy_gbs, peak_tflops, static_cast<long long>(G));
  if (attention_only || chunks_only) {
    attention_sweep(be, copy_gbs, chunks_only);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--attention-fp8") == 0) {
    attention_fp8_table(be, copy_gbs, peak_tflops);
    return 0;
  }
  if (sampler_only) {
    sampler_tables(be, copy_gbs);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--skinny") == 0) {
    skinny_table(be, copy_gbs);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--splitk") == 0) {
    splitk_table(be, copy_gbs, peak_tflops);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--moe") == 0) {
    moe_table(be, copy_gbs);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--few-tokens") == 0) {
    for (const DType wt : {DType::F8E4M3, DType::BF16}) few_token_table(be, wt, copy_gbs);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--fp8") == 0) {
    for (const DType wt : {DType::BF16, DType::F8E4M3}) gemv_chain_table(be, wt, copy_gbs);
    fp8_gemm_table(be, peak_tflops);
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--prefill") == 0) {
    prefill_table(be, peak_tflops);
    return 0;
  }

  if (!layers_only) {
    std::printf("%-44s %10s %12s %10s\n", "GEMM (Qwen2.5-1.5B shapes, bf16 weights)", "time (us)", "rate", "of roofline");
    struct Shape {
      const char* name;
      int64_t n, k;
    };
    const Shape shapes[] = {{"q_proj 1536x1536", 1536, 1536},   {"k_proj/v_proj 256x1536", 256, 1536},
                            {"gate/up 8960x1536", 8960, 1536},   {"down 1536x8960", 1536, 8960},
                            {"lm_head 151936x1536", 151936, 1536}};
    for (int64_t M : {int64_t(1), int64_t(256)}) {
      for (const auto& s : shapes) {
        Tensor w = random_tensor(be, {s.n, s.k}, DType::BF16), x = random_tensor(be, {M, s.k}, DType::BF16);
        Tensor y = be.empty({M, s.n}, DType::F32);
        const double ms = graph_ms(be, [&] { be.linear(x, w, nullptr, y); });
        char name[96];
        std::snprintf(name, sizeof name, "M=%lld %s", static_cast<long long>(M), s.name);
        if (M == 1) {
          const double gbs = 2.0 * s.n * s.k / (ms * 1e-3) / 1e9;
          std::printf("%-44s %10.1f %7.0f GB/s %9.0f%%\n", name, ms * 1e3, gbs, 100 * gbs / copy_gbs);
        } else {
          const double tf = 2.0 * M * s.n * s.k / (ms * 1e-3) / 1e12;
          std::printf("%-44s %10.1f %5.0f TFLOP/s %8.0f%%\n", name, ms * 1e3, tf, 100 * tf / peak_tflops);
        }
      }
    }

    // What a step with a token count not seen before pays on the host. cuBLASLt's heuristic is asked
    // once per weight shape and token-count bucket and its answer checked against each new exact count;
    // a continuous batch's token count changes nearly every step. Wall time of one gate/up GEMM (call +
    // synchronize) at its first call, less the same call repeated: 16 new counts inside a known bucket,
    // the first counts of 8 new buckets, and (heuristic asked per count) each of 8 counts in a region
    // not run before, one by one (the first may load a kernel not loaded before).
    {
      const int64_t N = 8960, K = 1536, Tmax = 4200;
      Tensor w = random_tensor(be, {N, K}, DType::BF16), x = random_tensor(be, {Tmax, K}, DType::BF16);
      Tensor y = be.empty({Tmax, N}, DType::F32);
      auto once = [&](int64_t T) {
        Tensor xt = rows_view(x, 0, T), yt = rows_view(y, 0, T);
        const auto t0 = std::chrono::steady_clock::now();
        be.linear(xt, w, nullptr, yt);
        cudaDeviceSynchronize();
        return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      };
      auto first_less_repeat = [&](const std::vector<int64_t>& counts) {
        std::vector<double> fresh;
        for (int64_t T : counts) fresh.push_back(once(T));
        for (size_t i = 0; i < counts.size(); ++i) fresh[i] -= once(counts[i]);
        return fresh;
      };
      auto mean = [](const std::vector<double>& v) {
        double s = 0;
        for (double d : v) s += d;
        return s / static_cast<double>(v.size());
      };
      once(1000);  // kernels loaded, bucket 1024 known
      std::vector<int64_t> inside, buckets = {1100, 1300, 1500, 1700, 1900, 2100, 2300, 2500};
      for (int64_t T = 1001; T <= 1016; ++T) inside.push_back(T);
      const double in_bucket = mean(first_less_repeat(inside)), new_bucket = mean(first_less_repeat(buckets));
      be.set_gemm_heuristic_per_token_count(true);
      const std::vector<double> each = first_less_repeat({3001, 3002, 3003, 3004, 3005, 3006, 3007, 3008});
      be.set_gemm_heuristic_per_token_count(false);
      std::printf("\n%-44s %10.1f us in a known bucket, %.1f us for a new bucket\n",
                  "gate/up GEMM: host cost of a new token count", in_bucket, new_bucket);
      std::printf("%-44s", "  heuristic per count, T = 3001..3008 (us)");
      for (double d : each) std::printf(" %.0f", d);
      std::printf("\n");
    }

    // The bucket's algorithm against the heuristic's answer for the exact count: GPU time of the four
    // GEMMs of a Qwen2.5-1.5B layer (qkv with bias, o_proj, gate/up, down) at token counts across buckets.
    {
      std::printf("\n%-44s %12s %12s %8s\n", "layer GEMMs (qkv, o, gate/up, down) at T", "bucket (us)", "exact (us)", "ratio");
      struct G {
        int64_t n, k;
        bool bias;
      };
      const G gs[] = {{2048, 1536, true}, {1536, 1536, false}, {8960, 1536, false}, {1536, 8960, false}};
      const int64_t Tmax = 6000;
      std::vector<Tensor> ws, bs;
      for (const G& q : gs) {
        ws.push_back(random_tensor(be, {q.n, q.k}, DType::BF16));
        bs.push_back(random_tensor(be, {q.n}, DType::F32));
      }
      Tensor x = random_tensor(be, {Tmax, 8960}, DType::BF16), y = be.empty({Tmax, 8960}, DType::F32);
      double worst = 1, sum_b = 0, sum_e = 0;
      for (int64_t T : {6, 100, 257, 300, 600, 1001, 1500, 2100, 3000, 4000, 5000}) {
        // Each way twice, interleaved (bucket, exact, exact, bucket); the faster of each way's two.
        double t[2] = {1e30, 1e30};
        for (int exact : {0, 1, 1, 0}) {
          be.set_gemm_heuristic_per_token_count(exact == 1);
          double sum = 0;
          for (size_t i = 0; i < ws.size(); ++i) {
            Tensor xt = x, yt = y;  // T rows of k (n) columns over the same storage
            xt.shape = {T, gs[i].k};
            yt.shape = {T, gs[i].n};
            sum += median_ms([&] { be.linear(xt, ws[i], gs[i].bias ? &bs[i] : nullptr, yt); }, 10) * 1e3;
          }
          t[exact] = std::min(t[exact], sum);
        }
        be.set_gemm_heuristic_per_token_count(false);
        char name[64];
        std::snprintf(name, sizeof name, "T = %lld (bucket %lld)", static_cast<long long>(T),
                      static_cast<long long>(CudaBackend::gemm_token_bucket(T)));
        std::printf("%-44s %12.1f %12.1f %8.3f\n", name, t[0], t[1], t[0] / t[1]);
        worst = std::max(worst, t[0] / t[1]);
        sum_b += t[0];
        sum_e += t[1];
      }
      std::printf("%-44s %12.1f %12.1f %8.3f (worst %.3f)\n", "all counts", sum_b, sum_e, sum_b / sum_e, worst);
    }

    for (const DType wt : {DType::BF16, DType::F8E4M3}) gemv_chain_table(be, wt, copy_gbs);
  }

  // Attention: Qwen2.5-1.5B heads (12 query, 2 KV, head_dim 128; 7B: 28 and 4), bf16 cache, blocks of 16.
  const int64_t Hq = shape_7b ? 28 : shape_3b ? 16 : 12, Hk = shape_7b ? 4 : 2, D = 128, bs = 16;
  if (!layers_only) {
    std::printf("\n%-44s %10s %12s %10s\n", "attention (12 q heads, 2 KV heads, D=128)", "time (us)", "rate", "of roofline");
    struct Case {
      int64_t seqs, q_len, ctx;
    };
    const Case cases[] = {{1, 1, 1024}, {1, 1, 8192}, {64, 1, 1024}, {256, 1, 768}, {1, 2048, 2048}};
    for (const auto& c : cases) {
      const StepMeta m = attention_step(c.seqs, c.q_len, c.ctx, bs);
      be.begin_step(m);
      const int64_t blocks = c.seqs * ((c.ctx + bs - 1) / bs);
      Tensor kc = random_tensor(be, {blocks, bs, Hk, D}, DType::BF16, 1.f), vc = random_tensor(be, {blocks, bs, Hk, D}, DType::BF16, 1.f);
      const int64_t T = m.num_tokens();
      Tensor q = random_tensor(be, {T, Hq * D}, DType::BF16, 1.f), out = be.empty({T, Hq * D}, DType::BF16);
      const double ms = graph_ms(be, [&] { be.attention(q, kc, vc, D, bs, 0.0884f, out); }, c.q_len > 1 ? 3 : 20);
      char name[96];
      if (c.q_len == 1) {
        std::snprintf(name, sizeof name, "decode: %lld seqs x %lld context", static_cast<long long>(c.seqs),
                      static_cast<long long>(c.ctx));
        const double bytes = 2.0 * c.seqs * c.ctx * Hk * D * 2;
        const double gbs = bytes / (ms * 1e-3) / 1e9;
        std::printf("%-44s %10.1f %7.0f GB/s %9.0f%%\n", name, ms * 1e3, gbs, 100 * gbs / copy_gbs);
      } else {
        std::snprintf(name, sizeof name, "prefill: %lld causal tokens", static_cast<long long>(c.q_len));
        const double flops = 4.0 * Hq * D * (double(c.q_len) * (c.q_len + 1) / 2);
        const double tf = flops / (ms * 1e-3) / 1e12;
        std::printf("%-44s %10.1f %5.1f TFLOP/s %8.1f%%\n", name, ms * 1e3, tf, 100 * tf / peak_tflops);
      }
    }

  }

  // A step's layer ops as the model runs them: 28 layers of distinct weights (so they stream from
  // memory, not the L2), one graph replaying each op over all layers back to back, then the whole
  // layer. Decode steps as a graph recorded for 4096 positions runs them: batch 1 at context 160, and
  // 2, 4, 8, 16 and 256 sequences at context 640 (the 256-way throughput run's decode steps); and a prefill step of 16
  // whole 512-token prompts (that run's prefill steps, 8,192 tokens). Floor: the larger of the bytes
  // (weights, KV cache) at the copy bandwidth and the FLOPs at the bf16 GEMM peak.
  {
    const int64_t L = 28, H = shape_7b ? 3584 : shape_3b ? 2048 : 1536, I = shape_7b ? 18944 : shape_3b ? 11008 : 8960;
    struct Layer {
      Tensor norm1, norm2, wq, wk, wv, bq, bk, bv, wo, wg, wu, wd;
    };
    std::vector<Layer> ls(L);
    for (auto& l : ls) {  // q/k/v (and their biases) and gate/up stacked, as the model loads them
      l.norm1 = random_tensor(be, {H}, DType::BF16);
      l.norm2 = random_tensor(be, {H}, DType::BF16);
      const Tensor wqkv = random_tensor(be, {(Hq + 2 * Hk) * D, H}, DType::BF16, 0.05f);
      l.wq = rows_view(wqkv, 0, Hq * D), l.wk = rows_view(wqkv, Hq * D, Hk * D), l.wv = rows_view(wqkv, (Hq + Hk) * D, Hk * D);
      const Tensor bqkv = random_tensor(be, {(Hq + 2 * Hk) * D}, DType::F32);
      l.bq = rows_view(bqkv, 0, Hq * D), l.bk = rows_view(bqkv, Hq * D, Hk * D), l.bv = rows_view(bqkv, (Hq + Hk) * D, Hk * D);
      l.wo = random_tensor(be, {H, Hq * D}, DType::BF16, 0.05f);
      const Tensor wgu = random_tensor(be, {2 * I, H}, DType::BF16, 0.05f);
      l.wg = rows_view(wgu, 0, I), l.wu = rows_view(wgu, I, I);
      l.wd = random_tensor(be, {H, I}, DType::BF16, 0.02f);
    }
    Tensor inv = random_tensor(be, {D / 2}, DType::F32, 0.01f);
    const float eps = 1e-6f;
    // --lora: each layer's adapter stacks (one slot, rank R on all seven projections; Transformer::LoraGroup)
    // and the deltas that add them (Backend::LoraDelta: each op shrinks into t and adds the expand).
    const int64_t R = 16;
    struct LoraStacks {
      Tensor a_qkv, bt_q, bt_k, bt_v, a_o, bt_o, a_gu, bt_g, bt_u, a_d, bt_d;
    };
    std::vector<LoraStacks> lora(lora_layers ? L : 0);
    for (auto& st : lora) {
      st.a_qkv = random_tensor(be, {1, 3 * R, H}, DType::BF16), st.a_o = random_tensor(be, {1, R, Hq * D}, DType::BF16);
      st.a_gu = random_tensor(be, {1, 2 * R, H}, DType::BF16), st.a_d = random_tensor(be, {1, R, I}, DType::BF16);
      st.bt_q = random_tensor(be, {1, R, Hq * D}, DType::BF16), st.bt_k = random_tensor(be, {1, R, Hk * D}, DType::BF16);
      st.bt_v = random_tensor(be, {1, R, Hk * D}, DType::BF16), st.bt_o = random_tensor(be, {1, R, H}, DType::BF16);
      st.bt_g = random_tensor(be, {1, R, I}, DType::BF16), st.bt_u = random_tensor(be, {1, R, I}, DType::BF16);
      st.bt_d = random_tensor(be, {1, R, H}, DType::BF16);
    }
    struct StepCase {
      int64_t seqs, q_len, ctx;
    };
    for (const StepCase& sc : {StepCase{1, 1, 160}, StepCase{2, 1, 640}, StepCase{4, 1, 640}, StepCase{8, 1, 640},
                               StepCase{16, 1, 640}, StepCase{256, 1, 640}, StepCase{16, 512, 512}}) {
      if ((quick || other_shape) && sc.seqs > 1 && !(other_shape && sc.q_len == 1 && sc.seqs <= 16)) continue;
      if (lora_layers && (sc.q_len != 1 || (sc.seqs != 1 && sc.seqs != 2 && sc.seqs != 8))) continue;
      for (int pass = 0; pass < (lora_layers ? 2 : 1); ++pass) {  // (--lora: without, then with the adapter)
        const bool with_lora = lora_layers && pass == 1;
        const int64_t B = sc.seqs * sc.q_len, ctx = sc.ctx, S = sc.seqs;  // B: the step's tokens
        StepMeta m = attention_step(S, sc.q_len, ctx, bs);
        if (sc.q_len == 1) m.max_context = 4096;
        if (with_lora) m.lora.assign(static_cast<size_t>(S), 1);
        be.begin_step(m);
        // Caches of zeros (the timing does not depend on the values; random ones would take minutes to make).
        const int64_t cache_blocks = S * ((ctx + bs - 1) / bs);
        std::vector<Tensor> kcs, vcs;
        for (int64_t i = 0; i < L; ++i) {
          for (auto* c : {&kcs, &vcs}) {
            c->push_back(be.empty({cache_blocks, bs, Hk, D}, DType::BF16));
            cudaMemset(c->back().data, 0, c->back().bytes());
          }
        }
        Tensor x = random_tensor(be, {B, H}, DType::F32), h = be.empty({B, H}, DType::BF16), proj = be.empty({B, H}, DType::F32);
        Tensor q = be.empty({B, Hq * D}, DType::F32), k = be.empty({B, Hk * D}, DType::F32), v = be.empty({B, Hk * D}, DType::F32);
        Tensor attn = be.empty({B, Hq * D}, DType::BF16), gate_up = be.empty({B, 2 * I}, DType::F32);
        Tensor act = be.empty({B, I}, DType::BF16);
        auto qkv = [&](int64_t i) {
          Layer& l = ls[i];
          be.norm_qkv_rope_kv_write(x, {l.norm1, eps, h}, l.wq, &l.bq, q, l.wk, &l.bk, k, l.wv, &l.bv, v, nullptr, inv, D, kcs[i], vcs[i]);
        };
        auto att = [&](int64_t i) { be.attention(q, kcs[i], vcs[i], D, bs, 0.0884f, attn); };
        auto oproj = [&](int64_t i) { be.linear_residual(attn, ls[i].wo, proj, x); };
        auto mlp_in = [&](int64_t i) { be.norm_gate_up_silu(x, {ls[i].norm2, eps, h}, ls[i].wg, ls[i].wu, gate_up, act); };
        auto down = [&](int64_t i) { be.linear_residual(act, ls[i].wd, proj, x); };
        struct Op {
          const char* name;
          std::function<void(int64_t)> fn;
          double bytes, flops;
        };
        const double kv_bytes = 2.0 * S * ctx * Hk * D * 2;
        // Causal attention FLOPs: each new token scores the context up to itself.
        const double att_flops = 4.0 * Hq * D * S * (sc.q_len * double(ctx) - double(sc.q_len) * (sc.q_len - 1) / 2);
        char att_name[64];
        std::snprintf(att_name, sizeof att_name, "attention (context %lld)", static_cast<long long>(ctx));
        std::vector<Op> ops = {{"norm + q/k/v + RoPE + KV write", qkv, 2.0 * (Hq + 2 * Hk) * D * H, 2.0 * B * (Hq + 2 * Hk) * D * H},
                               {att_name, att, kv_bytes, att_flops},
                               {"o_proj + residual", oproj, 2.0 * H * Hq * D, 2.0 * B * H * Hq * D},
                               {"norm + gate/up + SiLU", mlp_in, 2.0 * 2 * I * H, 2.0 * B * 2 * I * H},
                               {"down + residual", down, 2.0 * H * I, 2.0 * B * H * I}};
        // --lora: each op with its group's shrink and expand (bytes: the adapter's A and B^T too).
        Tensor t_lora = lora_layers ? be.empty({B, 3 * R}, DType::F32) : Tensor{};
        auto shrink_to = [&](int64_t cols) {
          Tensor t = t_lora;
          t.shape = {B, cols};
          return t;
        };
        Tensor t_qkv = shrink_to(3 * R), t_o = shrink_to(R), t_gu = shrink_to(2 * R), t_d = shrink_to(R);
        auto delta = [&](const Tensor& a, Tensor& t, std::initializer_list<const Tensor*> bts) {
          Backend::LoraDelta d;
          d.a = &a;
          d.t = &t;
          int j = 0;
          for (const Tensor* bt : bts) d.bt[j] = bt, d.col[j] = j * R, ++j;
          return d;
        };
        std::vector<Op> shrinks;  // --lora: each op's shrink alone (also inside the op's row)
        if (with_lora) {
          const double lb = 2.0 * R;  // bytes of one rank's row per input or output feature
          auto lq = [&](int64_t i) {
            Layer& l = ls[i];
            const Backend::LoraDelta d = delta(lora[i].a_qkv, t_qkv, {&lora[i].bt_q, &lora[i].bt_k, &lora[i].bt_v});
            be.norm_qkv_rope_kv_write(x, {l.norm1, eps, h}, l.wq, &l.bq, q, l.wk, &l.bk, k, l.wv, &l.bv, v, nullptr, inv, D, kcs[i],
                                      vcs[i], &d);
          };
          auto lo = [&](int64_t i) {
            const Backend::LoraDelta d = delta(lora[i].a_o, t_o, {&lora[i].bt_o});
            be.linear_residual(attn, ls[i].wo, proj, x, &d);
          };
          auto lg = [&](int64_t i) {
            const Backend::LoraDelta d = delta(lora[i].a_gu, t_gu, {&lora[i].bt_g, &lora[i].bt_u});
            be.norm_gate_up_silu(x, {ls[i].norm2, eps, h}, ls[i].wg, ls[i].wu, gate_up, act, &d);
          };
          auto ld = [&](int64_t i) {
            const Backend::LoraDelta d = delta(lora[i].a_d, t_d, {&lora[i].bt_d});
            be.linear_residual(act, ls[i].wd, proj, x, &d);
          };
          ops = {{"norm + q/k/v + LoRA + RoPE + KV write", lq, ops[0].bytes + lb * (3 * H + (Hq + 2 * Hk) * D),
                  ops[0].flops + 2.0 * B * 3 * R * H},
                 ops[1],
                 {"o_proj + LoRA + residual", lo, ops[2].bytes + lb * (Hq * D + H), ops[2].flops + 2.0 * B * R * Hq * D},
                 {"norm + gate/up + LoRA + SiLU", lg, ops[3].bytes + lb * (2 * H + 2 * I), ops[3].flops + 2.0 * B * 2 * R * H},
                 {"down + LoRA + residual", ld, ops[4].bytes + lb * (I + H), ops[4].flops + 2.0 * B * R * I}};
          // (The q/k/v and gate/up shrinks normalize their input themselves; from 3 tokens they write it too,
          // for the op's GEMM, and from 17 the op runs rmsnorm and the plain shrink.)
          auto sq = [&](int64_t i) { be.lora_shrink_norm(x, {ls[i].norm1, eps, h}, lora[i].a_qkv, t_qkv, B > 2); };
          auto sg = [&](int64_t i) { be.lora_shrink_norm(x, {ls[i].norm2, eps, h}, lora[i].a_gu, t_gu, B > 2); };
          auto so = [&](int64_t i) { be.lora_shrink(attn, lora[i].a_o, t_o); };
          auto sd = [&](int64_t i) { be.lora_shrink(act, lora[i].a_d, t_d); };
          shrinks = {{"  of which: LoRA shrink (+ norm), q/k/v", sq, lb * 3 * H, 2.0 * B * 3 * R * H},
                     {"  of which: LoRA shrink, o_proj", so, lb * Hq * D, 2.0 * B * R * Hq * D},
                     {"  of which: LoRA shrink (+ norm), gate/up", sg, lb * 2 * H, 2.0 * B * 2 * R * H},
                     {"  of which: LoRA shrink, down", sd, lb * I, 2.0 * B * R * I}};
          {  // (the normalizing shrink against its parts: the plain shrink of h, and rmsnorm)
            auto ph = [&](int64_t i) { be.lora_shrink(h, lora[i].a_qkv, t_qkv); };
            auto rn = [&](int64_t i) { be.rmsnorm(x, ls[i].norm1, eps, h); };
            shrinks.push_back({"  (plain shrink of h, q/k/v's width)", ph, lb * 3 * H, 2.0 * B * 3 * R * H});
            shrinks.push_back({"  (rmsnorm alone)", rn, 2.0 * H, 0.0});
          }
        }
        char title[96];
        if (sc.q_len == 1)
          std::snprintf(title, sizeof title, "decode layer%s, %lld seq%s (28 layers, graph)",
                        shape_7b ? " (7B shape)" : shape_3b ? " (3B shape)" : with_lora ? " with LoRA" : "",
                        static_cast<long long>(S), S > 1 ? "s" : "");
        else
          std::snprintf(title, sizeof title, "prefill layer, %lld x %lld tokens (28 layers)", static_cast<long long>(S),
                        static_cast<long long>(sc.q_len));
        std::printf("\n%-44s %10s %12s %10s %12s\n", title, "us/layer", "rate", "of copy", "TFLOP/s");
        double layer_bytes = 0, layer_flops = 0;
        std::vector<double> alone_us(ops.size());
        for (size_t o = 0; o < ops.size(); ++o) {
          const Op& op = ops[o];
          const double ms = graph_ms(be, [&] { for (int64_t i = 0; i < L; ++i) op.fn(i); }, 1) / L;
          alone_us[o] = ms * 1e3;
          const double gbs = op.bytes / (ms * 1e-3) / 1e9;
          layer_bytes += op.bytes;
          layer_flops += op.flops;
          std::printf("%-44s %10.2f %7.0f GB/s %9.0f%% %12.1f\n", op.name, ms * 1e3, gbs, 100 * gbs / copy_gbs,
                      op.flops / (ms * 1e-3) / 1e12);
        }
        const double ms = graph_ms(be, [&] {
          for (int64_t i = 0; i < L; ++i)
            for (const Op& op : ops) op.fn(i);
        }, 1) / L;
        const double floor_us = std::max(layer_bytes / (copy_gbs * 1e9), layer_flops / (peak_tflops * 1e12)) * 1e6;
        std::printf("%-44s %10.2f %7.0f GB/s %9.0f%% %12.1f  (floor %.2f us: %.0f%% of it)\n", "whole layer", ms * 1e3,
                    layer_bytes / (ms * 1e-3) / 1e9, 100 * layer_bytes / (ms * 1e-3) / 1e9 / copy_gbs,
                    layer_flops / (ms * 1e-3) / 1e12, floor_us, 100 * floor_us / (ms * 1e3));
        for (const Op& op : shrinks) {
          const double sms = graph_ms(be, [&] { for (int64_t i = 0; i < L; ++i) op.fn(i); }, 1) / L;
          const double gbs = op.bytes / (sms * 1e-3) / 1e9;
          std::printf("%-44s %10.2f %7.0f GB/s %9.0f%% %12.1f\n", op.name, sms * 1e3, gbs, 100 * gbs / copy_gbs,
                      op.flops / (sms * 1e-3) / 1e12);
        }
        // Where the whole layer's excess over its launches alone sits: each launch followed by the next
        // (28 layers of the pair in a graph) against the two alone, in us per layer.
        if (sc.q_len == 1 && !lora_layers) {
          std::printf("%-44s", "pairs over their launches alone (us)");
          for (int o = 0; o < 5; ++o) {
            const Op &a = ops[o], &b = ops[(o + 1) % 5];
            const double pair_us = graph_ms(be, [&] {
              for (int64_t i = 0; i < L; ++i) {
                a.fn(i);
                b.fn(i);
              }
            }, 1) / L * 1e3;
            std::printf(" %+.2f", pair_us - alone_us[o] - alone_us[(o + 1) % 5]);
          }
          std::printf("  (q/k/v->attention, ->o_proj, ->gate/up, ->down, down->q/k/v)\n");
        }
      }  // (pass)
    }
  }

  if (layers_only && !other_shape && !lora_layers) {
    // The rest of a decode step at the 1.5B shape by its sequences: lm_head (151,936 x 1,536 bf16, the
    // GEMV for 1-2 rows, the skinny kernel for 3-4, cuBLASLt above) and the greedy draw of every row.
    const int64_t V = 151936, H = 1536;
    Tensor w = random_tensor(be, {V, H}, DType::BF16);
    std::printf("\n%-44s %10s %12s %10s %10s\n", "lm_head 151936x1536 + greedy draw", "lm_head us", "rate", "of copy",
                "draw us");
    for (int64_t T : {1, 2, 3, 4, 8, 16}) {
      const HeadTimes t = time_lm_head(be, w, T);
      const double gbs = 2.0 * V * H / (t.head_us * 1e-6) / 1e9;
      char name[64];
      std::snprintf(name, sizeof name, "%lld row%s", static_cast<long long>(T), T > 1 ? "s" : "");
      std::printf("%-44s %10.2f %7.0f GB/s %9.0f%% %10.2f\n", name, t.head_us, gbs, 100 * gbs / copy_gbs, t.draw_us);
    }
  }

  if (shape_3b) return 0;
  if (shape_7b) {
    // One token's GEMV over the same bytes in rows of different lengths (28 distinct matrices in a graph):
    // the 7B down projection (3,584 x 18,944) and the 1.5B one (1,536 x 8,960), then their rows cut in
    // 2, 4, 8 (as a split along K would see them).
    std::printf("\n%-44s %10s %12s %10s\n", "GEMV, 1 token, same bytes by row length", "us/call", "rate", "of copy");
    for (auto [N0, K0] : {std::pair<int64_t, int64_t>{3584, 18944}, {1536, 8960}})
      for (int64_t cut : {1, 2, 4, 8}) {
        const int64_t N = N0 * cut, K = K0 / cut;
        const double us = gemv_chain_us(be, DType::BF16, N, K), gbs = 2.0 * N * K / (us * 1e-6) / 1e9;
        char name[96];
        std::snprintf(name, sizeof name, "N=%lld K=%lld", static_cast<long long>(N), static_cast<long long>(K));
        std::printf("%-44s %10.2f %7.0f GB/s %9.0f%%\n", name, us, gbs, 100 * gbs / copy_gbs);
      }
    // The rest of a batch-1 step at that shape: lm_head's GEMV (152,064 x 3,584 bf16) and the greedy draw.
    const int64_t V = 152064, H = 3584;
    const HeadTimes t = time_lm_head(be, random_tensor(be, {V, H}, DType::BF16), 1);
    const double gbs = 2.0 * V * H / (t.head_us * 1e-6) / 1e9;
    std::printf("\n%-44s %10.2f %7.0f GB/s %9.0f%%\n", "lm_head 152064x3584, 1 token", t.head_us, gbs, 100 * gbs / copy_gbs);
    std::printf("%-44s %10.2f\n%-44s %10.2f\n", "greedy draw, 1 row", t.draw_us, "lm_head + draw", t.both_us);
    return 0;
  }

  // The MLP's and the attention's input projections over stacked weights (one GEMM each, as the model
  // loads them) against separate allocations (one GEMM per matrix), by token count: 28 layers back to
  // back in a graph, us per layer.
  {
    const int64_t L = 28, H = 1536, I = 8960, Nq = Hq * D, Nkv = Hk * D;
    std::vector<Tensor> gu, g, u, qkv, q, k, v, spacer;
    for (int64_t i = 0; i < L; ++i) {
      gu.push_back(random_tensor(be, {2 * I, H}, DType::BF16));
      qkv.push_back(random_tensor(be, {Nq + 2 * Nkv, H}, DType::BF16));
      for (auto [list, n] : {std::pair<std::vector<Tensor>*, int64_t>{&g, I}, {&u, I}, {&q, Nq}, {&k, Nkv}, {&v, Nkv}}) {
        list->push_back(random_tensor(be, {n, H}, DType::BF16));
        spacer.push_back(be.empty({64}, DType::F32));  // no two matrices back to back in memory
      }
    }
    for (int64_t i = 0; i < L; ++i)
      if (stacked_rows({&g[i], &u[i]}) || stacked_rows({&q[i], &k[i]}) || stacked_rows({&k[i], &v[i]}))
        std::printf("warning: separate matrices of layer %lld happen to lie back to back\n", static_cast<long long>(i));
    Tensor norm = random_tensor(be, {H}, DType::BF16), inv = random_tensor(be, {D / 2}, DType::F32, 0.01f);
    std::printf("\n%-44s %12s %12s %12s %12s\n", "input projections at T tokens (us/layer)", "gate/up: 1", "2 GEMMs",
                "q/k/v: 1", "3 GEMMs");
    for (int64_t T : {16, 64, 256, 512, 1024, 2048, 4096, 8192}) {
      const int64_t S = T >= 512 ? T / 512 : T, ql = T >= 512 ? 512 : 1;  // whole 512-token prompts, or decodes
      StepMeta m = attention_step(S, ql, ql == 1 ? 640 : 512, bs);
      be.begin_step(m);
      const int64_t blocks = S * ((std::max<int64_t>(ql, 640) + bs - 1) / bs);
      Tensor kc = be.empty({blocks, bs, Hk, D}, DType::BF16), vc = be.empty({blocks, bs, Hk, D}, DType::BF16);
      Tensor x = random_tensor(be, {T, H}, DType::F32), h = be.empty({T, H}, DType::BF16);
      Tensor scratch = be.empty({T, 2 * I}, DType::F32), act = be.empty({T, I}, DType::BF16);
      Tensor qo = be.empty({T, Nq}, DType::F32), ko = be.empty({T, Nkv}, DType::F32), vo = be.empty({T, Nkv}, DType::F32);
      double t[4];
      for (int way = 0; way < 4; ++way) {
        t[way] = graph_ms(be, [&] {
          for (int64_t i = 0; i < L; ++i) {
            if (way < 2) {
              const Tensor wg = way == 0 ? rows_view(gu[i], 0, I) : g[i], wu = way == 0 ? rows_view(gu[i], I, I) : u[i];
              be.norm_gate_up_silu(x, {norm, 1e-6f, h}, wg, wu, scratch, act);
            } else {
              const Tensor wq = way == 2 ? rows_view(qkv[i], 0, Nq) : q[i], wk = way == 2 ? rows_view(qkv[i], Nq, Nkv) : k[i];
              const Tensor wv = way == 2 ? rows_view(qkv[i], Nq + Nkv, Nkv) : v[i];
              be.norm_qkv_rope_kv_write(x, {norm, 1e-6f, h}, wq, nullptr, qo, wk, nullptr, ko, wv, nullptr, vo, nullptr, inv, D, kc, vc);
            }
          }
        }, 1) / L * 1e3;
      }
      char name[64];
      std::snprintf(name, sizeof name, "T = %lld", static_cast<long long>(T));
      std::printf("%-44s %12.2f %12.2f %12.2f %12.2f\n", name, t[0], t[1], t[2], t[3]);
    }
  }

  if (!layers_only) sampler_tables(be, copy_gbs);
  return 0;
}
