// The sampler's draw on the GPU (counterpart of kernels/cpu/draw.cpp): one or more blocks per row; each
// thread scans a strided part of the row keeping its best (score, token), then the block (and, for a
// row split over blocks, a second kernel) reduces them with ties to the smaller token. Scores are
// doubles as on the host, so the draws are the host's.
#include <algorithm>
#include <cfloat>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.cuh"

namespace llmserve::cuda {
namespace {

constexpr int kThreads = 256;

// Keeps the better of two (score, token) candidates: higher score, ties to the smaller token.
__device__ __forceinline__ void keep_best(double& bv, int64_t& bi, double ov, int64_t oi) {
  if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
}

// Block-wide best of every thread's candidate; thread 0 gets it.
__device__ __forceinline__ void block_best(double& bv, int64_t& bi) {
  __shared__ double sv[kThreads];
  __shared__ int64_t si[kThreads];
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) keep_best(sv[threadIdx.x], si[threadIdx.x], sv[threadIdx.x + w], si[threadIdx.x + w]);
    __syncthreads();
  }
  bv = sv[0];
  bi = si[0];
}

// Block (row i, part) scans its part of row i; with one part it writes the row's draw, otherwise the
// part's candidate, which draw_merge_k reduces.
__global__ void __launch_bounds__(kThreads)
    draw_rows_k(const float* logits, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows, float* best,
                int32_t* idx, double* part_v, int64_t* part_i) {
  pdl_enter();
  const int64_t i = blockIdx.x, parts = gridDim.y, per = (L + parts - 1) / parts;
  const int64_t lo = blockIdx.y * per, hi = min(L, lo + per);
  const float* row = logits + i * stride;
  const RowDraw r = rows[i];
  double bv = -INFINITY;
  int64_t bi = INT64_MAX;
#pragma unroll 4
  for (int64_t k = lo + threadIdx.x; k < hi; k += kThreads) {
    const float x = r.greedy ? row[k] : row[k] * r.inv_temperature;
    if (x == -INFINITY) continue;
    const double score = r.greedy ? static_cast<double>(x) : x + draw_gumbel(r.seed, r.position, token_offset + k);
    keep_best(bv, bi, score, k);
  }
  block_best(bv, bi);
  if (threadIdx.x != 0) return;
  if (parts > 1) {
    part_v[i * parts + blockIdx.y] = bv;
    part_i[i * parts + blockIdx.y] = bi;
    return;
  }
  const bool found = bi != INT64_MAX;
  best[i] = found ? static_cast<float>(bv) : -INFINITY;
  idx[i] = found ? static_cast<int32_t>(token_offset + bi) : INT32_MAX;
}

__global__ void __launch_bounds__(kThreads)
    draw_merge_k(const double* part_v, const int64_t* part_i, int64_t parts, int64_t token_offset, float* best,
                 int32_t* idx) {
  pdl_enter();
  const int64_t i = blockIdx.x;
  double bv = -INFINITY;
  int64_t bi = INT64_MAX;
  for (int64_t p = threadIdx.x; p < parts; p += kThreads) keep_best(bv, bi, part_v[i * parts + p], part_i[i * parts + p]);
  block_best(bv, bi);
  if (threadIdx.x != 0) return;
  const bool found = bi != INT64_MAX;
  best[i] = found ? static_cast<float>(bv) : -INFINITY;
  idx[i] = found ? static_cast<int32_t>(token_offset + bi) : INT32_MAX;
}

}  // namespace

void draw_rows(const float* logits, int64_t n, int64_t stride, int64_t L, int64_t token_offset, const RowDraw* rows,
               float* best, int32_t* idx, cudaStream_t s) {
  if (n == 0) return;
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
  launch("draw_rows", draw_rows_k, grid, kThreads, 0, s, logits, stride, L, token_offset, rows, best, idx, part_v, part_i);
  if (parts > 1) {
    launch("draw_rows merge", draw_merge_k, static_cast<unsigned>(n), kThreads, 0, s, part_v, part_i, parts, token_offset,
           best, idx);
    cudaFreeAsync(part_v, s);
    cudaFreeAsync(part_i, s);
  }
}

}  // namespace llmserve::cuda
