// A mixture-of-experts MLP on the device (Backend::moe's contract), for steps of few enough tokens that
// every (token, chosen expert) pair fits the launches below. Nothing goes to the host, so a CUDA graph holds
// it. Two ways (moe_token_major chooses):
//  - token-major, for 1-2 tokens: each token's chosen experts streamed for it as the decode GEMVs stream
//    their rows; two launches, the routing inside the first (gate/up + SiLU) and the weighted sum inside
//    the second (down);
//  - grouped by expert: the routing and the pairs grouped by expert (one block), each active expert's
//    gate/up + SiLU and down over its pairs (its weight rows read once per block, the pairs' rows from
//    L1 / L2), and the weighted sum; four launches.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"
#include "kernels/cuda/row_dot.cuh"

namespace llmserve::cuda {

namespace {

constexpr int kMoeWarps = 8;  // rows of an expert's matrix a block computes, a warp each

// Routes token t (a warp): the softmax over E router logits and the top k (ties to the lower index);
// choice(j, expert, probability) runs on every lane for the j-th. Returns the chosen probabilities' sum
// (what a renormalization divides by).
template <typename Choice>
__device__ __forceinline__ float route_token(const float* logits, int t, int E, int k, Choice&& choice) {
  const int lane = threadIdx.x & 31;
  const float* l = logits + static_cast<int64_t>(t) * E;
  float m = -INFINITY;
  for (int e = lane; e < E; e += 32) m = fmaxf(m, l[e]);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float z = 0.f;
  for (int e = lane; e < E; e += 32) z += __expf(l[e] - m);
  z = warp_sum(z);
  unsigned taken = 0;  // bit i: expert lane + 32 i chosen already (E <= 1024)
  float chosen = 0.f;
  for (int j = 0; j < k; ++j) {
    float best = -INFINITY;
    int at = E;
    for (int e = lane, i = 0; e < E; e += 32, ++i)
      if (!(taken >> i & 1u) && (l[e] > best || (l[e] == best && e < at))) best = l[e], at = e;
    for (int o = 16; o > 0; o >>= 1) {
      const float b = __shfl_xor_sync(0xffffffffu, best, o);
      const int a = __shfl_xor_sync(0xffffffffu, at, o);
      if (b > best || (b == best && a < at)) best = b, at = a;
    }
    if ((at & 31) == lane) taken |= 1u << (at >> 5);
    const float pj = __expf(best - m) / z;
    chosen += pj;
    choice(j, at, pj);
  }
  return chosen;
}

// One block of 1,024 threads for the whole step: the routing (route_token, a warp a token: tokens w, w + 32,
// ...) into ids / weights [T, k] (renormalized over the chosen where asked), then the pairs (t * k + j)
// grouped by expert: offsets[E + 1] (each expert's first pair in `pairs`), active[0 .. n_active) the
// experts with pairs, ascending, and n_active at active[E].
__global__ void moe_route_k(const float* logits, int T, int E, int k, bool renormalize, int32_t* ids, float* weights,
                            int32_t* offsets, int32_t* pairs, int32_t* active) {
  pdl_enter();
  extern __shared__ int32_t count[];  // [E], then cursors [E]
  int32_t* cursor = count + E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int t = threadIdx.x >> 5; t < T; t += warps) {
    const float chosen = route_token(logits, t, E, k, [&](int j, int at, float pj) {
      if (lane != 0) return;
      ids[t * k + j] = at;
      weights[t * k + j] = pj;
      atomicAdd(&count[at], 1);
    });
    if (renormalize && lane == 0)
      for (int j = 0; j < k; ++j) weights[t * k + j] /= chosen;
  }
  __syncthreads();  // (the block's global writes are visible to it past the barrier)
  if (threadIdx.x == 0) {
    int at = 0, act = 0;
    for (int e = 0; e < E; ++e) {
      offsets[e] = at;
      cursor[e] = at;
      at += count[e];
      if (count[e] > 0) active[act++] = e;
    }
    offsets[E] = at;
    active[E] = act;
  }
  __syncthreads();
  // (the order of an expert's pairs varies from run to run; each pair writes rows of its own)
  for (int i = threadIdx.x; i < T * k; i += blockDim.x) pairs[atomicAdd(&cursor[ids[i]], 1)] = i;
}

// Token-major kernels, for steps of few tokens (each chosen expert's rows read for each token that chose
// it): block (row tile, token t); its warps split into k groups of G = kMoeWarps / k (k <= kMoeWarps), warp w
// for choice j = w % k, rows g = w / k, g + G, ... of the tile, streamed as the decode GEMVs stream theirs
// (row_stream: two groups of loads in flight). The expert is known only past the wait, so no weights are
// requested before it.
constexpr int kGateUpTile = 4;  // rows i of gate (and up) a block computes for each of its token's choices
constexpr int kDownTile = 8;    // rows n of down a block computes for each choice, then sums over them

// Every warp routes its token (route_token: about as long as one memory round trip, cheaper than a launch
// of its own) and takes its choice j; gate rows i and up rows M + i of that expert, dotted with h[t]:
// act[t * k + j, i] = silu(gate_i . h) * (up_i . h). The row tile 0 blocks write ids / weights [T, k]
// (renormalized where asked) for the down kernel.
template <typename T>
__global__ void __launch_bounds__(kMoeWarps * 32)
    moe_token_gate_up_k(const T* h, const float* logits, const T* w, int E, int k, bool renormalize, int H, int M,
                        int32_t* ids, float* weights, T* act) {
  pdl_enter();
  const int t = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, G = kMoeWarps / k;
  if (warp >= G * k) return;
  const int j = warp % k, g = warp / k;
  int e = 0;
  float p = 0.f;
  const float chosen = route_token(logits, t, E, k, [&](int jj, int at, float pj) {
    if (jj == j) e = at, p = pj;
  });
  const int pair = t * k + j;
  if (blockIdx.x == 0 && g == 0 && lane == 0) {
    ids[pair] = e;
    weights[pair] = renormalize ? p / chosen : p;
  }
  const T* gate = w + static_cast<int64_t>(e) * 2 * M * H;
  const T* const mats[2] = {gate, gate + static_cast<int64_t>(M) * H};
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kGateUpTile;
  T* a = act + static_cast<int64_t>(pair) * M;
  row_stream<T, 1, 2>(h + static_cast<int64_t>(t) * H, mats, nullptr, H, base + g, G,
                      min(static_cast<int64_t>(M), base + kGateUpTile), lane, [] {}, [&](int64_t i, const float(&acc)[2][1]) {
                        if (lane == 0) a[i] = from_f<T>(acc[0][0] / (1.f + __expf(-acc[0][0])) * acc[1][0]);
                      });
}

// Down rows n of each choice's expert dotted with its act row, then out[t, n] (+)= the sum over j of
// weights[t, j] times them (j in routing order, as moe_combine_k sums).
template <typename T>
__global__ void __launch_bounds__(kMoeWarps * 32)
    moe_token_down_k(const T* act, const T* w, const int32_t* ids, const float* weights, int k, int H, int M,
                     bool accumulate, float* out) {
  pdl_enter();
  __shared__ float part[kMoeWarps][kDownTile];
  const int t = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, G = kMoeWarps / k;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kDownTile;
  if (warp < G * k) {
    const int j = warp % k, g = warp / k, pair = t * k + j;
    const T* const mats[1] = {w + static_cast<int64_t>(ids[pair]) * H * M};
    row_stream<T, 1, 1>(act + static_cast<int64_t>(pair) * M, mats, nullptr, M, base + g, G,
                        min(static_cast<int64_t>(H), base + kDownTile), lane, [] {}, [&](int64_t n, const float(&acc)[1][1]) {
                          if (lane == 0) part[j][n - base] = acc[0][0];
                        });
  }
  __syncthreads();
  const int64_t n = base + threadIdx.x;
  if (threadIdx.x >= kDownTile || n >= H) return;
  float s = 0.f;
  for (int j = 0; j < k; ++j) s = fmaf(weights[t * k + j], part[j][threadIdx.x], s);
  float* o = out + static_cast<int64_t>(t) * H + n;
  *o = accumulate ? *o + s : s;
}

// Dot product of a weight row and an input row of K elements, V at a time over the warp's lanes.
template <typename T, int V>
__device__ __forceinline__ float row_dot(const T* w, const T* x, int K, int lane) {
  float acc = 0.f;
  for (int c = lane * V; c < K; c += 32 * V) {
    float a[V], b[V];
    load_vec<V>(w + c, a);
    load_vec<V>(x + c, b);
#pragma unroll
    for (int i = 0; i < V; ++i) acc = fmaf(a[i], b[i], acc);
  }
  return warp_sum(acc);
}

// Block (row tile, slot s): expert active[s]'s gate rows i and up rows M + i (i a warp's row) over its pairs:
// act[pair, i] = silu(gate_i . h[pair / k]) * (up_i . h[pair / k]).
template <typename T, int V>
__global__ void moe_gate_up_k(const T* h, const T* w, const int32_t* offsets, const int32_t* pairs, const int32_t* active,
                              int E, int k, int H, int M, T* act) {
  pdl_enter();
  if (static_cast<int>(blockIdx.y) >= active[E]) return;
  const int e = active[blockIdx.y], lane = threadIdx.x & 31;
  const int i = blockIdx.x * kMoeWarps + (threadIdx.x >> 5);
  if (i >= M) return;
  const T* g = w + (static_cast<int64_t>(e) * 2 * M + i) * H;
  const T* u = g + static_cast<int64_t>(M) * H;
  for (int p = offsets[e]; p < offsets[e + 1]; ++p) {
    const int pair = pairs[p];
    const T* x = h + static_cast<int64_t>(pair / k) * H;
    const float gv = row_dot<T, V>(g, x, H, lane), uv = row_dot<T, V>(u, x, H, lane);
    if (lane == 0) act[static_cast<int64_t>(pair) * M + i] = from_f<T>(gv / (1.f + __expf(-gv)) * uv);
  }
}

// Block (row tile, slot s): expert active[s]'s down rows n over its pairs: y[pair, n] = down_n . act[pair].
template <typename T, int V>
__global__ void moe_down_k(const T* act, const T* w, const int32_t* offsets, const int32_t* pairs, const int32_t* active,
                           int E, int H, int M, float* y) {
  pdl_enter();
  if (static_cast<int>(blockIdx.y) >= active[E]) return;
  const int e = active[blockIdx.y], lane = threadIdx.x & 31;
  const int n = blockIdx.x * kMoeWarps + (threadIdx.x >> 5);
  if (n >= H) return;
  const T* d = w + (static_cast<int64_t>(e) * H + n) * M;
  for (int p = offsets[e]; p < offsets[e + 1]; ++p) {
    const int pair = pairs[p];
    const float v = row_dot<T, V>(d, act + static_cast<int64_t>(pair) * M, M, lane);
    if (lane == 0) y[static_cast<int64_t>(pair) * H + n] = v;
  }
}

// out[t, n] (+)= sum over j of weights[t, j] * y[t * k + j, n] (j in routing order).
__global__ void moe_combine_k(const float* y, const float* weights, int T, int k, int H, bool accumulate, float* out) {
  pdl_enter();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(T) * H) return;
  const int64_t t = i / H, n = i % H;
  float acc = 0.f;
  for (int j = 0; j < k; ++j) acc = fmaf(weights[t * k + j], y[(t * k + j) * H + n], acc);
  out[i] = accumulate ? out[i] + acc : acc;
}

}  // namespace

bool moe_on_device_fits(int64_t T, int64_t E, int k, int64_t H, int64_t M) {
  return T * k <= kMoeMaxPairs && E <= 1024 && H % 8 == 0 && M % 8 == 0 && H < (1 << 24) && M < (1 << 24);
}

size_t moe_scratch_bytes(int64_t T, int64_t E, int k, int64_t H, int64_t M, size_t elem) {
  const int64_t n = T * k;
  auto round = [](size_t b) { return (b + 255) / 256 * 256; };
  return round(n * 4) * 3 + round((E + 1) * 4) * 2 + round(n * M * elem) + round(n * H * 4);
}

bool moe_token_major(int64_t T, int k, MoePath path) {
  return k <= kMoeWarps && (path == MoePath::Tokens || (path == MoePath::Auto && T <= kMoeTokenMajorMax));
}

template <typename T>
void moe(const T* h, const float* logits, const T* gate_up, const T* down, int64_t T_, int64_t E, int k, bool renormalize,
         int64_t H, int64_t M, void* scratch, float* out, bool accumulate, cudaStream_t s, MoePath path) {
  const int64_t n = T_ * k;
  auto round = [](size_t b) { return (b + 255) / 256 * 256; };
  char* at = static_cast<char*>(scratch);
  auto take = [&](size_t bytes) {
    char* p = at;
    at += round(bytes);
    return p;
  };
  auto* ids = reinterpret_cast<int32_t*>(take(n * 4));
  auto* weights = reinterpret_cast<float*>(take(n * 4));
  auto* pairs = reinterpret_cast<int32_t*>(take(n * 4));
  auto* offsets = reinterpret_cast<int32_t*>(take((E + 1) * 4));
  auto* active = reinterpret_cast<int32_t*>(take((E + 1) * 4));
  auto* act = reinterpret_cast<T*>(take(n * M * sizeof(T)));
  auto* y = reinterpret_cast<float*>(take(n * H * 4));
  const int Ti = static_cast<int>(T_), Ei = static_cast<int>(E), Hi = static_cast<int>(H), Mi = static_cast<int>(M);
  if (moe_token_major(T_, k, path)) {
    launch("moe_token_gate_up", moe_token_gate_up_k<T>, dim3(blocks_for(M, kGateUpTile), static_cast<unsigned>(T_)),
           kMoeWarps * 32, 0, s, h, logits, gate_up, Ei, k, renormalize, Hi, Mi, ids, weights, act);
    launch("moe_token_down", moe_token_down_k<T>, dim3(blocks_for(H, kDownTile), static_cast<unsigned>(T_)), kMoeWarps * 32,
           0, s, static_cast<const T*>(act), down, static_cast<const int32_t*>(ids), static_cast<const float*>(weights), k,
           Hi, Mi, accumulate, out);
    return;
  } else {
    launch("moe_route", moe_route_k, 1, 1024, static_cast<size_t>(2 * E * 4), s, logits, Ti, Ei, k, renormalize, ids,
           weights, offsets, pairs, active);
    constexpr int V = 16 / sizeof(T);
    const unsigned slots = static_cast<unsigned>(std::min<int64_t>(E, n));
    launch("moe_gate_up", moe_gate_up_k<T, V>, dim3(blocks_for(M, kMoeWarps), slots), kMoeWarps * 32, 0, s, h, gate_up,
           static_cast<const int32_t*>(offsets), static_cast<const int32_t*>(pairs), static_cast<const int32_t*>(active),
           Ei, k, Hi, Mi, act);
    launch("moe_down", moe_down_k<T, V>, dim3(blocks_for(H, kMoeWarps), slots), kMoeWarps * 32, 0, s,
           static_cast<const T*>(act), down, static_cast<const int32_t*>(offsets), static_cast<const int32_t*>(pairs),
           static_cast<const int32_t*>(active), Ei, Hi, Mi, y);
  }
  launch("moe_combine", moe_combine_k, blocks_for(T_ * H, 256), 256, 0, s, static_cast<const float*>(y),
         static_cast<const float*>(weights), Ti, k, Hi, accumulate, out);
}

#define X(T)                                                                                                    \
  template void moe<T>(const T*, const float*, const T*, const T*, int64_t, int64_t, int, bool, int64_t, int64_t, \
                       void*, float*, bool, cudaStream_t, MoePath);
LLMSERVE_FOR_EACH_TYPE(X)
#undef X

}  // namespace llmserve::cuda
