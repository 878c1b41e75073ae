// The sampler's draw on the GPU (counterpart of kernels/cpu/draw.cpp): penalty edits applied in place
// (a thread per edit); for rows with filters, a block per row finds the smallest value the row keeps
// (top-k, min-p, top-p: exact thresholds by bisection over the bits of an order-preserving integer key
// of the value, each step one counting or summing pass over the candidates gathered near the top of the
// row, which that block then draws from); the other rows are scanned by one or more blocks per row,
// each thread keeping its best (score, token), and the block (and, for a row split over blocks, a
// second kernel) reduces them with ties to the smaller token. Scores are doubles as on the host, so
// the draws are the host's.
#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kThreads = 256;

// Keeps the better of two (score, token) candidates: higher score, ties to the smaller token.
__device__ __forceinline__ void keep_best(double& bv, int64_t& bi, double ov, int64_t oi) {
  if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
}

// Row i's draw from its best (score, token) (none: -inf and INT32_MAX).
__device__ __forceinline__ void write_draw(float* best, int32_t* idx, int64_t i, int64_t token_offset, double bv, int64_t bi) {
  const bool found = bi != INT64_MAX;
  best[i] = found ? static_cast<float>(bv) : -INFINITY;
  idx[i] = found ? static_cast<int32_t>(token_offset + bi) : INT32_MAX;
}

// Block-wide best of every thread's candidate (any block size up to 1,024); thread 0 gets it.
__device__ __forceinline__ void block_best(double& bv, int64_t& bi) {
  __shared__ double sv[32];
  __shared__ int64_t si[32];
  auto warp_best = [&] {
    for (int o = 16; o > 0; o >>= 1)
      keep_best(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
  };
  warp_best();
  if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = bv, si[threadIdx.x >> 5] = bi;
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const bool has = threadIdx.x < (blockDim.x + 31) / 32;
  bv = has ? sv[threadIdx.x] : -INFINITY;
  bi = has ? si[threadIdx.x] : INT64_MAX;
  warp_best();
}

// Calls f(k, row[k]) for the k in [lo, hi) that thread t of nt owns, in no particular order: 16-byte
// loads, U of them issued together, so that a block streaming a row keeps enough bytes in flight for
// the memory system (a 4-byte load per thread at a time reached about 200 GB/s over a step's rows).
template <int U, typename F>
__device__ __forceinline__ void for_row(const float* row, int64_t lo, int64_t hi, int t, int nt, F&& f) {
  const int64_t skew = static_cast<int64_t>((reinterpret_cast<uintptr_t>(row + lo) / sizeof(float)) & 3);
  const int64_t a = min(hi, lo + (skew ? 4 - skew : 0));  // first 16-byte aligned element
  for (int64_t k = lo + t; k < a; k += nt) f(k, row[k]);
  const int64_t nv = (hi - a) / 4;
  const float4* v = reinterpret_cast<const float4*>(row + a);
  auto take = [&](int64_t j, const float4& x) {
    const int64_t k = a + 4 * j;
    f(k, x.x), f(k + 1, x.y), f(k + 2, x.z), f(k + 3, x.w);
  };
  int64_t j = t;
  for (; j + static_cast<int64_t>(U - 1) * nt < nv; j += static_cast<int64_t>(U) * nt) {
    float4 x[U];
#pragma unroll
    for (int u = 0; u < U; ++u) x[u] = v[j + static_cast<int64_t>(u) * nt];
#pragma unroll
    for (int u = 0; u < U; ++u) take(j + static_cast<int64_t>(u) * nt, x[u]);
  }
  for (; j < nv; j += nt) take(j, v[j]);
  for (int64_t k = a + 4 * nv + t; k < hi; k += nt) f(k, row[k]);
}

// Order-preserving integer key of a float (larger value, larger key) and back.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}


// Threads of a filter block: 256 (two blocks per SM: a 256-row step in one wave) measured 370-377 us
// per 256 x 151,936 step against 384-388 us with 512 (one block per SM).
constexpr int kFilterThreads = 256;

// Row mask_rows[blockIdx.y]'s columns its bitmap does not allow become -inf: a warp per 64-column word
// (each lane two columns), 8 words a block.
__global__ void masks_k(float* logits, int64_t stride, int64_t L, const int32_t* mask_rows, const uint64_t* mask_bits) {
  pdl_enter();  // (the logits are the kernels' before it)
  const int64_t words = mask_words(L);
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (w >= words) return;
  const uint64_t bits = mask_bits[blockIdx.y * words + w];
  float* row = logits + static_cast<int64_t>(mask_rows[blockIdx.y]) * stride;
  for (int64_t k = threadIdx.x % 32; k < 64; k += 32) {
    const int64_t c = w * 64 + k;
    if (c < L && !((bits >> k) & 1u)) row[c] = -INFINITY;
  }
}

__global__ void edits_k(float* logits, int64_t stride, const LogitEdit* edits, int64_t n) {
  pdl_enter();
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= n) return;
  float& l = logits[edits[e].row * stride + edits[e].col];
  l = apply_logit_edit(l, edits[e]);
}

// Values x_k = p[k] * mul, k < n: a row of logits at its temperature, or candidates gathered from it.
struct Values {
  const float* p;
  int64_t n;
  float mul;
  __device__ float operator[](int64_t k) const { return p[k] * mul; }
};

// The largest key with at least k values at or above it (the key of the k-th largest value); keys up
// to floor_key are known to qualify.
__device__ uint32_t kth_key(const Values& v, int k, uint32_t floor_key) {
  uint32_t key = 0;
  for (int b = 31; b >= 0; --b) {
    const uint32_t cand = key | (1u << b);
    int c = 0;
    for (int64_t i = threadIdx.x; i < v.n; i += kFilterThreads) c += order_key(v[i]) >= cand;
    c = block_reduce(c, [](int a, int b2) { return a + b2; }, 0);
    if (cand <= floor_key || c >= k) key = cand;
  }
  return key;
}

// sum of e^(x - mx) over the values x >= kp whose key is at least lo, in double.
__device__ double mass_above(const Values& v, float kp, float mx, uint32_t lo) {
  double z = 0;
  for (int64_t i = threadIdx.x; i < v.n; i += kFilterThreads) {
    const float x = v[i];
    if (x >= kp && x != -INFINITY && order_key(x) >= lo) z += exp(static_cast<double>(x) - mx);
  }
  return block_reduce(z, [](double a, double b2) { return a + b2; }, 0.0);
}

// Cuts below the row's largest value at which the candidates are counted (first ladder mx - 2^(j-7),
// j < kLadder: 1/128 to 32; at most kRounds ladders, see keep_threshold_k), and how many candidates
// shared memory holds.
constexpr int kLadder = 13, kRounds = 3;
constexpr int kCandidates = 5120;  // values and tokens: 40 KB of shared memory
__device__ __forceinline__ float ladder_cut(float mx, int j) { return mx - ldexpf(1.f, j - 7); }

// keep[i]: the smallest x = logit * inv_temperature row i keeps (see RowDraw; -inf: all). A pass finds
// the largest value mx; a second counts the values above each of a ladder of cuts below mx (and, for
// top-p without top-k, sums their probability mass), which says how far down the thresholds can lie;
// the values above the highest cut with enough of them (at most kCandidates, finer ladders between
// two rungs where more) are gathered into shared memory and the bisections run there, and then the
// row is drawn from them (its best[i] and idx[i] written, keep[i] = NaN telling draw_rows_k so; thr[i],
// when thr is not null, gets the threshold itself either way: processed log-probabilities). Rows
// too flat for that (or asking for more than kCandidates) run the bisections over the whole row and
// are drawn by draw_rows_k. (H200, 256 rows x 151,936, top-k 50 + top-p 0.9: 776 us with a 4-byte
// load per thread in flight, 368 with for_row, 376 drawing the candidates here, which spares
// draw_rows_k's 93 us pass over the rows.)
__global__ void __launch_bounds__(kFilterThreads)
    keep_threshold_k(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
                     float* keep, float* thr, float* best, int32_t* idx) {
  pdl_enter();
  const int64_t i = blockIdx.x;
  auto put = [&](float k, float t) {  // (thread 0)
    keep[i] = k;
    if (thr) thr[i] = t;
  };
  const RowDraw r = rows[i];
  const float* row = logits + i * stride;
  const float mul = r.inv_temperature;
  const Values all{row, L, mul};
  if (!r.filtered()) {
    if (threadIdx.x == 0) put(-INFINITY, -INFINITY);
    return;
  }
  const int t = threadIdx.x;
  float mx = -INFINITY;
  for_row<4>(row, 0, L, t, kFilterThreads, [&](int64_t, float l) { mx = fmaxf(mx, l * mul); });
  mx = block_reduce(mx, [](float a, float b) { return fmaxf(a, b); }, -INFINITY);
  const float tmin = mx + r.log_min_p;  // min-p (-inf when off)
  const bool topk = r.top_k > 0 && r.top_k < L, topp = r.top_p < 1.0;
  if (mx == -INFINITY || (!topk && !topp)) {
    if (t == 0) put(mx == -INFINITY ? -INFINITY : tmin, mx == -INFINITY ? -INFINITY : tmin);
    return;
  }
  // The ladder: finite values above each cut and, where the mass picks the cut (top-p without top-k),
  // the mass above it of the values min-p keeps and the total of that mass. The first cut with enough
  // values above it is the pick if they fit in shared memory; if they do not, the next pass divides
  // the interval above that cut into kLadder finer cuts (a row whose largest value stands apart from
  // the rest puts thousands of values between two rungs of the first ladder).
  const bool by_mass = topp && !topk;
  const double target = r.top_p - 1e-7;
  constexpr int kWarps = kFilterThreads / 32;
  __shared__ int wcnt[kWarps][kLadder];
  __shared__ double wmass[kWarps][kLadder];
  float cut[kLadder];
#pragma unroll
  for (int j = 0; j < kLadder; ++j) cut[j] = ladder_cut(mx, j);
  int pick = -1;
  float lo = -INFINITY;
  double total = 0;
  for (int round = 0; round < kRounds && pick < 0; ++round) {
    int cnt[kLadder];
    double mass[kLadder];
#pragma unroll
    for (int j = 0; j < kLadder; ++j) cnt[j] = 0, mass[j] = 0;
    total = 0;
    auto ladder = [&](auto with_mass) {
      constexpr bool M = decltype(with_mass)::value;
      for_row<4>(row, 0, L, t, kFilterThreads, [&](int64_t, float l) {
        const float x = l * mul;
        if (x == -INFINITY) return;
        double e = 0;
        if constexpr (M) e = x >= tmin ? exp(static_cast<double>(x) - mx) : 0.0, total += e;
#pragma unroll
        for (int j = 0; j < kLadder; ++j)
          if (x >= cut[j]) {
            ++cnt[j];
            if constexpr (M) mass[j] += e;
          }
      });
    };
    if (by_mass)
      ladder(std::true_type{});
    else
      ladder(std::false_type{});
    // The block's sums of all rungs together: each warp's into shared memory, then every thread adds them.
#pragma unroll
    for (int j = 0; j < kLadder; ++j) {
      for (int o = 16; o > 0; o >>= 1) {
        cnt[j] += __shfl_xor_sync(0xffffffffu, cnt[j], o);
        if (by_mass) mass[j] += __shfl_xor_sync(0xffffffffu, mass[j], o);
      }
      if ((t & 31) == 0) wcnt[t >> 5][j] = cnt[j], wmass[t >> 5][j] = mass[j];
    }
    if (by_mass) total = block_reduce(total, [](double a, double b2) { return a + b2; }, 0.0);
    __syncthreads();
    int first = -1, c = 0;
    for (int j = 0; j < kLadder && first < 0; ++j) {
      double m = 0;
      c = 0;
      for (int w = 0; w < kWarps; ++w) c += wcnt[w][j], m += wmass[w][j];
      // Top-k needs its k largest above the cut; top-p alone needs its mass there.
      if (topk ? c >= r.top_k : m / static_cast<float>(total) >= target) first = j;
    }
    __syncthreads();  // wcnt and wmass are written again by the next round
    if (first < 0) break;  // the thresholds lie below every cut: the whole row
    float hi = mx, at = 0;  // cut[first - 1] and cut[first] (unrolled: cut stays in registers)
#pragma unroll
    for (int j = 0; j < kLadder; ++j) {
      if (j == first - 1) hi = cut[j];
      if (j == first) at = cut[j];
    }
    if (c <= kCandidates) {
      pick = first, lo = at;
    } else {
      const float step = (hi - at) / kLadder;
#pragma unroll
      for (int j = 0; j < kLadder; ++j) cut[j] = hi - step * static_cast<float>(j + 1);
    }
  }
  Values v = all;
  uint32_t floor_key = 0;
  __shared__ float cand[kCandidates];
  __shared__ int32_t cand_k[kCandidates];
  __shared__ int num;
  if (pick >= 0) {
    if (t == 0) num = 0;
    __syncthreads();
    for_row<4>(row, 0, L, t, kFilterThreads, [&](int64_t k, float l) {
      const float x = l * mul;
      if (x == -INFINITY || x < lo) return;
      const int c = atomicAdd(&num, 1);
      cand[c] = x, cand_k[c] = static_cast<int32_t>(k);
    });
    __syncthreads();
    v = Values{cand, num, 1.f};
    floor_key = order_key(lo);  // every value above the cut is a candidate: lower keys qualify
  }
  float kp = topk ? key_value(kth_key(v, r.top_k, floor_key)) : -INFINITY;
  kp = fmaxf(kp, tmin);
  if (topp) {  // the largest kept value u with sum_{x >= u} e^(x - mx) / z >= top_p - 1e-7
    // Without top-k the kept values are those min-p keeps, summed by the ladder pass; with it, all
    // of them are among the candidates.
    const double s = topk ? mass_above(v, kp, mx, 0) : total, z = static_cast<float>(s);
    if (s / z >= target) {
      uint32_t key = 0;
      for (int b = 31; b >= 0; --b) {
        const uint32_t c = key | (1u << b);
        if (c <= floor_key || mass_above(v, kp, mx, c) / z >= target) key = c;
      }
      kp = fmaxf(kp, key_value(key));
    }
  }
  if (pick < 0) {
    if (t == 0) put(kp, kp);
    return;
  }
  // Every value the row keeps is a candidate: the draw of draw_rows_k over them.
  double bv = -INFINITY;
  int64_t bi = INT64_MAX;
  for (int c = t; c < num; c += kFilterThreads)
    if (cand[c] >= kp) keep_best(bv, bi, cand[c] + draw_gumbel(r.seed, r.position, token_offset + cand_k[c]), cand_k[c]);
  block_best(bv, bi);
  if (t != 0) return;
  write_draw(best, idx, i, token_offset, bv, bi);
  put(NAN, kp);
}

// Block (row i, part) scans its part of row i; with one part it writes the row's draw, otherwise the
// part's candidate, which draw_merge_k reduces.
__global__ void __launch_bounds__(kThreads)
    draw_rows_k(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows, float* best,
                const float* keep, int32_t* idx, double* part_v, int64_t* part_i) {
  pdl_enter();
  const int64_t i = blockIdx.x, parts = gridDim.y, per = (L + parts - 1) / parts;
  const int64_t lo = blockIdx.y * per, hi = min(L, lo + per);
  const float* row = logits + i * stride;
  const RowDraw r = rows[i];
  const float kp = keep ? keep[i] : -INFINITY;
  if (isnan(kp)) return;  // drawn by keep_threshold_k
  double bv = -INFINITY;
  int64_t bi = INT64_MAX;
  for_row<4>(row, lo, hi, threadIdx.x, kThreads, [&](int64_t k, float l) {
    const float x = r.greedy ? l : l * r.inv_temperature;
    if (x == -INFINITY || x < kp) return;
    const double score = r.greedy ? static_cast<double>(x) : x + draw_gumbel(r.seed, r.position, token_offset + k);
    keep_best(bv, bi, score, k);
  });
  block_best(bv, bi);
  if (threadIdx.x != 0) return;
  if (parts > 1) {
    part_v[i * parts + blockIdx.y] = bv;
    part_i[i * parts + blockIdx.y] = bi;
    return;
  }
  write_draw(best, idx, i, token_offset, bv, bi);
}

__global__ void __launch_bounds__(kThreads)
    draw_merge_k(const double* part_v, const int64_t* part_i, int64_t parts, int64_t token_offset, const float* keep,
                 float* best, int32_t* idx) {
  pdl_enter();
  const int64_t i = blockIdx.x;
  if (keep && isnan(keep[i])) return;  // drawn by keep_threshold_k
  double bv = -INFINITY;
  int64_t bi = INT64_MAX;
  for (int64_t p = threadIdx.x; p < parts; p += kThreads) keep_best(bv, bi, part_v[i * parts + p], part_i[i * parts + p]);
  block_best(bv, bi);
  if (threadIdx.x == 0) write_draw(best, idx, i, token_offset, bv, bi);
}

// Log-probability statistics (kernels/draw.h) of row rows[j]: block (j, part) scans its part of the
// row, each thread keeping a running (max, sum of e^(l - max)) and its KM largest logits in a sorted
// list in registers (KM a compile-time bound on K, so the lists never go to local memory: with a
// runtime-indexed list each logit's test read it there, 194 us for 256 rows at K = 5 against 72 at
// K = 0 on an H200); the block combines the sums and takes the K largest of the threads' lists in K
// rounds of a block-wide maximum over the lists' heads (a (value, token) key: larger value, then
// smaller token). With one part the block writes the row's results, otherwise its part's, which
// logprob_merge_k combines (a row is split when the rows alone would leave SMs idle, as the draw's).
// With views, of the values views[j] makes of the row's logits (LogprobView: processed log-probabilities).
constexpr int kLogprobThreads = 256;

__device__ __forceinline__ unsigned long long top_key(float v, int32_t id) {  // 0: none
  if (v == -INFINITY) return 0ull;
  return (static_cast<unsigned long long>(order_key(v)) << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}
__device__ __forceinline__ float top_key_value(unsigned long long k) {
  return k ? key_value(static_cast<uint32_t>(k >> 32)) : -INFINITY;
}
__device__ __forceinline__ int32_t top_key_token(unsigned long long k) {
  return k ? static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(k)) : -1;
}

// The KM largest (value, token) pairs offered, largest first; an equal value keeps the earlier entry
// (keep_top's order, for tokens offered in increasing order).
template <int KM>
struct TopList {
  float v[KM > 0 ? KM : 1];
  int32_t id[KM > 0 ? KM : 1];
  __device__ __forceinline__ void init() {
#pragma unroll
    for (int p = 0; p < KM; ++p) v[p] = -INFINITY, id[p] = -1;
  }
  __device__ __forceinline__ void offer(float x, int32_t t) {
    if constexpr (KM > 0) {
      if (!(x > v[KM - 1])) return;
      bool moved = false;  // from the insertion point on, every entry moves down one place
#pragma unroll
      for (int p = 0; p < KM; ++p) {
        const bool take = moved || x > v[p];
        if (take) {
          const float tv = v[p];
          const int32_t ti = id[p];
          v[p] = x, id[p] = t, x = tv, t = ti;
        }
        moved = take;
      }
    }
  }
  // The key of entry `at` (0 past the list), without indexing the registers at run time.
  __device__ __forceinline__ unsigned long long key(int at) const {
    unsigned long long k = 0;
#pragma unroll
    for (int p = 0; p < KM; ++p)
      if (p == at) k = top_key(v[p], id[p]);
    return k;
  }
};

// The K largest keys of the block's threads (each offering its own sorted list through next(), which
// advances it when its head was taken), written to top_v/top_i by thread 0.
template <typename Head, typename Next>
__device__ __forceinline__ void block_top(int K, Head head, Next next, float* top_v, int32_t* top_i) {
  for (int r = 0; r < K; ++r) {
    const unsigned long long mine = head();
    const unsigned long long best =
        block_reduce(mine, [](unsigned long long a, unsigned long long b) { return a > b ? a : b; }, 0ull);
    if (threadIdx.x == 0) top_v[r] = top_key_value(best), top_i[r] = top_key_token(best);
    if (best && mine == best) next();
  }
}

template <int KM>
__global__ void __launch_bounds__(kLogprobThreads)
    row_logprobs_k(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const int32_t* rows,
                   const int32_t* chosen, int K, float* stats, float* top_v, int32_t* top_i, float* part_s,
                   float* part_v, int32_t* part_i, const LogprobView* views) {
  pdl_enter();
  const int64_t j = blockIdx.x, parts = gridDim.y, per = (L + parts - 1) / parts;
  const int64_t lo = blockIdx.y * per, hi = min(L, lo + per);
  const float* row = logits + rows[j] * stride;
  const LogprobView view = views ? views[j] : LogprobView{};
  float mx = -INFINITY, sum = 0.f;
  TopList<KM> top;
  top.init();
  for_row<4>(row, lo, hi, threadIdx.x, kLogprobThreads, [&](int64_t k, float l) {
    const float x = view(l, token_offset + k);
    if (x == -INFINITY) return;
    if (x > mx) {
      sum = sum * __expf(mx - x) + 1.f;
      mx = x;
    } else {
      sum += __expf(x - mx);
    }
    top.offer(x, static_cast<int32_t>(token_offset + k));
  });
  const float bmx = block_reduce(mx, [](float a, float b) { return fmaxf(a, b); }, -INFINITY);
  const float bsum = block_sum(mx == -INFINITY ? 0.f : sum * __expf(mx - bmx));
  const int64_t slot = parts > 1 ? j * parts + blockIdx.y : j;
  float* out_v = parts > 1 ? part_v + slot * K : top_v + j * K;
  int32_t* out_i = parts > 1 ? part_i + slot * K : top_i + j * K;
  if (threadIdx.x == 0) {
    if (parts > 1) {
      part_s[2 * slot] = bmx, part_s[2 * slot + 1] = bsum;
    } else {
      const int64_t c = chosen[j] - token_offset;
      stats[3 * j] = bmx, stats[3 * j + 1] = bsum, stats[3 * j + 2] = c >= 0 && c < L ? view(row[c], chosen[j]) : 0.f;
    }
  }
  int head = 0;
  block_top(K, [&] { return top.key(head); }, [&] { ++head; }, out_v, out_i);
}

// Row rows[j]'s results from its parts' (one block per row, a thread per part).
__global__ void __launch_bounds__(kLogprobThreads)
    logprob_merge_k(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const int32_t* rows,
                    const int32_t* chosen, int K, int parts, const float* part_s, const float* part_v,
                    const int32_t* part_i, float* stats, float* top_v, int32_t* top_i, const LogprobView* views) {
  pdl_enter();
  const int64_t j = blockIdx.x;
  const int p = threadIdx.x;
  const bool own = p < parts;
  const float pm = own ? part_s[2 * (j * parts + p)] : -INFINITY, ps = own ? part_s[2 * (j * parts + p) + 1] : 0.f;
  const float bmx = block_reduce(pm, [](float a, float b) { return fmaxf(a, b); }, -INFINITY);
  const float bsum = block_sum(pm == -INFINITY ? 0.f : ps * __expf(pm - bmx));
  if (threadIdx.x == 0) {
    const int64_t c = chosen[j] - token_offset;
    stats[3 * j] = bmx, stats[3 * j + 1] = bsum;
    const LogprobView view = views ? views[j] : LogprobView{};
    stats[3 * j + 2] = c >= 0 && c < L ? view(logits[rows[j] * stride + c], chosen[j]) : 0.f;
  }
  const float* lv = part_v + (j * parts + p) * K;
  const int32_t* li = part_i + (j * parts + p) * K;
  int head = 0;
  block_top(K, [&] { return own && head < K ? top_key(lv[head], li[head]) : 0ull; }, [&] { ++head; }, top_v + j * K,
            top_i + j * K);
}

// Block j counts the logits of row rows[j] at or above thresholds[j].
__global__ void __launch_bounds__(kLogprobThreads)
    count_at_least_k(const float* logits, int64_t stride, int64_t L, const int32_t* rows, const float* thresholds,
                     int32_t* counts) {
  pdl_enter();
  const int64_t j = blockIdx.x;
  const float t = thresholds[j];
  float c = 0.f;  // exact below 2^24 per thread
  for_row<4>(logits + rows[j] * stride, 0, L, threadIdx.x, kLogprobThreads, [&](int64_t, float x) { c += x >= t; });
  const float total = block_sum(c);
  if (threadIdx.x == 0) counts[j] = static_cast<int32_t>(total);
}

}  // namespace

void count_at_least(const float* logits, int64_t stride, int64_t L, const int32_t* rows, const float* thresholds,
                    int64_t m, int32_t* counts, cudaStream_t s) {
  if (m == 0) return;
  launch("count_at_least", count_at_least_k, static_cast<unsigned>(m), kLogprobThreads, 0, s, logits, stride, L, rows,
         thresholds, counts);
}

void draw_rows(float* logits, int64_t n, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
               const LogitEdit* edits, int64_t num_edits, bool filtered, float* best, int32_t* idx, cudaStream_t s,
               float* thresholds, const int32_t* mask_rows, int64_t num_masks, const uint64_t* mask_bits) {
  if (n == 0) return;
  if (num_edits > 0)
    launch("draw_rows edits", edits_k, blocks_for(num_edits, 256), 256, 0, s, logits, stride, edits, num_edits);
  if (num_masks > 0) {
    const dim3 grid(static_cast<unsigned>(blocks_for(mask_words(L), 256 / 32)), static_cast<unsigned>(num_masks));
    launch("draw_rows masks", masks_k, grid, 256, 0, s, logits, stride, L, mask_rows, mask_bits);
  }
  float* keep = nullptr;
  if (filtered) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&keep), sizeof(float) * n, s), "draw scratch");
    launch("draw_rows filters", keep_threshold_k, static_cast<unsigned>(n), kFilterThreads, 0, s, logits, stride, L,
           token_offset, rows, keep, thresholds, best, idx);
  }
  // A row is split over several blocks when the rows alone would leave SMs idle (a decode step of a
  // few sequences): one block scanning 150k logits is bound by its own memory latency.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>((2 * sm_count() + n - 1) / n, L / (16 * kThreads)));
  double* part_v = nullptr;
  int64_t* part_i = nullptr;
  if (parts > 1) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&part_v), sizeof(double) * n * parts, s), "draw scratch");
    check(cudaMallocAsync(reinterpret_cast<void**>(&part_i), sizeof(int64_t) * n * parts, s), "draw scratch");
  }
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(parts));
  launch("draw_rows", draw_rows_k, grid, kThreads, 0, s, logits, stride, L, token_offset, rows, best, keep, idx, part_v,
         part_i);
  if (parts > 1) {
    launch("draw_rows merge", draw_merge_k, static_cast<unsigned>(n), kThreads, 0, s, part_v, part_i, parts, token_offset,
           keep, best, idx);
    cudaFreeAsync(part_v, s);
    cudaFreeAsync(part_i, s);
  }
  if (keep) cudaFreeAsync(keep, s);
}

void row_logprobs(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const int32_t* rows,
                  const int32_t* chosen, int64_t m, int K, float* stats, float* top_v, int32_t* top_i, cudaStream_t s,
                  const LogprobView* views) {
  if (m == 0) return;
  // Parts per row: as many as one wave of resident blocks holds (the K = 20 instance's 110 registers
  // leave room for two blocks per SM where K = 5's 46 leave five: with the draw's two blocks per SM
  // assumed, 256 rows of K = 20 ran in two waves), at least 16 logits a thread, at most one part per
  // merging thread.
  auto resident = [](auto kernel) {
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kLogprobThreads, 0), "row_logprobs occupancy");
    return static_cast<int64_t>(std::max(per_sm, 1)) * sm_count();
  };
  static const int64_t wave[5] = {resident(row_logprobs_k<0>), resident(row_logprobs_k<1>), resident(row_logprobs_k<5>),
                                  resident(row_logprobs_k<10>), resident(row_logprobs_k<20>)};
  const int bucket = K == 0 ? 0 : K == 1 ? 1 : K <= 5 ? 2 : K <= 10 ? 3 : 4;
  const int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>({wave[bucket] / m, L / (16 * kLogprobThreads), kLogprobThreads}));
  float *part_s = nullptr, *part_v = nullptr;
  int32_t* part_i = nullptr;
  if (parts > 1) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&part_s), sizeof(float) * m * parts * (2 + K), s), "logprob scratch");
    check(cudaMallocAsync(reinterpret_cast<void**>(&part_i), sizeof(int32_t) * std::max<int64_t>(1, m * parts * K), s),
          "logprob scratch");
    part_v = part_s + 2 * m * parts;
  }
  const dim3 grid(static_cast<unsigned>(m), static_cast<unsigned>(parts));
  auto run = [&](auto kernel) {
    launch("row_logprobs", kernel, grid, kLogprobThreads, 0, s, logits, stride, L, token_offset, rows, chosen, K, stats,
           top_v, top_i, part_s, part_v, part_i, views);
  };
  static_assert(kMaxTopLogprobs <= 20, "row_logprobs: a list bound below kMaxTopLogprobs");
  if (K == 0)
    run(row_logprobs_k<0>);
  else if (K == 1)
    run(row_logprobs_k<1>);
  else if (K <= 5)
    run(row_logprobs_k<5>);
  else if (K <= 10)
    run(row_logprobs_k<10>);
  else
    run(row_logprobs_k<20>);
  if (parts == 1) return;
  launch("row_logprobs merge", logprob_merge_k, static_cast<unsigned>(m), kLogprobThreads, 0, s, logits, stride, L,
         token_offset, rows, chosen, K, static_cast<int>(parts), part_s, part_v, part_i, stats, top_v, top_i, views);
  cudaFreeAsync(part_s, s);
  cudaFreeAsync(part_i, s);
}

}  // namespace llmserve::cuda
